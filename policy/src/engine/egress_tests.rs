//! The egress role, table-driven, on BookInfo's shape: reviews may call
//! ratings and nothing else. Destinations are pod addresses, Service
//! ClusterIPs, Istio outbound clusters, and addresses outside the cluster.

use serde_json::{json, Value};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::tests::{compile, workload};
use super::*;
use crate::PluginConfig;

const PRODUCTPAGE: &str = "10.1.0.10";
const REVIEWS_V1: &str = "10.1.0.20";
const RATINGS_A: &str = "10.1.0.30";
const RATINGS_B: &str = "10.1.0.31";
const DETAILS: &str = "10.1.0.40";
const OTHER_RATINGS: &str = "10.2.0.30"; // app=ratings in namespace other
const RATINGS_VIP: &str = "10.96.0.30";
const DETAILS_VIP: &str = "10.96.0.40";
const MIXED_VIP: &str = "10.96.0.50"; // endpoints: a ratings pod and the details pod
const EMPTY_VIP: &str = "10.96.0.60"; // no endpoints yet
const PARTNER: &str = "192.0.2.7"; // GlobalNetworkSet partners
const EXFIL: &str = "203.0.113.9";
const MIRROR: &str = "198.51.100.1";

const RATINGS_CLUSTER: &str = "outbound|9080||ratings.bookinfo.svc.cluster.local";
const DETAILS_CLUSTER: &str = "outbound|9080||details.bookinfo.svc.cluster.local";
const HEADLESS_CLUSTER: &str = "outbound|9080||ratings-headless.bookinfo.svc.cluster.local";
const EXTERNAL_CLUSTER: &str = "outbound|443||api.example.com";

fn bookinfo(policies: Value) -> Arc<PolicySet> {
    let endpoints = |ip: &str, port: u16| json!({"port": port, "ips": [ip]});
    compile(json!({
        "version": 1,
        "tiers": [{"name": "security", "order": 100}],
        "policies": policies,
        "endpoints": [
            {"namespace": "bookinfo", "serviceAccount": "bookinfo-productpage", "labels": {"app": "productpage"}, "ips": [PRODUCTPAGE]},
            {"namespace": "bookinfo", "serviceAccount": "bookinfo-reviews", "labels": {"app": "reviews", "version": "v1"}, "ips": [REVIEWS_V1]},
            {"namespace": "bookinfo", "serviceAccount": "bookinfo-ratings", "labels": {"app": "ratings"}, "ips": [RATINGS_A, RATINGS_B]},
            {"namespace": "bookinfo", "serviceAccount": "bookinfo-details", "labels": {"app": "details"}, "ips": [DETAILS]},
            {"namespace": "other", "serviceAccount": "default", "labels": {"app": "ratings"}, "ips": [OTHER_RATINGS]}
        ],
        "namespaces": [{"name": "bookinfo", "labels": {"team": "books"}}, {"name": "other"}],
        "networkSets": [{"name": "partners", "labels": {"kind": "partner"}, "nets": ["192.0.2.0/24"]}],
        "services": [
            {"namespace": "bookinfo", "name": "ratings", "clusterIPs": [RATINGS_VIP],
             "ports": [{"port": 9080, "endpoints": [{"port": 9080, "ips": [RATINGS_A, RATINGS_B]}]}]},
            {"namespace": "bookinfo", "name": "details", "clusterIPs": [DETAILS_VIP],
             "ports": [{"port": 9080, "endpoints": [endpoints(DETAILS, 9080)]}]},
            {"namespace": "bookinfo", "name": "mixed", "clusterIPs": [MIXED_VIP],
             "ports": [{"port": 9080, "endpoints": [endpoints(RATINGS_A, 9080), endpoints(DETAILS, 9080)]}]},
            {"namespace": "bookinfo", "name": "ratings-headless",
             "ports": [{"port": 9080, "endpoints": [{"port": 9080, "ips": [RATINGS_A, RATINGS_B]}]}]},
            {"namespace": "bookinfo", "name": "empty", "clusterIPs": [EMPTY_VIP], "ports": [{"port": 9080}]},
            {"namespace": "bookinfo", "name": "reviews", "clusterIPs": ["10.96.0.20"],
             "ports": [{"port": 9080, "endpoints": [endpoints(REVIEWS_V1, 9080)]}]}
        ]
    }))
}

