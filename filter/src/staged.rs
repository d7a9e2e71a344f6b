//! Staged policies on live traffic (Calico's StagedGlobalNetworkPolicy,
//! StagedNetworkPolicy, StagedKubernetesNetworkPolicy): every decision the
//! filter makes is also made under the policies with the staged changes
//! applied ([`StagedWorkload`]), and where the two verdicts differ the filter
//! counts it against the staged policy that makes the difference and logs the
//! request once. The staged verdict never changes what happens.
//!
//! Only the staged changes that touch the workload get counters, defined when
//! the config is compiled (bounded cardinality), labelled like the per-policy
//! counters (see `policy_stats`):
//!
//! `krites_tier=.=<tier>;.;krites_policy=.=<policy>;.;krites_staged_policy_would_deny_total`
//!
//! plus the unlabelled totals `krites_staged_would_allow_total` and
//! `krites_staged_would_deny_total` (distinct names, so a Prometheus `sum`
//! over the labelled series never counts a difference twice).
//!
//! Logging is rate-limited per VM (one VM per Envoy worker thread): at most
//! [`LOG_LINES_PER_SECOND`] lines a second; the lines a flood would add are
//! counted (`krites_staged_log_suppressed_total`) and the next line logged
//! says how many were dropped. Counters are never rate-limited.
//!
//! This module is pure (no host calls): the filter passes the clock in.

use std::cell::Cell;

use krites_policy::engine::{StagedDifference, StagedWorkload};
use krites_policy::model::{Policy, StagedChange};
use krites_policy::{Needs, Verdict};

use crate::policy_stats::{policy_label, push_label_value, POLICY_TAG, TIER_TAG};

/// The staged lines one VM logs per second, at most.
pub const LOG_LINES_PER_SECOND: u32 = 10;

/// Unlabelled totals, every staged policy together.
pub const WOULD_ALLOW_TOTAL: &str = "krites_staged_would_allow_total";
pub const WOULD_DENY_TOTAL: &str = "krites_staged_would_deny_total";
/// Staged lines the rate limit dropped.
pub const LOG_SUPPRESSED_TOTAL: &str = "krites_staged_log_suppressed_total";

/// `krites_tier=.=<tier>;.;krites_policy=.=<policy>;.;krites_staged_policy_would_{allow,deny}_total`
/// for a staged change: the tier is the first segment of its id
/// (`tier/[namespace/]name`), the policy label the one its enforced
/// counterpart has (`<namespace>/<name>` or `<name>`, sanitised), so the two
/// series line up in a dashboard.
pub fn staged_stat_name(would: Verdict, change: &StagedChange) -> String {
    let tier = change.id.split('/').next().unwrap_or("");
    let policy = policy_label(change.namespace.as_deref(), &change.name);
    let mut name = String::with_capacity(96 + tier.len() + policy.len());
    for (tag, value) in [(TIER_TAG, None), (POLICY_TAG, Some(policy.as_str()))] {
        name.push_str(tag);
        name.push_str("=.=");
        match value {
            Some(v) => name.push_str(v),
            None => push_label_value(&mut name, tier),
        }
        name.push_str(";.;");
    }
    name.push_str(match would {
        Verdict::Allow => "krites_staged_policy_would_allow_total",
        Verdict::Deny => "krites_staged_policy_would_deny_total",
    });
    name
}

/// The counters of one workload's staged view (`T`: the host's metric id).
#[derive(Debug)]
pub struct StagedCounters<T> {
    pub would_allow: T,
    pub would_deny: T,
    pub log_suppressed: T,
    /// (would allow, would deny), in the order of [`StagedWorkload::changes`].
    per_change: Vec<(T, T)>,
}

impl<T: Copy> StagedCounters<T> {
    pub fn define(view: &StagedWorkload, mut define: impl FnMut(&str) -> T) -> StagedCounters<T> {
        StagedCounters {
            would_allow: define(WOULD_ALLOW_TOTAL),
            would_deny: define(WOULD_DENY_TOTAL),
            log_suppressed: define(LOG_SUPPRESSED_TOTAL),
            per_change: view
                .changes()
                .map(|c| (define(&staged_stat_name(Verdict::Allow, c)), define(&staged_stat_name(Verdict::Deny, c))))
                .collect(),
        }
    }

