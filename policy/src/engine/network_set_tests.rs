//! Network sets (Calico's GlobalNetworkSet and NetworkSet), table-driven: a
//! rule selector compiles to the addresses of the pods *and* network sets it
//! matches. Every decision is checked against the unindexed walk too.

use std::collections::BTreeMap;

use serde_json::{json, Value};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::tests::{compile, decide, facts, req, workload, Req};
use super::*;

const WEB: &str = "10.0.0.10"; // pod prod/web, role=web
const DB: &str = "10.0.0.20"; // pod prod/db, inside NetworkSet prod/office
const DEV_TOOL: &str = "10.1.0.9"; // pod dev/tool
const PARTNER: &str = "192.0.2.7"; // GlobalNetworkSet partners only
const BLOCKED_PARTNER: &str = "192.0.2.200"; // partners and blocked
const PROD_OFFICE: &str = "198.51.100.4"; // NetworkSet prod/office
const DEV_OFFICE: &str = "203.0.113.4"; // NetworkSet dev/office
const NOWHERE: &str = "233.252.0.1"; // no pod, no set

const TD: &str = "spiffe://cluster.local";

fn spiffe(ns: &str, sa: &str) -> String {
    format!("{TD}/ns/{ns}/sa/{sa}")
}

fn network_sets() -> Value {
    json!([
        {"name": "partners", "labels": {"kind": "partner"}, "nets": ["192.0.2.0/24"]},
        {"name": "blocked", "labels": {"kind": "blocked"}, "nets": ["192.0.2.128/25"]},
        {"name": "office", "namespace": "prod", "labels": {"kind": "office"}, "nets": ["198.51.100.0/24", "10.0.0.16/28"]},
        {"name": "office", "namespace": "dev", "labels": {"kind": "office"}, "nets": ["203.0.113.0/24"]}
    ])
}

/// The workload prod/api (app=api) under `policies`, with the sets above.
fn api_under(policies: Value) -> WorkloadPolicy {
    let set = compile(json!({
        "version": 1,
        "policies": policies,
        "endpoints": [
            {"namespace": "prod", "serviceAccount": "web", "labels": {"role": "web"}, "ips": [WEB]},
            {"namespace": "prod", "serviceAccount": "db", "labels": {"role": "db"}, "ips": [DB]},
            {"namespace": "dev", "serviceAccount": "tool", "labels": {"role": "tool"}, "ips": [DEV_TOOL]},
            {"namespace": "prod", "serviceAccount": "api", "labels": {"app": "api"}, "ips": ["10.0.0.40"]}
        ],
        "namespaces": [{"name": "prod", "labels": {"env": "prod"}}, {"name": "dev", "labels": {"env": "dev"}}],
        "networkSets": network_sets()
    }));
    WorkloadPolicy::new(set, &workload("prod", "api", &[("app", "api")]))
}

/// A global policy selecting app=api with the given ingress rules.
fn global(ingress: Value) -> Value {
    json!([{"name": "p", "selector": "app == 'api'", "ingress": ingress}])
}

/// A NetworkPolicy in prod selecting app=api.
fn namespaced(ingress: Value) -> Value {
    json!([{"name": "p", "namespace": "prod", "selector": "app == 'api'", "ingress": ingress}])
}

fn allow_from(source: Value) -> Value {
    json!([{"action": "Allow", "source": source}])
}

