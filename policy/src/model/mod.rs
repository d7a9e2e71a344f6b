//! The validated, compiled form of a [`PluginConfig`](crate::config::PluginConfig):
//! selectors parsed, CIDRs and ports turned into range sets, paths normalised,
//! policies sorted in evaluation order, every rule named by a stable id.
//! Building it is where every config error is found; nothing here can fail later.

mod addresses;
mod build;
mod referenced;
mod rules;
pub mod identity;
pub mod names;
pub mod services;
pub mod universe;

use std::ops::Range;
use std::sync::Arc;

pub use build::{ConfigError, ConfigErrors};
pub use rules::Rules;
pub use identity::{IdentityMatch, NamespaceClause, ServiceAccountClause, SourceView};
pub use services::{Service, ServiceEndpoint, ServicePort, Services};
pub use universe::{Group, NetworkSet, Universe};

use crate::config::{Action, StagedAction, TierDefaultAction};
use crate::ranges::{NetSet, PortSet};
use crate::selector::Selector;

/// All policies and the endpoint table, workload-independent. Specialise it
/// for one workload with [`crate::engine::WorkloadPolicy::new`].
#[derive(Debug)]
pub struct PolicySet {
    pub(crate) tiers: Vec<Tier>,
    pub(crate) policies: Vec<Policy>,
    pub(crate) rules: Rules,
    pub(crate) universe: Arc<Universe>,
    pub(crate) services: Arc<Services>,
    pub(crate) revision: String,
    pub(crate) producer_revision: Option<String>,
    pub(crate) scope: Option<Vec<String>>,
    /// The policies with every staged change applied (`None`: nothing is
    /// staged). Shares the endpoint table and the Services.
    pub(crate) staged_view: Option<Arc<PolicySet>>,
    /// In a staged view: the staged policies, in config order.
    pub(crate) staged_changes: Vec<StagedChange>,
    /// Policies the config holds, kept here or not (see [`PolicySet::for_workload`]).
    pub(crate) policies_in_config: usize,
}

/// One staged policy: what it would do to the policy of its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedChange {
    /// The policy id it sets or deletes (`tier/[namespace/]name`).
    pub id: String,
    pub name: String,
    pub namespace: Option<String>,
    /// e.g. `StagedNetworkPolicy`, `StagedKubernetesNetworkPolicy`.
    pub kind: Option<String>,
    pub action: StagedAction,
}

impl PolicySet {
    /// A short content hash of the config, the same wherever it is computed.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// The `revision` label the producer put in the config, if any.
    pub fn producer_revision(&self) -> Option<&str> {
        self.producer_revision.as_deref()
    }

    /// Is this config meant for workloads of `namespace` (see `PluginConfig::scope`)?
    pub fn in_scope(&self, namespace: &str) -> bool {
        self.scope.as_ref().is_none_or(|s| s.iter().any(|n| n == namespace))
    }

    /// How many policies the config holds (more than [`Self::policies`] in a
    /// set built [`for_workload`](PolicySet::for_workload)).
    pub fn policies_in_config(&self) -> usize {
        self.policies_in_config
    }

    pub fn tiers(&self) -> &[Tier] {
        &self.tiers
    }

    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    pub fn universe(&self) -> &Universe {
        &self.universe
    }

    pub fn services(&self) -> &Services {
        &self.services
    }

    /// The policy set as it would be with the staged policies applied.
    pub fn staged_view(&self) -> Option<&Arc<PolicySet>> {
        self.staged_view.as_ref()
    }

    /// In a staged view, the staged policies (empty elsewhere).
    pub fn staged_changes(&self) -> &[StagedChange] {
        &self.staged_changes
    }
}

#[derive(Debug, Clone)]
pub struct Tier {
    pub name: String,
    pub order: Option<f64>,
    pub default_action: TierDefaultAction,
}

#[derive(Debug, Clone)]
pub struct Policy {
    /// `tier/name` for a global policy, `tier/namespace/name` for a namespaced one.
    pub id: String,
    pub name: String,
    pub namespace: Option<String>,
    pub kind: Option<String>,
    pub tier: usize,
    pub order: Option<f64>,
    pub selector: Selector,
    pub namespace_selector: Option<Selector>,
    pub service_account_selector: Option<Selector>,
    pub applies_to_ingress: bool,
    pub applies_to_egress: bool,
    /// A staged policy of a staged view (what it would do), else `None`.
    pub staged: Option<StagedAction>,
    /// Ingress rules: ids in [`PolicySet::rules`].
    pub rules: Range<usize>,
    /// Egress rules, likewise.
    pub egress_rules: Range<usize>,
}

impl Policy {
    /// Does this policy apply to the ingress of a workload with these
    /// (namespace, service account, pod labels incl. Calico's special ones)?
    pub fn selects(&self, namespace: &str, service_account: &str, pod_labels: &dyn crate::selector::Labels, universe: &Universe) -> bool {
        self.applies_to_ingress && self.selects_workload(namespace, service_account, pod_labels, universe)
    }

    /// Does this policy apply to the egress of such a workload?
    pub fn selects_egress(&self, namespace: &str, service_account: &str, pod_labels: &dyn crate::selector::Labels, universe: &Universe) -> bool {
        self.applies_to_egress && self.selects_workload(namespace, service_account, pod_labels, universe)
    }

