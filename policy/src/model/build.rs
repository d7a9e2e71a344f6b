//! Validation and compilation of a plugin config into a [`PolicySet`].
//! Every problem is reported (one bad object never hides another's errors),
//! each naming the object and the field.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use super::addresses::{AddressIndex, AddressIndexBuilder, Origin};
use super::identity::{IdentityMatch, NamespaceClause, ServiceAccountClause};
use super::services::{Service, ServiceEndpoint, ServicePort, Services};
use super::names::{label_set, StringsBuilder, Sym};
use super::universe::{network_set_labels, pod_labels, GroupEntry, NamespaceLabels, Names, NetworkSet, ServiceAccountLabels, SpecialSyms, Universe};
use super::rules::MAX_POLICIES;
use super::{EntityMatch, HttpMatch, PathMatch, Policy, PolicySet, Rule, Rules, ServiceMatch, StagedChange, Tier};
use crate::config::{
    Action, DeferredPolicies, Digest, StagedAction, EntityRuleSpec, HttpMatchSpec, PluginConfig, PolicySpec, PolicyType, PortSpec, ProtocolSpec, RuleSpec,
    ServicePortSpec,
    TierDefaultAction, CONFIG_VERSION,
};
use crate::json::{ErrorKind, ReadError};
use crate::ranges::{is_port_name, parse_port_range, NetSet, PortSet};
use crate::selector::Selector;

/// One problem in one object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {field}: {problem}")]
pub struct ConfigError {
    /// e.g. `GlobalNetworkPolicy/database`, `NetworkPolicy/yaobank/db`, `endpoints[2]`.
    pub object: String,
    /// e.g. `ingress[0].source.selector`.
    pub field: String,
    pub problem: String,
}

/// A config that is not JSON, or not the config's shape: syntax errors name
/// the line and column as the field, shape errors the path to the value.
impl From<ReadError> for ConfigError {
    fn from(e: ReadError) -> Self {
        let path = e.path();
        let field = match e.kind {
            ErrorKind::Syntax => format!("line {} column {}", e.line, e.column),
            ErrorKind::Data if path.is_empty() => "(top level)".to_string(),
            ErrorKind::Data => path,
        };
        // Before the first byte (an empty or non-object config) there is no position to give.
        let problem = match (e.line, e.column) {
            (1, 0) => e.problem,
            _ => format!("{} at line {} column {}", e.problem, e.line, e.column),
        };
        ConfigError { object: "plugin config".into(), field, problem }
    }
}

/// Config JSON text -> config, its one error as the config's errors.
fn read(bytes: &[u8]) -> Result<PluginConfig, ConfigErrors> {
    Ok(PluginConfig::from_json(bytes)?)
}