    /// The counters a difference bumps: the total, and its staged policy's
    /// (`None` when the engine names none). No allocation.
    pub fn counters(&self, view: &StagedWorkload, difference: &StagedDifference<'_>) -> (T, Option<T>) {
        let allow = difference.would == Verdict::Allow;
        let total = if allow { self.would_allow } else { self.would_deny };
        let per_change = difference.change.and_then(|change| {
            view.changes().zip(&self.per_change).find(|(c, _)| std::ptr::eq(*c, change)).map(|(_, &(a, d))| if allow { a } else { d })
        });
        (total, per_change)
    }

    /// How many counters are defined.
    pub fn len(&self) -> usize {
        3 + self.per_change.len() * 2
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// What one VM may still log this second.
#[derive(Debug)]
pub struct LogBudget {
    per_second: u32,
    /// The second (host clock, nanoseconds / 1e9) `used` counts in.
    second: Cell<u64>,
    used: Cell<u32>,
    /// Lines dropped since the last one logged.
    suppressed: Cell<u64>,
}

/// May a line be logged now?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Yes; `suppressed` lines were dropped since the last one logged.
    Log { suppressed: u64 },
    /// No: over this second's budget (counted).
    Suppressed,
}

impl LogBudget {
    pub const fn new(per_second: u32) -> LogBudget {
        LogBudget { per_second, second: Cell::new(0), used: Cell::new(0), suppressed: Cell::new(0) }
    }