    /// Does the policy's selection (either direction) include such a workload?
    pub fn selects_workload(&self, namespace: &str, service_account: &str, pod_labels: &dyn crate::selector::Labels, universe: &Universe) -> bool {
        self.namespace.as_deref().is_none_or(|ns| ns == namespace)
            && self.selector.matches(&universe.inherited(namespace, service_account, pod_labels))
            && self.namespace_selector.as_ref().is_none_or(|s| s.matches(&universe.namespace_labels(namespace)))
            && self
                .service_account_selector
                .as_ref()
                .is_none_or(|s| s.matches(&universe.service_account_labels(namespace, service_account)))
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    /// `<policy id>/ingress[<n>]` or `<policy id>/egress[<n>]`: what
    /// decisions, logs and stats name.
    pub id: String,
    pub policy: usize,
    pub action: Action,
    pub ip_version: Option<u8>,
    /// Protocol and ICMP fields reduced to the one question that matters for
    /// HTTP: can this rule match a TCP connection?
    pub matches_tcp: bool,
    pub source: EntityMatch,
    pub destination: EntityMatch,
    pub http: Option<HttpMatch>,
}

#[derive(Debug, Clone)]
pub struct EntityMatch {
    pub nets: Option<NetSet>,
    pub not_nets: Option<NetSet>,
    /// Numeric ports; `Some` whenever the rule lists ports (even if all are
    /// named, so that an unresolved name matches nothing).
    pub ports: Option<PortSet>,
    pub not_ports: Option<PortSet>,
    /// Named ports (destination only): resolved per workload from its
    /// container ports, as Calico resolves them per pod.
    pub port_names: Vec<String>,
    pub not_port_names: Vec<String>,
    pub identity: IdentityMatch,
    /// Calico's `services` (egress destinations): the Service's endpoints.
    /// Boxed: rare, and a rule holds two entities.
    pub service: Option<Box<ServiceMatch>>,
}

/// A rule's `services: {name, namespace}`: traffic to the Service's
/// endpoints, each on the port it serves (Calico's IP-and-port set; the
/// ClusterIP itself never reaches Calico's policy, nor an egress rule here,
/// which reads every endpoint behind it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceMatch {
    pub namespace: String,
    pub name: String,
    /// Filled when the policy set is built; sorted. Empty: the config has no
    /// such Service (or it has no endpoints), so nothing matches.
    pub endpoints: Vec<ServiceEndpoint>,
}

impl ServiceMatch {
    pub fn holds(&self, ip: std::net::IpAddr, port: u16) -> bool {
        self.endpoints.binary_search(&ServiceEndpoint { ip: ip.to_canonical(), port }).is_ok()
    }
}

impl EntityMatch {
    pub fn any() -> EntityMatch {
        EntityMatch {
            nets: None,
            not_nets: None,
            ports: None,
            not_ports: None,
            port_names: Vec::new(),
            not_port_names: Vec::new(),
            identity: IdentityMatch::any(),
            service: None,
        }
    }

    /// The address and port tests (identity is checked separately).
    ///
    /// An unknown address or port (the proxy could not verify it) fails every
    /// test of a rule that grants, and passes every test of a rule that
    /// restricts (`restricts`: Deny/Log), so missing facts never loosen policy.
    pub fn matches_address(&self, ip: Option<std::net::IpAddr>, port: Option<u16>, restricts: bool) -> bool {
        self.matches_address_with(ip, port, restricts, self.ports.as_ref(), self.not_ports.as_ref())
    }

    /// As [`Self::matches_address`], with port sets resolved for a workload.
    pub fn matches_address_with(
        &self,
        ip: Option<std::net::IpAddr>,
        port: Option<u16>,
        restricts: bool,
        ports: Option<&PortSet>,
        not_ports: Option<&PortSet>,
    ) -> bool {
        let nets_ok = |set: &NetSet, want_in: bool| ip.map_or(restricts, |ip| set.contains(ip) == want_in);
        let ports_ok = |set: &PortSet, want_in: bool| port.map_or(restricts, |p| set.contains(p) == want_in);
        self.nets.as_ref().is_none_or(|s| nets_ok(s, true))
            && self.not_nets.as_ref().is_none_or(|s| nets_ok(s, false))
            && ports.is_none_or(|s| ports_ok(s, true))
            && not_ports.is_none_or(|s| ports_ok(s, false))
    }

    pub fn has_port_names(&self) -> bool {
        !self.port_names.is_empty() || !self.not_port_names.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct HttpMatch {
    /// Exact, case-sensitive; empty or containing `*` means any method.
    pub methods: Vec<String>,
    /// Normalised at build time; empty means any path.
    pub paths: Vec<PathMatch>,
}

impl HttpMatch {
    pub fn method_matches(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m == "*" || m == method)
    }

    /// `path` must already be normalised; `directory`: the request's path
    /// named a directory (see [`crate::path::names_directory`]).
    pub fn path_matches(&self, path: &str, directory: bool) -> bool {
        self.paths.is_empty()
            || self.paths.iter().any(|p| match p {
                PathMatch::Exact(e) => crate::path::exact_matches(e, path, directory),
                PathMatch::Prefix(pre) => crate::path::has_prefix(path, pre),
            })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// Canonical, with a trailing `/` when the rule's path names a directory
    /// (see [`crate::path::exact_form`]).
    Exact(String),
    Prefix(String),
}
