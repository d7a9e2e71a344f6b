//! Envoy's native RBAC filter with rules equivalent to a Krites policy set: the
//! benchmark's "what Istio's own authorization costs" reference.
//!
//! # Why
//!
//! An Istio `AuthorizationPolicy` compiles to Envoy's `envoy.filters.http.rbac`:
//! a DENY filter, then an ALLOW filter, each a map of policies, each policy a list
//! of principals (who) and a list of permissions (what), matched linearly in
//! Envoy's C++. That is the cheapest authorization a mesh has, so the load
//! benchmark measures Krites against it. For the comparison to mean anything the
//! RBAC filters must carry the *same rules*, evaluated against the *same facts*:
//! [`rbac_filters`] translates the Calico-style rules that apply to one workload
//! (the policies that select it, in the engine's order, with the rules the engine
//! keeps: TCP, destination settled for this workload) into RBAC JSON in Envoy's
//! v3 form, the way Istio would if it could express them.
//!
//! # Translation
//!
//! | Krites / Calico | Envoy RBAC |
//! |---|---|
//! | Deny rules | a `DENY` filter, placed first (Istio's order: DENY, then ALLOW) |
//! | Log rules | a `LOG` filter (allows everything; the same matching work) |
//! | Allow rules, and Pass rules | the `ALLOW` filter (see below for Pass) |
//! | policies select the workload, no rule matches | the ALLOW filter matches nothing: 403 |
//! | no policy selects the workload | no filter (Calico's profile allows) |
//! | source `nets` / `notNets` | `direct_remote_ip` CIDRs / `not_id` of them |
//! | source `ipVersion` | `direct_remote_ip` `0.0.0.0/0` or `::/0` |
//! | source identity clauses (`selector`, `notSelector`, `namespaceSelector`, `serviceAccounts`) | see *two factors* |
//! | destination `ports` / `notPorts` (names resolved against the workload's ports) | `destination_port` / `destination_port_range`, `not_rule` |
//! | destination `nets` / `notNets` | `destination_ip` / `not_rule` |
//! | HTTP `methods` | `header` `:method` exact |
//! | HTTP `paths` `exact: /p` / `prefix: /p` | `url_path` exact `/p` or `/p/` / exact `/p` or prefix `/p/` (Krites' prefixes match whole segments, requests lose their trailing slash) |
//!
//! Addresses are always `direct_remote_ip`, the connection's peer, never
//! `remote_ip` (which follows `x-forwarded-for`): the address is an identity
//! factor and must not come from a header. Sets of pod addresses are collapsed
//! to the fewest CIDRs that cover exactly them ([`collapse`]); deployments have
//! contiguous pod IPs, so a group is usually a handful of prefixes.
//!
//! **Two factors.** An identity clause admits a set of endpoint groups `G`
//! (pods sharing namespace, service account, labels). As in the engine:
//! - a rule that *grants* (Allow, Pass) matches, for each service account
//!   `(ns, sa)` of `G`, `authenticated.principal_name == spiffe://<td>/ns/<ns>/sa/<sa>`
//!   AND `direct_remote_ip` in the addresses of *that account's* pods in `G`
//!   (so a certificate used from another pod's address, a stolen key, is refused);
//!   in plaintext (no `authenticated` connection: Istio's PERMISSIVE mode) the
//!   address alone, in the addresses of `G`; and if the clause also admits an
//!   address no pod owns (only a `notSelector`), such an address, plaintext or
//!   with any SPIFFE id;
//! - a rule that *restricts* (Deny, Log) matches if *either* factor satisfies
//!   it: the address is in `G`, or the certificate's account satisfies the clause
//!   by itself and the address is not one of that account's own pods (when the
//!   two agree, the engine judges the pod, with all its labels).
//!
//! # Equivalence: cost yes, decisions only where RBAC can say it
//!
//! Calico's model is ordered: tiers in order, policies in order, rules in order,
//! the first Allow or Deny decides, Pass skips to the next tier, a tier's default
//! applies when none of its rules decides. RBAC is not: any DENY policy that
//! matches denies, else any ALLOW policy that matches allows, else 403. Pass
//! rules therefore cannot be expressed: they are translated as ALLOW policies,
//! so RBAC evaluates them (the same principals, the same matching cost) but
//! decides differently. At generated scales (`Scale::rules(n)`, Calico's
//! production set: several tiers, mostly Pass rules in the security tier, Deny
//! rules after Allow rules) the RBAC set is **cost-equivalent** (the same rules,
//! the same principals, evaluated linearly), **not decision-equivalent**;
//! [`RbacStats::not_equivalent`] says why for a given config. At the tutorial's
//! size (`Scale::tutorial()`, and YAO Bank's `tests/fixtures/yaobank-plugin-config.json`)
//! the translation is decision-equivalent, and `tests/ext_authz_rbac.rs` shows it
//! in real Envoys, request by request, against the engine.
//!
//! Differences that remain even when the stats say "equivalent":
//! - principals name one trust domain ([`RbacOptions::trust_domain`], Istio's
//!   `cluster.local`, what the bench's CA issues); Krites, like Calico, accepts any
//!   trust domain the CA vouches for;
//! - paths: Envoy's `normalize_path`/`merge_slashes` resolve `.`/`..` and `//`
//!   as Krites does, but Krites also refuses ambiguous encodings (`%2F`, double
//!   encoding) for path rules; RBAC matches what Envoy leaves in `:path`;
//! - a restricting clause is judged on certificates of accounts the config does
//!   not name by one probe name per namespace (and one unknown namespace);
//! - source ports have no RBAC matcher: such a rule is an error, not dropped;
//! - a TLS connection *without* a client certificate is `authenticated` to
//!   RBAC but plaintext to the engine (the inbound listener here, as Istio's,
//!   requires one, so this does not arise).
//!
//! # Sizes
//!
//! RBAC has no references: every rule carries its own principals, so the JSON
//! grows with rules × the pods they name (a selector such as
//! `tier == 'frontend'` names a fifth of the cluster, per service account).
//! Measured for the bench's target workload (`krites_bench::target_workload`;
//! `cargo test -p krites-loadbench --release -- --ignored --nocapture rbac_sizes`):
//!
//! | scale | rules that apply | RBAC policies | principals | CIDRs | JSON |
//! |---|---|---|---|---|---|
//! | `Scale::tutorial()` | 3 | 1 (2 rules match no pod) | 7 | 4 | 1.2 KB |
//! | YAO Bank, database workload | 1 | 1 | 6 | 4 | 0.8 KB |
//! | `Scale::rules(100)` with 1,000 endpoints | 60 | 51 | 3,649 | 3,134 | 290 KB |
//! | 100 policies × 1 rule, 1,000 endpoints (bench `p100-e1k`) | 57 | 51 | 2,550 | 2,180 | 205 KB |
//! | `Scale::rules(1000)` (10,000 endpoints) | 500 | 458 | 151,126 | 133,099 | 11.8 MB |
//! | 1,000 policies × 1 rule, 10,000 endpoints (bench `p1000-e10k`) | 524 | 479 | 176,192 | 154,994 | 13.7 MB |
//! | `Scale::calico_production()` (256k endpoints) | 11,152 | refused | 667,256 after 49 rules | 586,213 after 49 rules | 52.6 MB after 49 rules, about 12 GB for all |
//!
//! Envoy 1.40 loads the 13.7 MB set (`--mode validate`: 3.9 s, 190 MB RSS).
//!
//! Over [`MAX_JSON_BYTES`] [`rbac_filters`] returns [`RbacError::TooLarge`]
//! with the sizes reached, and the bench reports RBAC as not run at that scale.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use krites_policy::config::{Action, EntityRuleSpec, PluginConfig, PolicySpec, PortSpec, TierDefaultAction};
use krites_policy::model::universe::pod_labels;
use krites_policy::model::{HttpMatch, IdentityMatch, PathMatch, Rule, SourceView, Universe};
use krites_policy::{ConfigErrors, PolicySet, Workload};
use serde_json::{json, Value};