/// Every problem found in a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// A config that cannot be read has that one error.
impl From<ReadError> for ConfigErrors {
    fn from(e: ReadError) -> Self {
        ConfigErrors(vec![ConfigError::from(e)])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

const MAX_HTTP_ITEMS: usize = 20;
/// Calico's limit on rules per direction in one policy.
pub(super) const MAX_RULES: usize = 1024;
const MAX_PATH_LEN: usize = 1024;

/// A set holds at most [`MAX_POLICIES`] policies, staged ones counted: a
/// staged view holds the enforced policies it does not replace, and them.
pub(super) fn too_many_policies(policies: usize, staged: usize) -> Option<String> {
    let count = policies.saturating_add(staged);
    (count > MAX_POLICIES).then(|| format!("{count} policies (staged ones included) are more than the {MAX_POLICIES} a set holds"))
}

/// Calico's built-in tiers, used when a policy names one the config does not declare.
fn builtin_tier(name: &str) -> Option<Tier> {
    let (order, default_action) = match name {
        "default" => (1_000_000.0, TierDefaultAction::Deny),
        "kube-admin" => (1_000.0, TierDefaultAction::Pass),
        "kube-baseline" => (10_000_000.0, TierDefaultAction::Pass),
        _ => return None,
    };
    Some(Tier { name: name.to_string(), order: Some(order), default_action })
}

/// The position of tier `name`: declared, or built-in and added on first use
/// (in the order policies, then staged ones, name them).
fn tier_of(tiers: &mut Vec<Tier>, name: &str) -> Option<usize> {
    if let Some(i) = tiers.iter().position(|t| t.name == name) {
        return Some(i);
    }
    tiers.push(builtin_tier(name)?);
    Some(tiers.len() - 1)
}

/// Where a build's policies come from.
enum Specs {
    /// The config's own, borrowed.
    InConfig,
    /// As text, each read, compiled and let go in turn.
    Deferred(DeferredPolicies),
}

impl Specs {
    fn len(&self, config: &PluginConfig) -> usize {
        match self {
            Specs::InConfig => config.policies.len(),
            Specs::Deferred(deferred) => deferred.len(),
        }
    }
}

/// Config JSON text -> config with its policies left as text.
fn read_deferring(bytes: Vec<u8>) -> Result<(PluginConfig, DeferredPolicies), ConfigErrors> {
    Ok(PluginConfig::from_json_deferring_policies(bytes)?)
}

/// Orders ascending with unset last, as Calico sorts tiers and policies.
fn order_key(order: Option<f64>) -> f64 {
    order.unwrap_or(f64::INFINITY)
}

impl PolicySet {
    /// Parses and compiles plugin config JSON.
    pub fn from_json(bytes: &[u8]) -> Result<PolicySet, ConfigErrors> {
        PolicySet::from_config(&read(bytes)?)
    }

    /// [`PolicySet::from_json`] for a filter: the policies are kept as text
    /// and each is read, compiled and let go in turn once the endpoints are
    /// indexed, so their parsed specs (at Calico's scale ~25 MB) are never
    /// all held at once: Wasm memory does not shrink, so a VM's peak is what
    /// it keeps.
    pub fn from_json_owned(bytes: Vec<u8>) -> Result<PolicySet, ConfigErrors> {
        let (config, deferred) = read_deferring(bytes)?;
        PolicySet::build(&config, Specs::Deferred(deferred), None)
    }

    /// [`PolicySet::from_json_owned`] for one workload, as its filter
    /// compiles: every policy is validated (an error anywhere rejects the
    /// config, as for any workload), but only the policies that select
    /// `workload` (for ingress or egress, enforced or staged) are kept. No
    /// other policy can decide anything for it, so its decisions are those
    /// of the whole set (tested), and at Calico's scale nearly half the
    /// rules are not held in every VM. [`PolicySet::policies_in_config`]
    /// still counts them all.
    pub fn for_workload(bytes: Vec<u8>, workload: &crate::engine::Workload) -> Result<PolicySet, ConfigErrors> {
        let (config, deferred) = read_deferring(bytes)?;
        PolicySet::build(&config, Specs::Deferred(deferred), Some(workload))
    }

    pub fn from_config(config: &PluginConfig) -> Result<PolicySet, ConfigErrors> {
        PolicySet::build(config, Specs::InConfig, None)
    }

    /// `specs`: where the policies come from (`config`'s own are read only
    /// for [`Specs::InConfig`]); `workload`: keep only the policies that
    /// select it. The revision is the whole config's, its policies fed to
    /// the digest as they are compiled.
    fn build(config: &PluginConfig, specs: Specs, workload: Option<&crate::engine::Workload>) -> Result<PolicySet, ConfigErrors> {
        refuse_unbuildable(config, &specs)?;
        let mut b = Builder::default();
        if let Some(scope) = &config.scope {
            if scope.is_empty() || scope.iter().any(String::is_empty) {
                b.error("plugin config", "scope", "must list one or more namespace names");
            }
        }
        // Built-in tiers are added as policies name them.
        let mut tiers = b.tiers(config);
        let policies_in_config = specs.len(config);
        let mut digest = Digest::of_config_with(config, policies_in_config);
        // Built first, so that policies can be kept by whom they select; its
        // errors still follow the policies' in the report.
        let mut endpoints = Builder::default();
        let universe = endpoints.universe(config);
        let local_labels = workload.map(|w| pod_labels(&w.namespace, &w.service_account, &w.labels));
        let keep = |policy: &Policy| match (workload, &local_labels) {
            (Some(w), Some(labels)) => policy.selects_workload(&w.namespace, &w.service_account, labels, &universe),
            _ => true,
        };
        let mut fed = |spec: &PolicySpec| digest.policy(spec);
        let mut policies = match specs {
            Specs::InConfig => b.policies(config.policies.iter(), &mut tiers, false, &keep, &mut fed),
            Specs::Deferred(deferred) => {
                let mut unread = None;
                let specs = deferred.iter().map_while(|spec| spec.map_err(|e| unread = Some(e)).ok());
                let policies = b.policies(specs, &mut tiers, false, &keep, &mut fed);
                if let Some(e) = unread {
                    return Err(e.into());
                }
                policies
            }
        };
        let revision = digest.finish(config);
        // Staged policies are all kept: a staged Set whose new version no
        // longer selects the workload still removes the old one from its view.
        let mut staged = b.policies(config.staged_policies.iter(), &mut tiers, true, &|_| true, &mut |_| {});
        b.errors.append(&mut endpoints.errors);
        let services = Arc::new(b.services(config, &universe));
        if !b.errors.is_empty() {
            return Err(ConfigErrors(b.errors));
        }
        resolve_references(policies.iter_mut().chain(staged.iter_mut()).flat_map(|(_, rules)| rules.iter_mut()), &universe, &services);
        let shared = Shared {
            tiers,
            universe: Arc::new(universe),
            services,
            revision,
            producer_revision: config.revision.clone(),
            scope: config.scope.clone(),
            policies_in_config,
        };
        let staged_view = (!staged.is_empty()).then(|| {
            let (view, changes) = staged_view(&policies, staged);
            Arc::new(shared.assemble(view, None, changes))
        });
        Ok(shared.assemble(policies, staged_view, Vec::new()))
    }
}

/// A config this build cannot compile at all: an unsupported version, or
/// more policies than rule ids hold.
///
/// Large configure-time steps are kept out of line (`inline(never)` here,
/// `--one-caller-inline-max-function-size` in `make build`): Envoy's V8
/// compiles every function with TurboFan up front, its memory grows faster
/// than a function's size, and Envoy keeps that heap. `build` with its steps
/// inlined was one 46 KB function, 17 of the 37 MiB that compiling the module
/// took V8; split, a sidecar holds 12.5 MiB less.
#[inline(never)]
fn refuse_unbuildable(config: &PluginConfig, specs: &Specs) -> Result<(), ConfigErrors> {
    let refused = if config.version != CONFIG_VERSION {
        Some(("version", format!("unsupported version {} (this build reads {CONFIG_VERSION})", config.version)))
    } else {
        too_many_policies(specs.len(config), config.staged_policies.len()).map(|problem| ("policies", problem))
    };
    let Some((field, problem)) = refused else { return Ok(()) };
    // A policy not read yet may not be the config's shape: reading it is
    // the first error, as for a reader that read them all.
    if let Specs::Deferred(deferred) = specs {
        if let Some(e) = deferred.iter().find_map(Result::err) {
            return Err(e.into());
        }
    }
    Err(ConfigErrors(vec![ConfigError { object: "plugin config".into(), field: field.into(), problem }]))
}

/// Settles what rules name by reference once the config is read: network
/// sets (selectors match them by address) and Services (their endpoints).
#[inline(never)]
fn resolve_references<'r>(rules: impl Iterator<Item = &'r mut Rule>, universe: &Universe, services: &Services) {
    let resolve_sets = !universe.network_sets().is_empty();
    for rule in rules {
        if resolve_sets {
            rule.source.identity.resolve_sets(universe);
            rule.destination.identity.resolve_sets(universe);
        }
        for entity in [&mut rule.source, &mut rule.destination] {
            let Some(m) = entity.service.as_mut() else { continue };
            if let Some(s) = services.by_name(&m.namespace, &m.name) {
                let mut endpoints: Vec<ServiceEndpoint> = s.ports.iter().flat_map(|p| p.endpoints.iter().copied()).collect();
                endpoints.sort_unstable();
                endpoints.dedup();
                m.endpoints = endpoints;
            }
        }
        if let Some(m) = &rule.source.service {
            let ips: Vec<String> = m.endpoints.iter().map(|e| e.ip.to_string()).collect();
            // Addresses the Service validated; an empty Service matches nothing.
            rule.source.identity.service_nets = NetSet::parse(ips.iter().map(String::as_str)).ok().filter(|_| !ips.is_empty());
        }
    }
}

/// The policies as they would be with the staged ones applied: each staged
/// one replaces (Set) or removes (Delete) the policy of its name.
#[inline(never)]
fn staged_view(policies: &[(Policy, Vec<Rule>)], staged: Vec<(Policy, Vec<Rule>)>) -> (Vec<(Policy, Vec<Rule>)>, Vec<StagedChange>) {
    let changes: Vec<StagedChange> = staged
        .iter()
        .map(|(p, _)| StagedChange {
            id: p.id.clone(),
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            kind: p.kind.clone(),
            action: p.staged.unwrap_or(StagedAction::Set),
        })
        .collect();
    let named: BTreeSet<(Option<&str>, &str)> = changes.iter().map(|c| (c.namespace.as_deref(), c.name.as_str())).collect();
    let mut view: Vec<(Policy, Vec<Rule>)> =
        policies.iter().filter(|(p, _)| !named.contains(&(p.namespace.as_deref(), p.name.as_str()))).cloned().collect();
    view.extend(staged.into_iter().filter(|(p, _)| p.staged == Some(StagedAction::Set)));
    (view, changes)
}

/// What a set and its staged view share.
struct Shared {
    tiers: Vec<Tier>,
    universe: Arc<Universe>,
    services: Arc<Services>,
    revision: String,
    producer_revision: Option<String>,
    scope: Option<Vec<String>>,
    policies_in_config: usize,
}

impl Shared {
    #[inline(never)]
    fn assemble(&self, policies: Vec<(Policy, Vec<Rule>)>, staged_view: Option<Arc<PolicySet>>, changes: Vec<StagedChange>) -> PolicySet {
        let (policies, rules) = in_evaluation_order(policies, &self.tiers);
        PolicySet {
            tiers: self.tiers.clone(),
            policies,
            rules,
            universe: Arc::clone(&self.universe),
            services: Arc::clone(&self.services),
            revision: self.revision.clone(),
            producer_revision: self.producer_revision.clone(),
            scope: self.scope.clone(),
            policies_in_config: self.policies_in_config,
            staged_view,
            staged_changes: changes,
        }
    }
}

/// Sorts policies into evaluation order (tier order, then policy order,
/// then name, then namespace); their rules stay in their own blocks.
fn in_evaluation_order(mut policies: Vec<(Policy, Vec<Rule>)>, tiers: &[Tier]) -> (Vec<Policy>, Rules) {
    policies.sort_by(|(a, _), (b, _)| {
        let ta = tiers.get(a.tier).map(|t| order_key(t.order)).unwrap_or(f64::INFINITY);
        let tb = tiers.get(b.tier).map(|t| order_key(t.order)).unwrap_or(f64::INFINITY);
        ta.total_cmp(&tb)
            .then_with(|| tiers.get(a.tier).map(|t| &t.name).cmp(&tiers.get(b.tier).map(|t| &t.name)))
            .then_with(|| order_key(a.order).total_cmp(&order_key(b.order)))
            .then_with(|| a.name.cmp(&b.name))
            .then_with(|| a.namespace.cmp(&b.namespace))
    });
    let mut blocks = Vec::with_capacity(policies.len());
    let mut sorted = Vec::with_capacity(policies.len());
    for (index, (mut policy, mut rules)) in policies.into_iter().enumerate() {
        rules.iter_mut().for_each(|rule| rule.policy = index);
        // `policy()` lists the ingress rules first, then the egress ones.
        let (start, ingress, end) = (Rules::id(index, 0), Rules::id(index, policy.rules.len()), Rules::id(index, rules.len()));
        policy.rules = start..ingress;
        policy.egress_rules = ingress..end;
        blocks.push(rules);
        sorted.push(policy);
    }
    (sorted, Rules::new(blocks))
}

fn policy_object(spec: &PolicySpec, staged: bool) -> String {
    let kind = spec.kind.as_deref().unwrap_or(match (staged, spec.namespace.is_some()) {
        (false, true) => "NetworkPolicy",
        (false, false) => "GlobalNetworkPolicy",
        (true, true) => "StagedNetworkPolicy",
        (true, false) => "StagedGlobalNetworkPolicy",
    });
    match &spec.namespace {
        Some(ns) => format!("{kind}/{ns}/{}", spec.name),
        None => format!("{kind}/{}", spec.name),
    }
}

#[derive(Default)]
struct Builder {
    errors: Vec<ConfigError>,
}

impl Builder {
    fn error(&mut self, object: &str, field: impl Into<String>, problem: impl Into<String>) {
        self.errors.push(ConfigError { object: object.to_string(), field: field.into(), problem: problem.into() });
    }

