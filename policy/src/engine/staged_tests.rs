//! Staged policies, table-driven: the staged verdict next to the enforced
//! one, and which staged policy a difference is counted against.

use serde_json::{json, Value};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::tests::{compile, workload};
use super::*;
use crate::PluginConfig;

const WEB: &str = "10.0.0.10";
const DB: &str = "10.0.0.20";
const EXFIL: &str = "203.0.113.9";

fn config(policies: Value, staged: Value) -> Value {
    json!({
        "version": 1,
        "tiers": [{"name": "security", "order": 100}],
        "policies": policies,
        "stagedPolicies": staged,
        "endpoints": [
            {"namespace": "prod", "serviceAccount": "web", "labels": {"role": "web"}, "ips": [WEB]},
            {"namespace": "prod", "serviceAccount": "db", "labels": {"role": "db"}, "ips": [DB]},
            {"namespace": "prod", "serviceAccount": "api", "labels": {"app": "api"}, "ips": ["10.0.0.40"]}
        ]
    })
}

/// The enforced policy: prod/api accepts web, and may call anything.
fn enforced() -> Value {
    json!([{"name": "p", "namespace": "prod", "selector": "app == 'api'", "types": ["Ingress", "Egress"],
            "ingress": [{"action": "Allow", "source": {"selector": "role == 'web'"}}],
            "egress": [{"action": "Allow"}]}])
}

fn api() -> Workload {
    workload("prod", "api", &[("app", "api")])
}

fn from(ip: &str) -> RequestFacts<'static> {
    RequestFacts::http(ip.parse().expect("ip"), Peer::Plaintext, "GET", "/")
}

/// Enforced verdict, staged verdict, and the staged policy counted.
type Compared = (Verdict, Verdict, Option<String>);

/// (ingress from `source`, or egress to `EXFIL` if `source` is "egress"):
/// enforced verdict, staged verdict, and the staged policy counted.
fn compare(staged: Value, source: &str) -> Compared {
    let whole = compare_in(compile(config(enforced(), staged.clone())), source);
    // Compiled for the workload alone, as its filter compiles: the same.
    let text = config(enforced(), staged).to_string().into_bytes();
    let pruned = compare_in(Arc::new(PolicySet::for_workload(text, &api()).expect("compiles")), source);
    assert_eq!(whole, pruned, "the whole set and the set for prod/api disagree");
    whole
}

fn compare_in(set: Arc<PolicySet>, source: &str) -> Compared {
    let workload = api();
    let view = StagedWorkload::new(&set, &workload);
    let (enforced, staged) = if source == "egress" {
        let policy = EgressPolicy::new(Arc::clone(&set), &workload);
        let facts = EgressFacts {
            source_ip: "10.0.0.40".parse().ok(),
            source_port: Some(40000),
            destination: Destination::Address { ip: EXFIL.parse().ok(), port: Some(443) },
            method: None,
            path: None,
        };
        let now = policy.decide(&facts);
        let Some(view) = &view else { return (now.verdict, now.verdict, None) };
        let would = view.egress.decide(&facts);
        let diff = view.compare((now.verdict, now.policy), (would.verdict, would.policy));
        return (now.verdict, would.verdict, diff.and_then(|d| d.change).map(|c| format!("{:?} {}", c.action, c.id)));
    } else {
        (WorkloadPolicy::new(Arc::clone(&set), &workload), view)
    };
    let now = enforced.decide(&from(source));
    let Some(view) = &staged else { return (now.verdict, now.verdict, None) };
    let would = view.ingress.decide(&from(source));
    let diff = view.compare((now.verdict, now.policy), (would.verdict, would.policy));
    assert_eq!(diff.map(|d| d.would), (now.verdict != would.verdict).then_some(would.verdict));
    (now.verdict, would.verdict, diff.and_then(|d| d.change).map(|c| format!("{:?} {}", c.action, c.id)))
}

