//! Engine semantics, table-driven. Every decision is also checked against the
//! unindexed walk, so the index can never change an answer.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde_json::{json, Value};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::*;
use crate::config::PluginConfig;
use crate::model::PolicySet;

pub(crate) fn compile(config: Value) -> Arc<PolicySet> {
    let config = PluginConfig::from_json(config.to_string().as_bytes()).unwrap_or_else(|e| panic!("config parses: {e}"));
    Arc::new(PolicySet::from_config(&config).unwrap_or_else(|e| panic!("config compiles: {e}")))
}

pub(crate) fn workload(ns: &str, sa: &str, labels: &[(&str, &str)]) -> Workload {
    Workload {
        namespace: ns.into(),
        service_account: sa.into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        ports: BTreeMap::from([("http".to_string(), 8080)]),
    }
}

/// One request: from which address, with which certificate (None = plaintext).
pub(crate) struct Req<'a> {
    pub from: &'a str,
    pub cert: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub port: Option<u16>,
}

pub(crate) fn req<'a>(from: &'a str, cert: Option<&'a str>, method: &'a str, path: &'a str) -> Req<'a> {
    Req { from, cert, method, path, port: Some(8080) }
}

pub(crate) fn facts<'a>(r: &Req<'a>) -> RequestFacts<'a> {
    RequestFacts {
        source_ip: r.from.parse::<IpAddr>().ok(),
        source_port: Some(40000),
        destination_ip: "10.0.0.250".parse().ok(),
        destination_port: r.port,
        peer: match r.cert {
            Some(uri) => Peer::Mtls { uri_san: Some(uri) },
            None => Peer::Plaintext,
        },
        method: Some(r.method),
        path: Some(r.path),
    }
}

/// Decides with the index and without it, asserts they agree, returns
/// (verdict, reason, decided-by).
pub(crate) fn decide(policy: &WorkloadPolicy, r: &Req<'_>) -> (Verdict, Reason, String) {
    let f = facts(r);
    let d = policy.decide(&f);
    let u = policy.decide_unindexed(&f);
    assert_eq!(
        (d.verdict, d.reason, d.decided_by().to_string()),
        (u.verdict, u.reason, u.decided_by().to_string()),
        "indexed and unindexed decisions differ for {} {} from {} cert {:?}",
        r.method,
        r.path,
        r.from,
        r.cert
    );
    (d.verdict, d.reason, d.decided_by().to_string())
}

const TD: &str = "spiffe://cluster.local";

fn spiffe(ns: &str, sa: &str) -> String {
    format!("{TD}/ns/{ns}/sa/{sa}")
}

/// The YAO Bank tutorial: three global policies, the app's pods, and the attack pod.
pub(crate) fn yaobank() -> Value {
    json!({
        "version": 1,
        "policies": [
            {"name": "customer", "selector": "app == 'customer'",
             "ingress": [{"action": "Allow", "http": {"methods": ["GET"]}}]},
            {"name": "summary", "selector": "app == 'summary'",
             "ingress": [{"action": "Allow", "source": {"serviceAccounts": {"names": ["customer"]}}}]},
            {"name": "database", "selector": "app == 'database'",
             "ingress": [{"action": "Allow", "source": {"serviceAccounts": {"names": ["summary"]}}}]}
        ],
        "endpoints": [
            {"namespace": "default", "serviceAccount": "customer", "labels": {"app": "customer", "version": "v1"}, "ips": ["10.0.0.11"]},
            {"namespace": "default", "serviceAccount": "summary", "labels": {"app": "summary", "version": "v1"}, "ips": ["10.0.0.12", "10.0.0.22"]},
            {"namespace": "default", "serviceAccount": "database", "labels": {"app": "database", "version": "v1"}, "ips": ["10.0.0.13"]},
            {"namespace": "default", "serviceAccount": "default", "labels": {"app": "attack"}, "ips": ["10.0.0.66"]}
        ],
        "namespaces": [{"name": "default"}],
        "serviceAccounts": [
            {"namespace": "default", "name": "customer", "labels": {"app": "yaobank", "summary": "reader"}},
            {"namespace": "default", "name": "summary", "labels": {"app": "yaobank", "database": "reader"}},
            {"namespace": "default", "name": "database", "labels": {"app": "yaobank"}}
        ]
    })
}

#[test]
fn yaobank_tutorial() {
    let set = compile(yaobank());
    let customer = WorkloadPolicy::new(set.clone(), &workload("default", "customer", &[("app", "customer"), ("version", "v1")]));
    let summary = WorkloadPolicy::new(set.clone(), &workload("default", "summary", &[("app", "summary"), ("version", "v1")]));
    let database = WorkloadPolicy::new(set.clone(), &workload("default", "database", &[("app", "database"), ("version", "v1")]));
    let attack = WorkloadPolicy::new(set, &workload("default", "default", &[("app", "attack")]));
    let (c, s, a, g) = (spiffe("default", "customer"), spiffe("default", "summary"), spiffe("default", "default"), spiffe("istio-system", "istio-ingressgateway-service-account"));
    use Reason::*;
    use Verdict::*;
    let cases: Vec<(&str, &WorkloadPolicy, Req<'_>, Verdict, Reason, &str)> = vec![
        ("browser GET via the ingress gateway", &customer, req("10.0.0.100", Some(&g), "GET", "/"), Allow, AllowRule, "default/customer/ingress[0]"),
        ("browser POST", &customer, req("10.0.0.100", Some(&g), "POST", "/"), Deny, TierDefaultDeny, "tier/default"),
        ("customer calls summary", &summary, req("10.0.0.11", Some(&c), "GET", "/"), Allow, AllowRule, "default/summary/ingress[0]"),
        ("summary calls database", &database, req("10.0.0.12", Some(&s), "GET", "/v2/keys/accounts"), Allow, AllowRule, "default/database/ingress[0]"),
        ("second summary replica", &database, req("10.0.0.22", Some(&s), "PUT", "/v2/keys/accounts"), Allow, AllowRule, "default/database/ingress[0]"),
        ("compromised customer reads the database", &database, req("10.0.0.11", Some(&c), "GET", "/v2/keys"), Deny, TierDefaultDeny, "tier/default"),
        ("attack pod with stolen summary cert GET", &database, req("10.0.0.66", Some(&s), "GET", "/v2/keys"), Deny, TierDefaultDeny, "tier/default"),
        ("attack pod with stolen summary cert PUT", &database, req("10.0.0.66", Some(&s), "PUT", "/v2/keys/accounts"), Deny, TierDefaultDeny, "tier/default"),
        ("attack pod with its own cert", &database, req("10.0.0.66", Some(&a), "GET", "/"), Deny, TierDefaultDeny, "tier/default"),
        ("stolen summary cert from an unknown address", &database, req("10.9.9.9", Some(&s), "GET", "/"), Deny, TierDefaultDeny, "tier/default"),
        ("plaintext from a summary pod", &database, req("10.0.0.12", None, "GET", "/"), Allow, AllowRule, "default/database/ingress[0]"),
        ("plaintext from the attack pod", &database, req("10.0.0.66", None, "GET", "/"), Deny, TierDefaultDeny, "tier/default"),
        ("plaintext from the customer pod", &database, req("10.0.0.11", None, "GET", "/"), Deny, TierDefaultDeny, "tier/default"),
        ("plaintext from outside", &database, req("192.0.2.1", None, "GET", "/"), Deny, TierDefaultDeny, "tier/default"),
        ("summary's own cert from the customer pod", &summary, req("10.0.0.11", Some(&s), "GET", "/"), Deny, TierDefaultDeny, "tier/default"),
        ("IPv4-mapped IPv6 source of a summary pod", &database, req("::ffff:10.0.0.12", Some(&s), "GET", "/"), Allow, AllowRule, "default/database/ingress[0]"),
        ("no policy selects the attack pod", &attack, req("10.0.0.11", Some(&c), "DELETE", "/"), Allow, NoPolicySelects, "profile"),
    ];
    for (what, policy, r, verdict, reason, by) in cases {
        assert_eq!(decide(policy, &r), (verdict, reason, by.to_string()), "{what}");
    }
}

