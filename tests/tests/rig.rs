//! Self-test of the rig itself: no Krites module involved, so a failure here is the rig's
//! (or the machine's), not the filter's.

// Helpers outside #[test] fns are test code too.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use krites_testbed::*;

const TRUST_DOMAIN: &str = "cluster.local";

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

fn spec(pki: &Pki, dir: &Path, name: &str, last: u8) -> SidecarSpec {
    SidecarSpec {
        name: name.to_string(),
        ip: ip(last),
        namespace: "default".to_string(),
        service_account: name.to_string(),
        labels: BTreeMap::from([("app".to_string(), name.to_string())]),
        identity: pki.issue(name, "default", name).unwrap(),
        ca: pki.ca_cert().to_path_buf(),
        wasm: None,
        plugin_config: "{}".to_string(),
        work_dir: dir.join(name),
        normalize_path: true,
        peer_address_filter: false,
    }
}

#[test]
fn sidecars_serve_mtls_and_plaintext_and_refuse_bad_clients() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), TRUST_DOMAIN).unwrap();
    let foreign = Pki::new(&dir.path().join("foreign-pki"), TRUST_DOMAIN).unwrap();

    let db = Sidecar::start(spec(&pki, dir.path(), "database", 201)).unwrap();
    let web = Sidecar::start(spec(&pki, dir.path(), "web", 202)).unwrap();
    eprintln!("two sidecars up in {:?}", t0.elapsed());
    assert_ne!(db.mtls_addr(), web.mtls_addr());

    let client = pki.issue("summary", "default", "summary").unwrap();
    assert_eq!(
        client.uri.as_deref(),
        Some("spiffe://cluster.local/ns/default/sa/summary")
    );
    let mtls = |sidecar: &Sidecar, id: Option<&Identity>| {
        Request::from(ip(203))
            .to(sidecar.mtls_addr())
            .tls(pki.ca_cert(), id, sidecar.server_name())
    };

    let before = db.stat(&format!("http.{}.downstream_rq_total", db.mtls_stat_prefix())).unwrap();

    // Valid workload cert: the "application" answers and echoes what it saw.
    let ok = mtls(&db, Some(&client))
        .path("/orders?id=1")
        .send()
        .unwrap();
    assert_eq!(ok.status, 200, "{ok:?}");
    assert!(ok.body.starts_with("ok database\n"), "{}", ok.body);
    assert!(ok.body.contains("path=/orders?id=1\n"), "{}", ok.body);
    assert!(ok.body.contains("source=127.0.0.203:"), "{}", ok.body);
    assert!(
        ok.body
            .contains("peer=spiffe://cluster.local/ns/default/sa/summary"),
        "{}",
        ok.body
    );
    // SANITIZE_SET + uri: the app sees the verified identity in XFCC, as under Istio.
    assert!(
        ok.body
            .contains("URI=spiffe://cluster.local/ns/default/sa/summary"),
        "{}",
        ok.body
    );
    assert_eq!(ok.header("x-krites-upstream"), Some("database"));

    // Each sidecar is its own "pod".
    let ok_web = mtls(&web, Some(&client)).send().unwrap();
    assert_eq!(ok_web.status, 200, "{ok_web:?}");
    assert!(ok_web.body.starts_with("ok web\n"), "{}", ok_web.body);

    // No client cert: refused by TLS, never an HTTP status.
    let anon = mtls(&db, None).send().unwrap();
    assert_eq!(anon.status, 0, "{anon:?}");
    assert!(anon.is_tls_failure(), "{anon:?}");

    // A cert from another CA (same SPIFFE ID, even): refused by TLS.
    let forged = foreign.issue("summary", "default", "summary").unwrap();
    let bad = mtls(&db, Some(&forged)).send().unwrap();
    assert_eq!(bad.status, 0, "{bad:?}");
    assert!(bad.is_tls_failure(), "{bad:?}");

    // A cert from our CA without a SPIFFE URI SAN: refused by the SAN matcher.
    let no_uri = pki.issue_with_uri("nouri", None).unwrap();
    let r = mtls(&db, Some(&no_uri)).send().unwrap();
    assert!(r.is_tls_failure(), "{r:?}");

    // Nothing listening is a transport failure too, but not a TLS one.
    let closed = Request::from(ip(203))
        .to((ip(201), 1).into())
        .send()
        .unwrap();
    assert!(
        closed.is_transport_failure() && !closed.is_tls_failure(),
        "{closed:?}"
    );

    // Plaintext (PERMISSIVE) listener; raw request targets reach the app as sent,
    // after Envoy's normalization.
    let plain = Request::from(ip(203))
        .to(db.plain_addr())
        .path("/a//b/../c")
        .send()
        .unwrap();
    assert_eq!(plain.status, 200, "{plain:?}");
    assert!(plain.body.contains("path=/a/c\n"), "{}", plain.body);
    assert!(plain.body.contains("peer=-\n"), "{}", plain.body);
    let escaped = Request::from(ip(203))
        .to(db.plain_addr())
        .method("POST")
        .path("/a%2fb")
        .header("x-test", "1")
        .body("hello")
        .send()
        .unwrap();
    assert_eq!(escaped.status, 200, "{escaped:?}");
    assert!(escaped.body.contains("method=POST\n"), "{}", escaped.body);
    assert!(escaped.body.contains("path=/a%2fb\n"), "{}", escaped.body);

    // Stats and resource use.
    let stats = db.stats().unwrap();
    assert!(
        stats.keys().any(|k| k.starts_with("http.")),
        "no http.* stats"
    );
    let after = db.stat(&format!("http.{}.downstream_rq_total", db.mtls_stat_prefix())).unwrap();
    assert_eq!(after, before + 1, "one mTLS request reached HTTP");
    assert!(db.stat(&format!("http.{}.downstream_rq_total", db.plain_stat_prefix())).unwrap() >= 2);
    assert_eq!(db.stat("no.such.stat").unwrap(), 0);
    assert!(db
        .prometheus()
        .unwrap()
        .contains("envoy_http_downstream_rq_total"));
    assert!(db.rss_kib().unwrap() > 0);
    // Sidecars log at `warning`, as Istio runs them; a logger is raised through the admin
    // API, as `istioctl proxy-config log` does.
    assert!(!db.log().unwrap().contains("][info]["), "{}", db.log().unwrap());
    let raised = db.admin("POST", "/logging?wasm=debug").unwrap();
    assert_eq!(raised.status, 200, "{raised:?}");
    assert!(raised.body.contains("wasm: debug"), "{}", raised.body);
    assert!(db.initial_ecds().is_none());
    assert!(db.update_config("{}").is_err(), "no wasm filter to update");

    // Dropping stops Envoy: the admin port goes dark and the process is gone.
    let admin = db.admin_addr();
    let pid = db.pid();
    drop(db);
    assert!(
        TcpStream::connect_timeout(&admin, Duration::from_millis(500)).is_err(),
        "admin still answers after drop"
    );
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "envoy {pid} survived drop"
    );
    // The other sidecar is unaffected.
    assert_eq!(mtls(&web, Some(&client)).send().unwrap().status, 200);
    eprintln!("rig self-test took {:?}", t0.elapsed());
}