    /// A blank selector is the same as an absent field, as in Calico.
    fn selector(&mut self, object: &str, field: &str, text: Option<&str>, allow_global: bool) -> Option<Selector> {
        let text = text.filter(|t| !t.trim_matches([' ', '\t']).is_empty())?;
        match Selector::parse(text) {
            Ok(sel) if !allow_global && sel.uses_global() => {
                self.error(object, field, "global() is only allowed in a rule's namespaceSelector");
                None
            }
            Ok(sel) if allow_global && sel.uses_global() && sel != Selector::Global => {
                self.error(object, field, "global() cannot be combined with other selectors");
                None
            }
            Ok(sel) => Some(sel),
            Err(e) => {
                self.error(object, field, format!("invalid selector {text:?}: {e}"));
                None
            }
        }
    }

    fn order(&mut self, object: &str, field: &str, order: Option<f64>) -> Option<f64> {
        match order {
            Some(o) if !o.is_finite() => {
                self.error(object, field, "order must be a finite number");
                None
            }
            o => o,
        }
    }

    /// The declared tiers; [`tier_of`] adds the built-in ones policies name.
    fn tiers(&mut self, config: &PluginConfig) -> Vec<Tier> {
        let mut tiers: Vec<Tier> = Vec::new();
        for (i, spec) in config.tiers.iter().enumerate() {
            let object = format!("Tier/{}", spec.name);
            if spec.name.is_empty() {
                self.error(&format!("tiers[{i}]"), "name", "must not be empty");
                continue;
            }
            if tiers.iter().any(|t| t.name == spec.name) {
                self.error(&object, "name", "duplicate tier");
                continue;
            }
            let builtin = builtin_tier(&spec.name);
            let order = self.order(&object, "order", spec.order).or(builtin.as_ref().and_then(|t| t.order));
            let default_action = spec
                .default_action
                .or(builtin.map(|t| t.default_action))
                .unwrap_or(TierDefaultAction::Deny);
            tiers.push(Tier { name: spec.name.clone(), order, default_action });
        }
        tiers
    }

