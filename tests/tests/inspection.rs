//! What an operator sees of Krites in a running proxy: the filter in the ECDS
//! config dump (what `istioctl proxy-config ecds` prints), the config revision
//! in the log and as a gauge, the stats in /stats and /stats/prometheus, and
//! decisions in the log once the `wasm` logger is raised.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::net::Ipv4Addr;
use std::time::Duration;

use krites_testbed::yaobank::POLICY_CONFIG;
use krites_testbed::{Mesh, Pki, Request, Sidecar, SidecarSpec};

#[test]
fn an_operator_can_see_what_krites_enforces_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), "cluster.local").unwrap();
    let spec = SidecarSpec::krites("database", Ipv4Addr::new(127, 0, 6, 13), &pki, POLICY_CONFIG, dir.path().join("database")).unwrap();
    // `sidecar.istio.io/componentLogLevel: wasm:info`: the config load line is logged at start.
    let mesh = Mesh { component_log_level: Some("wasm:info".into()), ..Mesh::default() };
    let sidecar = Sidecar::start_with(spec, mesh).unwrap();

    // istioctl proxy-config ecds <pod> -o json reads this.
    let dump = sidecar.config_dump_ecds().unwrap();
    assert!(dump.contains("extensions.istio.io/wasmplugin/istio-system.krites"), "{dump}");
    assert!(dump.contains("type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"), "{dump}");
    assert!(dump.contains("FAIL_CLOSED"), "{dump}");
    assert!(dump.contains("app == 'database'"), "the config itself is visible: {dump}");

    // The revision: in the load log line, and (first 32 bits) as a gauge.
    let line = sidecar.wait_for_log("enforcing for default/database", Duration::from_secs(5)).unwrap();
    let revision = line.split("krites: config ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    assert_eq!(revision.len(), 16, "{line}");
    let gauge = sidecar.stat("wasmcustom.krites_config_revision").unwrap();
    assert_eq!(format!("{gauge:08x}"), revision[..8]);
    assert!(line.contains("1 of 3 policies select this workload"), "{line}");

    // Decisions: denials at info (visible once wasm:info is on, as here), allows at debug.
    let attacker = pki.issue("stolen", "default", "summary").unwrap();
    let send = || {
        Request::from(Ipv4Addr::new(127, 0, 0, 66))
            .to(sidecar.mtls_addr())
            .tls(pki.ca_cert(), Some(&attacker), sidecar.server_name())
            .path("/v2/keys")
            .send()
            .unwrap()
    };
    assert_eq!(send().status, 403);
    let denial = sidecar.wait_for_log("DENY tier/default", Duration::from_secs(5)).unwrap();
    assert!(denial.contains(&revision), "the denial names the revision: {denial}");
    assert!(denial.contains("principal \"spiffe://cluster.local/ns/default/sa/summary\""), "{denial}");
    // What `istioctl proxy-config log <pod> --level wasm:debug` does.
    let raised = sidecar.admin("POST", "/logging?wasm=debug").unwrap();
    assert_eq!(raised.status, 200);
    let summary = pki.issue("summary-client", "default", "summary").unwrap();
    let ok = Request::from(Ipv4Addr::new(127, 0, 0, 12)).to(sidecar.plain_addr()).send().unwrap();
    assert_eq!(ok.status, 200, "plaintext from a summary pod");
    let allow = sidecar.wait_for_log("ALLOW default/database/ingress[0]", Duration::from_secs(5)).unwrap();
    assert!(allow.contains("plaintext from 127.0.0.12"), "{allow}");
    let _ = summary;

    // Stats, both as Envoy's /stats and as Prometheus scrapes them.
    let stats = sidecar.admin("GET", "/stats?filter=wasmcustom").unwrap().body;
    for name in ["krites_requests_total: 2", "krites_denied_total: 1", "krites_allowed_total: 1", "krites_identity_unknown_address_total: 1"] {
        assert!(stats.contains(&format!("wasmcustom.{name}")), "{name} in {stats}");
    }
    let prom = sidecar.prometheus().unwrap();
    assert!(prom.contains("krites_reason_tier_default_deny_total{} 1"), "{prom}");
    assert!(prom.contains("# TYPE krites_config_revision gauge"), "{prom}");
}
