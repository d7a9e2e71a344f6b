//! "Which policy decided": counters of the decisions each policy (and each
//! tier's default) made, labelled by tier and policy.
//!
//! Envoy has no labels for Wasm metrics: `proxy_define_metric` takes a flat
//! name, stored as `wasmcustom.<name>`. Envoy turns parts of a stat name into
//! Prometheus labels with its tag extractors (`stats_config.stats_tags`), and
//! Istio configures one per `extraStatTags` entry with the regex
//! `(<tag>=\.=(.*?);\.;)`, the convention Istio's own Wasm stats plugin used.
//! So the names here carry their labels that way:
//!
//! `krites_tier=.=<tier>;.;krites_policy=.=<policy>;.;krites_policy_denied_total`
//!
//! which a sidecar with `extraStatTags: [krites_tier, krites_policy]` exports as
//! `krites_policy_denied_total{krites_tier="<tier>",krites_policy="<policy>"}`.
//! The tags are prefixed: `tier` is a common pod label, which Prometheus'
//! pod scraping would attach to the same series.
//!
//! Only the policies that select the workload get counters, defined when the
//! config is compiled for it, so the number of series is bounded by them; the
//! request path looks a counter up by the deciding rule's policy position and
//! never formats or allocates.

use krites_policy::model::Policy;
use krites_policy::{Decision, EgressDecision, EgressPolicy, PolicySet, Reason, WorkloadPolicy};

/// Envoy tag (Prometheus label) for the tier.
pub const TIER_TAG: &str = "krites_tier";
/// Envoy tag (Prometheus label) for the policy.
pub const POLICY_TAG: &str = "krites_policy";

/// What a decision was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decided {
    /// An HTTP request (the HTTP role).
    Request,
    /// A connection on a TCP chain (the NETWORK role).
    Connection,
    /// An HTTP request the workload sends (the HTTP role on an outbound listener).
    EgressRequest,
    /// A connection the workload opens on an outbound TCP chain (the NETWORK role).
    EgressConnection,
}

impl Decided {
    fn policy_metric(self, allowed: bool) -> &'static str {
        match (self, allowed) {
            (Decided::Request, true) => "krites_policy_allowed_total",
            (Decided::Request, false) => "krites_policy_denied_total",
            (Decided::Connection, true) => "krites_policy_connections_allowed_total",
            (Decided::Connection, false) => "krites_policy_connections_denied_total",
            (Decided::EgressRequest, true) => "krites_policy_egress_allowed_total",
            (Decided::EgressRequest, false) => "krites_policy_egress_denied_total",
            (Decided::EgressConnection, true) => "krites_policy_egress_connections_allowed_total",
            (Decided::EgressConnection, false) => "krites_policy_egress_connections_denied_total",
        }
    }

    fn tier_default_metric(self) -> &'static str {
        match self {
            Decided::Request => "krites_tier_default_denied_total",
            Decided::Connection => "krites_tier_default_connections_denied_total",
            Decided::EgressRequest => "krites_tier_default_egress_denied_total",
            Decided::EgressConnection => "krites_tier_default_egress_connections_denied_total",
        }
    }
}

/// Appends `name` as a tag value: ASCII letters, digits and `-` stay, every
/// other character becomes `_`. `.` separates the levels of an Envoy stat name
/// (and of statsd/Graphite paths), `:` and `|` end a statsd name, `=` and `;`
/// delimit the tags themselves. Kubernetes names are lowercase letters, digits,
/// `-` and `.`, never `_`, so two of them never map to the same value.
pub fn push_label_value(out: &mut String, name: &str) {
    out.extend(name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }));
}

/// The policy label: `<namespace>/<name>` for a namespaced policy (as Calico's
/// own metrics name it; Kubernetes NetworkPolicies appear as Calico converts
/// them, `knp.default.<name>`), `<name>` for a global one; each part sanitised.
pub fn policy_label(namespace: Option<&str>, name: &str) -> String {
    let mut label = String::with_capacity(namespace.map_or(0, |ns| ns.len() + 1) + name.len());
    if let Some(ns) = namespace {
        push_label_value(&mut label, ns);
        label.push('/');
    }
    push_label_value(&mut label, name);
    label
}

fn tag(out: &mut String, tag: &str, value: &str) {
    out.push_str(tag);
    out.push_str("=.=");
    out.push_str(value);
    out.push_str(";.;");
}