    /// Compiles `specs`, each passed to `fed` first; keeps those `keep` holds.
    #[inline(never)]
    fn policies<S: Borrow<PolicySpec>>(
        &mut self,
        specs: impl Iterator<Item = S>,
        tiers: &mut Vec<Tier>,
        staged: bool,
        keep: &dyn Fn(&Policy) -> bool,
        fed: &mut dyn FnMut(&PolicySpec),
    ) -> Vec<(Policy, Vec<Rule>)> {
        let mut policies = Vec::new();
        let mut seen = BTreeSet::new();
        let list = if staged { "stagedPolicies" } else { "policies" };
        for (i, spec) in specs.enumerate() {
            let spec: &PolicySpec = spec.borrow();
            fed(spec);
            let object = if spec.name.is_empty() { format!("{list}[{i}]") } else { policy_object(spec, staged) };
            if !spec.name.is_empty() && !seen.insert((spec.namespace.clone(), spec.name.clone())) {
                self.error(&object, "metadata.name", if staged { "duplicate staged policy" } else { "duplicate policy" });
                continue;
            }
            match (staged, spec.staged_action) {
                (false, Some(_)) => self.error(&object, "spec.stagedAction", "only a staged policy has one"),
                (true, None) => self.error(&object, "spec.stagedAction", "required for a staged policy (Set or Delete)"),
                _ => {}
            }
            if let Some(policy) = self.policy(spec, &object, tiers).filter(|(p, _)| keep(p)) {
                policies.push(policy);
            }
        }
        policies
    }

    #[inline(never)]
    fn policy(&mut self, spec: &PolicySpec, object: &str, tiers: &mut Vec<Tier>) -> Option<(Policy, Vec<Rule>)> {
        let before = self.errors.len();
        if spec.name.is_empty() {
            self.error(object, "metadata.name", "must not be empty");
        }
        if spec.namespace.as_deref() == Some("") {
            self.error(object, "metadata.namespace", "must not be empty (omit it for a global policy)");
        }
        let tier_name = spec.tier.as_deref().unwrap_or("default");
        let tier = tier_of(tiers, tier_name);
        if tier.is_none() {
            self.error(object, "spec.tier", format!("tier {tier_name:?} is not declared"));
        }
        let order = self.order(object, "spec.order", spec.order);
        let selector = self.selector(object, "spec.selector", spec.selector.as_deref(), false).unwrap_or(Selector::All);
        if spec.namespace.is_some() && spec.namespace_selector.as_deref().is_some_and(|t| !t.trim().is_empty()) {
            self.error(object, "spec.namespaceSelector", "only a GlobalNetworkPolicy may select workloads by namespace");
        }
        let namespace_selector = self.selector(object, "spec.namespaceSelector", spec.namespace_selector.as_deref(), false);
        let service_account_selector =
            self.selector(object, "spec.serviceAccountSelector", spec.service_account_selector.as_deref(), false);
        if let Some(types) = &spec.types {
            if types.len() == 2 && types.first() == types.get(1) {
                self.error(object, "spec.types", "duplicate policy type");
            }
        }
        // Calico's defaulting when types is absent (or empty): Ingress, and
        // Egress if there are egress rules; only Egress if there are only those.
        let (applies_to_ingress, applies_to_egress) = match spec.types.as_deref() {
            Some(types) if !types.is_empty() => (types.contains(&PolicyType::Ingress), types.contains(&PolicyType::Egress)),
            _ => (!spec.ingress.is_empty() || spec.egress.is_empty(), !spec.egress.is_empty()),
        };
        for (name, list) in [("spec.ingress", &spec.ingress), ("spec.egress", &spec.egress)] {
            if list.len() > MAX_RULES {
                self.error(object, name, format!("at most {MAX_RULES} rules per policy"));
            }
        }

        let id = match &spec.namespace {
            Some(ns) => format!("{tier_name}/{ns}/{}", spec.name),
            None => format!("{tier_name}/{}", spec.name),
        };
        let mut rules = Vec::with_capacity(spec.ingress.len() + spec.egress.len());
        for (i, rule) in spec.ingress.iter().enumerate() {
            if let Some(r) = self.rule(rule, object, &format!("spec.ingress[{i}]"), &id, spec.namespace.as_deref()) {
                rules.push(r);
            }
        }
        let ingress = rules.len();
        for (i, rule) in spec.egress.iter().enumerate() {
            let field = format!("spec.egress[{i}]");
            self.no_named_ports_in_egress(rule, object, &field);
            if let Some(r) = self.rule(rule, object, &field, &id, spec.namespace.as_deref()) {
                rules.push(r);
            }
        }
        if self.errors.len() > before {
            return None;
        }
        let policy = Policy {
            id,
            name: spec.name.clone(),
            namespace: spec.namespace.clone(),
            kind: spec.kind.clone(),
            tier: tier.unwrap_or(0),
            order,
            selector,
            namespace_selector,
            service_account_selector,
            applies_to_ingress,
            applies_to_egress,
            staged: spec.staged_action,
            // Placeholders until the set is sorted: only the ingress count matters here.
            rules: 0..ingress,
            egress_rules: 0..0,
        };
        Some((policy, rules))
    }

    #[inline(never)]
    fn rule(&mut self, spec: &RuleSpec, object: &str, field: &str, policy_id: &str, policy_ns: Option<&str>) -> Option<Rule> {
        let before = self.errors.len();
        if let Some(v) = spec.ip_version {
            if v != 4 && v != 6 {
                self.error(object, format!("{field}.ipVersion"), format!("{v} is not 4 or 6"));
            }
        }
        let protocol = self.protocol(object, &format!("{field}.protocol"), spec.protocol.as_ref());
        let not_protocol = self.protocol(object, &format!("{field}.notProtocol"), spec.not_protocol.as_ref());
        let ports_given = [&spec.source, &spec.destination]
            .iter()
            .any(|e| e.as_ref().is_some_and(|e| !e.ports.is_empty() || !e.not_ports.is_empty()));
        if ports_given && !matches!(protocol, Some(6 | 17 | 132)) {
            self.error(object, format!("{field}.protocol"), "ports require protocol TCP, UDP or SCTP");
        }
        self.icmp(spec, protocol, object, field);
        self.ip_families(spec, object, field);
        let source = self.entity(spec.source.as_ref(), object, &format!("{field}.source"), policy_ns);
        let destination = self.entity(spec.destination.as_ref(), object, &format!("{field}.destination"), policy_ns);
        let http = spec.http.as_ref().and_then(|h| {
            if spec.action != Action::Allow {
                self.error(object, format!("{field}.http"), "HTTP match is only allowed on Allow rules");
            }
            if protocol.is_some_and(|p| p != 6) {
                self.error(object, format!("{field}.http"), "HTTP match requires protocol TCP");
            }
            self.http(h, object, &format!("{field}.http"))
        });
        if self.errors.len() > before {
            return None;
        }
        Some(Rule {
            id: format!("{policy_id}/{}", field.strip_prefix("spec.").unwrap_or(field)),
            policy: 0,
            action: spec.action,
            ip_version: spec.ip_version,
            matches_tcp: protocol.is_none_or(|p| p == 6) && not_protocol != Some(6) && spec.icmp.is_none(),
            source: source?,
            destination: destination?,
            http,
        })
    }