/// The HTTP filter's name, as Istio names it.
pub const RBAC_FILTER_NAME: &str = "envoy.filters.http.rbac";
/// The filter's `typed_config` type.
pub const RBAC_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
/// Above this much JSON a config is not one Envoy can reasonably load (and the
/// control plane could not reasonably push): [`RbacError::TooLarge`].
pub const MAX_JSON_BYTES: usize = 50 * 1024 * 1024;

/// The filters for one workload, in the order they go before the router, and
/// what they hold.
#[derive(Debug, Clone, PartialEq)]
pub struct RbacTranslation {
    /// `envoy.filters.http.rbac` entries in Envoy's v3 JSON form: DENY first,
    /// then LOG, then ALLOW. Empty when no policy selects the workload.
    pub filters: Vec<Value>,
    pub stats: RbacStats,
}

/// What a translation holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RbacStats {
    /// Calico policies that select the workload.
    pub policies_selecting: usize,
    /// Rules the engine would walk for the workload.
    pub rules_applicable: usize,
    /// Applicable rules that no request can match (their identity clause
    /// admits no pod and no unknown address, or their ports resolve to none).
    pub rules_never_matching: usize,
    /// RBAC policies, all filters together (one per translated rule).
    pub rbac_policies: usize,
    pub deny_policies: usize,
    pub log_policies: usize,
    /// ALLOW policies, Pass rules included.
    pub allow_policies: usize,
    /// Of which from Pass rules.
    pub pass_as_allow: usize,
    /// Leaf principals (`authenticated`, `direct_remote_ip`, `any`).
    pub principals: usize,
    /// Leaf permissions (`header`, `url_path`, `destination_port`, ...).
    pub permissions: usize,
    /// CIDR entries (`direct_remote_ip` and `destination_ip`).
    pub cidrs: usize,
    /// Compact JSON of all filters.
    pub json_bytes: usize,
    /// Why RBAC's decisions may differ from the engine's for this config;
    /// empty when the translation is decision-equivalent.
    pub not_equivalent: Vec<String>,
}

impl RbacStats {
    pub fn decision_equivalent(&self) -> bool {
        self.not_equivalent.is_empty()
    }
}

impl fmt::Display for RbacStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} RBAC policies ({} deny, {} log, {} allow of which {} from Pass rules) for {} rules of {} policies \
             ({} can never match); {} principals, {} permissions, {} CIDRs, {} bytes of JSON; ",
            self.rbac_policies,
            self.deny_policies,
            self.log_policies,
            self.allow_policies,
            self.pass_as_allow,
            self.rules_applicable,
            self.policies_selecting,
            self.rules_never_matching,
            self.principals,
            self.permissions,
            self.cidrs,
            self.json_bytes
        )?;
        if self.not_equivalent.is_empty() {
            f.write_str("decision-equivalent")
        } else {
            write!(f, "cost-equivalent, not decision-equivalent: {}", self.not_equivalent.join("; "))
        }
    }
}

/// Knobs of the translation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbacOptions {
    /// Trust domain of the SPIFFE ids principals name.
    pub trust_domain: String,
    /// See [`MAX_JSON_BYTES`].
    pub max_json_bytes: usize,
}

impl Default for RbacOptions {
    fn default() -> Self {
        RbacOptions { trust_domain: krites_bench::TRUST_DOMAIN.to_string(), max_json_bytes: MAX_JSON_BYTES }
    }
}

/// Why there is no translation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RbacError {
    /// The plugin config does not compile.
    Config(ConfigErrors),
    /// A rule uses something Envoy RBAC has no matcher for.
    Unsupported { rule: String, what: String },
    /// The JSON outgrew [`RbacOptions::max_json_bytes`]; translation stopped there.
    TooLarge {
        workload: String,
        limit: usize,
        bytes_so_far: usize,
        rules_done: usize,
        rules_total: usize,
        policies_so_far: usize,
        principals_so_far: usize,
        cidrs_so_far: usize,
    },
}

impl RbacError {
    /// For [`RbacError::TooLarge`]: the whole translation's size, extrapolated
    /// from the rules done.
    pub fn estimated_bytes(&self) -> Option<u64> {
        match self {
            RbacError::TooLarge { bytes_so_far, rules_done, rules_total, .. } if *rules_done > 0 => {
                Some((*bytes_so_far as u64).saturating_mul(*rules_total as u64) / *rules_done as u64)
            }
            _ => None,
        }
    }
}

impl fmt::Display for RbacError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RbacError::Config(e) => write!(f, "plugin config does not compile: {e}"),
            RbacError::Unsupported { rule, what } => write!(f, "rule {rule}: {what} cannot be expressed in Envoy RBAC"),
            RbacError::TooLarge {
                workload,
                limit,
                bytes_so_far,
                rules_done,
                rules_total,
                policies_so_far,
                principals_so_far,
                cidrs_so_far,
            } => {
                write!(
                    f,
                    "Envoy RBAC for {workload} is too large to load: {:.1} MB of JSON after {rules_done} of {rules_total} rules \
                     ({policies_so_far} RBAC policies, {principals_so_far} principals, {cidrs_so_far} CIDRs), over the {:.0} MB limit",
                    *bytes_so_far as f64 / 1e6,
                    *limit as f64 / (1024.0 * 1024.0),
                )?;
                if let Some(total) = self.estimated_bytes() {
                    write!(f, "; about {:.1} MB for all rules", total as f64 / 1e6)?;
                }
                f.write_str(" (RBAC has no references: every rule carries the addresses and identities it names)")
            }
        }
    }
}

impl std::error::Error for RbacError {}

/// The RBAC filters for `workload` under `config`, with the default options.
pub fn rbac_filters(config: &PluginConfig, workload: &Workload) -> anyhow::Result<RbacTranslation> {
    Ok(rbac_filters_with(config, workload, &RbacOptions::default())?)
}