    /// `now`: the host's clock in nanoseconds; without one, the current
    /// second never ends (the budget is spent once, and stays spent: a host
    /// that cannot tell time gets no flood either).
    pub fn admit(&self, now: Option<u64>) -> Admission {
        if let Some(now) = now {
            let second = now / 1_000_000_000;
            if second != self.second.get() {
                self.second.set(second);
                self.used.set(0);
            }
        }
        if self.used.get() >= self.per_second {
            self.suppressed.set(self.suppressed.get().saturating_add(1));
            return Admission::Suppressed;
        }
        self.used.set(self.used.get() + 1);
        Admission::Log { suppressed: self.suppressed.replace(0) }
    }
}

/// Ingress needs of both views (the request data is gathered once).
pub fn union(a: Needs, b: Needs) -> Needs {
    Needs {
        source_port: a.source_port || b.source_port,
        destination_ip: a.destination_ip || b.destination_ip,
        destination_port: a.destination_port || b.destination_port,
        http: a.http || b.http,
    }
}

/// The head of the log line for a difference (the caller appends the request
/// and the revision): what was decided, what would be, and by which staged
/// policy; `staged` is the staged decision's Display.
pub fn describe_difference(what: &str, enforced: Verdict, difference: &StagedDifference<'_>, staged: &str, suppressed: u64) -> String {
    let by = match difference.change {
        Some(c) => format!("{:?} {} {}", c.action, c.kind.as_deref().unwrap_or("staged policy"), c.id),
        None => "the staged changes".to_string(),
    };
    let dropped =
        if suppressed > 0 { format!(" ({suppressed} earlier staged lines dropped by the rate limit)") } else { String::new() };
    format!("krites: STAGED {what} would be {} (enforced: {enforced}) under {by}: {staged}{dropped}", difference.would)
}

/// A decision's verdict and policy, as [`StagedWorkload::compare`] takes them.
pub type Decided<'p> = (Verdict, Option<&'p Policy>);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::collections::BTreeMap;
    use std::sync::Arc;

    use krites_policy::{EgressPolicy, Peer, PolicySet, RequestFacts, Workload, WorkloadPolicy};

    use super::*;

    #[test]
    fn the_budget_logs_n_lines_a_second_and_counts_the_rest() {
        let budget = LogBudget::new(3);
        let second = 1_000_000_000u64;
        let t0 = 5 * second + 17;
        let first: Vec<Admission> = (0..5).map(|i| budget.admit(Some(t0 + i * 1000))).collect();
        println!("{first:?}");
        assert_eq!(
            first,
            [
                Admission::Log { suppressed: 0 },
                Admission::Log { suppressed: 0 },
                Admission::Log { suppressed: 0 },
                Admission::Suppressed,
                Admission::Suppressed
            ]
        );
        // The next second: the first line says two were dropped.
        assert_eq!(budget.admit(Some(6 * second)), Admission::Log { suppressed: 2 });
        assert_eq!(budget.admit(Some(6 * second + 1)), Admission::Log { suppressed: 0 });
        // A flood of a million requests in one second logs 3 lines.
        let flood = (0..1_000_000u64).filter(|i| budget.admit(Some(9 * second + i)) != Admission::Suppressed).count();
        assert_eq!(flood, 3);
        // No clock: the budget of the current second is all there ever is.
        let clockless = LogBudget::new(2);
        let logged = (0..100).filter(|_| clockless.admit(None) != Admission::Suppressed).count();
        assert_eq!(logged, 2);
    }

    const CONFIG: &str = r#"{"version": 1,
      "tiers": [{"name": "security", "order": 10}],
      "policies": [
        {"name": "allow-summary", "namespace": "yaobank", "selector": "app == 'database'",
         "ingress": [{"action": "Allow", "source": {"serviceAccounts": {"names": ["summary"]}}}]},
        {"name": "allow-customer", "namespace": "yaobank", "selector": "app == 'database'",
         "ingress": [{"action": "Allow", "source": {"serviceAccounts": {"names": ["customer"]}}}]}
      ],
      "stagedPolicies": [
        {"name": "security.quarantine-summary", "tier": "security", "selector": "app == 'database'", "stagedAction": "Set",
         "kind": "StagedGlobalNetworkPolicy",
         "ingress": [{"action": "Deny", "source": {"serviceAccounts": {"names": ["summary"]}}}, {"action": "Pass"}]},
        {"name": "allow-customer", "namespace": "yaobank", "stagedAction": "Delete", "kind": "StagedNetworkPolicy"},
        {"name": "elsewhere", "namespace": "other", "selector": "all()", "stagedAction": "Set", "ingress": [{"action": "Deny"}]}
      ],
      "endpoints": [
        {"namespace": "yaobank", "serviceAccount": "summary", "labels": {"app": "summary"}, "ips": ["10.0.0.12"]},
        {"namespace": "yaobank", "serviceAccount": "customer", "labels": {"app": "customer"}, "ips": ["10.0.0.11"]},
        {"namespace": "yaobank", "serviceAccount": "database", "labels": {"app": "database"}, "ips": ["10.0.0.13"]}
      ]}"#;

    fn database() -> Workload {
        let labels = BTreeMap::from([("app".to_string(), "database".to_string())]);
        Workload { namespace: "yaobank".into(), service_account: "database".into(), labels, ports: BTreeMap::new() }
    }

    fn set() -> Arc<PolicySet> {
        Arc::new(PolicySet::from_json(CONFIG.as_bytes()).unwrap())
    }

    #[test]
    fn each_difference_names_the_counter_of_the_staged_policy_that_makes_it() {
        let set = set();
        let workload = database();
        let enforced = WorkloadPolicy::new(Arc::clone(&set), &workload);
        let view = StagedWorkload::new(&set, &workload).expect("two staged changes touch the database");
        let mut names = Vec::new();
        let counters = StagedCounters::define(&view, |name| {
            names.push(name.to_string());
            names.len() - 1
        });
        println!("{names:#?}");
        assert_eq!(counters.len(), 3 + 2 * 2, "totals, suppressed, and two touching changes (not the one in another namespace)");
        assert!(!names.iter().any(|n| n.contains("elsewhere")));

        let counted = |from: &str| {
            let facts = RequestFacts::http(from.parse().unwrap(), Peer::Plaintext, "GET", "/");
            let now = enforced.decide(&facts);
            let would = view.ingress.decide(&facts);
            let difference = view.compare((now.verdict, now.policy), (would.verdict, would.policy))?;
            let (total, per_change) = counters.counters(&view, &difference);
            let line = describe_difference("request", now.verdict, &difference, &would.to_string(), 0);
            println!("{from}: {line}");
            Some((names[total].clone(), per_change.map(|i| names[i].clone())))
        };
        let some = |total: &str, policy: &str| Some((total.to_string(), Some(policy.to_string())));
        assert_eq!(
            counted("10.0.0.12"),
            some(
                WOULD_DENY_TOTAL,
                "krites_tier=.=security;.;krites_policy=.=security_quarantine-summary;.;krites_staged_policy_would_deny_total"
            ),
            "summary: allowed now, the staged quarantine would deny"
        );
        assert_eq!(
            counted("10.0.0.11"),
            some(WOULD_DENY_TOTAL, "krites_tier=.=default;.;krites_policy=.=yaobank/allow-customer;.;krites_staged_policy_would_deny_total"),
            "customer: allowed now, the staged Delete removes its only grant"
        );
        assert_eq!(counted("10.0.0.99"), None, "an unknown address: denied both ways, no difference");
    }

    #[test]
    fn nothing_staged_means_no_view() {
        let plain = CONFIG.split("\"stagedPolicies\"").next().unwrap().to_string() + "\"endpoints\": []}";
        let set = Arc::new(PolicySet::from_json(plain.as_bytes()).unwrap());
        assert!(StagedWorkload::new(&set, &database()).is_none());
        // Staged changes elsewhere only: none either.
        let set = set_with_only_elsewhere();
        assert!(StagedWorkload::new(&set, &database()).is_none());
    }

    fn set_with_only_elsewhere() -> Arc<PolicySet> {
        let config = r#"{"version": 1, "policies": [],
          "stagedPolicies": [{"name": "elsewhere", "namespace": "other", "selector": "all()", "stagedAction": "Set", "ingress": [{"action": "Deny"}]}],
          "endpoints": []}"#;
        Arc::new(PolicySet::from_json(config.as_bytes()).unwrap())
    }

    /// What a decision costs with nothing staged (one `Option` check) and with a staged
    /// view (the enforced decision, the staged one, and the comparison with its counter
    /// lookup). `--release` gives the figure that matters (the module is built optimised).
    #[test]
    fn staged_decision_cost() {
        let set = set();
        let workload = database();
        let enforced = WorkloadPolicy::new(Arc::clone(&set), &workload);
        let egress = EgressPolicy::new(Arc::clone(&set), &workload);
        let view = StagedWorkload::new(&set, &workload);
        let counters = view.as_ref().map(|v| StagedCounters::define(v, |_| 0u32));
        let none: Option<&StagedWorkload> = None;
        const N: u32 = 50_000;
        for from in ["10.0.0.12", "10.0.0.11", "10.0.0.99"] {
            let facts = RequestFacts::http(from.parse().unwrap(), Peer::Plaintext, "GET", "/");
            let time = |staged: Option<&StagedWorkload>| {
                let started = std::time::Instant::now();
                let mut differences = 0u32;
                for _ in 0..N {
                    let now = enforced.decide(std::hint::black_box(&facts));
                    if let (Some(view), Some(counters)) = (staged, counters.as_ref()) {
                        let would = view.ingress.decide(&facts);
                        if let Some(d) = view.compare((now.verdict, now.policy), (would.verdict, would.policy)) {
                            differences += u32::from(counters.counters(view, &d).1.is_some());
                        }
                    }
                }
                (started.elapsed().as_nanos() / u128::from(N), differences)
            };
            let (plain, _) = time(none);
            let (staged, differences) = time(view.as_ref());
            println!("ingress decision from {from}: nothing staged {plain} ns, staged view + compare {staged} ns ({differences} differences counted)");
        }
        assert!(egress.policies_selecting() == 0, "the database has no egress policy: the egress view costs no walk");
    }
}