#[test]
fn normalization_can_be_switched_off() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), TRUST_DOMAIN).unwrap();
    let mut s = spec(&pki, dir.path(), "raw", 204);
    s.normalize_path = false;
    let raw = Sidecar::start(s).unwrap();
    let r = Request::from(ip(203))
        .to(raw.plain_addr())
        .path("/a//b/../c")
        .send()
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("path=/a//b/../c\n"), "{}", r.body);
}

/// The generated bootstrap and ECDS documents are accepted by `envoy --mode validate`
/// with the wasm filter present.
#[test]
fn generated_config_validates_with_wasm() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), TRUST_DOMAIN).unwrap();
    // The smallest valid module: magic + version. Validation does not instantiate it.
    let wasm = dir.path().join("empty.wasm");
    std::fs::write(&wasm, b"\0asm\x01\0\0\0").unwrap();
    let mut s = spec(&pki, dir.path(), "validate", 205);
    s.wasm = Some(wasm);
    s.plugin_config = r#"{"quote":"'\"","nl":"a\nb","pct":"%"}"#.to_string();

    // Start it for real to get the files written; the bogus module must be reported as a
    // rejected ECDS update, not hang or crash.
    let sc = Sidecar::start(s.clone()).unwrap();
    assert_eq!(
        sc.initial_ecds(),
        Some(EcdsOutcome::Rejected),
        "{}",
        sc.log().unwrap()
    );
    // The ECDS document itself was parsed: Envoy got as far as building the plugin, and the
    // configuration string arrived as istiod re-encodes it (keys sorted, compact), byte for
    // byte through JSON quoting.
    sc.wait_for_log(
        "Unable to create Wasm plugin istio-system.krites",
        Duration::from_secs(5),
    )
    .unwrap();
    let dump: serde_json::Value = serde_json::from_str(&sc.config_dump_ecds().unwrap()).unwrap();
    let value =
        &dump["configs"][0]["ecds_filter"]["typed_config"]["config"]["configuration"]["value"];
    assert_eq!(value.as_str(), Some(r#"{"nl":"a\nb","pct":"%","quote":"'\""}"#), "{dump:#}");
    assert_eq!(value.as_str(), Some(krites_testbed::istiod_plugin_config(&s.plugin_config).as_str()));
    drop(sc);

    let envoy = envoy_binary().unwrap();
    let out = Command::new(envoy)
        .arg("--mode")
        .arg("validate")
        .arg("-c")
        .arg(s.work_dir.join("validate.envoy.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "validate failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