/// [`rbac_filters`] with explicit options, and a typed error.
pub fn rbac_filters_with(config: &PluginConfig, workload: &Workload, options: &RbacOptions) -> Result<RbacTranslation, RbacError> {
    let set = PolicySet::from_config(config).map_err(RbacError::Config)?;
    let mut stats = RbacStats::default();
    if !set.in_scope(&workload.namespace) {
        // Krites decides nothing outside its scope.
        return Ok(RbacTranslation { filters: Vec::new(), stats });
    }
    let universe = set.universe();
    let local_labels = pod_labels(&workload.namespace, &workload.service_account, &workload.labels);
    let local = workload.as_source(&local_labels);
    let specs: HashMap<(Option<&str>, &str), &PolicySpec> =
        config.policies.iter().map(|p| ((p.namespace.as_deref(), p.name.as_str()), p)).collect();

    // The rules the engine walks for this workload, in its order.
    let mut applicable: Vec<Applicable<'_>> = Vec::new();
    let mut tiers: Vec<(String, TierDefaultAction)> = Vec::new();
    for policy in set.policies() {
        if !policy.selects(&workload.namespace, &workload.service_account, &local_labels, universe) {
            continue;
        }
        stats.policies_selecting += 1;
        if let Some(tier) = set.tiers().get(policy.tier) {
            if tiers.last().is_none_or(|(name, _)| *name != tier.name) {
                tiers.push((tier.name.clone(), tier.default_action));
            }
        }
        let spec = specs.get(&(policy.namespace.as_deref(), policy.name.as_str())).copied();
        for (n, index) in policy.rules.clone().enumerate() {
            let Some(rule) = set.rules().get(index) else { continue };
            if !(rule.matches_tcp && rule.destination.identity.matches(local, universe)) {
                continue;
            }
            let spec = spec.and_then(|p| p.ingress.get(n));
            applicable.push(Applicable {
                rule,
                source: spec.and_then(|s| s.source.as_ref()),
                destination: spec.and_then(|s| s.destination.as_ref()),
            });
        }
    }
    stats.rules_applicable = applicable.len();
    if stats.policies_selecting == 0 {
        return Ok(RbacTranslation { filters: Vec::new(), stats });
    }
    stats.not_equivalent = equivalence_gaps(&tiers, &applicable);

    let endpoints = Endpoints::new(config, universe);
    let mut translator = Translator {
        universe,
        endpoints: &endpoints,
        workload,
        trust_domain: &options.trust_domain,
        clauses: HashMap::new(),
    };
    let mut deny = serde_json::Map::new();
    let mut log = serde_json::Map::new();
    let mut allow = serde_json::Map::new();
    let mut bytes = 0usize;
    for (position, a) in applicable.iter().enumerate() {
        let Some(policy) = translator.policy(a)? else {
            stats.rules_never_matching += 1;
            continue;
        };
        let name = format!("{position:05}:{}", a.rule.id);
        let mut counts = Counts::default();
        counts.policy(&policy);
        stats.principals += counts.principals;
        stats.permissions += counts.permissions;
        stats.cidrs += counts.cidrs;
        bytes += json_len(&policy) + name.len() + 4;
        let target = match a.rule.action {
            Action::Deny => {
                stats.deny_policies += 1;
                &mut deny
            }
            Action::Log => {
                stats.log_policies += 1;
                &mut log
            }
            Action::Allow | Action::Pass => {
                stats.allow_policies += 1;
                stats.pass_as_allow += usize::from(a.rule.action == Action::Pass);
                &mut allow
            }
        };
        target.insert(name, policy);
        if bytes > options.max_json_bytes {
            return Err(RbacError::TooLarge {
                workload: format!("{}/{}", workload.namespace, workload.service_account),
                limit: options.max_json_bytes,
                bytes_so_far: bytes,
                rules_done: position + 1,
                rules_total: applicable.len(),
                policies_so_far: deny.len() + log.len() + allow.len(),
                principals_so_far: stats.principals,
                cidrs_so_far: stats.cidrs,
            });
        }
    }
    stats.rbac_policies = deny.len() + log.len() + allow.len();

    let mut filters = Vec::new();
    if !deny.is_empty() {
        filters.push(filter("DENY", "krites_deny.", deny));
    }
    if !log.is_empty() {
        filters.push(filter("LOG", "krites_log.", log));
    }
    // Always present once a policy selects the workload: with no policy in
    // it, an ALLOW filter denies everything (the tier's default Deny).
    filters.push(filter("ALLOW", "krites_allow.", allow));
    stats.json_bytes = filters.iter().map(json_len).sum();
    if stats.json_bytes > options.max_json_bytes {
        return Err(RbacError::TooLarge {
            workload: format!("{}/{}", workload.namespace, workload.service_account),
            limit: options.max_json_bytes,
            bytes_so_far: stats.json_bytes,
            rules_done: applicable.len(),
            rules_total: applicable.len(),
            policies_so_far: stats.rbac_policies,
            principals_so_far: stats.principals,
            cidrs_so_far: stats.cidrs,
        });
    }
    Ok(RbacTranslation { filters, stats })
}

/// One filter entry as the HTTP connection manager takes it.
fn filter(action: &str, stat_prefix: &str, policies: serde_json::Map<String, Value>) -> Value {
    json!({
        "name": RBAC_FILTER_NAME,
        "typed_config": {
            "@type": RBAC_TYPE_URL,
            "rules_stat_prefix": stat_prefix,
            "rules": { "action": action, "policies": policies }
        }
    })
}

/// Why first-match-in-order (Calico) and DENY-any-then-ALLOW-any (RBAC) can
/// decide differently for these rules. Conservative: an entry means "not
/// proven equal", not "a request is known to differ".
fn equivalence_gaps(tiers: &[(String, TierDefaultAction)], rules: &[Applicable<'_>]) -> Vec<String> {
    let mut gaps = Vec::new();
    if tiers.len() > 1 {
        let names: Vec<&str> = tiers.iter().map(|(n, _)| n.as_str()).collect();
        gaps.push(format!("{} tiers select the workload ({}): RBAC has no tier order", tiers.len(), names.join(", ")));
    }
    for (name, default) in tiers {
        if *default == TierDefaultAction::Pass {
            gaps.push(format!("tier {name} passes by default, RBAC's ALLOW filter denies when nothing matches"));
        }
    }
    let passes = rules.iter().filter(|a| a.rule.action == Action::Pass).count();
    if passes > 0 {
        gaps.push(format!("{passes} Pass rules are ALLOW policies in RBAC (evaluated, but they allow)"));
    }
    let first_grant = rules.iter().position(|a| matches!(a.rule.action, Action::Allow | Action::Pass));
    if let Some(first) = first_grant {
        let late_denies: Vec<&str> =
            rules.iter().skip(first).filter(|a| a.rule.action == Action::Deny).map(|a| a.rule.id.as_str()).collect();
        if let (Some(example), Some(grant)) = (late_denies.first(), rules.get(first)) {
            gaps.push(format!(
                "{} Deny rules come after an Allow rule ({example} after {}): Calico's first match can allow what RBAC's DENY filter denies",
                late_denies.len(),
                grant.rule.id
            ));
        }
    }
    gaps
}

/// A rule the engine walks for the workload, with the config text RBAC needs
/// (CIDR and port lists, which the compiled rule keeps only as lookup sets).
struct Applicable<'a> {
    rule: &'a Rule,
    source: Option<&'a EntityRuleSpec>,
    destination: Option<&'a EntityRuleSpec>,
}

/// Pod addresses by endpoint group, and by service account.
struct Endpoints {
    /// Indexed like the universe's groups.
    ips: Vec<Vec<IpAddr>>,
    all: Vec<IpAddr>,
    /// (namespace, service account) -> group ids.
    by_account: BTreeMap<(String, String), Vec<usize>>,
    namespaces: BTreeSet<String>,
}