fn reviews() -> Workload {
    workload("bookinfo", "bookinfo-reviews", &[("app", "reviews"), ("version", "v1")])
}

/// reviews may call ratings on 9080, nothing else (a namespaced Calico policy).
fn reviews_to_ratings() -> Value {
    json!([{"name": "reviews-egress", "namespace": "bookinfo", "selector": "app == 'reviews'", "types": ["Egress"],
            "egress": [{"action": "Allow", "protocol": "TCP", "destination": {"selector": "app == 'ratings'", "ports": [9080]}}]}])
}

/// A NetworkPolicy in bookinfo: reviews may call (or not) the `services` match.
fn svc_rule(action: &str, services: Value) -> Value {
    json!([{"name": "s", "namespace": "bookinfo", "selector": "app == 'reviews'", "types": ["Egress"],
            "egress": [{"action": action, "destination": {"services": services}}]}])
}

/// A GlobalNetworkPolicy selecting reviews with these egress rules.
fn global(egress: Value) -> Value {
    json!([{"name": "g", "selector": "app == 'reviews'", "types": ["Egress"], "egress": egress}])
}

fn ip(s: &str) -> Option<IpAddr> {
    s.parse().ok()
}

fn to(address: &str, port: u16) -> Destination<'static> {
    Destination::Address { ip: ip(address), port: Some(port) }
}

fn via(cluster: &'static str, address: &str, port: u16) -> Destination<'static> {
    Destination::Cluster { name: cluster, ip: ip(address), port: Some(port) }
}

/// name, policies, destination, HTTP method and path, verdict, decided by.
type Row = (&'static str, Value, Destination<'static>, Option<(&'static str, &'static str)>, Verdict, &'static str);

fn facts<'r>(destination: Destination<'r>, http: Option<(&'r str, &'r str)>) -> EgressFacts<'r> {
    EgressFacts {
        source_ip: ip(REVIEWS_V1),
        source_port: Some(40000),
        destination,
        method: http.map(|(m, _)| m),
        path: http.map(|(_, p)| p),
    }
}