#[test]
fn network_set_semantics_table() {
    use Verdict::*;
    let web = spiffe("prod", "web");
    let db = spiffe("prod", "db");
    let allowed = "default/p/ingress[0]";
    let prod_allowed = "default/prod/p/ingress[0]";
    let denied = "tier/default";
    let rows: Vec<(&str, Value, Req<'_>, Verdict, &str)> = vec![
        // ---- a global set matched by its labels
        ("global set matched by label", global(allow_from(json!({"selector": "kind == 'partner'"}))),
         req(PARTNER, None, "GET", "/"), Allow, allowed),
        ("an address outside every set", global(allow_from(json!({"selector": "kind == 'partner'"}))),
         req(NOWHERE, None, "GET", "/"), Deny, denied),
        ("a set's label does not match another set", global(allow_from(json!({"selector": "kind == 'partner'"}))),
         req(PROD_OFFICE, None, "GET", "/"), Deny, denied),
        ("a set address with some certificate is still the set's address",
         global(allow_from(json!({"selector": "kind == 'partner'"}))),
         req(PARTNER, Some(&web), "GET", "/"), Allow, allowed),
        ("all() matches network sets", global(allow_from(json!({"selector": "all()"}))),
         req(DEV_OFFICE, None, "GET", "/"), Allow, allowed),
        ("all() still matches no unknown address", global(allow_from(json!({"selector": "all()"}))),
         req(NOWHERE, None, "GET", "/"), Deny, denied),
        ("has(kind) matches sets, not pods", global(allow_from(json!({"selector": "has(kind)"}))),
         req(WEB, None, "GET", "/"), Deny, denied),
        // ---- namespaced sets: within their namespace unless a namespaceSelector says otherwise
        ("a NetworkPolicy rule matches its own namespace's set", namespaced(allow_from(json!({"selector": "kind == 'office'"}))),
         req(PROD_OFFICE, None, "GET", "/"), Allow, prod_allowed),
        ("not another namespace's set", namespaced(allow_from(json!({"selector": "kind == 'office'"}))),
         req(DEV_OFFICE, None, "GET", "/"), Deny, denied),
        ("not a global set", namespaced(allow_from(json!({"selector": "has(kind)"}))),
         req(PARTNER, None, "GET", "/"), Deny, denied),
        ("a global policy matches every namespace's set", global(allow_from(json!({"selector": "kind == 'office'"}))),
         req(DEV_OFFICE, None, "GET", "/"), Allow, allowed),
        ("namespaceSelector on the set's namespace labels",
         namespaced(allow_from(json!({"selector": "kind == 'office'", "namespaceSelector": "env == 'dev'"}))),
         req(DEV_OFFICE, None, "GET", "/"), Allow, prod_allowed),
        ("namespaceSelector excludes the other namespace's set",
         namespaced(allow_from(json!({"selector": "kind == 'office'", "namespaceSelector": "env == 'dev'"}))),
         req(PROD_OFFICE, None, "GET", "/"), Deny, denied),
        ("a namespaceSelector never matches a global set",
         global(allow_from(json!({"namespaceSelector": "all()"}))),
         req(PARTNER, None, "GET", "/"), Deny, denied),
        ("a set's namespace label is selectable",
         global(allow_from(json!({"selector": "projectcalico.org/namespace == 'dev'"}))),
         req(DEV_OFFICE, None, "GET", "/"), Allow, allowed),
        // ---- global()
        ("global() matches a global set", namespaced(allow_from(json!({"selector": "kind == 'partner'", "namespaceSelector": "global()"}))),
         req(PARTNER, None, "GET", "/"), Allow, prod_allowed),
        ("global() never matches a namespaced set", global(allow_from(json!({"namespaceSelector": "global()"}))),
         req(PROD_OFFICE, None, "GET", "/"), Deny, denied),
        ("global() never matches a pod", global(allow_from(json!({"namespaceSelector": "global()"}))),
         req(WEB, Some(&web), "GET", "/"), Deny, denied),
        // ---- union of overlapping sets
        ("an address in two sets matches if either matches (first)",
         global(allow_from(json!({"selector": "kind == 'partner'"}))),
         req(BLOCKED_PARTNER, None, "GET", "/"), Allow, allowed),
        ("an address in two sets matches if either matches (second)",
         global(json!([{"action": "Deny", "source": {"selector": "kind == 'blocked'"}}, {"action": "Allow", "source": {"selector": "kind == 'partner'"}}])),
         req(BLOCKED_PARTNER, None, "GET", "/"), Deny, "default/p/ingress[0]"),
        ("the other part of the wider set is not blocked",
         global(json!([{"action": "Deny", "source": {"selector": "kind == 'blocked'"}}, {"action": "Allow", "source": {"selector": "kind == 'partner'"}}])),
         req(PARTNER, None, "GET", "/"), Allow, "default/p/ingress[1]"),
        // ---- a pod address inside a set's CIDR
        ("a pod inside a matching set's CIDR is matched by the set",
         namespaced(allow_from(json!({"selector": "kind == 'office'"}))),
         req(DB, Some(&db), "GET", "/"), Allow, prod_allowed),
        ("so is its plaintext request", namespaced(allow_from(json!({"selector": "kind == 'office'"}))),
         req(DB, None, "GET", "/"), Allow, prod_allowed),
        ("the two-factor rule still holds for that pod: a stolen certificate",
         namespaced(allow_from(json!({"selector": "kind == 'office'"}))),
         req(DB, Some(&web), "GET", "/"), Deny, denied),
        ("a pod outside the set is not matched", namespaced(allow_from(json!({"selector": "kind == 'office'"}))),
         req(WEB, Some(&web), "GET", "/"), Deny, denied),
        ("a Deny by set catches the pod inside it even with a foreign certificate",
         namespaced(json!([{"action": "Deny", "source": {"selector": "kind == 'office'"}}, {"action": "Allow"}])),
         req(DB, Some(&web), "GET", "/"), Deny, "default/prod/p/ingress[0]"),
        // ---- serviceAccounts never match a set address
        ("serviceAccounts rule vs a set address",
         global(allow_from(json!({"selector": "kind == 'partner'", "serviceAccounts": {"names": ["web"]}}))),
         req(PARTNER, Some(&web), "GET", "/"), Deny, denied),
        ("serviceAccounts rule still matches the pod", global(allow_from(json!({"serviceAccounts": {"names": ["web"]}}))),
         req(WEB, Some(&web), "GET", "/"), Allow, allowed),
        ("serviceAccounts rule and a pod inside a set: only the pod's account counts",
         namespaced(allow_from(json!({"selector": "kind == 'office' || role == 'db'", "serviceAccounts": {"names": ["web"]}}))),
         req(DB, Some(&db), "GET", "/"), Deny, denied),
        // ---- notSelector with sets
        ("notSelector excludes a set's addresses",
         global(allow_from(json!({"notSelector": "kind == 'blocked'"}))),
         req(BLOCKED_PARTNER, None, "GET", "/"), Deny, denied),
        ("notSelector leaves the rest of a wider set",
         global(allow_from(json!({"selector": "kind == 'partner'", "notSelector": "kind == 'blocked'"}))),
         req(PARTNER, None, "GET", "/"), Allow, allowed),
        ("notSelector with a set excludes the pod inside its CIDR",
         global(allow_from(json!({"selector": "role == 'db'", "notSelector": "kind == 'office'"}))),
         req(DB, Some(&db), "GET", "/"), Deny, denied),
        ("the pod's own labels still meet notSelector inside a matching set",
         namespaced(allow_from(json!({"selector": "kind == 'office'", "notSelector": "role == 'db'"}))),
         req(DB, Some(&db), "GET", "/"), Deny, denied),
        ("notSelector on sets lets unrelated unknown addresses in", global(allow_from(json!({"notSelector": "kind == 'blocked'"}))),
         req(NOWHERE, None, "GET", "/"), Allow, allowed),
        ("a Deny by notSelector alone spares the set", global(json!([{"action": "Deny", "source": {"notSelector": "kind == 'partner'"}}, {"action": "Allow"}])),
         req(PARTNER, None, "GET", "/"), Allow, "default/p/ingress[1]"),
        // ---- Pass rules on set addresses
        ("a Pass by set moves on to the profile", global(json!([{"action": "Pass", "source": {"selector": "kind == 'partner'"}}, {"action": "Deny"}])),
         req(PARTNER, None, "GET", "/"), Allow, "profile"),
    ];
    let count = rows.len();
    for (what, policies, r, verdict, by) in rows {
        let policy = api_under(policies);
        let (v, _, decided_by) = decide(&policy, &r);
        assert_eq!((v, decided_by.as_str()), (verdict, by), "{what}");
    }
    println!("network sets: {count} source rows, indexed and unindexed decisions agree");
}

