//! "Which policy decided" (issue #14): each decision is counted under the tier and policy
//! that made it, for HTTP requests and for TCP-chain connections, and a sidecar with Istio's
//! `extraStatTags: [krites_tier, krites_policy]` exports them as Prometheus labels.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use krites_testbed::tcp::{plain_exchange, TcpApp};
use krites_testbed::{Mesh, Pki, Request, Sidecar, SidecarSpec};
use serde_json::json;

const DATABASE: Ipv4Addr = Ipv4Addr::new(127, 0, 41, 13);
const PROMETHEUS_DATABASE: Ipv4Addr = Ipv4Addr::new(127, 0, 41, 23);
const SUMMARY: Ipv4Addr = Ipv4Addr::new(127, 0, 41, 12);
const CUSTOMER: Ipv4Addr = Ipv4Addr::new(127, 0, 41, 11);
const ATTACK: Ipv4Addr = Ipv4Addr::new(127, 0, 41, 66);
/// No pod owns it.
const UNOWNED: Ipv4Addr = Ipv4Addr::new(127, 0, 41, 77);

/// A security tier that blocks the attack pod and passes the rest; in the default tier, a
/// namespaced policy for summary's service account (any request, any connection), a global one
/// for customer's GETs (an HTTP rule: no TCP connection can satisfy it), and one that selects
/// another app (so it gets no counters here).
fn config(database: Ipv4Addr) -> String {
    let ep = |sa: &str, app: &str, ip: Ipv4Addr| {
        json!({"namespace": "default", "serviceAccount": sa, "labels": {"app": app}, "ips": [ip.to_string()]})
    };
    json!({
        "version": 1,
        "tiers": [{"name": "security", "order": 10}],
        "policies": [
            {"name": "security.block-attack", "tier": "security", "selector": "app == 'database'",
             "ingress": [{"action": "Deny", "source": {"nets": [format!("{ATTACK}/32")]}}, {"action": "Pass"}]},
            {"name": "allow-summary", "namespace": "default", "selector": "app == 'database'",
             "ingress": [{"action": "Allow", "source": {"serviceAccounts": {"names": ["summary"]}}}]},
            {"name": "allow.customer-get", "selector": "app == 'database'",
             "ingress": [{"action": "Allow", "source": {"serviceAccounts": {"names": ["customer"]}}, "http": {"methods": ["GET"]}}]},
            {"name": "other-app", "selector": "app == 'other'", "ingress": [{"action": "Allow"}]}
        ],
        "endpoints": [ep("summary", "summary", SUMMARY), ep("customer", "customer", CUSTOMER), ep("database", "database", database), ep("default", "attack", ATTACK)]
    })
    .to_string()
}

/// `krites_tier=.=<tier>;.;[krites_policy=.=<policy>;.;]<metric>` as Envoy's `/stats` shows it.
fn stat(tier: &str, policy: Option<&str>, metric: &str) -> String {
    let policy = policy.map(|p| format!("krites_policy=.={p};.;")).unwrap_or_default();
    format!("wasmcustom.krites_tier=.={tier};.;{policy}{metric}")
}

#[test]
fn decisions_are_counted_by_the_policy_or_tier_that_made_them() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), "cluster.local").unwrap();
    let app = TcpApp::start(IpAddr::V4(Ipv4Addr::LOCALHOST), None).unwrap();
    let spec = SidecarSpec::krites("database", DATABASE, &pki, config(DATABASE), dir.path().join("database")).unwrap();
    let sidecar = Sidecar::start_with(spec, Mesh { tcp_app: Some(app.addr()), ..Mesh::default() }).unwrap();
    // The rig's readiness probes open connections too: count from here.
    let base = sidecar.stats().unwrap();
    let delta = |name: &str| {
        let now = sidecar.stat(name).unwrap();
        now - base.get(name).copied().unwrap_or(0)
    };

    let get = |from: Ipv4Addr, method: &str| Request::from(from).to(sidecar.plain_addr()).method(method).path("/").send().unwrap().status;
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(("summary POST", get(SUMMARY, "POST"), 200));
    }
    for _ in 0..3 {
        statuses.push(("attack GET", get(ATTACK, "GET"), 403));
    }
    statuses.push(("customer GET", get(CUSTOMER, "GET"), 200));
    statuses.push(("customer POST", get(CUSTOMER, "POST"), 403));
    statuses.push(("unowned GET", get(UNOWNED, "GET"), 403));
    for (what, got, want) in &statuses {
        assert_eq!(got, want, "{what}");
    }

    let tcp = sidecar.tcp_plain_addr().unwrap();
    let wait = Duration::from_millis(200);
    let exchange = |from: Ipv4Addr| plain_exchange(IpAddr::V4(from), tcp, b"PING", wait).unwrap();
    assert!(exchange(SUMMARY).reply_text().contains("echo:PING"), "summary's connection is allowed");
    assert!(exchange(ATTACK).closed, "the attack pod's connection is closed");
    assert!(exchange(CUSTOMER).closed, "customer's only rule is an HTTP rule: closed on a TCP chain");

    let want = [
        // HTTP requests.
        (stat("default", Some("default/allow-summary"), "krites_policy_allowed_total"), 2),
        (stat("security", Some("security_block-attack"), "krites_policy_denied_total"), 3),
        (stat("default", Some("allow_customer-get"), "krites_policy_allowed_total"), 1),
        (stat("default", None, "krites_tier_default_denied_total"), 2),
        ("wasmcustom.krites_reason_tier_default_deny_total".to_string(), 2),
        // TCP-chain connections.
        (stat("default", Some("default/allow-summary"), "krites_policy_connections_allowed_total"), 1),
        (stat("security", Some("security_block-attack"), "krites_policy_connections_denied_total"), 1),
        (stat("default", None, "krites_tier_default_connections_denied_total"), 1),
        ("wasmcustom.krites_connections_reason_allow_rule_total".to_string(), 1),
        ("wasmcustom.krites_connections_reason_deny_rule_total".to_string(), 1),
        ("wasmcustom.krites_connections_reason_tier_default_deny_total".to_string(), 1),
    ];
    let mut wrong = Vec::new();
    for (name, count) in &want {
        let got = delta(name);
        println!("{got:3}  {name}");
        if got != *count {
            wrong.push(format!("{name}: {got}, want {count}"));
        }
    }
    let stats = sidecar.stats().unwrap();
    let per_policy: Vec<&String> = stats.keys().filter(|k| k.starts_with("wasmcustom.krites_tier=")).collect();
    println!("{} per-tier/per-policy stats defined: 3 selecting policies x 4 + 2 tiers x 2", per_policy.len());
    assert!(wrong.is_empty(), "{}\n\nstats:\n{per_policy:#?}", wrong.join("\n"));
    assert_eq!(per_policy.len(), 3 * 4 + 2 * 2, "{per_policy:#?}");
    assert!(!stats.keys().any(|k| k.contains("other-app")), "a policy that does not select the workload has no counters");
}