#[test]
fn egress_semantics_table() {
    use Verdict::*;
    let allowed = "default/bookinfo/reviews-egress/egress[0]";
    let default_deny = "tier/default";
    let get = Some(("GET", "/ratings/0"));
    #[rustfmt::skip]
    let rows: Vec<Row> = vec![
        // ---- pod addresses: the pod's identity
        ("ratings pod", reviews_to_ratings(), to(RATINGS_A, 9080), None, Allow, allowed),
        ("ratings pod, other port", reviews_to_ratings(), to(RATINGS_A, 8080), None, Deny, default_deny),
        ("details pod", reviews_to_ratings(), to(DETAILS, 9080), None, Deny, default_deny),
        ("namespaced selector stays in its namespace", reviews_to_ratings(), to(OTHER_RATINGS, 9080), None, Deny, default_deny),
        ("IPv4-mapped IPv6 pod address", reviews_to_ratings(), Destination::Address { ip: ip("::ffff:10.1.0.30"), port: Some(9080) }, None, Allow, allowed),
        // ---- Service ClusterIPs: every endpoint must be allowed
        ("ratings ClusterIP: both endpoints are ratings", reviews_to_ratings(), to(RATINGS_VIP, 9080), None, Allow, allowed),
        ("details ClusterIP", reviews_to_ratings(), to(DETAILS_VIP, 9080), None, Deny, default_deny),
        ("a Service one endpoint of which is not ratings", reviews_to_ratings(), to(MIXED_VIP, 9080), None, Deny, default_deny),
        ("a Service with no endpoints yet", reviews_to_ratings(), to(EMPTY_VIP, 9080), None, Deny, default_deny),
        ("ClusterIP on a port it does not serve", reviews_to_ratings(), to(RATINGS_VIP, 8080), None, Deny, default_deny),
        // ---- Istio outbound clusters: where the route sends it, not the dialled address
        ("cluster ratings, dialled details' ClusterIP", reviews_to_ratings(), via(RATINGS_CLUSTER, DETAILS_VIP, 9080), get, Allow, allowed),
        ("cluster details, dialled ratings' ClusterIP (Host header)", reviews_to_ratings(), via(DETAILS_CLUSTER, RATINGS_VIP, 9080), get, Deny, default_deny),
        ("headless cluster: the pod dialled", reviews_to_ratings(), via(HEADLESS_CLUSTER, RATINGS_B, 9080), None, Allow, allowed),
        ("headless cluster to a details pod", reviews_to_ratings(), via(HEADLESS_CLUSTER, DETAILS, 9080), None, Deny, default_deny),
        ("PassthroughCluster to a ratings pod", reviews_to_ratings(), via("PassthroughCluster", RATINGS_B, 9080), None, Allow, allowed),
        // ---- outside the cluster
        ("exfiltration to an outside address", reviews_to_ratings(), via("PassthroughCluster", EXFIL, 443), None, Deny, default_deny),
        ("a ServiceEntry host resolved by DNS", reviews_to_ratings(), via(EXTERNAL_CLUSTER, EXFIL, 443), None, Deny, default_deny),
        ("no policy selects productpage's egress... (reviews here: none selects it)", json!([]), to(EXFIL, 443), None, Allow, "profile"),
        ("nets allow an outside range", global(json!([{"action": "Allow", "destination": {"nets": ["198.51.100.0/24"]}}])),
         to(MIRROR, 443), None, Allow, "default/g/egress[0]"),
        ("nets: the unknown address of a DNS ServiceEntry is not in them", global(json!([{"action": "Allow", "destination": {"nets": ["198.51.100.0/24"]}}])),
         via(EXTERNAL_CLUSTER, MIRROR, 443), None, Deny, default_deny),
        ("ports alone grant any address, a DNS host too", global(json!([{"action": "Allow", "protocol": "TCP", "destination": {"ports": [443]}}])),
         via(EXTERNAL_CLUSTER, EXFIL, 443), None, Allow, "default/g/egress[0]"),
        ("notNets allow all but a range", global(json!([{"action": "Allow", "destination": {"notNets": ["203.0.113.0/24"]}}])),
         to(MIRROR, 80), None, Allow, "default/g/egress[0]"),
        ("notNets: the excluded range", global(json!([{"action": "Allow", "destination": {"notNets": ["203.0.113.0/24"]}}])),
         to(EXFIL, 80), None, Deny, default_deny),
        ("a Deny on nets matches a host not known here", global(json!([
            {"action": "Deny", "destination": {"nets": ["203.0.113.0/24"]}}, {"action": "Allow"}])),
         via(EXTERNAL_CLUSTER, MIRROR, 443), None, Deny, "default/g/egress[0]"),
        // ---- order, Deny, Pass, restricting rules on Services
        ("Deny before Allow", global(json!([
            {"action": "Deny", "destination": {"selector": "app == 'details'"}}, {"action": "Allow"}])),
         to(DETAILS_VIP, 9080), None, Deny, "default/g/egress[0]"),
        ("a restricting rule matches if any endpoint does", global(json!([
            {"action": "Deny", "destination": {"selector": "app == 'details'"}}, {"action": "Allow"}])),
         to(MIXED_VIP, 9080), None, Deny, "default/g/egress[0]"),
        ("Allow after a Deny that no endpoint meets", global(json!([
            {"action": "Deny", "destination": {"selector": "app == 'details'"}}, {"action": "Allow"}])),
         to(RATINGS_VIP, 9080), None, Allow, "default/g/egress[1]"),
        ("nets read each endpoint, not one per pod group", global(json!([{"action": "Allow", "destination": {"notNets": ["10.1.0.31/32"]}}])),
         to(RATINGS_VIP, 9080), None, Deny, default_deny),
        ("nets: the pod the rule leaves in", global(json!([{"action": "Allow", "destination": {"notNets": ["10.1.0.31/32"]}}])),
         to(RATINGS_A, 9080), None, Allow, "default/g/egress[0]"),
        ("namespaceSelector all() reaches other namespaces", global(json!([
            {"action": "Allow", "destination": {"selector": "app == 'ratings'", "namespaceSelector": "all()"}}])),
         to(OTHER_RATINGS, 9080), None, Allow, "default/g/egress[0]"),
        ("serviceAccounts names", global(json!([
            {"action": "Allow", "destination": {"serviceAccounts": {"names": ["bookinfo-ratings"]}}}])),
         to(RATINGS_VIP, 9080), None, Allow, "default/g/egress[0]"),
        ("serviceAccounts names: an outside address has none", global(json!([
            {"action": "Allow", "destination": {"serviceAccounts": {"names": ["bookinfo-ratings"]}}}])),
         to(EXFIL, 9080), None, Deny, default_deny),
        ("notSelector admits an outside address", global(json!([
            {"action": "Allow", "destination": {"notSelector": "app == 'details'"}}])),
         to(EXFIL, 80), None, Allow, "default/g/egress[0]"),
        ("a network set selected by its labels", global(json!([
            {"action": "Allow", "destination": {"selector": "kind == 'partner'"}}])),
         to(PARTNER, 443), None, Allow, "default/g/egress[0]"),
        ("source clauses name this workload", global(json!([
            {"action": "Allow", "source": {"selector": "app == 'productpage'"}}])),
         to(RATINGS_A, 9080), None, Deny, default_deny),
        ("source nets hold this workload's address", global(json!([
            {"action": "Allow", "source": {"nets": ["10.1.0.0/24"]}}])),
         to(RATINGS_A, 9080), None, Allow, "default/g/egress[0]"),
        ("Pass to a later tier", json!([
            {"name": "sec", "tier": "security", "selector": "app == 'reviews'", "types": ["Egress"],
             "egress": [{"action": "Pass", "destination": {"selector": "app == 'ratings'"}}]},
            {"name": "g", "selector": "all()", "types": ["Egress"], "egress": [{"action": "Allow"}]}]),
         to(RATINGS_A, 9080), None, Allow, "default/g/egress[0]"),
        ("no Pass: the tier's default denies", json!([
            {"name": "sec", "tier": "security", "selector": "app == 'reviews'", "types": ["Egress"],
             "egress": [{"action": "Pass", "destination": {"selector": "app == 'ratings'"}}]},
            {"name": "g", "selector": "all()", "types": ["Egress"], "egress": [{"action": "Allow"}]}]),
         to(DETAILS, 9080), None, Deny, "tier/security"),
        // ---- services: {name, namespace}: the Service's endpoints, each on its port
        ("services: ratings by ClusterIP", svc_rule("Allow", json!({"name": "ratings"})),
         to(RATINGS_VIP, 9080), None, Allow, "default/bookinfo/s/egress[0]"),
        ("services: a ratings pod dialled directly", svc_rule("Allow", json!({"name": "ratings"})),
         to(RATINGS_B, 9080), None, Allow, "default/bookinfo/s/egress[0]"),
        ("services: a ratings pod on a port the Service does not forward to", svc_rule("Allow", json!({"name": "ratings"})),
         to(RATINGS_B, 8080), None, Deny, default_deny),
        ("services: details", svc_rule("Allow", json!({"name": "ratings"})),
         to(DETAILS_VIP, 9080), None, Deny, default_deny),
        ("services: a Service one endpoint of which is not ratings'", svc_rule("Allow", json!({"name": "ratings"})),
         to(MIXED_VIP, 9080), None, Deny, default_deny),
        ("services: by outbound cluster", svc_rule("Allow", json!({"name": "ratings", "namespace": "bookinfo"})),
         via(RATINGS_CLUSTER, DETAILS_VIP, 9080), get, Allow, "default/bookinfo/s/egress[0]"),
        ("services: a Service the config does not have matches nothing", svc_rule("Allow", json!({"name": "ghost"})),
         to(RATINGS_VIP, 9080), None, Deny, default_deny),
        ("services: a Deny matches if any endpoint is the Service's", json!([{"name": "s", "namespace": "bookinfo", "selector": "app == 'reviews'", "types": ["Egress"],
            "egress": [{"action": "Deny", "destination": {"services": {"name": "details"}}}, {"action": "Allow"}]}]),
         to(MIXED_VIP, 9080), None, Deny, "default/bookinfo/s/egress[0]"),
        ("services: a Deny no endpoint meets", json!([{"name": "s", "namespace": "bookinfo", "selector": "app == 'reviews'", "types": ["Egress"],
            "egress": [{"action": "Deny", "destination": {"services": {"name": "details"}}}, {"action": "Allow"}]}]),
         to(RATINGS_VIP, 9080), None, Allow, "default/bookinfo/s/egress[1]"),
        ("source services: this workload is an endpoint of reviews", global(json!([
            {"action": "Deny", "source": {"services": {"name": "reviews", "namespace": "bookinfo"}}}, {"action": "Allow"}])),
         to(RATINGS_A, 9080), None, Deny, "default/g/egress[0]"),
        ("source services: not an endpoint of details", global(json!([
            {"action": "Deny", "source": {"services": {"name": "details", "namespace": "bookinfo"}}}, {"action": "Allow"}])),
         to(RATINGS_A, 9080), None, Allow, "default/g/egress[1]"),
        // ---- which policies apply
        ("an Ingress-only policy's egress rules are ignored", json!([
            {"name": "g", "selector": "app == 'reviews'", "types": ["Ingress"], "egress": [{"action": "Deny"}]}]),
         to(EXFIL, 443), None, Allow, "profile"),
        ("types absent, only egress rules: Egress", json!([
            {"name": "g", "selector": "app == 'reviews'", "egress": [{"action": "Deny", "destination": {"nets": ["203.0.113.0/24"]}}]}]),
         to(EXFIL, 443), None, Deny, "default/g/egress[0]"),
        ("an Egress policy with no rules denies all", json!([{"name": "g", "selector": "app == 'reviews'", "types": ["Egress"]}]),
         to(RATINGS_A, 9080), None, Deny, default_deny),
        ("a policy not selecting reviews", json!([{"name": "g", "selector": "app == 'details'", "types": ["Egress"]}]),
         to(EXFIL, 443), None, Allow, "profile"),
        // ---- http (a Krites extension on egress)
        ("http GET to ratings", global(json!([
            {"action": "Allow", "destination": {"selector": "app == 'ratings'"}, "http": {"methods": ["GET"], "paths": [{"prefix": "/ratings"}]}}])),
         via(RATINGS_CLUSTER, RATINGS_VIP, 9080), get, Allow, "default/g/egress[0]"),
        ("http POST to ratings", global(json!([
            {"action": "Allow", "destination": {"selector": "app == 'ratings'"}, "http": {"methods": ["GET"]}}])),
         via(RATINGS_CLUSTER, RATINGS_VIP, 9080), Some(("POST", "/ratings/0")), Deny, default_deny),
        ("http rule: a path trick", global(json!([
            {"action": "Allow", "destination": {"selector": "app == 'ratings'"}, "http": {"paths": [{"prefix": "/ratings"}]}}])),
         via(RATINGS_CLUSTER, RATINGS_VIP, 9080), Some(("GET", "/ratings/../admin")), Deny, default_deny),
        ("http rule: a connection has no request", global(json!([
            {"action": "Allow", "destination": {"selector": "app == 'ratings'"}, "http": {"methods": ["GET"]}}])),
         to(RATINGS_VIP, 9080), None, Deny, default_deny),
    ];
    for (name, policies, destination, http, want, by) in rows {
        let egress = EgressPolicy::new(bookinfo(policies), &reviews());
        let got = egress.decide(&facts(destination, http));
        assert_eq!((got.verdict, got.decided_by().as_str()), (want, by), "{name}: {got}");
    }
}