/// A destination selector matching a set holds if the set holds the
/// workload's address (the destination address of the request).
#[test]
fn destination_selector_with_network_sets() {
    use Verdict::*;
    let allow_to = |destination: Value| api_under(global(json!([{"action": "Allow", "destination": destination}])));
    let deny_to = |destination: Value| api_under(global(json!([{"action": "Deny", "destination": destination}, {"action": "Allow"}])));
    let to = |policy: &WorkloadPolicy, destination: Option<&str>| {
        let r = req(WEB, None, "GET", "/");
        let f = RequestFacts { destination_ip: destination.and_then(|d| d.parse().ok()), ..facts(&r) };
        let (d, u) = (policy.decide(&f), policy.decide_unindexed(&f));
        assert_eq!((d.verdict, d.decided_by().to_string()), (u.verdict, u.decided_by().to_string()), "index agrees");
        (d.verdict, d.decided_by().to_string())
    };
    let office = allow_to(json!({"selector": "kind == 'office'"}));
    assert!(office.needs().destination_ip, "the rule reads the destination address");
    let rows: Vec<(&str, &WorkloadPolicy, Option<&str>, Verdict, &str)> = vec![
        ("the workload's address inside a matching set", &office, Some("10.0.0.17"), Allow, "default/p/ingress[0]"),
        ("an address outside it", &office, Some("10.0.0.40"), Deny, "tier/default"),
        ("an unknown destination grants nothing", &office, None, Deny, "tier/default"),
    ];
    let own = allow_to(json!({"selector": "app == 'api'", "notSelector": "kind == 'office'"}));
    let blocked = deny_to(json!({"selector": "kind == 'office'"}));
    let more: Vec<(&str, &WorkloadPolicy, Option<&str>, Verdict, &str)> = vec![
        ("the workload's own labels match, no set excludes it", &own, Some("10.0.0.40"), Allow, "default/p/ingress[0]"),
        ("notSelector's set holds the destination address", &own, Some("10.0.0.17"), Deny, "tier/default"),
        ("a Deny to a set's address", &blocked, Some("198.51.100.9"), Deny, "default/p/ingress[0]"),
        ("an unknown destination does not escape a Deny", &blocked, None, Deny, "default/p/ingress[0]"),
        ("a Deny to a set spares other addresses", &blocked, Some("10.0.0.40"), Allow, "default/p/ingress[1]"),
    ];
    let count = rows.len() + more.len();
    for (what, policy, destination, verdict, by) in rows.into_iter().chain(more) {
        assert_eq!(to(policy, destination), (verdict, by.to_string()), "{what}");
    }
    println!("network sets: {count} destination rows agree");
}