    /// A named port resolves against a pod's container ports. On egress the
    /// destination is a remote pod, whose ports the config does not carry,
    /// and the source is this workload's own ephemeral port: rejected rather
    /// than read as matching nothing (in `notPorts` that would match more).
    fn no_named_ports_in_egress(&mut self, rule: &RuleSpec, object: &str, field: &str) {
        for (side, entity) in [("source", &rule.source), ("destination", &rule.destination)] {
            let Some(entity) = entity else { continue };
            for (name, ports) in [("ports", &entity.ports), ("notPorts", &entity.not_ports)] {
                for (i, p) in ports.iter().enumerate() {
                    if let PortSpec::Text(t) = p {
                        if is_port_name(t) {
                            self.error(
                                object,
                                format!("{field}.{side}.{name}[{i}]"),
                                format!("named port {t:?}: egress rules need port numbers (Krites does not know remote pods' container ports)"),
                            );
                        }
                    }
                }
            }
        }
    }

    /// Calico: ICMP fields need protocol ICMP/ICMPv6, a code needs a type, and
    /// ICMP goes with IPv4, ICMPv6 with IPv6.
    fn icmp(&mut self, spec: &RuleSpec, protocol: Option<u8>, object: &str, field: &str) {
        for (name, value) in [("icmp", &spec.icmp), ("notICMP", &spec.not_icmp)] {
            let Some(value) = value else { continue };
            let f = format!("{field}.{name}");
            match value.is_object() {
                false => self.error(object, f, "must be an object with type and code"),
                true => {
                    if !matches!(protocol, Some(1 | 58)) {
                        self.error(object, f.clone(), "ICMP fields need protocol ICMP or ICMPv6");
                    }
                    if value.get("code").is_some() && value.get("type").is_none() {
                        self.error(object, f, "an ICMP code needs an ICMP type");
                    }
                }
            }
        }
        match (protocol, spec.ip_version) {
            (Some(1), Some(6)) => self.error(object, format!("{field}.ipVersion"), "protocol ICMP goes with ipVersion 4"),
            (Some(58), Some(4)) => self.error(object, format!("{field}.ipVersion"), "protocol ICMPv6 goes with ipVersion 6"),
            _ => {}
        }
    }

    /// Calico: a rule's CIDRs are all of one IP family, matching `ipVersion` if set.
    fn ip_families(&mut self, spec: &RuleSpec, object: &str, field: &str) {
        let mut families = BTreeSet::new();
        for (side, entity) in [("source", &spec.source), ("destination", &spec.destination)] {
            let Some(entity) = entity else { continue };
            for (name, nets) in [("nets", &entity.nets), ("notNets", &entity.not_nets)] {
                for (i, net) in nets.iter().enumerate() {
                    let addr = net.split('/').next().unwrap_or("");
                    let family = match addr.parse::<IpAddr>().map(|ip| ip.to_canonical()) {
                        Ok(IpAddr::V4(_)) => 4u8,
                        Ok(IpAddr::V6(_)) => 6,
                        Err(_) => continue, // reported by the CIDR parser
                    };
                    if spec.ip_version.is_some_and(|v| v != family) {
                        self.error(object, format!("{field}.{side}.{name}[{i}]"), format!("{net:?} is not of ipVersion {}", spec.ip_version.unwrap_or(0)));
                    }
                    families.insert(family);
                }
            }
        }
        if families.len() > 1 {
            self.error(object, field.to_string(), "rule mixes IPv4 and IPv6 CIDRs");
        }
    }

    fn protocol(&mut self, object: &str, field: &str, spec: Option<&ProtocolSpec>) -> Option<u8> {
        let spec = spec?;
        let number = match spec {
            ProtocolSpec::Number(0) => None,
            ProtocolSpec::Number(n) => Some(*n),
            ProtocolSpec::Name(name) => match name.to_ascii_uppercase().as_str() {
                "TCP" => Some(6),
                "UDP" => Some(17),
                "ICMP" => Some(1),
                "ICMPV6" => Some(58),
                "SCTP" => Some(132),
                "UDPLITE" => Some(136),
                other => other.parse::<u8>().ok().filter(|&n| n > 0),
            },
        };
        if number.is_none() {
            let shown = match spec {
                ProtocolSpec::Number(n) => n.to_string(),
                ProtocolSpec::Name(n) => format!("{n:?}"),
            };
            self.error(object, field, format!("{shown} is not TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or 1-255"));
        }
        number
    }

    #[inline(never)]
    fn entity(&mut self, spec: Option<&EntityRuleSpec>, object: &str, field: &str, policy_ns: Option<&str>) -> Option<EntityMatch> {
        let Some(spec) = spec else {
            return Some(EntityMatch::any());
        };
        let before = self.errors.len();
        let service = spec.services.as_ref().and_then(|s| self.service_match(s, spec, object, field, policy_ns));
        let nets = self.nets(&spec.nets, object, &format!("{field}.nets"));
        let not_nets = self.nets(&spec.not_nets, object, &format!("{field}.notNets"));
        let source = field.ends_with(".source");
        let (ports, port_names) = self.ports(&spec.ports, object, &format!("{field}.ports"), source);
        let (not_ports, not_port_names) = self.ports(&spec.not_ports, object, &format!("{field}.notPorts"), source);
        let selector = self.selector(object, &format!("{field}.selector"), spec.selector.as_deref(), false);
        let not_selector = self.selector(object, &format!("{field}.notSelector"), spec.not_selector.as_deref(), false);
        let namespace_selector =
            self.selector(object, &format!("{field}.namespaceSelector"), spec.namespace_selector.as_deref(), true);
        let service_accounts = spec.service_accounts.as_ref().map(|sa| {
            for (i, name) in sa.names.iter().enumerate() {
                if name.is_empty() {
                    self.error(object, format!("{field}.serviceAccounts.names[{i}]"), "must not be empty");
                }
            }
            // Inserted one by one: collect() would sort first, another
            // sort instantiation in the Wasm module.
            let mut names = BTreeSet::new();
            for name in &sa.names {
                names.insert(name.clone());
            }
            ServiceAccountClause {
                names,
                selector: self.selector(object, &format!("{field}.serviceAccounts.selector"), sa.selector.as_deref(), false),
            }
        });
        if self.errors.len() > before {
            return None;
        }
        let has_identity = selector.is_some() || not_selector.is_some() || service_accounts.is_some();
        let namespace = match (namespace_selector, policy_ns) {
            (Some(Selector::Global), _) => NamespaceClause::Global,
            (Some(s), _) => NamespaceClause::Selector(never_global(s)),
            // A namespaced policy's identity clauses stay in its namespace.
            (None, Some(ns)) if has_identity => NamespaceClause::Equals(ns.to_string()),
            (None, _) => NamespaceClause::Any,
        };
        Some(EntityMatch {
            nets,
            not_nets,
            ports,
            not_ports,
            port_names,
            not_port_names,
            identity: IdentityMatch {
                // A source Service is matched by its endpoints' addresses only.
                selector: if service.is_some() && source { Some(Selector::Not(Box::new(Selector::All))) } else { selector },
                not_selector: not_selector.map(Box::new),
                namespace,
                service_accounts: service_accounts.map(Box::new),
                set_nets: None,
                not_set_nets: None,
                service_nets: None,
            },
            service: service.map(Box::new),
        })
    }