impl Endpoints {
    fn new(config: &PluginConfig, universe: &Universe) -> Endpoints {
        // A group is its namespace, service account and labels as `pod_labels` completes them.
        type Key = (String, String, BTreeMap<String, String>);
        let mut by_group: HashMap<Key, Vec<IpAddr>> = HashMap::new();
        for ep in &config.endpoints {
            let ips = ep.ips.iter().filter_map(|t| t.parse::<IpAddr>().ok()).map(|ip| ip.to_canonical());
            let key = (ep.namespace.clone(), ep.service_account.clone(), pod_labels(&ep.namespace, &ep.service_account, &ep.labels));
            by_group.entry(key).or_default().extend(ips);
        }
        let mut ips = Vec::with_capacity(universe.group_count());
        let mut by_account: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
        for (g, group) in universe.groups() {
            let key = (group.namespace().to_string(), group.service_account().to_string(), group.label_map());
            ips.push(by_group.remove(&key).unwrap_or_default());
            by_account.entry((key.0, key.1)).or_default().push(g as usize);
        }
        for sa in &config.service_accounts {
            by_account.entry((sa.namespace.clone(), sa.name.clone())).or_default();
        }
        let mut namespaces: BTreeSet<String> = by_account.keys().map(|(ns, _)| ns.clone()).collect();
        namespaces.extend(config.namespaces.iter().map(|n| n.name.clone()));
        let all = ips.iter().flatten().copied().collect();
        Endpoints { ips, all, by_account, namespaces }
    }

    fn ips_of<'a>(&'a self, groups: &'a [usize]) -> impl Iterator<Item = IpAddr> + 'a {
        groups.iter().flat_map(|&g| self.ips.get(g).into_iter().flatten().copied())
    }
}

/// What an identity clause admits, computed once per distinct clause.
#[derive(Debug, Clone)]
struct ClauseMatch {
    /// Principals for a rule that grants; `None`: it matches nothing.
    granting: Option<Value>,
    /// Principals for a rule that restricts; `None`: it matches nothing.
    restricting: Option<Value>,
}

struct Translator<'a> {
    universe: &'a Universe,
    endpoints: &'a Endpoints,
    workload: &'a Workload,
    trust_domain: &'a str,
    /// Keyed by the clause's debug form (it has no `Hash`): generated configs
    /// repeat a few clauses across many rules.
    clauses: HashMap<String, ClauseMatch>,
}

/// A probe name no config uses, to ask a clause about accounts and namespaces
/// it does not list.
const PROBE: &str = "krites-rbac-probe-0x5eed";