#[test]
fn a_service_decision_names_the_endpoint_denied() {
    let egress = EgressPolicy::new(bookinfo(reviews_to_ratings()), &reviews());
    let got = egress.decide(&facts(to(MIXED_VIP, 9080), None));
    assert_eq!(got.target.ip, ip(DETAILS));
    assert_eq!(got.service.map(|s| s.name.as_str()), Some("mixed"));
    let text = got.to_string();
    assert!(text.starts_with("DENY tier/default: no egress rule matched"), "{text}");
    assert!(text.contains("to 10.1.0.40:9080, a pod of bookinfo/bookinfo-details; through Service bookinfo/mixed"), "{text}");
    let exfil = egress.decide(&facts(via(EXTERNAL_CLUSTER, EXFIL, 443), None)).to_string();
    assert!(exfil.contains("to an address not known here, port 443"), "{exfil}");
}

#[test]
fn log_rules_are_seen_and_walking_goes_on() {
    let egress = EgressPolicy::new(
        bookinfo(global(json!([{"action": "Log", "destination": {"nets": ["203.0.113.0/24"]}}, {"action": "Allow"}]))),
        &reviews(),
    );
    let mut logged = Vec::new();
    let got = egress.decide_logging(&facts(to(EXFIL, 443), None), &mut |r| logged.push(r.id.clone()));
    assert!(got.allowed());
    assert_eq!(logged, ["default/g/egress[0]"]);
}