    /// `services: {name, namespace}`, as Calico validates it: a destination
    /// of an egress rule, alone in its entity rule; the namespace defaults
    /// to a namespaced policy's own.
    fn service_match(
        &mut self,
        value: &crate::json::Json,
        spec: &EntityRuleSpec,
        object: &str,
        field: &str,
        policy_ns: Option<&str>,
    ) -> Option<ServiceMatch> {
        let f = format!("{field}.services");
        if field.starts_with("spec.ingress") && field.ends_with(".destination") {
            self.error(object, f, "a destination Service match is only valid on egress rules");
            return None;
        }
        let others = [
            ("selector", spec.selector.is_some()),
            ("notSelector", spec.not_selector.is_some()),
            ("namespaceSelector", spec.namespace_selector.is_some()),
            ("nets", !spec.nets.is_empty()),
            ("notNets", !spec.not_nets.is_empty()),
            ("serviceAccounts", spec.service_accounts.is_some()),
            ("ports", !spec.ports.is_empty()),
            ("notPorts", !spec.not_ports.is_empty()),
        ];
        for (name, present) in others {
            if present {
                self.error(object, format!("{field}.{name}"), "cannot be combined with services (the Service's endpoints and ports decide)");
            }
        }
        let text = |key: &str| match value.get(key) {
            None => Ok(None),
            Some(crate::json::Json::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(()),
        };
        let (Ok(name), Ok(namespace)) = (text("name"), text("namespace")) else {
            self.error(object, f, "must be an object with string fields name and namespace");
            return None;
        };
        if let crate::json::Json::Object(members) = value {
            for (key, _) in members {
                if key != "name" && key != "namespace" {
                    self.error(object, format!("{f}.{key}"), "unknown field (expected name, namespace)");
                }
            }
        } else {
            self.error(object, f, "must be an object with string fields name and namespace");
            return None;
        }
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            self.error(object, format!("{f}.name"), "required");
            return None;
        };
        let Some(namespace) = namespace.filter(|n| !n.is_empty()).or(policy_ns.map(str::to_string)) else {
            self.error(object, format!("{f}.namespace"), "required in a global policy");
            return None;
        };
        Some(ServiceMatch { namespace, name, endpoints: Vec::new() })
    }

    fn nets(&mut self, nets: &[String], object: &str, field: &str) -> Option<NetSet> {
        if nets.is_empty() {
            return None;
        }
        match NetSet::parse(nets.iter().map(String::as_str)) {
            Ok(set) => Some(set),
            Err((i, problem)) => {
                self.error(object, format!("{field}[{i}]"), problem);
                None
            }
        }
    }

    /// Numeric ports and ranges, and (destination only) port names.
    fn ports(&mut self, ports: &[PortSpec], object: &str, field: &str, source: bool) -> (Option<PortSet>, Vec<String>) {
        if ports.is_empty() {
            return (None, Vec::new());
        }
        let mut ranges = Vec::with_capacity(ports.len());
        let mut names = Vec::new();
        for (i, p) in ports.iter().enumerate() {
            match p {
                PortSpec::Number(0) => self.error(object, format!("{field}[{i}]"), "0 is not a port number (1-65535)"),
                PortSpec::Number(n) => ranges.push((*n, *n)),
                PortSpec::Text(t) if is_port_name(t) && source => self.error(
                    object,
                    format!("{field}[{i}]"),
                    format!("named port {t:?}: source ports must be numbers (a name resolves against the destination workload's container ports)"),
                ),
                PortSpec::Text(t) if is_port_name(t) => names.push(t.clone()),
                PortSpec::Text(t) => match parse_port_range(t) {
                    Ok(r) => ranges.push(r),
                    Err(problem) => self.error(object, format!("{field}[{i}]"), format!("{problem}, or a port name")),
                },
            }
        }
        (Some(PortSet::from_ranges(ranges)), names)
    }

    #[inline(never)]
    fn http(&mut self, spec: &HttpMatchSpec, object: &str, field: &str) -> Option<HttpMatch> {
        let before = self.errors.len();
        if spec.methods.len() > MAX_HTTP_ITEMS {
            self.error(object, format!("{field}.methods"), format!("at most {MAX_HTTP_ITEMS} methods"));
        }
        let mut methods = Vec::with_capacity(spec.methods.len());
        for (i, m) in spec.methods.iter().enumerate() {
            let token = !m.is_empty() && m.bytes().all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
            if !token && m != "*" {
                self.error(object, format!("{field}.methods[{i}]"), format!("{m:?} is not an HTTP method"));
            } else if methods.contains(m) {
                self.error(object, format!("{field}.methods[{i}]"), format!("duplicate method {m:?}"));
            } else {
                methods.push(m.clone());
            }
        }
        if spec.paths.len() > MAX_HTTP_ITEMS {
            self.error(object, format!("{field}.paths"), format!("at most {MAX_HTTP_ITEMS} paths"));
        }
        let mut paths = Vec::with_capacity(spec.paths.len());
        for (i, p) in spec.paths.iter().enumerate() {
            let f = format!("{field}.paths[{i}]");
            let (text, exact) = match (&p.exact, &p.prefix) {
                (Some(e), None) => (e, true),
                (None, Some(pre)) => (pre, false),
                _ => {
                    self.error(object, f, "exactly one of exact and prefix is required");
                    continue;
                }
            };
            if text.len() > MAX_PATH_LEN || text.contains(['?', '#', ' ']) || !text.starts_with('/') {
                self.error(object, f, format!("{text:?} must start with '/', have no '?', '#' or space, and be at most {MAX_PATH_LEN} bytes"));
                continue;
            }
            match crate::path::normalize(text) {
                Ok(norm) if exact => paths.push(PathMatch::Exact(crate::path::exact_form(&norm, crate::path::names_directory(text)))),
                Ok(norm) => paths.push(PathMatch::Prefix(norm.into_owned())),
                Err(e) => self.error(object, f, format!("{text:?}: {e}")),
            }
        }
        (self.errors.len() == before).then_some(HttpMatch { methods, paths })
    }