/// Without network sets nothing changes: the same rule matches only pods.
#[test]
fn no_network_set_no_address_dependence() {
    let set = compile(json!({
        "version": 1,
        "policies": global(allow_from(json!({"selector": "kind == 'partner'"}))),
        "endpoints": [{"namespace": "prod", "serviceAccount": "api", "labels": {"app": "api"}, "ips": ["10.0.0.40"]}]
    }));
    assert!(set.rules().iter().all(|r| !r.source.identity.depends_on_sets()));
    let policy = WorkloadPolicy::new(set, &workload("prod", "api", &[("app", "api")]));
    assert_eq!(decide(&policy, &req(PARTNER, None, "GET", "/")).0, Verdict::Deny);
}

#[test]
fn network_set_errors_name_the_object_and_field() {
    let errors = |sets: Value| {
        let config = crate::config::PluginConfig::from_json(json!({"version": 1, "networkSets": sets}).to_string().as_bytes())
            .unwrap_or_else(|e| panic!("reads: {e}"));
        match crate::model::PolicySet::from_config(&config) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        }
    };
    assert_eq!(
        errors(json!([{"name": "bad", "nets": ["10.0.0.0/8", "300.0.0.0/8"]}])).first().map(|e| e.starts_with("GlobalNetworkSet/bad: spec.nets[1]: ")),
        Some(true)
    );
    assert_eq!(
        errors(json!([{"name": "a", "namespace": "x", "nets": []}, {"name": "a", "namespace": "x"}])),
        vec!["NetworkSet/x/a: metadata.name: duplicate network set".to_string()]
    );
    assert_eq!(errors(json!([{"name": "", "nets": []}])), vec!["networkSets[0]: metadata.name: must not be empty".to_string()]);
    assert_eq!(
        errors(json!([{"name": "a", "namespace": ""}])),
        vec!["NetworkSet//a: metadata.namespace: must not be empty (omit it for a GlobalNetworkSet)".to_string()]
    );
    // The same name in a namespace and globally are different objects.
    assert!(errors(json!([{"name": "a", "namespace": "x"}, {"name": "a"}])).is_empty());
    let unknown = crate::config::PluginConfig::from_json(br#"{"version": 1, "networkSets": [{"name": "a", "cidrs": []}]}"#);
    assert!(unknown.is_err_and(|e| e.path() == "networkSets[0]" || e.path().starts_with("networkSets[0]")));
}