impl Translator<'_> {
    /// The RBAC policy for one rule, `None` if no request can match it.
    fn policy(&mut self, a: &Applicable<'_>) -> Result<Option<Value>, RbacError> {
        let Some(principal) = self.principal(a)? else { return Ok(None) };
        let Some(permission) = self.permission(a)? else { return Ok(None) };
        Ok(Some(json!({ "permissions": [permission], "principals": [principal] })))
    }

    fn principal(&mut self, a: &Applicable<'_>) -> Result<Option<Value>, RbacError> {
        let rule = a.rule;
        let restricts = matches!(rule.action, Action::Deny | Action::Log);
        if let Some(src) = a.source {
            if !src.ports.is_empty() || !src.not_ports.is_empty() {
                return Err(RbacError::Unsupported { rule: rule.id.clone(), what: "a source port match".into() });
            }
        }
        let mut all = Vec::new();
        match rule.ip_version {
            Some(4) => all.push(remote_ip(Cidr { addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED), len: 0 })),
            Some(6) => all.push(remote_ip(Cidr { addr: IpAddr::V6(Ipv6Addr::UNSPECIFIED), len: 0 })),
            _ => {}
        }
        if let Some(src) = a.source {
            if !src.nets.is_empty() {
                all.push(or_ids(parse_nets(&src.nets, &rule.id)?.into_iter().map(remote_ip).collect()));
            }
            if !src.not_nets.is_empty() {
                all.push(not_id(or_ids(parse_nets(&src.not_nets, &rule.id)?.into_iter().map(remote_ip).collect())));
            }
        }
        let identity = &rule.source.identity;
        if !identity.is_empty() {
            let clause = self.clause(identity);
            match if restricts { clause.restricting } else { clause.granting } {
                Some(p) => all.push(p),
                None => return Ok(None),
            }
        }
        Ok(Some(and_ids(all)))
    }

    fn permission(&self, a: &Applicable<'_>) -> Result<Option<Value>, RbacError> {
        let rule = a.rule;
        let mut all = Vec::new();
        if let Some(dst) = a.destination {
            if !dst.nets.is_empty() {
                all.push(or_rules(parse_nets(&dst.nets, &rule.id)?.into_iter().map(destination_ip).collect()));
            }
            if !dst.not_nets.is_empty() {
                all.push(not_rule(or_rules(parse_nets(&dst.not_nets, &rule.id)?.into_iter().map(destination_ip).collect())));
            }
            if !dst.ports.is_empty() {
                let ports = self.ports(&dst.ports, &rule.id)?;
                if ports.is_empty() {
                    return Ok(None); // only names this workload does not have: never matches
                }
                all.push(or_rules(ports.into_iter().map(port_permission).collect()));
            }
            if !dst.not_ports.is_empty() {
                let ports = self.ports(&dst.not_ports, &rule.id)?;
                if !ports.is_empty() {
                    all.push(not_rule(or_rules(ports.into_iter().map(port_permission).collect())));
                }
            }
        }
        if let Some(http) = &rule.http {
            all.extend(http_permissions(http));
        }
        Ok(Some(and_rules(all)))
    }

    /// Port ranges of a destination clause, names resolved against the
    /// workload's container ports (unresolved names match nothing, as in the engine).
    fn ports(&self, ports: &[PortSpec], rule: &str) -> Result<Vec<(u16, u16)>, RbacError> {
        let mut out = Vec::new();
        for p in ports {
            match p {
                PortSpec::Number(n) => out.push((*n, *n)),
                PortSpec::Text(t) if krites_policy::ranges::is_port_name(t) => {
                    if let Some(&n) = self.workload.ports.get(t) {
                        out.push((n, n));
                    }
                }
                PortSpec::Text(t) => out.push(
                    krites_policy::ranges::parse_port_range(t)
                        .map_err(|e| RbacError::Unsupported { rule: rule.to_string(), what: format!("port {t:?} ({e})") })?,
                ),
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    fn clause(&mut self, identity: &IdentityMatch) -> ClauseMatch {
        let key = format!("{identity:?}");
        if let Some(found) = self.clauses.get(&key) {
            return found.clone();
        }
        let computed = self.compute_clause(identity);
        self.clauses.insert(key, computed.clone());
        computed
    }

    fn compute_clause(&self, identity: &IdentityMatch) -> ClauseMatch {
        let universe = self.universe;
        let eps = self.endpoints;
        let groups: Vec<usize> =
            universe.groups().filter(|(_, group)| identity.matches(group.as_source(), universe)).map(|(g, _)| g as usize).collect();
        let unknown = identity.matches_unknown();
        let owners = || or_ids(collapse(eps.ips_of(&groups)).into_iter().map(remote_ip).collect());
        let unknown_address = || not_id(or_ids(collapse(eps.all.iter().copied()).into_iter().map(remote_ip).collect()));

        // Grants: the two factors must agree.
        let mut grants = Vec::new();
        if !groups.is_empty() {
            grants.push(and_ids(vec![plaintext(), owners()]));
            let mut by_account: BTreeMap<(&str, &str), Vec<usize>> = BTreeMap::new();
            for &g in &groups {
                if let Some(group) = u32::try_from(g).ok().and_then(|id| universe.group(id)) {
                    by_account.entry((group.namespace(), group.service_account())).or_default().push(g);
                }
            }
            for ((ns, sa), members) in by_account {
                let cidrs = collapse(eps.ips_of(&members));
                if cidrs.is_empty() {
                    continue;
                }
                grants.push(and_ids(vec![
                    principal_exact(&self.spiffe_id(ns, sa)),
                    or_ids(cidrs.into_iter().map(remote_ip).collect()),
                ]));
            }
        }
        if unknown {
            grants.push(and_ids(vec![unknown_address(), or_ids(vec![plaintext(), principal_regex(&spiffe_regex(None))])]));
        }

        // Restrictions: either factor.
        let mut restricts = Vec::new();
        if !groups.is_empty() {
            restricts.push(owners());
        }
        if unknown {
            restricts.push(unknown_address());
        }
        let certified = |ns: &str, sa: &str| identity.matches(SourceView::Certified { namespace: ns, service_account: sa }, universe);
        for ((ns, sa), members) in &eps.by_account {
            if !certified(ns, sa) {
                continue;
            }
            // Where the certificate and its own pod agree, the pod is judged (above).
            let own = collapse(eps.ips_of(members));
            let mut parts = vec![principal_exact(&self.spiffe_id(ns, sa))];
            if !own.is_empty() {
                parts.push(not_id(or_ids(own.into_iter().map(remote_ip).collect())));
            }
            restricts.push(and_ids(parts));
        }
        for ns in &eps.namespaces {
            if certified(ns, PROBE) {
                let known: Vec<Value> = eps
                    .by_account
                    .keys()
                    .filter(|(n, _)| n == ns)
                    .map(|(n, sa)| principal_exact(&self.spiffe_id(n, sa)))
                    .collect();
                let mut parts = vec![principal_regex(&spiffe_regex(Some(ns)))];
                if !known.is_empty() {
                    parts.push(not_id(or_ids(known)));
                }
                restricts.push(and_ids(parts));
            }
        }
        if certified(PROBE, PROBE) {
            let known: Vec<Value> = eps.namespaces.iter().map(|ns| principal_regex(&spiffe_regex(Some(ns)))).collect();
            let mut parts = vec![principal_regex(&spiffe_regex(None))];
            if !known.is_empty() {
                parts.push(not_id(or_ids(known)));
            }
            restricts.push(and_ids(parts));
        }
        ClauseMatch {
            granting: (!grants.is_empty()).then(|| or_ids(grants)),
            restricting: (!restricts.is_empty()).then(|| or_ids(restricts)),
        }
    }

    fn spiffe_id(&self, namespace: &str, service_account: &str) -> String {
        format!("spiffe://{}/ns/{namespace}/sa/{service_account}", self.trust_domain)
    }
}

/// A SPIFFE id as Krites accepts it (any trust domain), in `namespace` if given.
fn spiffe_regex(namespace: Option<&str>) -> String {
    const SEGMENT: &str = "[^/[:cntrl:] ]+";
    let ns = namespace.map_or_else(|| SEGMENT.to_string(), regex_escape);
    format!("^spiffe://{SEGMENT}/ns/{ns}/sa/{SEGMENT}$")
}

fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if !c.is_ascii_alphanumeric() && c != '-' && c != '_' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// HTTP methods and paths as permissions (each a list of alternatives).
fn http_permissions(http: &HttpMatch) -> Vec<Value> {
    let mut out = Vec::new();
    if !http.methods.is_empty() && !http.methods.iter().any(|m| m == "*") {
        out.push(or_rules(
            http.methods.iter().map(|m| json!({ "header": { "name": ":method", "string_match": { "exact": m } } })).collect(),
        ));
    }
    if !http.paths.is_empty() {
        let mut alternatives = Vec::new();
        for p in &http.paths {
            alternatives.extend(path_matchers(p));
        }
        out.push(or_rules(alternatives));
    }
    out
}

/// Krites compares canonical paths: no trailing slash, prefixes on segment
/// boundaries. Envoy's `url_path` sees `:path` after `normalize_path` and
/// `merge_slashes`, without the query, trailing slash kept.
fn path_matchers(p: &PathMatch) -> Vec<Value> {
    let url = |m: Value| json!({ "url_path": { "path": m } });
    match p {
        PathMatch::Exact(e) if e == "/" => vec![url(json!({ "exact": "/" }))],
        // The engine keeps an exact path's trailing slash (`/a` and `/a/` differ).
        PathMatch::Exact(e) => vec![url(json!({ "exact": e }))],
        PathMatch::Prefix(pre) if pre == "/" => vec![url(json!({ "prefix": "/" }))],
        PathMatch::Prefix(pre) => vec![url(json!({ "exact": pre })), url(json!({ "prefix": format!("{pre}/") }))],
    }
}

fn port_permission((lo, hi): (u16, u16)) -> Value {
    if lo == hi {
        json!({ "destination_port": lo })
    } else {
        // Int32Range: end exclusive.
        json!({ "destination_port_range": { "start": lo, "end": u32::from(hi) + 1 } })
    }
}

/// TLS with any peer certificate (the connection is authenticated).
fn authenticated() -> Value {
    json!({ "authenticated": {} })
}

fn plaintext() -> Value {
    not_id(authenticated())
}

fn principal_exact(id: &str) -> Value {
    json!({ "authenticated": { "principal_name": { "exact": id } } })
}

fn principal_regex(regex: &str) -> Value {
    json!({ "authenticated": { "principal_name": { "safe_regex": { "regex": regex } } } })
}

fn remote_ip(c: Cidr) -> Value {
    json!({ "direct_remote_ip": c.json() })
}

fn destination_ip(c: Cidr) -> Value {
    json!({ "destination_ip": c.json() })
}

/// Principal combinators; an empty OR matches nothing, an empty AND anything.
fn or_ids(mut ids: Vec<Value>) -> Value {
    match ids.len() {
        0 => not_id(json!({ "any": true })),
        1 => ids.pop().unwrap_or(Value::Null),
        _ => json!({ "or_ids": { "ids": ids } }),
    }
}

fn and_ids(mut ids: Vec<Value>) -> Value {
    match ids.len() {
        0 => json!({ "any": true }),
        1 => ids.pop().unwrap_or(Value::Null),
        _ => json!({ "and_ids": { "ids": ids } }),
    }
}

fn not_id(id: Value) -> Value {
    json!({ "not_id": id })
}

/// Permission combinators, as for principals.
fn or_rules(mut rules: Vec<Value>) -> Value {
    match rules.len() {
        0 => not_rule(json!({ "any": true })),
        1 => rules.pop().unwrap_or(Value::Null),
        _ => json!({ "or_rules": { "rules": rules } }),
    }
}

fn and_rules(mut rules: Vec<Value>) -> Value {
    match rules.len() {
        0 => json!({ "any": true }),
        1 => rules.pop().unwrap_or(Value::Null),
        _ => json!({ "and_rules": { "rules": rules } }),
    }
}

fn not_rule(rule: Value) -> Value {
    json!({ "not_rule": rule })
}

/// Leaf counts of one RBAC policy.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    principals: usize,
    permissions: usize,
    cidrs: usize,
}

impl Counts {
    fn policy(&mut self, policy: &Value) {
        for p in policy.get("principals").and_then(Value::as_array).into_iter().flatten() {
            self.walk(p, "ids", &["and_ids", "or_ids"], "not_id", true);
        }
        for p in policy.get("permissions").and_then(Value::as_array).into_iter().flatten() {
            self.walk(p, "rules", &["and_rules", "or_rules"], "not_rule", false);
        }
    }

    fn walk(&mut self, node: &Value, list: &str, sets: &[&str], not: &str, principal: bool) {
        for set in sets {
            if let Some(items) = node.get(set).and_then(|s| s.get(list)).and_then(Value::as_array) {
                for item in items {
                    self.walk(item, list, sets, not, principal);
                }
                return;
            }
        }
        if let Some(inner) = node.get(not) {
            self.walk(inner, list, sets, not, principal);
            return;
        }
        if principal {
            self.principals += 1;
        } else {
            self.permissions += 1;
        }
        if node.get("direct_remote_ip").is_some() || node.get("destination_ip").is_some() {
            self.cidrs += 1;
        }
    }
}

/// Length of the compact JSON, without building it.
fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, value) {
        Ok(()) => count.0,
        Err(_) => 0,
    }
}