    #[inline(never)]
    fn namespaces(&mut self, config: &PluginConfig) -> NamespaceLabels {
        let mut namespaces = HashMap::new();
        for (i, ns) in config.namespaces.iter().enumerate() {
            if ns.name.is_empty() {
                self.error(&format!("namespaces[{i}]"), "name", "must not be empty");
            } else if namespaces.insert(ns.name.clone(), ns.labels.clone()).is_some() {
                self.error(&format!("Namespace/{}", ns.name), "name", "duplicate namespace");
            }
        }
        namespaces
    }

    /// The config's service accounts (JSON, then the table's), their labels
    /// interned; `from_table` maps a table string id to its `Sym`.
    #[inline(never)]
    fn service_accounts(&mut self, config: &PluginConfig, strings: &mut StringsBuilder, from_table: &dyn Fn(u32) -> Sym) -> ServiceAccountLabels {
        let mut service_accounts: ServiceAccountLabels = HashMap::new();
        let mut add_account = |this: &mut Self, object: String, (namespace, name): (&str, &str), key: (Sym, Sym), labels: Vec<(Sym, Sym)>| {
            if namespace.is_empty() {
                this.error(&object, "namespace", "must not be empty");
            } else if name.is_empty() {
                this.error(&object, "name", "must not be empty");
            } else if service_accounts.insert(key, label_set(labels)).is_some() {
                this.error(&format!("ServiceAccount/{namespace}/{name}"), "name", "duplicate service account");
            }
        };
        for (i, sa) in config.service_accounts.iter().enumerate() {
            let key = (strings.intern(&sa.namespace), strings.intern(&sa.name));
            let labels = intern_labels(strings, &sa.labels);
            add_account(self, format!("serviceAccounts[{i}]"), (&sa.namespace, &sa.name), key, labels);
        }
        let table = config.endpoint_table.as_ref();
        for (i, (t, sa)) in table.into_iter().flat_map(|t| t.service_accounts().iter().map(move |sa| (t, sa))).enumerate() {
            let key = (from_table(sa.namespace()), from_table(sa.name()));
            let labels = sa.label_ids().iter().map(|&(k, v)| (from_table(k), from_table(v))).collect();
            add_account(self, format!("endpointTable.serviceAccounts[{i}]"), (t.string(sa.namespace()), t.string(sa.name())), key, labels);
        }
        service_accounts
    }

    /// The config's endpoints (JSON, then the table's) as groups of pods
    /// alike, and which group owns each address.
    #[inline(never)]
    fn endpoint_groups(
        &mut self,
        config: &PluginConfig,
        strings: &mut StringsBuilder,
        from_table: &dyn Fn(u32) -> Sym,
        specials: SpecialSyms,
    ) -> (Vec<GroupEntry>, AddressIndex) {
        let table = config.endpoint_table.as_ref();
        let mut groups: Vec<GroupEntry> = Vec::new();
        let mut group_of: HashMap<GroupEntry, u32> = HashMap::new();
        let mut id_of = |group: GroupEntry| match group_of.get(&group) {
            Some(&id) => id,
            None => {
                let id = u32::try_from(groups.len()).unwrap_or(u32::MAX);
                group_of.insert(group.clone(), id);
                groups.push(group);
                id
            }
        };
        let mut addresses = AddressIndexBuilder::default();
        // Where each entry (JSON endpoints, then the table's groups) is named.
        let entry_object = |entry: u32| match usize::try_from(entry).ok().and_then(|e| e.checked_sub(config.endpoints.len())) {
            Some(g) => format!("endpointTable.groups[{g}]"),
            None => format!("endpoints[{entry}]"),
        };
        // A group must name its namespace and service account.
        let identified = |this: &mut Self, entry: u32, namespace: &str, service_account: &str| {
            let missing = match (namespace.is_empty(), service_account.is_empty()) {
                (true, _) => "namespace",
                (false, true) => "serviceAccount",
                (false, false) => return true,
            };
            this.error(&entry_object(entry), missing, "must not be empty");
            false
        };
        let mut entry: u32 = 0;
        for ep in &config.endpoints {
            let at = entry;
            entry = entry.saturating_add(1);
            if !identified(self, at, &ep.namespace, &ep.service_account) {
                continue;
            }
            let (namespace, service_account) = (strings.intern(&ep.namespace), strings.intern(&ep.service_account));
            let labels = intern_labels(strings, &ep.labels);
            let id = id_of(GroupEntry::new(namespace, service_account, labels, specials));
            for (item, text) in (0u32..).zip(&ep.ips) {
                match text.parse::<IpAddr>() {
                    Ok(ip) => addresses.add(ip, id, Origin { entry: at, item }),
                    Err(_) => self.error(&entry_object(at), format!("ips[{item}]"), format!("{text:?} is not an IP address")),
                }
            }
        }
        for (t, g) in table.into_iter().flat_map(|t| t.groups().iter().map(move |g| (t, g))) {
            let at = entry;
            entry = entry.saturating_add(1);
            if !identified(self, at, t.string(g.namespace()), t.string(g.service_account())) {
                continue;
            }
            let labels = g.label_ids().iter().map(|&(k, v)| (from_table(k), from_table(v))).collect();
            let id = id_of(GroupEntry::new(from_table(g.namespace()), from_table(g.service_account()), labels, specials));
            for (item, run) in (0u32..).zip(g.v4_runs()) {
                addresses.add_v4_run(run.first, run.last(), id, Origin { entry: at, item });
            }
            let runs = u32::try_from(g.v4_runs().len()).unwrap_or(u32::MAX);
            for (item, a) in (runs..).zip(g.v6()) {
                addresses.add(IpAddr::V6(*a), id, Origin { entry: at, item });
            }
        }
        drop(group_of);
        let (addresses, clashes) = addresses.finish();
        for clash in clashes {
            let object = entry_object(clash.later.entry);
            // A JSON entry's item is an address; a table group's, a run or an IPv6 address.
            let field = match usize::try_from(clash.later.entry).is_ok_and(|e| e < config.endpoints.len()) {
                true => format!("ips[{}]", clash.later.item),
                false => "addresses".to_string(),
            };
            let problem = format!("{} already belongs to {}; an address must have one owner", clash.address, entry_object(clash.first.entry));
            self.error(&object, field, problem);
        }
        (groups, addresses)
    }