#[test]
fn ingress_and_egress_rules_of_one_policy_stay_apart() {
    let set = bookinfo(json!([{"name": "both", "namespace": "bookinfo", "selector": "app == 'reviews'", "types": ["Ingress", "Egress"],
        "ingress": [{"action": "Allow", "source": {"selector": "app == 'productpage'"}}],
        "egress": [{"action": "Allow", "destination": {"selector": "app == 'ratings'"}}]}]));
    let policy = set.policies().first().expect("one policy");
    assert_eq!((policy.rules.len(), policy.egress_rules.len()), (1, 1));
    let ids: Vec<&str> = set.rules().iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["default/bookinfo/both/ingress[0]", "default/bookinfo/both/egress[0]"]);
    // Ingress: productpage may call reviews; the egress rule plays no part.
    let ingress = WorkloadPolicy::new(Arc::clone(&set), &reviews());
    let from = |ip: &str| RequestFacts::http(ip.parse().expect("ip"), Peer::Plaintext, "GET", "/");
    assert!(ingress.decide(&from(PRODUCTPAGE)).allowed());
    assert!(!ingress.decide(&from(RATINGS_A)).allowed());
    let egress = EgressPolicy::new(set, &reviews());
    assert!(egress.decide(&facts(to(RATINGS_A, 9080), None)).allowed());
    assert!(!egress.decide(&facts(to(PRODUCTPAGE, 9080), None)).allowed());
}