/// An address prefix, as Envoy's `CidrRange` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    fn json(self) -> Value {
        json!({ "address_prefix": self.addr.to_string(), "prefix_len": self.len })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// The fewest CIDRs that cover exactly `ips` (IPv4-mapped IPv6 counts as
/// IPv4): IPv4 prefixes first, each family in address order.
pub fn collapse(ips: impl IntoIterator<Item = IpAddr>) -> Vec<Cidr> {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for ip in ips {
        match ip.to_canonical() {
            IpAddr::V4(a) => {
                let n = u128::from(u32::from(a));
                v4.push((n, n));
            }
            IpAddr::V6(a) => {
                let n = u128::from(a);
                v6.push((n, n));
            }
        }
    }
    collapse_ranges(v4, v6)
}

/// [`collapse`] for inclusive address ranges of each family.
fn collapse_ranges(v4: Vec<(u128, u128)>, v6: Vec<(u128, u128)>) -> Vec<Cidr> {
    let mut out = Vec::new();
    for (lo, len) in split_ranges(v4, 32) {
        let addr = u32::try_from(lo).map(Ipv4Addr::from).unwrap_or(Ipv4Addr::UNSPECIFIED);
        out.push(Cidr { addr: IpAddr::V4(addr), len });
    }
    for (lo, len) in split_ranges(v6, 128) {
        out.push(Cidr { addr: IpAddr::V6(Ipv6Addr::from(lo)), len });
    }
    out
}

/// Merges overlapping and adjacent ranges, then cuts each into the largest
/// aligned blocks: (first address, prefix length) in a `bits`-wide family.
fn split_ranges(mut ranges: Vec<(u128, u128)>, bits: u32) -> Vec<(u128, u8)> {
    ranges.sort_unstable();
    let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match merged.last_mut() {
            Some(last) if last.1.checked_add(1).is_none_or(|next| lo <= next) => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    let mut out = Vec::new();
    for (mut lo, hi) in merged {
        loop {
            // The largest block aligned at `lo` that stays within `hi`.
            let mut k = lo.trailing_zeros().min(bits);
            while k > 0 && block_end(lo, k).is_none_or(|end| end > hi) {
                k -= 1;
            }
            let len = u8::try_from(bits - k).unwrap_or(0);
            out.push((lo, len));
            match block_end(lo, k).and_then(|end| end.checked_add(1)) {
                Some(next) if next <= hi => lo = next,
                _ => break,
            }
        }
    }
    out
}

/// Last address of the 2^k block starting at `lo`.
fn block_end(lo: u128, k: u32) -> Option<u128> {
    if k >= 128 {
        return (lo == 0).then_some(u128::MAX);
    }
    lo.checked_add((1u128 << k) - 1)
}

/// CIDR text as Calico accepts it (host bits ignored; a bare address is a
/// host; IPv4-mapped IPv6 with a /96+ prefix is IPv4), collapsed.
fn parse_nets(nets: &[String], rule: &str) -> Result<Vec<Cidr>, RbacError> {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for text in nets {
        let bad = || RbacError::Unsupported { rule: rule.to_string(), what: format!("net {text:?} (not a CIDR)") };
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u32>().map_err(|_| bad())?)),
            None => (text.as_str(), None),
        };
        let ip: IpAddr = addr.parse().map_err(|_| bad())?;
        let (family, bits, value, len) = match ip {
            IpAddr::V4(a) => (4, 32, u128::from(u32::from(a)), len.unwrap_or(32)),
            IpAddr::V6(a) => match (a.to_ipv4_mapped(), len.unwrap_or(128)) {
                (Some(v4addr), l) if l >= 96 => (4, 32, u128::from(u32::from(v4addr)), l - 96),
                (_, l) => (6, 128, u128::from(a), l),
            },
        };
        if len > bits {
            return Err(bad());
        }
        let host = bits - len;
        let mask = if host >= 128 { 0 } else { (u128::MAX << host) & family_mask(bits) };
        let lo = value & mask;
        let hi = lo | (!mask & family_mask(bits));
        if family == 4 {
            v4.push((lo, hi));
        } else {
            v6.push((lo, hi));
        }
    }
    Ok(collapse_ranges(v4, v6))
}