#[test]
fn staged_semantics_table() {
    use Verdict::*;
    let set_p = |ingress: Value| json!([{"name": "p", "namespace": "prod", "selector": "app == 'api'", "stagedAction": "Set",
                                          "types": ["Ingress", "Egress"], "ingress": ingress, "egress": [{"action": "Allow"}]}]);
    let some = |s: &str| Some(s.to_string());
    #[rustfmt::skip]
    let rows: Vec<(&str, Value, &str, Compared)> = vec![
        ("Set replaces p: web would be denied", set_p(json!([{"action": "Allow", "source": {"selector": "role == 'db'"}}])),
         WEB, (Allow, Deny, some("Set default/prod/p"))),
        ("Set replaces p: db would be allowed", set_p(json!([{"action": "Allow", "source": {"selector": "role == 'db'"}}])),
         DB, (Deny, Allow, some("Set default/prod/p"))),
        ("Set identical to p: no difference", set_p(json!([{"action": "Allow", "source": {"selector": "role == 'web'"}}])),
         WEB, (Allow, Allow, None)),
        ("Delete p: nothing selects api, db would be allowed",
         json!([{"name": "p", "namespace": "prod", "stagedAction": "Delete"}]), DB, (Deny, Allow, some("Delete default/prod/p"))),
        ("Delete p: web stays allowed", json!([{"name": "p", "namespace": "prod", "stagedAction": "Delete"}]), WEB, (Allow, Allow, None)),
        ("a new staged policy in an earlier tier denies web",
         json!([{"name": "block-web", "tier": "security", "selector": "app == 'api'", "stagedAction": "Set",
                 "ingress": [{"action": "Deny", "source": {"selector": "role == 'web'"}}, {"action": "Pass"}]}]),
         WEB, (Allow, Deny, some("Set security/block-web"))),
        ("a staged policy that selects other workloads: no view for api",
         json!([{"name": "other", "selector": "app == 'other'", "stagedAction": "Set", "ingress": [{"action": "Deny"}]}]),
         WEB, (Allow, Allow, None)),
        ("staged egress: exfiltration would be denied",
         json!([{"name": "no-exfil", "tier": "security", "selector": "app == 'api'", "types": ["Egress"], "stagedAction": "Set",
                 "egress": [{"action": "Deny", "destination": {"nets": ["203.0.113.0/24"]}}, {"action": "Pass"}]}]),
         "egress", (Allow, Deny, some("Set security/no-exfil"))),
    ];
    for (name, staged, source, want) in rows {
        assert_eq!(compare(staged, source), want, "{name}");
    }
}

#[test]
fn staged_policies_never_change_the_enforced_set() {
    let plain = compile(config(enforced(), json!([])));
    let staged = compile(config(enforced(), json!([{"name": "p", "namespace": "prod", "stagedAction": "Delete"}])));
    assert!(plain.staged_view().is_none());
    assert_eq!(staged.policies().len(), 1);
    assert_eq!(staged.staged_view().map(|v| v.policies().len()), Some(0));
    assert_ne!(plain.revision(), staged.revision(), "what is staged is part of the config");
    let enforced = WorkloadPolicy::new(Arc::clone(&staged), &api());
    assert!(!enforced.decide(&from(DB)).allowed());
}

#[test]
fn staged_config_errors_name_the_field() {
    let errors = |config: Value| {
        let config = PluginConfig::from_json(config.to_string().as_bytes()).expect("shape");
        PolicySet::from_config(&config).err().map(|e| e.to_string()).unwrap_or_default()
    };
    let in_policies = errors(config(json!([{"name": "p", "namespace": "prod", "stagedAction": "Set"}]), json!([])));
    assert!(in_policies.contains("NetworkPolicy/prod/p: spec.stagedAction: only a staged policy has one"), "{in_policies}");
    let missing = errors(config(enforced(), json!([{"name": "p", "namespace": "prod"}])));
    assert!(missing.contains("StagedNetworkPolicy/prod/p: spec.stagedAction: required for a staged policy (Set or Delete)"), "{missing}");
    let bad = errors(config(enforced(), json!([{"name": "g", "stagedAction": "Set", "selector": "app ==", "ingress": []}])));
    assert!(bad.contains("StagedGlobalNetworkPolicy/g: spec.selector: invalid selector"), "{bad}");
}