/// `krites_tier=.=<tier>;.;krites_policy=.=<policy>;.;<metric>`; `tier` is
/// sanitised here, `policy` is already a label (see [`policy_label`]).
pub fn policy_stat_name(decided: Decided, allowed: bool, tier: &str, policy: &str) -> String {
    let mut tier_value = String::with_capacity(tier.len());
    push_label_value(&mut tier_value, tier);
    let mut name = String::with_capacity(64 + tier.len() + policy.len());
    tag(&mut name, TIER_TAG, &tier_value);
    tag(&mut name, POLICY_TAG, policy);
    name.push_str(decided.policy_metric(allowed));
    name
}

/// `krites_tier=.=<tier>;.;<metric>` for requests or connections a tier's
/// default denied (no rule of the tier's policies decided).
pub fn tier_default_stat_name(decided: Decided, tier: &str) -> String {
    let mut tier_value = String::with_capacity(tier.len());
    push_label_value(&mut tier_value, tier);
    let mut name = String::with_capacity(48 + tier.len());
    tag(&mut name, TIER_TAG, &tier_value);
    name.push_str(decided.tier_default_metric());
    name
}

/// The counter of each decision a policy or a tier default can make for one
/// workload (`T`: the host's metric id).
#[derive(Debug)]
pub struct DecisionCounters<T> {
    /// By position in the policy set, ascending: (position, allowed, denied).
    policies: Vec<(usize, T, T)>,
    /// Tier default denials, by tier name.
    tier_defaults: Vec<(String, T)>,
}

impl<T> Default for DecisionCounters<T> {
    fn default() -> Self {
        DecisionCounters { policies: Vec::new(), tier_defaults: Vec::new() }
    }
}

/// Policies of one workload whose labels are the same (names outside what
/// Kubernetes allows): their decisions are counted together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelCollision {
    pub tier: String,
    pub policy: String,
    pub ids: (String, String),
}

impl<T: Copy> DecisionCounters<T> {
    /// Defines, through `define` (which gets each stat name), the counters of
    /// every policy that selects the workload and of every tier they are in.
    pub fn define(policy: &WorkloadPolicy, decided: Decided, define: impl FnMut(&str) -> T) -> (Self, Vec<LabelCollision>) {
        Self::define_for(policy.policy_set(), policy.selecting_policies(), policy.tier_names(), decided, define)
    }

    /// [`DecisionCounters::define`] for the policies that select the
    /// workload's egress (`decided`: an egress kind).
    pub fn define_egress(policy: &EgressPolicy, decided: Decided, define: impl FnMut(&str) -> T) -> (Self, Vec<LabelCollision>) {
        Self::define_for(policy.policy_set(), policy.selecting_policies(), policy.tier_names(), decided, define)
    }

    fn define_for<'a>(
        set: &'a PolicySet,
        selecting: impl Iterator<Item = (usize, &'a Policy)>,
        tier_names: impl Iterator<Item = &'a str>,
        decided: Decided,
        mut define: impl FnMut(&str) -> T,
    ) -> (Self, Vec<LabelCollision>) {
        let tiers = set.tiers();
        let mut policies = Vec::new();
        let mut labels: Vec<(&str, String, &str)> = Vec::new();
        let mut collisions = Vec::new();
        for (position, p) in selecting {
            let tier = tiers.get(p.tier).map_or("", |t| t.name.as_str());
            let label = policy_label(p.namespace.as_deref(), &p.name);
            let allowed = define(&policy_stat_name(decided, true, tier, &label));
            let denied = define(&policy_stat_name(decided, false, tier, &label));
            if let Some((_, _, first)) = labels.iter().find(|(t, l, _)| *t == tier && *l == label) {
                collisions.push(LabelCollision { tier: tier.to_string(), policy: label.clone(), ids: (first.to_string(), p.id.clone()) });
            }
            labels.push((tier, label, p.id.as_str()));
            policies.push((position, allowed, denied));
        }
        let tier_defaults = tier_names.map(|t| (t.to_string(), define(&tier_default_stat_name(decided, t)))).collect();
        (DecisionCounters { policies, tier_defaults }, collisions)
    }

    /// The counter for `decision`: its rule's policy's, or its tier default's;
    /// `None` for the namespace profile (counted by reason). No allocation.
    pub fn counter(&self, decision: &Decision<'_, '_>) -> Option<T> {
        self.lookup(decision.reason, decision.rule.map(|r| r.policy), decision.tier)
    }