fn family_mask(bits: u32) -> u128 {
    if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn shown(cidrs: &[Cidr]) -> Vec<String> {
        cidrs.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn collapse_table() {
        let range = |a: u32, n: u32| -> Vec<String> { (a..a + n).map(|i| Ipv4Addr::from(i).to_string()).collect() };
        let base = u32::from(Ipv4Addr::new(10, 0, 1, 0));
        let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
            (vec![], vec![]),
            (vec!["10.0.0.1".into()], vec!["10.0.0.1/32"]),
            (vec!["10.0.0.1".into(), "10.0.0.1".into()], vec!["10.0.0.1/32"]),
            (vec!["10.0.0.0".into(), "10.0.0.1".into()], vec!["10.0.0.0/31"]),
            (vec!["10.0.0.1".into(), "10.0.0.2".into()], vec!["10.0.0.1/32", "10.0.0.2/32"]),
            (range(base, 256), vec!["10.0.1.0/24"]),
            (range(base, 15), vec!["10.0.1.0/29", "10.0.1.8/30", "10.0.1.12/31", "10.0.1.14/32"]),
            (range(base + 3, 6), vec!["10.0.1.3/32", "10.0.1.4/30", "10.0.1.8/32"]),
            (range(base + 255, 2), vec!["10.0.1.255/32", "10.0.2.0/32"]),
            (vec!["255.255.255.255".into(), "255.255.255.254".into()], vec!["255.255.255.254/31"]),
            (vec!["0.0.0.0".into()], vec!["0.0.0.0/32"]),
            (vec!["::ffff:10.0.0.4".into(), "10.0.0.5".into()], vec!["10.0.0.4/31"]),
            (vec!["fd00::1".into(), "10.0.0.1".into(), "fd00::".into()], vec!["10.0.0.1/32", "fd00::/127"]),
        ];
        for (input, want) in cases {
            let got = collapse(input.iter().map(|s| s.parse::<IpAddr>().unwrap()));
            assert_eq!(shown(&got), want, "collapse {input:?}");
        }
    }

    /// Every address in, nothing else: checked by brute force on small sets.
    #[test]
    fn collapse_is_exact() {
        let mut rng = krites_bench::Rng::new(7);
        for _ in 0..200 {
            let set: BTreeSet<u32> = (0..rng.below(40)).map(|_| rng.below(300) as u32).collect();
            let cidrs = collapse(set.iter().map(|&i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))));
            let mut covered = BTreeSet::new();
            for c in &cidrs {
                let IpAddr::V4(a) = c.addr else { panic!("v4 only") };
                let lo = u32::from(a) - 0x0a00_0000;
                assert_eq!(u32::from(a) & ((1u64 << (32 - c.len)) as u32 - 1), 0, "{c} aligned");
                for i in lo..lo + (1u32 << (32 - c.len)) {
                    assert!(covered.insert(i), "{c} overlaps");
                }
            }
            assert_eq!(covered, set, "{cidrs:?}");
            // Minimal: no two blocks could merge into their parent.
            for pair in cidrs.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                if a.len == b.len && a.len > 0 {
                    let (IpAddr::V4(x), IpAddr::V4(y)) = (a.addr, b.addr) else { continue };
                    let size = 1u64 << (32 - a.len);
                    let mergeable = u64::from(u32::from(x)) % (2 * size) == 0 && u64::from(u32::from(y)) == u64::from(u32::from(x)) + size;
                    assert!(!mergeable, "{a} and {b} should be one block");
                }
            }
        }
    }

    #[test]
    fn collapse_whole_spaces() {
        let all_v4 = split_ranges(vec![(0, u128::from(u32::MAX))], 32);
        assert_eq!(all_v4, vec![(0, 0)]);
        let all_v6 = split_ranges(vec![(0, u128::MAX)], 128);
        assert_eq!(all_v6, vec![(0, 0)]);
        let top = split_ranges(vec![(u128::MAX - 1, u128::MAX)], 128);
        assert_eq!(top, vec![(u128::MAX - 1, 127)]);
    }

    #[test]
    fn nets_table() {
        let cases: &[(&[&str], &[&str])] = &[
            (&["10.0.0.0/8"], &["10.0.0.0/8"]),
            (&["10.1.2.3/16"], &["10.1.0.0/16"]), // host bits ignored
            (&["10.1.2.3"], &["10.1.2.3/32"]),
            (&["127.0.0.0/30", "127.0.0.4/30"], &["127.0.0.0/29"]),
            (&["1.2.3.4/32", "1.2.3.0/24"], &["1.2.3.0/24"]),
            (&["::ffff:10.0.0.0/104"], &["10.0.0.0/8"]),
            (&["fd00::/8"], &["fd00::/8"]),
            (&["0.0.0.0/0"], &["0.0.0.0/0"]),
        ];
        for (input, want) in cases {
            let nets: Vec<String> = input.iter().map(|s| s.to_string()).collect();
            assert_eq!(shown(&parse_nets(&nets, "r").unwrap()), *want, "{input:?}");
        }
        for bad in ["10.0.0.0/33", "x", "10.0.0.0/", "fd00::/129"] {
            assert!(parse_nets(&[bad.to_string()], "r").is_err(), "{bad}");
        }
    }

    #[test]
    fn regexes() {
        assert_eq!(spiffe_regex(Some("a.b")), "^spiffe://[^/[:cntrl:] ]+/ns/a\\.b/sa/[^/[:cntrl:] ]+$");
        assert_eq!(regex_escape("kube-system_1"), "kube-system_1");
    }

    fn yaobank() -> PluginConfig {
        let path = krites_testbed::workspace_root().join("tests/fixtures/yaobank-plugin-config.json");
        krites_policy::PluginConfig::from_json(&std::fs::read(path).unwrap()).unwrap()
    }

    fn workload(ns: &str, sa: &str, app: &str) -> Workload {
        Workload {
            namespace: ns.into(),
            service_account: sa.into(),
            labels: [("app".to_string(), app.to_string())].into(),
            ports: BTreeMap::new(),
        }
    }

    /// The database policy: summary's pods, two factors, nothing else.
    #[test]
    fn yaobank_database() {
        let t = rbac_filters(&yaobank(), &workload("default", "database", "database")).unwrap();
        assert_eq!(t.filters.len(), 1, "{:#}", Value::Array(t.filters.clone()));
        let rules = &t.filters[0]["typed_config"]["rules"];
        assert_eq!(rules["action"], "ALLOW");
        let policies = rules["policies"].as_object().unwrap();
        assert_eq!(policies.len(), 1);
        let (name, policy) = policies.iter().next().unwrap();
        assert_eq!(name, "00000:default/database/ingress[0]");
        assert_eq!(policy["permissions"], json!([{ "any": true }]));
        let addr = |a: &str| json!({ "direct_remote_ip": { "address_prefix": a, "prefix_len": 32 } });
        let owners = json!({ "or_ids": { "ids": [addr("127.0.0.12"), addr("127.0.0.22")] } });
        assert_eq!(
            policy["principals"],
            json!([{ "or_ids": { "ids": [
                { "and_ids": { "ids": [{ "not_id": { "authenticated": {} } }, owners] } },
                { "and_ids": { "ids": [
                    { "authenticated": { "principal_name": { "exact": "spiffe://cluster.local/ns/default/sa/summary" } } },
                    owners
                ] } }
            ] } }])
        );
        assert!(t.stats.decision_equivalent(), "{}", t.stats);
        assert_eq!((t.stats.rbac_policies, t.stats.principals, t.stats.cidrs), (1, 6, 4));
    }

    #[test]
    fn no_policy_no_filter_and_out_of_scope() {
        let t = rbac_filters(&yaobank(), &workload("default", "nobody", "nothing")).unwrap();
        assert!(t.filters.is_empty());
        let mut scoped = yaobank();
        scoped.scope = Some(vec!["other".into()]);
        let t = rbac_filters(&scoped, &workload("default", "database", "database")).unwrap();
        assert!(t.filters.is_empty());
    }

    fn rule(action: Action) -> krites_policy::config::RuleSpec {
        krites_policy::config::RuleSpec::new(action)
    }

    fn config_with(rules: Vec<krites_policy::config::RuleSpec>) -> PluginConfig {
        let mut config = yaobank();
        config.policies = vec![PolicySpec {
            name: "p".into(),
            selector: Some("app == 'database'".into()),
            ingress: rules,
            ..PolicySpec::default()
        }];
        config
    }

    fn translate(rules: Vec<krites_policy::config::RuleSpec>) -> Result<RbacTranslation, RbacError> {
        rbac_filters_with(&config_with(rules), &workload("default", "database", "database"), &RbacOptions::default())
    }

    #[test]
    fn actions_and_matchers() {
        use krites_policy::config::{HttpMatchSpec, HttpPathSpec, ProtocolSpec};
        let mut deny = rule(Action::Deny);
        deny.source = Some(EntityRuleSpec { nets: vec!["198.51.100.7".into()], not_nets: vec!["10.0.0.0/8".into()], ..Default::default() });
        let mut allow = rule(Action::Allow);
        allow.protocol = Some(ProtocolSpec::Name("TCP".into()));
        allow.destination = Some(EntityRuleSpec { ports: vec![PortSpec::Number(8080), PortSpec::Text("9000:9001".into()), PortSpec::Text("http".into())], ..Default::default() });
        allow.http = Some(HttpMatchSpec {
            methods: vec!["GET".into(), "HEAD".into()],
            paths: vec![HttpPathSpec { prefix: Some("/api/".into()), exact: None }, HttpPathSpec { exact: Some("/healthz".into()), prefix: None }],
        });
        let mut log = rule(Action::Log);
        log.ip_version = Some(6);
        let t = translate(vec![deny, log, allow]).unwrap();
        let actions: Vec<&str> = t.filters.iter().map(|f| f["typed_config"]["rules"]["action"].as_str().unwrap()).collect();
        assert_eq!(actions, ["DENY", "LOG", "ALLOW"]);
        assert!(t.filters.iter().all(|f| f["name"] == RBAC_FILTER_NAME && f["typed_config"]["@type"] == RBAC_TYPE_URL));
        let policy = |i: usize| t.filters[i]["typed_config"]["rules"]["policies"].as_object().unwrap().values().next().unwrap().clone();
        assert_eq!(
            policy(0)["principals"][0],
            json!({ "and_ids": { "ids": [
                { "direct_remote_ip": { "address_prefix": "198.51.100.7", "prefix_len": 32 } },
                { "not_id": { "direct_remote_ip": { "address_prefix": "10.0.0.0", "prefix_len": 8 } } }
            ] } })
        );
        assert_eq!(policy(1)["principals"][0], json!({ "direct_remote_ip": { "address_prefix": "::", "prefix_len": 0 } }));
        let method = |m: &str| json!({ "header": { "name": ":method", "string_match": { "exact": m } } });
        let path = |kind: &str, p: &str| json!({ "url_path": { "path": { kind: p } } });
        assert_eq!(
            policy(2)["permissions"][0],
            json!({ "and_rules": { "rules": [
                { "or_rules": { "rules": [{ "destination_port": 8080 }, { "destination_port_range": { "start": 9000, "end": 9002 } }] } },
                { "or_rules": { "rules": [method("GET"), method("HEAD")] } },
                { "or_rules": { "rules": [path("exact", "/api"), path("prefix", "/api/"), path("exact", "/healthz")] } }
            ] } })
        );
        assert!(t.stats.decision_equivalent(), "{}", t.stats);
        assert_eq!((t.stats.deny_policies, t.stats.log_policies, t.stats.allow_policies), (1, 1, 1));
    }

    #[test]
    fn what_breaks_equivalence_is_reported() {
        let cases: Vec<(Vec<Action>, &str)> = vec![
            (vec![Action::Allow, Action::Deny], "Deny rules come after an Allow rule"),
            (vec![Action::Pass], "Pass rules are ALLOW policies"),
            (vec![Action::Deny, Action::Allow], ""),
            (vec![Action::Log, Action::Deny, Action::Allow, Action::Log], ""),
        ];
        for (actions, want) in cases {
            let rules = actions.iter().map(|&a| rule(a)).collect();
            let stats = translate(rules).unwrap().stats;
            if want.is_empty() {
                assert!(stats.decision_equivalent(), "{actions:?}: {stats}");
            } else {
                assert!(stats.not_equivalent.iter().any(|g| g.contains(want)), "{actions:?}: {stats}");
            }
        }
    }

    #[test]
    fn never_matching_rules_are_left_out() {
        let mut nobody = rule(Action::Allow);
        nobody.source = Some(EntityRuleSpec { selector: Some("app == 'nobody'".into()), ..Default::default() });
        let mut unnamed_port = rule(Action::Allow);
        unnamed_port.protocol = Some(krites_policy::config::ProtocolSpec::Name("TCP".into()));
        unnamed_port.destination = Some(EntityRuleSpec { ports: vec![PortSpec::Text("grpc".into())], ..Default::default() });
        let t = translate(vec![nobody, unnamed_port]).unwrap();
        assert_eq!(t.stats.rules_never_matching, 2);
        assert_eq!(t.stats.rbac_policies, 0);
        assert_eq!(t.filters.len(), 1, "the ALLOW filter stays and denies everything");
        assert_eq!(t.filters[0]["typed_config"]["rules"]["policies"], json!({}));
    }

    #[test]
    fn restricting_identity_takes_either_factor() {
        let mut deny = rule(Action::Deny);
        deny.source = Some(EntityRuleSpec {
            service_accounts: Some(krites_policy::config::ServiceAccountMatchSpec { names: vec!["customer".into()], selector: None }),
            ..Default::default()
        });
        let t = translate(vec![deny]).unwrap();
        let policy = t.filters[0]["typed_config"]["rules"]["policies"].as_object().unwrap().values().next().unwrap().clone();
        let customer = json!({ "direct_remote_ip": { "address_prefix": "127.0.0.11", "prefix_len": 32 } });
        assert_eq!(
            policy["principals"][0],
            json!({ "or_ids": { "ids": [
                customer,
                { "and_ids": { "ids": [
                    { "authenticated": { "principal_name": { "exact": "spiffe://cluster.local/ns/default/sa/customer" } } },
                    { "not_id": customer }
                ] } }
            ] } })
        );
    }

    #[test]
    fn unsupported_and_too_large() {
        let mut by_port = rule(Action::Allow);
        by_port.protocol = Some(krites_policy::config::ProtocolSpec::Name("TCP".into()));
        by_port.source = Some(EntityRuleSpec { ports: vec![PortSpec::Number(1234)], ..Default::default() });
        let err = translate(vec![by_port]).unwrap_err();
        assert!(err.to_string().contains("source port"), "{err}");

        let options = RbacOptions { max_json_bytes: 100, ..RbacOptions::default() };
        let mut config = config_with(vec![rule(Action::Allow); 4]);
        config.policies[0].ingress[0].source = Some(EntityRuleSpec { selector: Some("all()".into()), ..Default::default() });
        let err = rbac_filters_with(&config, &workload("default", "database", "database"), &options).unwrap_err();
        let RbacError::TooLarge { rules_done, rules_total, .. } = &err else { panic!("{err}") };
        assert_eq!((*rules_done, *rules_total), (1, 4));
        assert!(err.estimated_bytes().unwrap() > 100);
        assert!(err.to_string().contains("too large to load"), "{err}");
    }

    /// The sizes the module doc reports. `cargo test -p krites-loadbench --release -- --ignored --nocapture rbac_sizes`
    #[test]
    #[ignore]
    fn rbac_sizes() {
        use krites_bench::{generate, target_workload, Scale, DEFAULT_SEED};
        let scales = [
            ("tutorial", Scale::tutorial()),
            ("rules(100), 1k endpoints", Scale { endpoints: 1000, ..Scale::rules(100) }),
            ("p100-e1k", Scale { policies: 100, rules_per_policy: 1, endpoints: 1_000, namespaces: 20, seed: DEFAULT_SEED }),
            ("rules(1000)", Scale::rules(1000)),
            ("p1000-e10k", Scale { policies: 1000, rules_per_policy: 1, endpoints: 10_000, namespaces: 20, seed: DEFAULT_SEED }),
            ("calico", Scale::calico_production()),
        ];
        for (name, scale) in scales {
            let started = std::time::Instant::now();
            match rbac_filters_with(&generate(&scale), &target_workload(&scale), &RbacOptions::default()) {
                Ok(t) => eprintln!("{name}: {} ({:?})", t.stats, started.elapsed()),
                Err(e) => eprintln!("{name}: {e} ({:?})", started.elapsed()),
            }
        }
        let t = rbac_filters(&yaobank(), &workload("default", "database", "database")).unwrap();
        eprintln!("yaobank database: {}", t.stats);
    }
}