    #[inline(never)]
    fn universe(&mut self, config: &PluginConfig) -> Universe {
        let namespaces = self.namespaces(config);
        // The table's strings first, in one sort; then the JSON entries'.
        let mut strings = StringsBuilder::default();
        let table = config.endpoint_table.as_ref();
        let table_ids = table.map(|t| strings.intern_list(t.strings().iter().map(String::as_str))).unwrap_or_default();
        let empty = strings.intern("");
        let from_table = |id: u32| table_ids.get(id as usize).copied().unwrap_or(empty);
        let specials = SpecialSyms::new(&mut strings);
        let service_accounts = self.service_accounts(config, &mut strings, &from_table);
        let (groups, addresses) = self.endpoint_groups(config, &mut strings, &from_table, specials);
        let network_sets = self.network_sets(config);
        let names = Names { strings: strings.finish(), namespaces, service_accounts };
        Universe::new(names, specials, groups, addresses, network_sets)
    }

    #[inline(never)]
    fn services(&mut self, config: &PluginConfig, universe: &Universe) -> Services {
        let mut list = Vec::new();
        let mut seen = BTreeSet::new();
        let mut cluster_ips: HashMap<IpAddr, String> = HashMap::new();
        for (i, spec) in config.services.iter().enumerate() {
            let object = match (spec.namespace.is_empty(), spec.name.is_empty()) {
                (false, false) => format!("Service/{}/{}", spec.namespace, spec.name),
                _ => format!("services[{i}]"),
            };
            let before = self.errors.len();
            if spec.namespace.is_empty() {
                self.error(&object, "metadata.namespace", "must not be empty");
            }
            if spec.name.is_empty() {
                self.error(&object, "metadata.name", "must not be empty");
            }
            if !spec.name.is_empty() && !seen.insert((spec.namespace.clone(), spec.name.clone())) {
                self.error(&object, "metadata.name", "duplicate service");
            }
            let mut ips = Vec::with_capacity(spec.cluster_ips.len());
            for (j, text) in spec.cluster_ips.iter().enumerate() {
                let Ok(ip) = text.parse::<IpAddr>().map(|ip| ip.to_canonical()) else {
                    self.error(&object, format!("spec.clusterIPs[{j}]"), format!("{text:?} is not an IP address"));
                    continue;
                };
                match cluster_ips.insert(ip, object.clone()) {
                    Some(other) if other != object => {
                        self.error(&object, format!("spec.clusterIPs[{j}]"), format!("{ip} is already the ClusterIP of {other}"))
                    }
                    _ => ips.push(ip),
                }
            }
            let ports = self.service_ports(&object, &spec.ports, universe);
            if self.errors.len() == before {
                list.push(Service { namespace: spec.namespace.clone(), name: spec.name.clone(), cluster_ips: ips, ports });
            }
        }
        Services::new(list)
    }

    /// A Service's ports and the endpoints behind each.
    #[inline(never)]
    fn service_ports(&mut self, object: &str, specs: &[ServicePortSpec], universe: &Universe) -> Vec<ServicePort> {
        let mut ports: Vec<ServicePort> = Vec::with_capacity(specs.len());
        for (j, port) in specs.iter().enumerate() {
            let field = format!("spec.ports[{j}]");
            if port.port == 0 {
                self.error(object, format!("{field}.port"), "0 is not a port number (1-65535)");
            }
            if ports.iter().any(|p| p.port == port.port) {
                self.error(object, format!("{field}.port"), format!("duplicate port {}", port.port));
            }
            let mut endpoints = Vec::new();
            for (k, group) in port.endpoints.iter().enumerate() {
                if group.port == 0 {
                    self.error(object, format!("{field}.endpoints[{k}].port"), "0 is not a port number (1-65535)");
                }
                for (l, text) in group.ips.iter().enumerate() {
                    match text.parse::<IpAddr>() {
                        Ok(ip) => endpoints.push(ServiceEndpoint { ip: ip.to_canonical(), port: group.port }),
                        Err(_) => self.error(object, format!("{field}.endpoints[{k}].ips[{l}]"), format!("{text:?} is not an IP address")),
                    }
                }
            }
            endpoints.sort_unstable();
            endpoints.dedup();
            let mut seen = BTreeSet::new();
            let representatives = endpoints.iter().filter(|e| seen.insert((universe.owner_of(e.ip), e.port))).copied().collect();
            ports.push(ServicePort { port: port.port, endpoints, representatives });
        }
        ports
    }

    #[inline(never)]
    fn network_sets(&mut self, config: &PluginConfig) -> Vec<NetworkSet> {
        let mut sets = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, spec) in config.network_sets.iter().enumerate() {
            let object = match &spec.namespace {
                _ if spec.name.is_empty() => format!("networkSets[{i}]"),
                Some(ns) => format!("NetworkSet/{ns}/{}", spec.name),
                None => format!("GlobalNetworkSet/{}", spec.name),
            };
            let before = self.errors.len();
            if spec.name.is_empty() {
                self.error(&object, "metadata.name", "must not be empty");
            }
            if spec.namespace.as_deref() == Some("") {
                self.error(&object, "metadata.namespace", "must not be empty (omit it for a GlobalNetworkSet)");
            }
            if !spec.name.is_empty() && !seen.insert((spec.namespace.clone(), spec.name.clone())) {
                self.error(&object, "metadata.name", "duplicate network set");
            }
            let nets = match NetSet::parse(spec.nets.iter().map(String::as_str)) {
                Ok(nets) => nets,
                Err((j, problem)) => {
                    self.error(&object, format!("spec.nets[{j}]"), problem);
                    continue;
                }
            };
            if self.errors.len() > before {
                continue;
            }
            sets.push(NetworkSet {
                name: spec.name.clone(),
                namespace: spec.namespace.clone(),
                labels: network_set_labels(spec.namespace.as_deref(), &spec.labels),
                cidrs: spec.nets.clone(),
                nets,
            });
        }
        sets
    }
}

fn intern_labels(strings: &mut StringsBuilder, labels: &BTreeMap<String, String>) -> Vec<(Sym, Sym)> {
    labels.iter().map(|(k, v)| (strings.intern(k), strings.intern(v))).collect()
}

/// In a namespaceSelector, `global()` names non-namespaced entities, never a
/// pod's namespace. Alone it becomes [`NamespaceClause::Global`] and combined
/// it is rejected; this keeps any other use from matching a pod (`!all()`).
fn never_global(sel: Selector) -> Selector {
    match sel {
        Selector::Global => Selector::Not(Box::new(Selector::All)),
        Selector::Not(inner) => Selector::Not(Box::new(never_global(*inner))),
        Selector::And(parts) => Selector::And(parts.into_iter().map(never_global).collect()),
        Selector::Or(parts) => Selector::Or(parts.into_iter().map(never_global).collect()),
        other => other,
    }
}
