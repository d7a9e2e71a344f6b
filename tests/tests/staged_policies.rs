//! Staged policies on live traffic (issue #14 item 4): YAO Bank's policies enforced on the
//! database's sidecar, with two staged changes next to them, a StagedGlobalNetworkPolicy that
//! would quarantine summary (Set, in an earlier tier) and the staged deletion of the database
//! policy. Every request and TCP-chain connection keeps its enforced verdict; the differences
//! are counted per staged policy and logged (rate-limited).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use krites_testbed::tcp::{plain_exchange, TcpApp};
use krites_testbed::yaobank::POLICY_CONFIG;
use krites_testbed::{Mesh, Pki, Request, Sidecar, SidecarSpec};
use serde_json::{json, Value};

const DATABASE: Ipv4Addr = Ipv4Addr::new(127, 0, 43, 13);
const SUMMARY: Ipv4Addr = Ipv4Addr::new(127, 0, 43, 12);
const CUSTOMER: Ipv4Addr = Ipv4Addr::new(127, 0, 43, 11);

/// YAO Bank's plugin config (the tutorial's three GlobalNetworkPolicies) on this test's
/// addresses, with a security tier and the staged policies.
fn config() -> String {
    let mut config: Value = serde_json::from_str(POLICY_CONFIG).unwrap();
    let ep = |sa: &str, ip: Ipv4Addr| json!({"namespace": "default", "serviceAccount": sa, "labels": {"app": sa, "version": "v1"}, "ips": [ip.to_string()]});
    config["endpoints"] = json!([ep("customer", CUSTOMER), ep("summary", SUMMARY), ep("database", DATABASE)]);
    config["tiers"] = json!([{"name": "security", "order": 10}]);
    config["stagedPolicies"] = json!([
        {"name": "database", "kind": "StagedGlobalNetworkPolicy", "stagedAction": "Delete"},
        {"name": "security.quarantine-summary", "kind": "StagedGlobalNetworkPolicy", "stagedAction": "Set", "tier": "security",
         "selector": "app == 'database'", "types": ["Ingress"],
         "ingress": [{"action": "Deny", "source": {"serviceAccounts": {"names": ["summary"]}}}, {"action": "Pass"}]}
    ]);
    config.to_string()
}

/// `krites_tier=.=<tier>;.;krites_policy=.=<policy>;.;<metric>` as Envoy's `/stats` shows it.
fn stat(tier: &str, policy: &str, metric: &str) -> String {
    format!("wasmcustom.krites_tier=.={tier};.;krites_policy=.={policy};.;{metric}")
}

#[test]
fn staged_policies_count_and_log_differences_without_changing_a_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), "cluster.local").unwrap();
    let app = TcpApp::start(IpAddr::V4(Ipv4Addr::LOCALHOST), None).unwrap();
    let spec = SidecarSpec::krites("database", DATABASE, &pki, config(), dir.path().join("database")).unwrap();
    let mesh = Mesh { tcp_app: Some(app.addr()), component_log_level: Some("wasm:info".into()), ..Mesh::default() };
    let sidecar = Sidecar::start_with(spec, mesh).unwrap();
    let log = sidecar
        .wait_for_log("krites: staged policies touch default/database: Delete default/database, Set security/security.quarantine-summary", Duration::from_secs(10))
        .unwrap();
    assert!(log.contains("each decision is also made under them"));
    let base = sidecar.stats().unwrap();
    let delta = |name: &str| sidecar.stat(name).unwrap() - base.get(name).copied().unwrap_or(0);

    // Live traffic keeps its enforced verdicts: summary may, customer may not.
    let send = |from: Ipv4Addr, method: &str| Request::from(from).to(sidecar.plain_addr()).method(method).path("/accounts").send().unwrap().status;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(("summary GET (staged: quarantined)", send(SUMMARY, "GET"), 200));
    }
    for _ in 0..2 {
        statuses.push(("customer POST (staged: database policy deleted, profile allows)", send(CUSTOMER, "POST"), 403));
    }
    for (what, got, want) in &statuses {
        println!("{what}: {got}");
        assert_eq!(got, want, "{what}: the staged verdict must not change what happens");
    }
    let tcp = sidecar.tcp_plain_addr().unwrap();
    let exchange = |from: Ipv4Addr| plain_exchange(IpAddr::V4(from), tcp, b"PING", Duration::from_millis(200)).unwrap();
    assert!(exchange(SUMMARY).reply_text().contains("echo:PING"), "summary's connection stays allowed");
    assert!(exchange(CUSTOMER).closed, "customer's connection stays closed");

    let quarantine = "security_quarantine-summary";
    let want = [
        (stat("security", quarantine, "krites_staged_policy_would_deny_total"), 3 + 1),
        (stat("security", quarantine, "krites_staged_policy_would_allow_total"), 0),
        (stat("default", "database", "krites_staged_policy_would_allow_total"), 2 + 1),
        (stat("default", "database", "krites_staged_policy_would_deny_total"), 0),
        ("wasmcustom.krites_staged_would_deny_total".to_string(), 4),
        ("wasmcustom.krites_staged_would_allow_total".to_string(), 3),
        // The enforced counters are as if nothing were staged.
        (stat("default", "database", "krites_policy_allowed_total"), 3),
        (stat("default", "database", "krites_policy_connections_allowed_total"), 1),
        ("wasmcustom.krites_denied_total".to_string(), 2),
        ("wasmcustom.krites_connections_denied_total".to_string(), 1),
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
    let staged: Vec<&String> = stats.keys().filter(|k| k.contains("krites_staged")).collect();
    assert!(wrong.is_empty(), "{}\n\nstaged stats:\n{staged:#?}", wrong.join("\n"));
    println!("{} staged stats defined: 2 staged policies x 2 + 3 unlabelled", staged.len());
    assert_eq!(staged.len(), 2 * 2 + 3, "{staged:#?}");

    let line = "krites: STAGED request would be DENY (enforced: ALLOW) under Set StagedGlobalNetworkPolicy security/security.quarantine-summary: DENY security/security.quarantine-summary/ingress[0]: Deny rule matched";
    let log = sidecar.wait_for_log(line, Duration::from_secs(5)).unwrap();
    let shown: Vec<&str> = log.lines().filter(|l| l.contains("krites: STAGED")).collect();
    for l in &shown {
        println!("{}", l.split_once("krites: ").map_or(*l, |(_, rest)| rest));
    }
    assert!(shown.iter().any(|l| l.contains(line) && l.contains("request GET \"/accounts\" from 127.0.43.12")), "the request is described");
    assert!(shown
        .iter()
        .any(|l| l.contains("krites: STAGED request would be ALLOW (enforced: DENY) under Delete StagedGlobalNetworkPolicy default/database")));
    assert!(shown.iter().any(|l| l.contains("krites: STAGED connection would be DENY (enforced: ALLOW)")));
    assert!(shown.iter().any(|l| l.contains("krites: STAGED connection would be ALLOW (enforced: DENY)")));
}