    /// [`DecisionCounters::counter`] for an egress decision.
    pub fn egress_counter(&self, decision: &EgressDecision<'_>) -> Option<T> {
        self.lookup(decision.reason, decision.rule.map(|r| r.policy), decision.tier)
    }

    fn lookup(&self, reason: Reason, policy: Option<usize>, tier: Option<&str>) -> Option<T> {
        match reason {
            Reason::AllowRule | Reason::DenyRule => {
                let position = policy?;
                let i = self.policies.binary_search_by_key(&position, |(p, _, _)| *p).ok()?;
                let &(_, allowed, denied) = self.policies.get(i)?;
                Some(if reason == Reason::AllowRule { allowed } else { denied })
            }
            Reason::TierDefaultDeny => {
                let tier = tier?;
                self.tier_defaults.iter().find(|(name, _)| name == tier).map(|(_, id)| *id)
            }
            Reason::NoPolicySelects | Reason::AllTiersPassed => None,
        }
    }

    /// How many counters are defined.
    pub fn len(&self) -> usize {
        self.policies.len() * 2 + self.tier_defaults.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::collections::BTreeMap;
    use std::net::IpAddr;
    use std::sync::Arc;

    use krites_policy::{Peer, PolicySet, RequestFacts, Workload};

    use super::*;

    const CONFIG: &str = r#"{"version": 1,
      "tiers": [{"name": "security", "order": 1}],
      "policies": [
        {"name": "security.block-attack", "tier": "security", "selector": "app == 'db'",
         "ingress": [{"action": "Deny", "source": {"nets": ["10.0.0.66/32"]}}, {"action": "Pass"}]},
        {"name": "security.other-app", "tier": "security", "selector": "app == 'web'", "ingress": [{"action": "Allow"}]},
        {"name": "allow.summary", "namespace": "bank", "selector": "app == 'db'",
         "ingress": [{"action": "Allow", "source": {"nets": ["10.0.0.12/32"]}}]},
        {"name": "allow:odd/name", "selector": "app == 'db'",
         "ingress": [{"action": "Allow", "source": {"nets": ["10.0.0.13/32"]}}]}
      ],
      "endpoints": []}"#;

    fn workload() -> WorkloadPolicy {
        let set = Arc::new(PolicySet::from_json(CONFIG.as_bytes()).unwrap());
        let labels = BTreeMap::from([("app".to_string(), "db".to_string())]);
        let workload = Workload { namespace: "bank".into(), service_account: "db".into(), labels, ports: BTreeMap::new() };
        WorkloadPolicy::new(set, &workload)
    }

    fn counted(policy: &WorkloadPolicy, counters: &DecisionCounters<usize>, names: &[String], from: &str) -> Option<String> {
        let ip: IpAddr = from.parse().unwrap();
        let facts = RequestFacts::http(ip, Peer::Plaintext, "GET", "/");
        let decision = policy.decide(&facts);
        let counter = counters.counter(&decision).map(|i| names[i].clone());
        println!("{from}: {} -> {counter:?}", decision.decided_by());
        counter
    }

    #[test]
    fn sanitised_labels_keep_kubernetes_names_apart() {
        let label = |ns: Option<&str>, name: &str| policy_label(ns, name);
        assert_eq!(label(Some("bank"), "knp.default.allow-db"), "bank/knp_default_allow-db");
        assert_eq!(label(None, "security.block"), "security_block");
        assert_eq!(label(None, "a:b|c=d;e/f é"), "a_b_c_d_e_f__");
        let name = policy_stat_name(Decided::Request, false, "sec.ops", "bank/x");
        println!("{name}");
        assert_eq!(name, "krites_tier=.=sec_ops;.;krites_policy=.=bank/x;.;krites_policy_denied_total");
        assert_eq!(
            tier_default_stat_name(Decided::Connection, "default"),
            "krites_tier=.=default;.;krites_tier_default_connections_denied_total"
        );
    }