const ENDPOINTS: [(&str, &str, &str, &str); 5] = [
    ("prod", "web", "role", WEB),
    ("prod", "db", "role", DB),
    ("dev", "tool", "role", DEV_TOOL),
    ("prod", "batch", "role", "10.0.0.18"), // also inside NetworkSet prod/office
    ("prod", "api", "app", "10.0.0.40"),
];

/// The config with the endpoints of `ENDPOINTS` whose index `keep_endpoint`
/// accepts and the network sets whose index `keep_set` accepts.
fn config_with(policies: &Value, keep_endpoint: &dyn Fn(usize) -> bool, keep_set: &dyn Fn(usize) -> bool) -> Value {
    let endpoints: Vec<Value> = ENDPOINTS
        .iter()
        .enumerate()
        .filter(|(i, _)| keep_endpoint(*i))
        .map(|(_, (ns, sa, key, ip))| json!({"namespace": ns, "serviceAccount": sa, "labels": {*key: if *key == "app" { "api" } else { sa }}, "ips": [ip]}))
        .collect();
    let sets: Vec<Value> = match network_sets() {
        Value::Array(all) => all.into_iter().enumerate().filter(|(i, _)| keep_set(*i)).map(|(_, s)| s).collect(),
        _ => Vec::new(),
    };
    json!({
        "version": 1,
        "tiers": [{"name": "security", "order": 100}],
        "policies": policies,
        "endpoints": endpoints,
        "namespaces": [{"name": "prod", "labels": {"env": "prod"}}, {"name": "dev", "labels": {"env": "dev"}}],
        "serviceAccounts": [{"namespace": "prod", "name": "web", "labels": {"team": "shop"}}],
        "networkSets": sets
    })
}

fn mixed_policies() -> Value {
    json!([
        {"name": "guard", "tier": "security", "selector": "app == 'api'", "ingress": [
            {"action": "Deny", "source": {"selector": "kind == 'blocked'"}},
            {"action": "Log", "source": {"selector": "kind == 'office'", "namespaceSelector": "env == 'dev'"}},
            {"action": "Pass", "source": {"selector": "kind == 'partner' || role == 'web'"}},
            {"action": "Deny", "source": {"notSelector": "kind == 'office' || has(role)", "namespaceSelector": "global()"}},
            {"action": "Pass"}
        ]},
        {"name": "p", "namespace": "prod", "selector": "app == 'api'", "ingress": [
            {"action": "Allow", "source": {"selector": "kind == 'office'"}, "http": {"methods": ["GET"]}},
            {"action": "Allow", "source": {"serviceAccounts": {"selector": "team == 'shop'"}}},
            {"action": "Deny", "source": {"selector": "role == 'batch'", "notSelector": "kind == 'office'"}},
            {"action": "Allow", "source": {"selector": "role in {'db', 'batch'}", "notSelector": "kind == 'blocked'"}}
        ]}
    ])
}

fn sources() -> [&'static str; 11] {
    [WEB, DB, DEV_TOOL, "10.0.0.18", "10.0.0.40", PARTNER, BLOCKED_PARTNER, PROD_OFFICE, DEV_OFFICE, NOWHERE, "::ffff:198.51.100.4"]
}