/// A flood of differing requests: every one is counted, at most 10 lines a second per VM
/// (the sidecar runs 2 workers, so 2 VMs) are logged, and the rest are counted as dropped.
#[test]
fn a_flood_of_staged_differences_is_counted_but_its_log_is_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), "cluster.local").unwrap();
    let database = Ipv4Addr::new(127, 0, 44, 13);
    let summary = Ipv4Addr::new(127, 0, 44, 12);
    let config = config().replace("127.0.43.13", "127.0.44.13").replace("127.0.43.12", "127.0.44.12");
    let spec = SidecarSpec::krites("database", database, &pki, config, dir.path().join("database")).unwrap();
    let mesh = Mesh { component_log_level: Some("wasm:info".into()), ..Mesh::default() };
    let sidecar = Sidecar::start_with(spec, mesh).unwrap();
    sidecar.wait_for_log("krites: staged policies touch", Duration::from_secs(10)).unwrap();
    let base = sidecar.stats().unwrap();
    let delta = |name: &str| sidecar.stat(name).unwrap() - base.get(name).copied().unwrap_or(0);
    let lines_before = sidecar.log().unwrap().matches("krites: STAGED").count();

    const FLOOD: usize = 60;
    let started = Instant::now();
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let to = sidecar.plain_addr();
            std::thread::spawn(move || (0..FLOOD / 6).map(|_| Request::from(summary).to(to).path("/").send().unwrap().status).collect::<Vec<_>>())
        })
        .collect();
    let statuses: Vec<u16> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let seconds = started.elapsed().as_secs_f64();
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");

    // Readiness probes (plaintext from 127.0.0.1, which no pod owns) differ too: would be allowed.
    let would_deny = delta("wasmcustom.krites_staged_would_deny_total");
    let counted = would_deny + delta("wasmcustom.krites_staged_would_allow_total");
    let dropped = delta("wasmcustom.krites_staged_log_suppressed_total");
    // Lines trail the stats by up to a flush.
    std::thread::sleep(Duration::from_millis(300));
    let logged = sidecar.log().unwrap().matches("krites: STAGED").count() - lines_before;
    let bound = 10 * 2 * (seconds.ceil() as usize + 1);
    println!("{FLOOD} requests in {seconds:.2} s: {counted} differences counted, {logged} lines logged (bound {bound}), {dropped} dropped");
    assert_eq!(would_deny, FLOOD as u64, "every difference is counted");
    assert_eq!(logged as u64 + dropped, counted, "each difference is either logged or counted as dropped");
    assert!(logged <= bound, "{logged} lines in {seconds:.2} s");
    if seconds < 1.0 {
        // At most two seconds' budgets of two VMs (40 lines) for 60 differences.
        assert!(dropped > 0, "a flood within a second must hit the limit");
    }
}