#[test]
fn egress_config_errors_name_the_field() {
    let errors = |egress: Value| {
        let config = json!({"version": 1, "policies": [{"name": "p", "namespace": "bookinfo", "types": ["Egress"], "egress": egress}]});
        let config = PluginConfig::from_json(config.to_string().as_bytes()).expect("shape");
        PolicySet::from_config(&config).err().map(|e| e.to_string()).unwrap_or_default()
    };
    let named = errors(json!([{"action": "Allow", "protocol": "TCP", "destination": {"ports": ["http"]}}]));
    assert!(named.contains("NetworkPolicy/bookinfo/p: spec.egress[0].destination.ports[0]: named port \"http\""), "{named}");
    let http = errors(json!([{"action": "Deny", "http": {"methods": ["GET"]}}]));
    assert!(http.contains("spec.egress[0].http: HTTP match is only allowed on Allow rules"), "{http}");
    for (destination, field, problem) in [
        (json!({"services": {"name": "ratings"}, "selector": "app == 'x'"}), "spec.egress[0].destination.selector", "cannot be combined with services"),
        (json!({"services": {"name": "ratings"}, "ports": [9080]}), "spec.egress[0].destination.ports", "cannot be combined with services"),
        (json!({"services": {"namespace": "bookinfo"}}), "spec.egress[0].destination.services.name", "required"),
        (json!({"services": {"name": "ratings", "port": 1}}), "spec.egress[0].destination.services.port", "unknown field"),
        (json!({"services": "ratings"}), "spec.egress[0].destination.services", "must be an object"),
    ] {
        let got = errors(json!([{"action": "Allow", "protocol": "TCP", "destination": destination}]));
        assert!(got.contains(&format!("NetworkPolicy/bookinfo/p: {field}: {problem}")), "{field}: {got}");
    }
    let global = |rule: Value| {
        let config = json!({"version": 1, "policies": [{"name": "g", "types": ["Ingress", "Egress"], "ingress": rule.get("ingress").cloned().unwrap_or(json!([])), "egress": rule.get("egress").cloned().unwrap_or(json!([]))}]});
        let config = PluginConfig::from_json(config.to_string().as_bytes()).expect("shape");
        PolicySet::from_config(&config).err().map(|e| e.to_string()).unwrap_or_default()
    };
    let no_ns = global(json!({"egress": [{"action": "Allow", "destination": {"services": {"name": "ratings"}}}]}));
    assert!(no_ns.contains("GlobalNetworkPolicy/g: spec.egress[0].destination.services.namespace: required in a global policy"), "{no_ns}");
    let on_ingress = global(json!({"ingress": [{"action": "Allow", "destination": {"services": {"name": "x", "namespace": "y"}}}]}));
    assert!(on_ingress.contains("spec.ingress[0].destination.services: a destination Service match is only valid on egress rules"), "{on_ingress}");
    let services = |s: Value| {
        let config = json!({"version": 1, "services": s});
        let config = PluginConfig::from_json(config.to_string().as_bytes()).expect("shape");
        PolicySet::from_config(&config).err().map(|e| e.to_string()).unwrap_or_default()
    };
    let dup = services(json!([{"namespace": "a", "name": "x", "clusterIPs": ["10.96.0.1"]}, {"namespace": "a", "name": "y", "clusterIPs": ["10.96.0.1"]}]));
    assert!(dup.contains("Service/a/y: spec.clusterIPs[0]: 10.96.0.1 is already the ClusterIP of Service/a/x"), "{dup}");
    let bad = services(json!([{"namespace": "a", "name": "x", "ports": [{"port": 80, "endpoints": [{"port": 8080, "ips": ["nope"]}]}]}]));
    assert!(bad.contains("Service/a/x: spec.ports[0].endpoints[0].ips[0]: \"nope\" is not an IP address"), "{bad}");
}