fn certificates() -> Vec<Option<String>> {
    vec![
        None,
        Some(spiffe("prod", "web")),
        Some(spiffe("prod", "db")),
        Some(spiffe("prod", "batch")),
        Some(spiffe("dev", "tool")),
        Some(spiffe("nowhere", "ghost")),
        Some("not-a-spiffe-id".into()),
    ]
}

/// Pass, Deny, Log and Allow rules over sets and pods, every source address
/// against every certificate (agreeing, disagreeing, unknown, no SPIFFE id):
/// the index agrees with direct evaluation (asserted inside `decide`).
#[test]
fn index_agrees_with_direct_evaluation_with_network_sets() {
    let set = compile(config_with(&mixed_policies(), &|_| true, &|_| true));
    let policy = WorkloadPolicy::new(set, &workload("prod", "api", &[("app", "api")]));
    let mut verdicts = BTreeMap::new();
    for from in sources() {
        for cert in &certificates() {
            for (method, path) in [("GET", "/"), ("POST", "/")] {
                let (verdict, _, _) = decide(&policy, &Req { from, cert: cert.as_deref(), method, path, port: Some(8080) });
                *verdicts.entry(verdict.to_string()).or_insert(0) += 1;
            }
        }
    }
    let total: usize = verdicts.values().sum();
    assert_eq!(total, 11 * 7 * 2);
    assert!(verdicts.len() == 2, "both verdicts occur: {verdicts:?}");
    println!("network sets: {total} requests, indexed and unindexed agree: {verdicts:?}");
}

/// What `control` leaves out (pods no rule tells apart from an unknown
/// address, network sets no rule matches) changes no decision.
#[test]
fn unreferenced_network_sets_and_endpoints_can_be_left_out() {
    let policies = mixed_policies();
    let full_set = compile(config_with(&policies, &|_| true, &|_| true));
    let referenced_sets = full_set.referenced_network_sets(|_| true);
    let referenced_groups = full_set.referenced_groups(|_| true);
    let universe = full_set.universe();
    let names: Vec<String> = referenced_sets.iter().filter_map(|&i| universe.network_sets().get(i)).map(|s| s.object()).collect();
    // Here every set is matched by some clause (the dev office by the Log rule's namespaceSelector).
    assert!(names.contains(&"GlobalNetworkSet/blocked".to_string()), "{names:?}");
    let kept_groups: Vec<usize> = (0..ENDPOINTS.len())
        .filter(|&i| {
            let ip = ENDPOINTS.get(i).map_or("", |e| e.3);
            ip.parse().ok().and_then(|ip| universe.owner_of(ip)).is_some_and(|g| referenced_groups.contains(g as usize))
        })
        .collect();
    let reduced_set = compile(config_with(&policies, &|i| kept_groups.contains(&i), &|i| referenced_sets.contains(&i)));
    let workload = workload("prod", "api", &[("app", "api")]);
    let (full, reduced) = (WorkloadPolicy::new(full_set.clone(), &workload), WorkloadPolicy::new(reduced_set, &workload));
    let mut n = 0;
    for from in sources() {
        for cert in &certificates() {
            for method in ["GET", "POST"] {
                let r = Req { from, cert: cert.as_deref(), method, path: "/", port: Some(8080) };
                assert_eq!(decide(&full, &r), decide(&reduced, &r), "from {from} cert {cert:?} {method}");
                n += 1;
            }
        }
    }
    println!(
        "network sets: {n} requests decide alike with {} of {} sets and {} of {} endpoint groups kept",
        referenced_sets.len(),
        universe.network_sets().len(),
        kept_groups.len(),
        ENDPOINTS.len()
    );
    // A set no clause matches is left out.
    let only_partners = compile(config_with(&global(allow_from(json!({"selector": "kind == 'partner'"}))), &|_| true, &|_| true));
    let kept: Vec<String> = only_partners
        .referenced_network_sets(|_| true)
        .iter()
        .filter_map(|&i| only_partners.universe().network_sets().get(i))
        .map(|s| s.object())
        .collect();
    assert_eq!(kept, ["GlobalNetworkSet/partners"]);
}
