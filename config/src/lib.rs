//! The plugin config: what `control` emits into `WasmPlugin.spec.pluginConfig`
//! and what the filter reads in `on_configure`. Plain serde types, validated and
//! compiled by `krites_policy::model`. JSON is read by [`PluginConfig::from_json`]
//! (wherever it is read, so the filter and `control` read it alike); serde
//! writes it, and reads the rule types inside Calico objects in `control`.
//!
//! The policy part follows Calico's v3 model (tiers, policies, ingress rules with
//! entity rules and HTTP matches); the endpoint part is the table the filter
//! cannot learn from Envoy: which pod (namespace, service account, labels) owns
//! which IP, and the labels of namespaces and service accounts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub mod json;
mod base64;
pub mod compressed;
mod digest;
pub mod endpoint_table;
mod read;

use crate::json::Json;

pub use digest::Digest;
pub use endpoint_table::{EndpointTable, TableError};
pub use read::DeferredPolicies;

/// The only config format version this build understands.
pub const CONFIG_VERSION: u32 = 1;

/// Where JSON endpoints (~16 bytes and a parse per address) give way to the
/// endpoint table (a few bytes per group, a walk over bytes to load):
/// `control` writes the table from this many pod addresses, and the
/// benchmarks deliver what control would.
pub const TABLE_FROM_ADDRESSES: usize = 1024;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginConfig {
    /// Format version; must be [`CONFIG_VERSION`].
    pub version: u32,
    /// A label chosen by the producer (e.g. control's generation); informational.
    /// The filter reports its own content hash as the revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The namespaces whose workloads this config is for; absent: all. A
    /// WasmPlugin in Istio's root namespace reaches every workload of the
    /// mesh, so a per-namespace shard there names its namespace, and the
    /// filter of a workload elsewhere leaves the decision to that workload's
    /// own shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<TierSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<PolicySpec>,
    /// Groups of pods that share namespace, service account and labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointSpec>,
    /// More groups of pods and service accounts, as one compact base64
    /// string (see [`endpoint_table`]); read as if listed in `endpoints` and
    /// `serviceAccounts` after theirs.
    #[serde(default, skip_serializing_if = "Option::is_none", serialize_with = "endpoint_table::serialize")]
    pub endpoint_table: Option<EndpointTable>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<NamespaceSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<ServiceAccountSpec>,
    /// Calico's GlobalNetworkSets and NetworkSets: labelled CIDRs that rule
    /// selectors match as they match pods (the address is not a pod).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_sets: Vec<NetworkSetSpec>,
    /// Kubernetes Services, for the egress role: a client's sidecar names a
    /// Service (its ClusterIP, or the cluster `outbound|port||host`) before
    /// its load balancer picks an endpoint, so egress rules are read against
    /// every endpoint behind it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceSpec>,
    /// Calico's staged policies (StagedGlobalNetworkPolicy,
    /// StagedNetworkPolicy, StagedKubernetesNetworkPolicy), each with its
    /// `stagedAction`, named as the policy they would set or delete. They
    /// never change a verdict: the filter decides each request under the
    /// policies with these changes applied too, and reports differences.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub staged_policies: Vec<PolicySpec>,
}

impl PluginConfig {
    /// The same config with every endpoint group and service account in the
    /// compact table (the JSON lists first, then what the table held): what
    /// `control` writes when a config carries many addresses.
    pub fn with_endpoint_table(mut self) -> Result<PluginConfig, TableError> {
        let (specs, accounts) = (self.endpoint_specs(), self.service_account_specs());
        self.endpoints.clear();
        self.service_accounts.clear();
        self.endpoint_table = Some(EndpointTable::new(&specs, &accounts)?);
        Ok(self)
    }

    /// Every endpoint group as JSON `endpoints` lists them, in order:
    /// `endpoints`, then the table's.
    pub fn endpoint_specs(&self) -> Vec<EndpointSpec> {
        let mut specs = self.endpoints.clone();
        specs.extend(self.endpoint_table.iter().flat_map(EndpointTable::endpoint_specs));
        specs
    }

    /// Every service account as JSON `serviceAccounts` lists them, in
    /// order: `serviceAccounts`, then the table's.
    pub fn service_account_specs(&self) -> Vec<ServiceAccountSpec> {
        let mut specs = self.service_accounts.clone();
        specs.extend(self.endpoint_table.iter().flat_map(EndpointTable::service_account_specs));
        specs
    }