/// Ingress from a source Service: its endpoints' addresses, with the
/// two-factor rule (details accepts what ratings' endpoints send).
#[test]
fn source_services_on_ingress_keep_two_factors() {
    let policies = |rules: Value| {
        json!([{"name": "d", "namespace": "bookinfo", "selector": "app == 'details'", "ingress": rules}])
    };
    let allow = json!([{"action": "Allow", "source": {"services": {"name": "ratings"}}}]);
    let deny_then_allow = json!([{"action": "Deny", "source": {"services": {"name": "ratings"}}}, {"action": "Allow"}]);
    let spiffe = |sa: &str| format!("spiffe://cluster.local/ns/bookinfo/sa/{sa}");
    let (ratings, productpage) = (spiffe("bookinfo-ratings"), spiffe("bookinfo-productpage"));
    // name, rules, source address, certificate (None: plaintext), allowed, decided by
    type IngressRow<'a> = (&'a str, &'a Value, &'a str, Option<&'a str>, bool, &'a str);
    let rows: Vec<IngressRow<'_>> = vec![
        ("plaintext from a ratings endpoint", &allow, RATINGS_A, None, true, "default/bookinfo/d/ingress[0]"),
        ("ratings' certificate from its endpoint", &allow, RATINGS_B, Some(&ratings), true, "default/bookinfo/d/ingress[0]"),
        ("a stolen certificate from a ratings endpoint", &allow, RATINGS_A, Some(&productpage), false, "tier/default"),
        ("ratings' certificate from productpage's address", &allow, PRODUCTPAGE, Some(&ratings), false, "tier/default"),
        ("a ratings-labelled pod that is no endpoint", &allow, OTHER_RATINGS, None, false, "tier/default"),
        ("a Deny: the address alone satisfies it", &deny_then_allow, RATINGS_A, Some(&productpage), false, "default/bookinfo/d/ingress[0]"),
        ("a Deny: others pass on", &deny_then_allow, PRODUCTPAGE, None, true, "default/bookinfo/d/ingress[1]"),
    ];
    let details = workload("bookinfo", "bookinfo-details", &[("app", "details")]);
    for (name, rules, from, cert, allowed, by) in rows {
        let set = bookinfo(policies(rules.clone()));
        // The endpoints' owners stay in a pruned config, so the factors can be compared.
        let referenced = set.referenced_groups(|_| true);
        let ratings_group = set.universe().owner_of(RATINGS_A.parse().expect("ip")).expect("owner");
        assert!(referenced.contains(ratings_group as usize), "{name}");
        let policy = WorkloadPolicy::new(Arc::clone(&set), &details);
        let peer = cert.map_or(Peer::Plaintext, |c| Peer::Mtls { uri_san: Some(c) });
        let facts = RequestFacts::http(from.parse().expect("ip"), peer, "GET", "/");
        let got = policy.decide(&facts);
        assert_eq!((got.allowed(), got.decided_by().to_string().as_str()), (allowed, by), "{name}: {got}");
        assert_eq!(got.allowed(), policy.decide_unindexed(&facts).allowed(), "{name}: indexed and unindexed agree");
    }
}