#[test]
fn stolen_certificate_is_explained() {
    let set = compile(yaobank());
    let database = WorkloadPolicy::new(set, &workload("default", "database", &[("app", "database")]));
    let s = spiffe("default", "summary");
    let r = req("10.0.0.66", Some(&s), "GET", "/");
    let f = facts(&r);
    let d = database.decide(&f);
    assert!(d.identity.is_conflict());
    let text = d.to_string();
    assert!(text.starts_with("DENY tier/default: "), "{text}");
    assert!(text.contains("certificate says default/summary but 10.0.0.66 belongs to default/default"), "{text}");
}

fn one_workload(policies: Value, extra_endpoints: Value) -> WorkloadPolicy {
    let mut endpoints = vec![
        json!({"namespace": "prod", "serviceAccount": "web", "labels": {"app": "web", "role": "frontend"}, "ips": ["10.1.0.1"]}),
        json!({"namespace": "prod", "serviceAccount": "api", "labels": {"app": "api", "role": "backend"}, "ips": ["10.1.0.2", "fd00::2"]}),
        json!({"namespace": "dev", "serviceAccount": "web", "labels": {"app": "web", "role": "frontend"}, "ips": ["10.2.0.1"]}),
        json!({"namespace": "dev", "serviceAccount": "tool", "labels": {"app": "tool"}, "ips": ["10.2.0.9"]}),
    ];
    if let Value::Array(more) = extra_endpoints {
        endpoints.extend(more);
    }
    let set = compile(json!({
        "version": 1,
        "tiers": [
            {"name": "security", "order": 100},
            {"name": "platform", "order": 200, "defaultAction": "Pass"}
        ],
        "policies": policies,
        "endpoints": endpoints,
        "namespaces": [{"name": "prod", "labels": {"env": "prod"}}, {"name": "dev", "labels": {"env": "dev"}}],
        "serviceAccounts": [
            {"namespace": "prod", "name": "web", "labels": {"team": "shop"}},
            {"namespace": "prod", "name": "api", "labels": {"team": "shop", "pci": "yes"}},
            {"namespace": "dev", "name": "tool", "labels": {"team": "ops"}}
        ]
    }));
    WorkloadPolicy::new(set, &workload("prod", "db", &[("app", "db")]))
}

fn p(name: &str, extra: Value) -> Value {
    let mut base = json!({"name": name, "selector": "app == 'db'"});
    if let (Value::Object(b), Value::Object(e)) = (&mut base, extra) {
        b.extend(e);
    }
    base
}

const WEB: &str = "10.1.0.1";
const API: &str = "10.1.0.2";
const DEV_WEB: &str = "10.2.0.1";
const TOOL: &str = "10.2.0.9";
const OUTSIDE: &str = "192.0.2.7";