    #[test]
    fn each_decision_names_the_counter_of_the_policy_or_tier_that_made_it() {
        let policy = workload();
        let mut names = Vec::new();
        let (counters, collisions) = DecisionCounters::define(&policy, Decided::Request, |name| {
            names.push(name.to_string());
            names.len() - 1
        });
        println!("defined {} counters: {names:#?}", counters.len());
        assert!(collisions.is_empty());
        // 3 selecting policies x (allowed, denied) + 2 tiers' defaults; the web policy gets none.
        assert_eq!(counters.len(), 8);
        assert!(names.iter().all(|n| !n.contains("other-app")));

        let want = |tier: &str, policy: &str, metric: &str| Some(format!("krites_tier=.={tier};.;krites_policy=.={policy};.;{metric}"));
        assert_eq!(counted(&policy, &counters, &names, "10.0.0.66"), want("security", "security_block-attack", "krites_policy_denied_total"));
        assert_eq!(counted(&policy, &counters, &names, "10.0.0.12"), want("default", "bank/allow_summary", "krites_policy_allowed_total"));
        assert_eq!(counted(&policy, &counters, &names, "10.0.0.13"), want("default", "allow_odd_name", "krites_policy_allowed_total"));
        assert_eq!(
            counted(&policy, &counters, &names, "10.0.0.99"),
            Some("krites_tier=.=default;.;krites_tier_default_denied_total".to_string())
        );
    }

    #[test]
    fn profile_decisions_have_no_policy_counter() {
        let set = Arc::new(PolicySet::from_json(CONFIG.as_bytes()).unwrap());
        let workload = Workload { namespace: "bank".into(), service_account: "x".into(), ..Workload::default() };
        let policy = WorkloadPolicy::new(set, &workload);
        let (counters, _) = DecisionCounters::define(&policy, Decided::Connection, |_| 0usize);
        assert!(counters.is_empty(), "no policy selects: nothing defined");
        let facts = RequestFacts::http("10.0.0.1".parse().unwrap(), Peer::Plaintext, "GET", "/");
        let decision = policy.decide(&facts);
        assert_eq!(decision.reason, Reason::NoPolicySelects);
        assert_eq!(counters.counter(&decision), None);
    }