#[test]
fn a_connection_is_decided_by_its_own_walk() {
    // reviews: GET to ratings over HTTP, raw TCP to the outside mirror.
    let egress = EgressPolicy::new(
        bookinfo(global(json!([
            {"action": "Allow", "destination": {"selector": "app == 'ratings'"}, "http": {"methods": ["GET"]}},
            {"action": "Allow", "destination": {"nets": ["198.51.100.0/24"]}}]))),
        &reviews(),
    );
    let kind = |v: EgressConnectionVerdict<'_>| match v {
        EgressConnectionVerdict::Allow(_) => "allow",
        EgressConnectionVerdict::HttpDecides(_) => "http decides",
        EgressConnectionVerdict::Deny(_) => "deny",
    };
    assert_eq!(kind(egress.decide_connection(&facts(to(MIRROR, 5432), None))), "allow", "a non-http rule allows the connection");
    assert_eq!(kind(egress.decide_connection(&facts(to(RATINGS_VIP, 9080), None))), "http decides");
    assert_eq!(kind(egress.decide_connection(&facts(to(DETAILS_VIP, 9080), None))), "deny");
    // A request's method and path play no part in a connection's decision.
    assert_eq!(kind(egress.decide_connection(&facts(to(RATINGS_VIP, 9080), Some(("GET", "/"))))), "http decides");
}

#[test]
fn a_remembered_service_verdict_is_the_walked_one() {
    // Cacheable (no rule reads HTTP, the source or logs) and address-reading
    // (nets): every endpoint is walked the first time.
    let policies = json!([
        {"name": "no-exfil", "tier": "security", "selector": "all()", "types": ["Egress"],
         "egress": [{"action": "Deny", "destination": {"nets": ["203.0.113.0/24"]}}, {"action": "Pass"}]},
        {"name": "reviews", "namespace": "bookinfo", "selector": "app == 'reviews'", "types": ["Egress"],
         "egress": [{"action": "Allow", "destination": {"selector": "app == 'ratings'"}}]}]);
    let egress = EgressPolicy::new(bookinfo(policies), &reviews());
    for destination in [to(RATINGS_VIP, 9080), to(MIXED_VIP, 9080), via(RATINGS_CLUSTER, DETAILS_VIP, 9080), to(DETAILS_VIP, 9080)] {
        let first = egress.decide(&facts(destination, None)).to_string();
        let again = egress.decide(&facts(destination, None)).to_string();
        assert_eq!(first, again);
    }
    assert!(egress.decide(&facts(to(RATINGS_VIP, 9080), None)).allowed());
    assert!(!egress.decide(&facts(to(MIXED_VIP, 9080), None)).allowed());
}