/// Each row: policies, request, expected (verdict, decided-by).
#[test]
fn semantics_table() {
    use Verdict::*;
    let web = spiffe("prod", "web");
    let api = spiffe("prod", "api");
    let tool = spiffe("dev", "tool");
    let rows: Vec<(&str, Value, Req<'_>, Verdict, &str)> = vec![
        // ---- ordering, actions, tiers
        ("lower order runs first",
         json!([p("b-allow", json!({"order": 20, "ingress": [{"action": "Allow"}]})), p("a-deny", json!({"order": 10, "ingress": [{"action": "Deny"}]}))]),
         req(WEB, None, "GET", "/"), Deny, "default/a-deny/ingress[0]"),
        ("ties broken by name",
         json!([p("b", json!({"order": 10, "ingress": [{"action": "Deny"}]})), p("a", json!({"order": 10, "ingress": [{"action": "Allow"}]}))]),
         req(WEB, None, "GET", "/"), Allow, "default/a/ingress[0]"),
        ("unset order runs last",
         json!([p("a", json!({"ingress": [{"action": "Allow"}]})), p("z", json!({"order": 1e9, "ingress": [{"action": "Deny"}]}))]),
         req(WEB, None, "GET", "/"), Deny, "default/z/ingress[0]"),
        ("rules within a policy in sequence",
         json!([p("a", json!({"ingress": [{"action": "Deny", "http": null, "source": {"selector": "app == 'api'"}}, {"action": "Allow"}]}))]),
         req(WEB, None, "GET", "/"), Allow, "default/a/ingress[1]"),
        ("Log continues to the next rule",
         json!([p("a", json!({"ingress": [{"action": "Log"}, {"action": "Deny"}]}))]),
         req(WEB, None, "GET", "/"), Deny, "default/a/ingress[1]"),
        ("selected but nothing matches: default deny",
         json!([p("a", json!({"ingress": [{"action": "Allow", "source": {"selector": "app == 'nobody'"}}]}))]),
         req(WEB, None, "GET", "/"), Deny, "tier/default"),
        ("a policy with no rules still selects: default deny",
         json!([p("a", json!({}))]),
         req(WEB, None, "GET", "/"), Deny, "tier/default"),
        ("no policy selects the workload",
         json!([{"name": "other", "selector": "app == 'other'", "ingress": [{"action": "Deny"}]}]),
         req(WEB, None, "GET", "/"), Allow, "profile"),
        ("an empty types list means Ingress, as unset",
         json!([p("a", json!({"types": [], "ingress": [{"action": "Deny"}]}))]),
         req(WEB, None, "GET", "/"), Deny, "default/a/ingress[0]"),
        ("a blank source selector is no selector (admits outsiders)",
         json!([p("a", json!({"ingress": [{"action": "Allow", "source": {"selector": "", "notSelector": " ", "namespaceSelector": ""}}]}))]),
         req(OUTSIDE, None, "GET", "/"), Allow, "default/a/ingress[0]"),
        ("egress-only policy does not apply to ingress",
         json!([p("a", json!({"types": ["Egress"]}))]),
         req(WEB, None, "GET", "/"), Allow, "profile"),
        ("Pass skips the rest of the tier",
         json!([p("a", json!({"tier": "security", "order": 1, "ingress": [{"action": "Pass"}]})),
                p("b", json!({"tier": "security", "order": 2, "ingress": [{"action": "Deny"}]})),
                p("c", json!({"ingress": [{"action": "Allow"}]}))]),
         req(WEB, None, "GET", "/"), Allow, "default/c/ingress[0]"),
        ("Pass through every tier ends at the profile",
         json!([p("a", json!({"tier": "security", "ingress": [{"action": "Pass"}]}))]),
         req(WEB, None, "GET", "/"), Allow, "profile"),
        ("earlier tier decides before later ones",
         json!([p("late", json!({"order": 1, "ingress": [{"action": "Allow"}]})), p("early", json!({"tier": "security", "order": 999, "ingress": [{"action": "Deny"}]}))]),
         req(WEB, None, "GET", "/"), Deny, "security/early/ingress[0]"),
        ("tier with default Pass falls through",
         json!([p("a", json!({"tier": "platform", "ingress": [{"action": "Allow", "source": {"selector": "app == 'nobody'"}}]})),
                p("b", json!({"ingress": [{"action": "Allow"}]}))]),
         req(WEB, None, "GET", "/"), Allow, "default/b/ingress[0]"),
        ("tier with default Deny stops",
         json!([p("a", json!({"tier": "security", "ingress": [{"action": "Allow", "source": {"selector": "app == 'nobody'"}}]})),
                p("b", json!({"ingress": [{"action": "Allow"}]}))]),
         req(WEB, None, "GET", "/"), Deny, "tier/security"),
        // ---- AND across fields, OR within lists
        ("selector AND method: both match",
         json!([p("a", json!({"ingress": [{"action": "Allow", "source": {"selector": "app == 'web'"}, "http": {"methods": ["GET", "HEAD"]}}]}))]),
         req(WEB, Some(&web), "HEAD", "/"), Allow, "default/a/ingress[0]"),
        ("selector AND method: method fails",
         json!([p("a", json!({"ingress": [{"action": "Allow", "source": {"selector": "app == 'web'"}, "http": {"methods": ["GET", "HEAD"]}}]}))]),
         req(WEB, Some(&web), "POST", "/"), Deny, "tier/default"),
        ("selector AND method: selector fails",
         json!([p("a", json!({"ingress": [{"action": "Allow", "source": {"selector": "app == 'web'"}, "http": {"methods": ["GET"]}}]}))]),
         req(API, Some(&api), "GET", "/"), Deny, "tier/default"),
        ("methods are case-sensitive",
         json!([p("a", json!({"ingress": [{"action": "Allow", "http": {"methods": ["GET"]}}]}))]),
         req(WEB, None, "get", "/"), Deny, "tier/default"),
        ("paths: exact",
         json!([p("a", json!({"ingress": [{"action": "Allow", "http": {"paths": [{"exact": "/health"}, {"prefix": "/api"}]}}]}))]),
         req(WEB, None, "GET", "/health?full=1"), Allow, "default/a/ingress[0]"),
        ("paths: prefix on a segment boundary",
         json!([p("a", json!({"ingress": [{"action": "Allow", "http": {"paths": [{"prefix": "/api"}]}}]}))]),
         req(WEB, None, "GET", "/api/v1/x"), Allow, "default/a/ingress[0]"),
        ("paths: prefix is not a string prefix",
         json!([p("a", json!({"ingress": [{"action": "Allow", "http": {"paths": [{"prefix": "/api"}]}}]}))]),
         req(WEB, None, "GET", "/apiary"), Deny, "tier/default"),
        ("paths: traversal out of the prefix",
         json!([p("a", json!({"ingress": [{"action": "Allow", "http": {"paths": [{"prefix": "/public"}]}}]}))]),
         req(WEB, None, "GET", "/public/../admin"), Deny, "tier/default"),
        ("paths: encoded slash is refused",
         json!([p("a", json!({"ingress": [{"action": "Allow", "http": {"paths": [{"prefix": "/public"}]}}]}))]),
         req(WEB, None, "GET", "/public%2f..%2fadmin"), Deny, "tier/default"),
        ("paths: percent-encoded letters are decoded",
         json!([p("a", json!({"ingress": [{"action": "Allow", "http": {"paths": [{"exact": "/admin"}]}}]}))]),
         req(WEB, None, "GET", "/%61dmin"), Allow, "default/a/ingress[0]"),
        // ---- nets and ports
        ("nets: source in CIDR",
         json!([p("a", json!({"ingress": [{"action": "Allow", "source": {"nets": ["10.1.0.0/16"]}}]}))]),
         req(API, None, "GET", "/"), Allow, "default/a/ingress[0]"),
        ("nets: outside CIDR",
         json!([p("a", json!({"ingress": [{"action": "Allow", "source": {"nets": ["10.1.0.0/16"]}}]}))]),
         req(DEV_WEB, None, "GET", "/"), Deny, "tier/default"),
        ("nets match addresses outside the cluster",
         json!([p("a", json!({"ingress": [{"action": "Allow", "source": {"nets": ["192.0.2.0/24"]}}]}))]),
         req(OUTSIDE, None, "GET", "/"), Allow, "default/a/ingress[0]"),
        ("notNets excludes",
         json!([p("a", json!({"ingress": [{"action": "Allow", "source": {"notNets": ["10.2.0.0/16"]}}]}))]),
         req(DEV_WEB, None, "GET", "/"), Deny, "tier/default"),
        ("destination ports",
         json!([p("a", json!({"ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": [8080, "9000:9100"]}}]}))]),
         req(WEB, None, "GET", "/"), Allow, "default/a/ingress[0]"),
        ("destination named port resolves against the workload's container ports",
         json!([p("a", json!({"ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": ["http"]}}]}))]),
         req(WEB, None, "GET", "/"), Allow, "default/a/ingress[0]"),
        ("destination named port the workload lacks matches nothing",
         json!([p("a", json!({"ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": ["grpc"]}}]}))]),
         req(WEB, None, "GET", "/"), Deny, "tier/default"),
        ("destination notPorts by name",
         json!([p("a", json!({"ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"notPorts": ["http", 9090]}}]}))]),
         req(WEB, None, "GET", "/"), Deny, "tier/default"),
        ("destination ports: other port",
         json!([p("a", json!({"ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": [80]}}]}))]),
         req(WEB, None, "GET", "/"), Deny, "tier/default"),
        ("destination notPorts",
         json!([p("a", json!({"ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"notPorts": [8080]}}]}))]),
         req(WEB, None, "GET", "/"), Deny, "tier/default"),
        ("UDP rule never matches HTTP",
         json!([p("a", json!({"ingress": [{"action": "Deny", "protocol": "UDP"}, {"action": "Allow"}]}))]),
         req(WEB, None, "GET", "/"), Allow, "default/a/ingress[1]"),
        ("notProtocol TCP never matches HTTP",
         json!([p("a", json!({"ingress": [{"action": "Allow", "notProtocol": "TCP"}]}))]),
         req(WEB, None, "GET", "/"), Deny, "tier/default"),
        ("ipVersion 6 does not match IPv4",
         json!([p("a", json!({"ingress": [{"action": "Allow", "ipVersion": 6}]}))]),
         req(WEB, None, "GET", "/"), Deny, "tier/default"),
        ("ipVersion 6 matches IPv6",
         json!([p("a", json!({"ingress": [{"action": "Allow", "ipVersion": 6, "source": {"selector": "app == 'api'"}}]}))]),
         req("fd00::2", None, "GET", "/"), Allow, "default/a/ingress[0]"),
        // ---- selectors, namespaces, service accounts
        ("notSelector excludes a pod",
         json!([p("a", json!({"ingress": [{"action": "Allow", "source": {"notSelector": "app == 'web'"}}]}))]),
         req(WEB, None, "GET", "/"), Deny, "tier/default"),
        ("notSelector alone admits unknown addresses (IP-set semantics)",
         json!([p("a", json!({"ingress": [{"action": "Allow", "source": {"notSelector": "app == 'web'"}}]}))]),
         req(OUTSIDE, None, "GET", "/"), Allow, "default/a/ingress[0]"),
        ("all() matches only known pods",
         json!([p("a", json!({"ingress": [{"action": "Allow", "source": {"selector": "all()"}}]}))]),
         req(OUTSIDE, None, "GET", "/"), Deny, "tier/default"),
        ("GNP selector spans namespaces",
         json!([p("a", json!({"ingress": [{"action": "Allow", "source": {"selector": "role == 'frontend'"}}]}))]),
         req(DEV_WEB, None, "GET", "/"), Allow, "default/a/ingress[0]"),
        ("namespaceSelector on the source",
         json!([p("a", json!({"ingress": [{"action": "Allow", "source": {"namespaceSelector": "env == 'prod'", "selector": "role == 'frontend'"}}]}))]),
         req(DEV_WEB, None, "GET", "/"), Deny, "tier/default"),
        ("namespaceSelector all() admits every namespace",
         json!([p("a", json!({"ingress": [{"action": "Allow", "source": {"namespaceSelector": "all()"}}]}))]),
         req(TOOL, None, "GET", "/"), Allow, "default/a/ingress[0]"),
        ("namespaceSelector global() admits no pod",
         json!([p("a", json!({"ingress": [{"action": "Allow", "source": {"namespaceSelector": "global()"}}]}))]),
         req(TOOL, None, "GET", "/"), Deny, "tier/default"),
        ("namespaceSelector uses projectcalico.org/name",
         json!([p("a", json!({"ingress": [{"action": "Allow", "source": {"namespaceSelector": "projectcalico.org/name == 'dev'"}}]}))]),
         req(TOOL, None, "GET", "/"), Allow, "default/a/ingress[0]"),
        ("NetworkPolicy source selector stays in its namespace",
         json!([{"name": "np", "namespace": "prod", "selector": "app == 'db'", "ingress": [{"action": "Allow", "source": {"selector": "app == 'web'"}}]}]),
         req(DEV_WEB, None, "GET", "/"), Deny, "tier/default"),
        ("NetworkPolicy source selector in its namespace",
         json!([{"name": "np", "namespace": "prod", "selector": "app == 'db'", "ingress": [{"action": "Allow", "source": {"selector": "app == 'web'"}}]}]),
         req(WEB, None, "GET", "/"), Allow, "default/prod/np/ingress[0]"),
        ("NetworkPolicy with namespaceSelector reaches other namespaces",
         json!([{"name": "np", "namespace": "prod", "selector": "app == 'db'", "ingress": [{"action": "Allow", "source": {"namespaceSelector": "env == 'dev'", "selector": "app == 'web'"}}]}]),
         req(DEV_WEB, None, "GET", "/"), Allow, "default/prod/np/ingress[0]"),
        ("NetworkPolicy in another namespace does not select",
         json!([{"name": "np", "namespace": "dev", "selector": "app == 'db'", "ingress": [{"action": "Deny"}]}]),
         req(WEB, None, "GET", "/"), Allow, "profile"),
        ("NetworkPolicy rule with only nets admits outsiders",
         json!([{"name": "np", "namespace": "prod", "ingress": [{"action": "Allow", "source": {"nets": ["192.0.2.0/24"]}}]}]),
         req(OUTSIDE, None, "GET", "/"), Allow, "default/prod/np/ingress[0]"),
        ("serviceAccounts names in a GNP match any namespace",
         json!([p("a", json!({"ingress": [{"action": "Allow", "source": {"serviceAccounts": {"names": ["web"]}}}]}))]),
         req(DEV_WEB, None, "GET", "/"), Allow, "default/a/ingress[0]"),
        ("serviceAccounts selector on SA labels",
         json!([p("a", json!({"ingress": [{"action": "Allow", "source": {"serviceAccounts": {"selector": "pci == 'yes'"}}}]}))]),
         req(API, Some(&api), "GET", "/"), Allow, "default/a/ingress[0]"),
        ("serviceAccounts names AND selector",
         json!([p("a", json!({"ingress": [{"action": "Allow", "source": {"serviceAccounts": {"names": ["web"], "selector": "pci == 'yes'"}}}]}))]),
         req(WEB, Some(&web), "GET", "/"), Deny, "tier/default"),
        ("special label projectcalico.org/serviceaccount",
         json!([p("a", json!({"ingress": [{"action": "Allow", "source": {"selector": "projectcalico.org/serviceaccount == 'tool'"}}]}))]),
         req(TOOL, Some(&tool), "GET", "/"), Allow, "default/a/ingress[0]"),
        ("destination selector not matching this workload drops the rule",
         json!([p("a", json!({"ingress": [{"action": "Deny", "destination": {"selector": "app == 'other'"}}, {"action": "Allow"}]}))]),
         req(WEB, None, "GET", "/"), Allow, "default/a/ingress[1]"),
        ("policy namespaceSelector selects by the workload's namespace",
         json!([{"name": "g", "namespaceSelector": "env == 'prod'", "ingress": [{"action": "Deny"}]}]),
         req(WEB, None, "GET", "/"), Deny, "default/g/ingress[0]"),
        ("policy serviceAccountSelector that does not select",
         json!([{"name": "g", "serviceAccountSelector": "team == 'nobody'", "ingress": [{"action": "Deny"}]}]),
         req(WEB, None, "GET", "/"), Allow, "profile"),
        // ---- two factors with Deny rules: either factor is enough to deny
        ("Deny by SA: stolen web cert from api's address is still denied",
         json!([p("a", json!({"ingress": [{"action": "Deny", "source": {"serviceAccounts": {"names": ["web"]}}}, {"action": "Allow"}]}))]),
         req(API, Some(&web), "GET", "/"), Deny, "default/a/ingress[0]"),
        ("Deny by SA: web's address with a stolen api cert is still denied",
         json!([p("a", json!({"ingress": [{"action": "Deny", "source": {"serviceAccounts": {"names": ["web"]}}}, {"action": "Allow"}]}))]),
         req(WEB, Some(&api), "GET", "/"), Deny, "default/a/ingress[0]"),
        ("Deny by SA: web cert from an unknown address is denied",
         json!([p("a", json!({"ingress": [{"action": "Deny", "source": {"serviceAccounts": {"names": ["web"]}}}, {"action": "Allow"}]}))]),
         req(OUTSIDE, Some(&web), "GET", "/"), Deny, "default/a/ingress[0]"),
        ("Allow by SA needs both factors even with a later catch-all deny",
         json!([p("a", json!({"ingress": [{"action": "Allow", "source": {"serviceAccounts": {"names": ["web"]}}}]}))]),
         req(API, Some(&web), "GET", "/"), Deny, "tier/default"),
        ("identity-free rules still apply under a mismatch",
         json!([p("a", json!({"ingress": [{"action": "Allow", "source": {"serviceAccounts": {"names": ["web"]}}}, {"action": "Allow", "http": {"paths": [{"exact": "/healthz"}]}}]}))]),
         req(API, Some(&web), "GET", "/healthz"), Allow, "default/a/ingress[1]"),
        ("mTLS without a SPIFFE id matches no Allow identity rule",
         json!([p("a", json!({"ingress": [{"action": "Allow", "source": {"selector": "app == 'web'"}}]}))]),
         req(WEB, Some("https://example.com/web"), "GET", "/"), Deny, "tier/default"),
        ("Pass needs both factors",
         json!([p("a", json!({"tier": "security", "ingress": [{"action": "Pass", "source": {"selector": "app == 'web'"}}]})), p("b", json!({"ingress": [{"action": "Allow"}]}))]),
         req(WEB, Some(&api), "GET", "/"), Deny, "tier/security"),
        ("a Pass one factor satisfies is disputed: a stolen cert does not skip it into a later Allow",
         json!([p("a", json!({"tier": "security", "ingress": [{"action": "Pass", "source": {"selector": "app == 'web'"}}, {"action": "Allow"}]})),
                p("b", json!({"ingress": [{"action": "Allow", "source": {"serviceAccounts": {"names": ["api"]}}}]}))]),
         req(WEB, Some(&api), "GET", "/"), Deny, "tier/default"),
        ("a disputed Pass: the Allow stands when the later tiers allow too",
         json!([p("a", json!({"tier": "security", "ingress": [{"action": "Pass", "source": {"selector": "app == 'web'"}}, {"action": "Allow"}]})),
                p("b", json!({"ingress": [{"action": "Allow"}]}))]),
         req(WEB, Some(&api), "GET", "/"), Allow, "security/a/ingress[1]"),
        ("a Pass both factors satisfy is taken",
         json!([p("a", json!({"tier": "security", "ingress": [{"action": "Pass", "source": {"notSelector": "app == 'db'"}}, {"action": "Deny"}]})),
                p("b", json!({"ingress": [{"action": "Allow"}]}))]),
         req(OUTSIDE, Some(&web), "GET", "/"), Allow, "default/b/ingress[0]"),
    ];
    for (what, policies, r, verdict, by) in rows {
        let policy = one_workload(policies, json!([]));
        let (v, _, decided_by) = decide(&policy, &r);
        assert_eq!((v, decided_by.as_str()), (verdict, by), "{what}");
    }
}

#[test]
fn http_rules_never_match_non_http_requests() {
    let policy = one_workload(json!([p("a", json!({"ingress": [{"action": "Allow", "http": {}}, {"action": "Deny"}]}))]), json!([]));
    let mut f = facts(&req(WEB, None, "GET", "/"));
    assert!(policy.decide(&f).allowed());
    f.method = None;
    f.path = None;
    assert_eq!(policy.decide(&f).decided_by().to_string(), "default/a/ingress[1]");
}

/// An address the proxy could not verify (e.g. derived from x-forwarded-for)
/// proves nothing to rules that grant and counts against rules that restrict.
#[test]
fn unknown_source_address_never_loosens_policy() {
    let s = spiffe("prod", "web");
    let rows: Vec<(&str, Value, Option<&str>, bool)> = vec![
        ("Allow by nets needs a known address", json!([p("a", json!({"ingress": [{"action": "Allow", "source": {"nets": ["0.0.0.0/0"]}}]}))]), None, false),
        ("Allow by notNets needs a known address", json!([p("a", json!({"ingress": [{"action": "Allow", "source": {"notNets": ["10.9.0.0/16"]}}]}))]), None, false),
        ("Deny by nets takes an unknown address", json!([p("a", json!({"ingress": [{"action": "Deny", "source": {"nets": ["10.9.0.0/16"]}}, {"action": "Allow"}]}))]), None, false),
        ("Deny by notNets takes an unknown address", json!([p("a", json!({"ingress": [{"action": "Deny", "source": {"notNets": ["10.0.0.0/8"]}}, {"action": "Allow"}]}))]), None, false),
        ("Allow by SA with a certificate but no verified address", json!([p("a", json!({"ingress": [{"action": "Allow", "source": {"serviceAccounts": {"names": ["web"]}}}]}))]), Some(&s), false),
        ("Allow with no address clause still applies", json!([p("a", json!({"ingress": [{"action": "Allow", "http": {"methods": ["GET"]}}]}))]), None, true),
        ("Deny by ipVersion takes an unknown address", json!([p("a", json!({"ingress": [{"action": "Deny", "ipVersion": 6}, {"action": "Allow"}]}))]), None, false),
    ];
    for (what, policies, cert, allowed) in rows {
        let policy = one_workload(policies, json!([]));
        let mut f = facts(&req(WEB, cert, "GET", "/"));
        f.source_ip = None;
        let d = policy.decide(&f);
        let u = policy.decide_unindexed(&f);
        assert_eq!((d.allowed(), u.allowed()), (allowed, allowed), "{what}: {d}");
    }
}

#[test]
fn log_rules_are_reported_and_do_not_decide() {
    let policy = one_workload(json!([p("a", json!({"ingress": [{"action": "Log"}, {"action": "Log", "source": {"selector": "app == 'api'"}}, {"action": "Allow"}]}))]), json!([]));
    let f = facts(&req(WEB, None, "GET", "/"));
    let mut logged = Vec::new();
    let d = policy.decide_logging(&f, &mut |r| logged.push(r.id.clone()));
    assert!(d.allowed());
    assert_eq!(logged, vec!["default/a/ingress[0]".to_string()]);
}

/// Every address of the fixture, every peer variant, both methods: the index agrees.
/// Calico's endpoints inherit their namespace's labels as `pcns.<key>` and
/// their service account's as `pcsa.<key>` (each with
/// `projectcalico.org/name`), and selectors may name them: in a policy's
/// selector, in rule selectors read from an address, and from a
/// certificate, which vouches for the namespace and account. A pod's own
/// label of the same key comes first.
#[test]
fn selectors_read_inherited_namespace_and_service_account_labels() {
    let policies = json!([
        {"name": "staging-only", "tier": "security", "order": 0, "selector": "pcns.env == 'staging'",
         "ingress": [{"action": "Allow"}]},
        {"name": "inh", "tier": "security", "order": 1, "selector": "pcns.env == 'prod' && app == 'db'", "ingress": [
            {"action": "Deny", "source": {"selector": "pcsa.team == 'ops'"}},
            {"action": "Pass", "source": {"selector": "pcns.env == 'dev'"}},
            {"action": "Allow", "source": {"selector": "pcsa.pci == 'yes' && pcns.projectcalico.org/name == 'prod'"}},
            {"action": "Allow", "source": {"selector": "pcsa.projectcalico.org/name == 'web' && !has(pcsa.pci)"}, "http": {"methods": ["GET"]}}
        ]},
        p("b", json!({"ingress": [
            {"action": "Allow", "source": {"selector": "pcns.env == 'dev'"}, "http": {"methods": ["POST"]}}
        ]}))
    ]);
    let own = json!([{"namespace": "prod", "serviceAccount": "web", "labels": {"app": "web", "pcns.env": "dev"}, "ips": ["10.1.0.7"]}]);
    let policy = one_workload(policies, own);
    assert_eq!(policy.policies_selecting(), 2, "inh and b select prod/db; staging-only does not");
    let (tool, web) = (spiffe("dev", "tool"), spiffe("prod", "web"));
    use Reason::*;
    use Verdict::*;
    let cases: Vec<(&str, Req<'_>, Verdict, Reason, &str)> = vec![
        ("an ops account is denied", req(TOOL, None, "GET", "/"), Deny, DenyRule, "security/inh/ingress[0]"),
        ("dev passes on, GET", req(DEV_WEB, None, "GET", "/"), Deny, TierDefaultDeny, "tier/default"),
        ("dev passes on, POST", req(DEV_WEB, None, "POST", "/"), Allow, AllowRule, "default/b/ingress[0]"),
        ("a pci account in prod", req(API, None, "DELETE", "/"), Allow, AllowRule, "security/inh/ingress[2]"),
        ("prod web, GET", req(WEB, Some(&web), "GET", "/"), Allow, AllowRule, "security/inh/ingress[3]"),
        ("prod web, POST", req(WEB, Some(&web), "POST", "/"), Deny, TierDefaultDeny, "tier/security"),
        ("an own pcns.env label comes first", req("10.1.0.7", None, "POST", "/"), Allow, AllowRule, "default/b/ingress[0]"),
        ("an unknown address inherits nothing", req(OUTSIDE, None, "GET", "/"), Deny, TierDefaultDeny, "tier/security"),
        ("a stolen ops certificate is denied", req(WEB, Some(&tool), "GET", "/"), Deny, DenyRule, "security/inh/ingress[0]"),
    ];
    for (what, r, verdict, reason, by) in cases {
        assert_eq!(decide(&policy, &r), (verdict, reason, by.to_string()), "{what}");
    }
}

#[test]
fn index_agrees_with_direct_evaluation_exhaustively() {
    let policies = json!([
        p("a", json!({"tier": "security", "order": 1, "ingress": [
            {"action": "Deny", "source": {"serviceAccounts": {"names": ["tool"]}}},
            {"action": "Pass", "source": {"namespaceSelector": "env == 'dev'"}},
            {"action": "Log", "source": {"notSelector": "role == 'frontend'"}}
        ]})),
        p("b", json!({"ingress": [
            {"action": "Allow", "source": {"selector": "role == 'frontend'"}, "http": {"methods": ["GET"]}},
            {"action": "Allow", "source": {"notSelector": "app == 'api'", "nets": ["10.0.0.0/8"]}},
            {"action": "Deny", "source": {"selector": "app in {'api', 'tool'}"}},
            {"action": "Allow", "source": {"serviceAccounts": {"selector": "team == 'shop'"}}, "http": {"paths": [{"prefix": "/shop"}]}}
        ]}))
    ]);
    let policy = one_workload(policies, json!([]));
    let certs: Vec<Option<String>> = vec![
        None,
        Some(spiffe("prod", "web")),
        Some(spiffe("prod", "api")),
        Some(spiffe("dev", "web")),
        Some(spiffe("dev", "tool")),
        Some(spiffe("nowhere", "ghost")),
        Some("not-a-spiffe-id".into()),
    ];
    let mut n = 0;
    for from in [WEB, API, "fd00::2", DEV_WEB, TOOL, OUTSIDE, "::ffff:10.1.0.1"] {
        for cert in &certs {
            for (method, path) in [("GET", "/"), ("POST", "/shop/cart"), ("GET", "/shopping")] {
                decide(&policy, &Req { from, cert: cert.as_deref(), method, path, port: Some(8080) });
                n += 1;
            }
        }
    }
    assert_eq!(n, 7 * 7 * 3);
}

/// Leaving out the endpoints `referenced_groups` does not list changes no
/// decision, for any source address (kept or dropped) and any certificate.
#[test]
fn unreferenced_endpoints_can_be_left_out() {
    let policies = json!([
        p("a", json!({"tier": "security", "ingress": [
            {"action": "Deny", "source": {"selector": "app == 'tool'"}},
            {"action": "Log", "source": {"serviceAccounts": {"names": ["tool"]}}},
            {"action": "Pass", "source": {"namespaceSelector": "env == 'dev'"}}
        ]})),
        p("b", json!({"ingress": [
            {"action": "Allow", "source": {"selector": "role == 'frontend'"}, "http": {"methods": ["GET"]}},
            {"action": "Allow", "source": {"notSelector": "app == 'api'"}},
            {"action": "Deny", "source": {"notSelector": "app == 'web'"}}
        ]}))
    ]);
    let extra = json!([
        {"namespace": "prod", "serviceAccount": "batch", "labels": {"app": "batch", "role": "worker"}, "ips": ["10.1.0.7"]},
        {"namespace": "dev", "serviceAccount": "tool", "labels": {"app": "tool", "role": "x"}, "ips": ["10.2.0.8"]}
    ]);
    let full = one_workload(policies.clone(), extra.clone());
    let set = full.policy_set();
    let referenced = set.referenced_groups(|_| true);
    let universe = set.universe();
    // prod/batch is named by no clause in a way that sets it apart from an unknown address.
    assert_eq!(referenced.count_ones(..), universe.group_count() - 1, "the fixture should leave out prod/batch only");
    // A restricting `!has(x)` rule needs every pod with `x`: its certificate alone would match.
    let negated = one_workload(json!([p("n", json!({"ingress": [{"action": "Deny", "source": {"selector": "!has(role)"}}]}))]), extra.clone());
    let n = negated.policy_set();
    assert_eq!(n.referenced_groups(|_| true).count_ones(..), n.universe().group_count());
    // Rebuild the config with only referenced groups.
    let mut endpoints = vec![];
    for (g, group) in (0..universe.group_count()).filter_map(|g| universe.group(g as u32).map(|x| (g, x))) {
        if referenced.contains(g) {
            let ips: Vec<String> = ["10.1.0.1", "10.1.0.2", "fd00::2", "10.2.0.1", "10.2.0.9", "10.1.0.7", "10.2.0.8"]
                .iter()
                .filter(|ip| universe.owner_of(ip.parse().unwrap()) == Some(g as u32))
                .map(|s| s.to_string())
                .collect();
            let labels: BTreeMap<String, String> = group.labels().filter(|(k, _)| !k.starts_with("projectcalico.org/")).map(|(k, v)| (k.to_string(), v.to_string())).collect();
            endpoints.push(json!({"namespace": group.namespace(), "serviceAccount": group.service_account(), "labels": labels, "ips": ips}));
        }
    }
    let mut config = json!({
        "version": 1,
        "tiers": [{"name": "security", "order": 100}, {"name": "platform", "order": 200, "defaultAction": "Pass"}],
        "policies": policies,
        "endpoints": endpoints,
        "namespaces": [{"name": "prod", "labels": {"env": "prod"}}, {"name": "dev", "labels": {"env": "dev"}}],
        "serviceAccounts": [
            {"namespace": "prod", "name": "web", "labels": {"team": "shop"}},
            {"namespace": "prod", "name": "api", "labels": {"team": "shop", "pci": "yes"}},
            {"namespace": "dev", "name": "tool", "labels": {"team": "ops"}}
        ]
    });
    let reduced = WorkloadPolicy::new(compile(config.take()), &workload("prod", "db", &[("app", "db")]));
    let certs: Vec<Option<String>> = vec![None, Some(spiffe("prod", "web")), Some(spiffe("prod", "api")), Some(spiffe("prod", "batch")), Some(spiffe("dev", "tool")), Some(spiffe("dev", "web"))];
    for from in ["10.1.0.1", "10.1.0.2", "10.2.0.1", "10.2.0.9", "10.1.0.7", "10.2.0.8", OUTSIDE] {
        for cert in &certs {
            for method in ["GET", "POST"] {
                let r = Req { from, cert: cert.as_deref(), method, path: "/", port: Some(8080) };
                assert_eq!(decide(&full, &r), decide(&reduced, &r), "from {from} cert {cert:?} {method}");
            }
        }
    }
}

/// What the NETWORK role does with a connection: (policy set, workload, peer
/// address, certificate, port, expected verdict). Rules with `http` never
/// allow a connection; they only make it "HTTP decides" when some request
/// could be allowed, and never when a Deny or the tier default settles it first.
#[test]
fn connection_verdicts() {
    #[derive(Debug, PartialEq, Eq, Clone, Copy)]
    enum V {
        Allow,
        HttpDecides,
        Deny,
    }
    let tcp_db = json!({
        "version": 1,
        "policies": [
            {"name": "database", "selector": "app == 'database'",
             "ingress": [{"action": "Allow", "protocol": "TCP", "source": {"serviceAccounts": {"names": ["summary"]}}, "destination": {"ports": [2379]}}]}
        ],
        "endpoints": yaobank()["endpoints"].clone(),
        "namespaces": [{"name": "default"}],
    });
    let mixed = json!({
        "version": 1,
        "tiers": [{"name": "security", "order": 1}],
        "policies": [
            {"name": "block-attack", "tier": "security", "order": 1, "selector": "all()",
             "ingress": [{"action": "Deny", "source": {"selector": "app == 'attack'"}}, {"action": "Pass"}]},
            {"name": "web", "selector": "app == 'web'",
             "ingress": [
                {"action": "Allow", "http": {"methods": ["GET"], "paths": [{"prefix": "/public"}]}},
                {"action": "Allow", "source": {"serviceAccounts": {"names": ["summary"]}}}
             ]}
        ],
        "endpoints": [
            {"namespace": "default", "serviceAccount": "summary", "labels": {"app": "summary"}, "ips": ["10.0.0.12"]},
            {"namespace": "default", "serviceAccount": "customer", "labels": {"app": "customer"}, "ips": ["10.0.0.11"]},
            {"namespace": "default", "serviceAccount": "default", "labels": {"app": "attack"}, "ips": ["10.0.0.66"]},
            {"namespace": "default", "serviceAccount": "web", "labels": {"app": "web"}, "ips": ["10.0.0.30"]}
        ],
        "namespaces": [{"name": "default"}],
    });
    let yb = compile(yaobank());
    let db = compile(tcp_db);
    let mx = compile(mixed);
    let customer = WorkloadPolicy::new(yb.clone(), &workload("default", "customer", &[("app", "customer")]));
    let database = WorkloadPolicy::new(yb, &workload("default", "database", &[("app", "database")]));
    let tcp_database = WorkloadPolicy::new(db, &workload("default", "database", &[("app", "database")]));
    let web = WorkloadPolicy::new(mx, &workload("default", "web", &[("app", "web")]));
    let summary = spiffe("default", "summary");
    let customer_id = spiffe("default", "customer");
    /// (what, workload, peer address, certificate, destination port, verdict)
    type Row<'a> = (&'a str, &'a WorkloadPolicy, &'a str, Option<&'a str>, u16, V);
    let rows: &[Row<'_>] = &[
        // YAO Bank: the database allows summary by identity; a TCP client of summary's is allowed.
        ("summary to the database", &database, "10.0.0.12", Some(&summary), 2379, V::Allow),
        ("stolen summary cert from the attack pod", &database, "10.0.0.66", Some(&summary), 2379, V::Deny),
        ("stolen cert from an unknown address", &database, "10.9.9.9", Some(&summary), 2379, V::Deny),
        ("customer to the database", &database, "10.0.0.11", Some(&customer_id), 2379, V::Deny),
        ("plaintext from summary's address", &database, "10.0.0.12", None, 2379, V::Allow),
        // The customer page allows GET from anyone: only HTTP can decide.
        ("anyone to customer: HTTP decides", &customer, "10.0.0.66", None, 8080, V::HttpDecides),
        ("stolen cert to customer: HTTP decides", &customer, "10.0.0.66", Some(&summary), 8080, V::HttpDecides),
        // Ports are part of a connection's facts.
        ("summary to the database's port", &tcp_database, "10.0.0.12", Some(&summary), 2379, V::Allow),
        ("summary to another port", &tcp_database, "10.0.0.12", Some(&summary), 2380, V::Deny),
        // A Deny in an earlier tier settles it before any HTTP rule.
        ("attack pod: denied before HTTP rules", &web, "10.0.0.66", None, 8080, V::Deny),
        ("attack pod with summary's cert: denied", &web, "10.0.0.66", Some(&summary), 8080, V::Deny),
        ("customer: only GET /public could pass", &web, "10.0.0.11", None, 8080, V::HttpDecides),
        ("summary: allowed outright", &web, "10.0.0.12", Some(&summary), 8080, V::Allow),
    ];
    for (name, policy, from, cert, port, want) in rows {
        let mut r = req(from, *cert, "GET", "/");
        r.port = Some(*port);
        let f = RequestFacts { method: None, path: None, ..facts(&r) };
        let got = match policy.decide_connection(&f) {
            ConnectionVerdict::Allow(d) => {
                assert!(d.allowed(), "{name}: Allow carries an allowing decision");
                V::Allow
            }
            ConnectionVerdict::HttpDecides(d) => {
                assert!(!d.allowed(), "{name}: the connection itself is denied");
                V::HttpDecides
            }
            ConnectionVerdict::Deny(d) => {
                assert!(!d.allowed(), "{name}: Deny carries a denying decision");
                V::Deny
            }
        };
        assert_eq!(got, *want, "{name}");
        // Cross-check: "HTTP decides" exactly when the connection is denied but some request is allowed.
        let some_request = ["GET", "POST", "PUT", "DELETE"].iter().flat_map(|m| ["/", "/public", "/public/x", "/admin"].map(|p| (*m, p))).any(|(m, p)| {
            let mut r = req(from, *cert, m, p);
            r.port = Some(*port);
            decide(policy, &r).0 == Verdict::Allow
        });
        if got == V::Deny {
            assert!(!some_request, "{name}: a denied connection has no allowed request");
        }
        if got == V::HttpDecides {
            assert!(some_request, "{name}: some request is allowed");
        }
    }
}