    #[test]
    fn colliding_labels_are_reported() {
        let config = r#"{"version": 1, "policies": [
            {"name": "a.b", "selector": "all()", "ingress": [{"action": "Allow"}]},
            {"name": "a:b", "selector": "all()", "ingress": [{"action": "Allow"}]}], "endpoints": []}"#;
        let set = Arc::new(PolicySet::from_json(config.as_bytes()).unwrap());
        let policy = WorkloadPolicy::new(set, &Workload { namespace: "n".into(), service_account: "s".into(), ..Workload::default() });
        let (_, collisions) = DecisionCounters::define(&policy, Decided::Request, |_| 0u32);
        println!("{collisions:?}");
        assert_eq!(collisions.len(), 1);
        assert_eq!(collisions[0].policy, "a_b");
    }

    #[test]
    fn egress_decisions_count_under_their_own_names() {
        let config = r#"{"version": 1,
          "policies": [
            {"name": "reviews-egress", "namespace": "bookinfo", "selector": "app == 'reviews'", "types": ["Egress"],
             "egress": [{"action": "Allow", "protocol": "TCP", "destination": {"nets": ["10.0.0.7/32"]}}]}
          ],
          "endpoints": []}"#;
        let set = Arc::new(PolicySet::from_json(config.as_bytes()).unwrap());
        let labels = BTreeMap::from([("app".to_string(), "reviews".to_string())]);
        let workload = Workload { namespace: "bookinfo".into(), service_account: "bookinfo-reviews".into(), labels, ports: BTreeMap::new() };
        let egress = EgressPolicy::new(set, &workload);
        let mut names = Vec::new();
        let (counters, collisions) = DecisionCounters::define_egress(&egress, Decided::EgressRequest, |name| {
            names.push(name.to_string());
            names.len() - 1
        });
        println!("{names:#?}");
        assert!(collisions.is_empty());
        assert_eq!(counters.len(), 3, "allowed, denied, and the default tier's denials");
        let decide = |ip: &str| {
            let facts = krites_policy::EgressFacts {
                source_ip: None,
                source_port: None,
                destination: krites_policy::Destination::Address { ip: Some(ip.parse().unwrap()), port: Some(9080) },
                method: Some("GET"),
                path: Some("/"),
            };
            let decision = egress.decide(&facts);
            println!("{decision}");
            counters.egress_counter(&decision).map(|i| names[i].clone())
        };
        assert_eq!(
            decide("10.0.0.7"),
            Some("krites_tier=.=default;.;krites_policy=.=bookinfo/reviews-egress;.;krites_policy_egress_allowed_total".into())
        );
        assert_eq!(decide("10.0.0.8"), Some("krites_tier=.=default;.;krites_tier_default_egress_denied_total".into()));
        assert_eq!(
            policy_stat_name(Decided::EgressConnection, false, "default", "bookinfo/x"),
            "krites_tier=.=default;.;krites_policy=.=bookinfo/x;.;krites_policy_egress_connections_denied_total"
        );
    }

    /// What one egress decision and its counter lookup cost, on BookInfo's shape: a Service by
    /// its outbound cluster (allowed, one endpoint walked), another Service (denied), an
    /// outside address (denied). Printed per decision; `--release` gives the figure that
    /// matters (the module is built optimised).
    #[test]
    fn egress_decision_cost() {
        let config = r#"{"version": 1,
          "policies": [
            {"name": "reviews-egress", "namespace": "bookinfo", "selector": "app == 'reviews'", "types": ["Egress"],
             "egress": [{"action": "Allow", "protocol": "TCP", "destination": {"selector": "app == 'ratings'", "ports": [9080]},
                         "http": {"methods": ["GET"]}}]},
            {"name": "ratings-ingress", "namespace": "bookinfo", "selector": "app == 'ratings'",
             "ingress": [{"action": "Allow", "source": {"serviceAccounts": {"names": ["bookinfo-reviews"]}}}]}
          ],
          "endpoints": [
            {"namespace": "bookinfo", "serviceAccount": "bookinfo-reviews", "labels": {"app": "reviews"}, "ips": ["10.0.0.3"]},
            {"namespace": "bookinfo", "serviceAccount": "bookinfo-ratings", "labels": {"app": "ratings"}, "ips": ["10.0.0.4", "10.0.0.14"]},
            {"namespace": "bookinfo", "serviceAccount": "bookinfo-details", "labels": {"app": "details"}, "ips": ["10.0.0.5"]}
          ],
          "services": [
            {"namespace": "bookinfo", "name": "ratings", "clusterIPs": ["10.96.0.11"],
             "ports": [{"port": 9080, "endpoints": [{"port": 9080, "ips": ["10.0.0.4", "10.0.0.14"]}]}]},
            {"namespace": "bookinfo", "name": "details", "clusterIPs": ["10.96.0.12"],
             "ports": [{"port": 9080, "endpoints": [{"port": 9080, "ips": ["10.0.0.5"]}]}]}
          ]}"#;
        let set = Arc::new(PolicySet::from_json(config.as_bytes()).unwrap());
        let labels = BTreeMap::from([("app".to_string(), "reviews".to_string())]);
        let workload = Workload { namespace: "bookinfo".into(), service_account: "bookinfo-reviews".into(), labels, ports: BTreeMap::new() };
        let egress = EgressPolicy::new(set, &workload);
        let (counters, _) = DecisionCounters::define_egress(&egress, Decided::EgressRequest, |_| 0u32);
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let cases = [
            ("ratings by cluster, GET", "outbound|9080||ratings.bookinfo.svc.cluster.local", ip("10.96.0.11"), true),
            ("details by cluster, GET", "outbound|9080||details.bookinfo.svc.cluster.local", ip("10.96.0.12"), false),
            ("outside, PassthroughCluster", "PassthroughCluster", ip("192.0.2.7"), false),
        ];
        const N: u32 = 20_000;
        for (label, cluster, vip, allowed) in cases {
            let facts = krites_policy::EgressFacts {
                source_ip: ip("10.0.0.3"),
                source_port: Some(40000),
                destination: krites_policy::Destination::Cluster { name: cluster, ip: vip, port: Some(9080) },
                method: Some("GET"),
                path: Some("/ratings/0"),
            };
            assert_eq!(egress.decide(&facts).allowed(), allowed, "{label}");
            let started = std::time::Instant::now();
            let mut counted = 0u32;
            for _ in 0..N {
                let decision = egress.decide(std::hint::black_box(&facts));
                counted += counters.egress_counter(&decision).map_or(0, |_| 1);
            }
            let nanos = started.elapsed().as_nanos() / u128::from(N);
            assert_eq!(counted, N, "{label}: every decision has its counter");
            println!("egress decision, {label}: {nanos} ns (allowed {allowed})");
        }
    }
}