    /// Endpoint groups, in either form.
    pub fn endpoint_group_count(&self) -> usize {
        self.endpoints.len() + self.endpoint_table.as_ref().map_or(0, |t| t.groups().len())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TierSpec {
    pub name: String,
    /// Lower first; unset sorts last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,
    /// What happens when a tier's policies select the workload but none decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_action: Option<TierDefaultAction>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TierDefaultAction {
    Deny,
    Pass,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    pub name: String,
    /// Set for a namespaced `NetworkPolicy`; absent for a `GlobalNetworkPolicy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Where the policy came from, e.g. `GlobalNetworkPolicy`,
    /// `NetworkPolicy`, `KubernetesNetworkPolicy`; informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// GlobalNetworkPolicy only: selects workloads by their namespace's labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_selector: Option<String>,
    /// Absent means `[Ingress]`; the producer resolves Calico's defaulting
    /// (from which rule lists the object had) and always writes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<PolicyType>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<RuleSpec>,
    /// Enforced on the selected workloads' own sidecars (the egress role).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<RuleSpec>,
    /// Only in [`PluginConfig::staged_policies`], where it is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged_action: Option<StagedAction>,
}

/// What a staged policy would do to the policy of its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StagedAction {
    /// Create it, or replace it with this spec.
    Set,
    /// Remove it.
    Delete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyType {
    Ingress,
    Egress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    Allow,
    Deny,
    Log,
    Pass,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleSpec {
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_version: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<ProtocolSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_protocol: Option<ProtocolSpec>,
    /// Accepted for fidelity with Calico; an ICMP rule never matches an HTTP request.
    #[serde(default, rename = "icmp", skip_serializing_if = "Option::is_none")]
    pub icmp: Option<Json>,
    #[serde(default, rename = "notICMP", skip_serializing_if = "Option::is_none")]
    pub not_icmp: Option<Json>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<EntityRuleSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<EntityRuleSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpMatchSpec>,
    /// Calico's rule metadata (annotations); no effect on decisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Json>,
}

impl RuleSpec {
    pub fn new(action: Action) -> Self {
        RuleSpec {
            action,
            ip_version: None,
            protocol: None,
            not_protocol: None,
            icmp: None,
            not_icmp: None,
            source: None,
            destination: None,
            http: None,
            metadata: None,
        }
    }
}

/// `TCP`, `UDP`, ... or a protocol number 1-255.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ProtocolSpec {
    Number(u8),
    Name(String),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EntityRuleSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_nets: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<PortSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_accounts: Option<ServiceAccountMatchSpec>,
    /// Calico's `services` match needs Service/Endpoints data the config does not
    /// carry; it is rejected with a clear error rather than ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Json>,
}

/// A port number or a `"min:max"` range. Named ports are resolved to numbers
/// by the producer (control), which knows the pods' container ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortSpec {
    Number(u16),
    Text(String),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountMatchSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatchSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<HttpPathSpec>,
}

/// Exactly one of `exact` and `prefix`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpPathSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// Pods that share namespace, service account and labels, with their IPs.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointSpec {
    pub namespace: String,
    pub service_account: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub ips: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountSpec {
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A Calico `GlobalNetworkSet` (no namespace) or `NetworkSet`: a rule
/// selector that matches its labels matches every address in its `nets`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkSetSpec {
    pub name: String,
    /// Set for a `NetworkSet`; absent for a `GlobalNetworkSet`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<String>,
}

/// A Kubernetes Service: its ClusterIPs and, per TCP port, the endpoints
/// (from its EndpointSlices) a connection to that port may reach.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    pub namespace: String,
    pub name: String,
    /// Empty for a headless Service: clients connect to a pod address itself.
    #[serde(default, rename = "clusterIPs", skip_serializing_if = "Vec::is_empty")]
    pub cluster_ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePortSpec>,
}

/// One Service port (TCP: the only protocol Envoy's listeners carry here).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePortSpec {
    pub port: u16,
    /// Endpoint addresses grouped by the port they serve it on (a named
    /// targetPort may resolve differently per pod).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<ServiceEndpointsSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEndpointsSpec {
    pub port: u16,
    pub ips: Vec<String>,
}