/// Envoy's `/stats/prometheus` turns the tags into labels when the sidecar has Istio's
/// `extraStatTags: [krites_tier, krites_policy]` (the pod annotation
/// `sidecar.istio.io/extraStatTags`; the builder renders it as Istio's
/// `tools/packaging/common/envoy_bootstrap.json` does).
#[test]
fn prometheus_labels_with_istio_extra_stat_tags() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), "cluster.local").unwrap();
    let spec = SidecarSpec::krites("database", PROMETHEUS_DATABASE, &pki, config(PROMETHEUS_DATABASE), dir.path().join("database")).unwrap();
    let mesh = Mesh { extra_stat_tags: vec!["krites_tier".into(), "krites_policy".into()], ..Mesh::default() };
    let sidecar = Sidecar::start_with(spec, mesh).unwrap();
    // The rig's readiness probes are requests too: count from here.
    let before = prometheus_series(&sidecar.prometheus().unwrap());

    let send = |from: Ipv4Addr| Request::from(from).to(sidecar.plain_addr()).path("/").send().unwrap().status;
    let statuses: Vec<u16> = [SUMMARY, SUMMARY, ATTACK, ATTACK, ATTACK, UNOWNED].iter().map(|&ip| send(ip)).collect();
    assert_eq!(statuses, [200, 200, 403, 403, 403, 403]);

    let text = sidecar.prometheus().unwrap();
    let series = prometheus_series(&text);
    for line in text.lines().filter(|l| l.contains("krites_tier=\"")) {
        println!("{line}");
    }
    let labels = |tier: &str, policy: Option<&str>| {
        let mut l = BTreeMap::from([("krites_tier".to_string(), tier.to_string())]);
        if let Some(p) = policy {
            l.insert("krites_policy".to_string(), p.to_string());
        }
        l
    };
    let value = |all: &[(String, BTreeMap<String, String>, u64)], metric: &str, labels: &BTreeMap<String, String>| {
        all.iter().find(|(m, l, _)| m == metric && l == labels).map(|s| s.2)
    };
    let want = [
        ("krites_policy_allowed_total", labels("default", Some("default/allow-summary")), 2),
        ("krites_policy_denied_total", labels("security", Some("security_block-attack")), 3),
        ("krites_policy_allowed_total", labels("default", Some("allow_customer-get")), 0),
        ("krites_tier_default_denied_total", labels("default", None), 1),
    ];
    for (metric, labels, count) in &want {
        let got = value(&series, metric, labels).map(|now| now - value(&before, metric, labels).unwrap_or(0));
        println!("{metric}{labels:?} = {got:?}");
        assert_eq!(got, Some(*count), "{metric}{labels:?} in:\n{}", text.lines().filter(|l| l.contains("krites_")).collect::<Vec<_>>().join("\n"));
    }
    assert!(!text.contains("krites_tier___"), "every per-policy name had its tags extracted");
}

/// (metric, labels, value) of each sample line.
fn prometheus_series(text: &str) -> Vec<(String, BTreeMap<String, String>, u64)> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<u64>() else { continue };
        let (metric, labels) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split("\",")
            .filter(|kv| !kv.is_empty())
            .filter_map(|kv| kv.split_once("=\"").map(|(k, v)| (k.to_string(), v.trim_end_matches('"').to_string())))
            .collect();
        out.push((metric.to_string(), labels, value));
    }
    out
}
