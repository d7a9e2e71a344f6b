//! Attack corpus in real Envoy, under each of Istio's path normalisations (NONE, BASE, MERGE_SLASHES,
//! DECODE_AND_MERGE_SLASHES) and its runtime flags (a `#fragment` is stripped, not refused). Each row of the
//! table is (request, source address, client certificate, expected verdict): path encodings
//! against exact and prefix rules, method tricks, forged identity headers, foreign and
//! malformed certificates, valid certificates from the wrong addresses, IPv6 and IPv4-mapped
//! IPv6 sources, oversized and non-UTF-8 requests. Zero bypasses, and no request takes the
//! VM down.
//!
//! The rows are `krites_testbed::attack_corpus`'s, shared with `netns_attacks.rs` (the same
//! corpus on the namespace mesh); here the roles are pods on 127.0.0.x and ::1.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use krites_testbed::attack_corpus::{
    config, corpus, is_bypass, matches, source_ip, Addresses, Certs, Outcome, Req, Row, SanCheck, Src, Verdict::Allow, TRUST_DOMAIN,
};
use krites_testbed::{module_path, raw_request, EcdsOutcome, Identity, Mesh, PathNormalization, Pki, Request, Sidecar, SidecarSpec};

/// The loopback rig's pods: admin on 127.0.0.31; web on 127.0.0.66 (the attacker's own
/// pod) and ::1; 127.0.0.77 is no pod's; 127.0.0.99 is blocked.
const PODS: Addresses = Addresses {
    admin: Ipv4Addr::new(127, 0, 0, 31),
    web: Ipv4Addr::new(127, 0, 0, 66),
    unowned: Ipv4Addr::new(127, 0, 0, 77),
    blocked: Ipv4Addr::new(127, 0, 0, 99),
    web_v6: Some(Ipv6Addr::LOCALHOST),
};
const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);
const DUAL_STACK: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

fn sidecar(dir: &Path, certs: &Certs, server: &Identity, ip: Ipv4Addr, mode: PathNormalization) -> Sidecar {
    let s = Sidecar::start_with(
        SidecarSpec {
            name: "app".into(),
            ip,
            namespace: "default".into(),
            service_account: "app".into(),
            labels: BTreeMap::from([("app".to_string(), "app".to_string())]),
            identity: server.clone(),
            ca: certs.mesh_ca.clone(),
            wasm: Some(module_path()),
            plugin_config: config(&PODS),
            work_dir: dir.join(format!("app-{}", mode.name())),
            normalize_path: mode != PathNormalization::None,
            peer_address_filter: true,
        },
        Mesh { extra_inbound: vec![V6, DUAL_STACK], path_normalization: Some(mode), ..Mesh::default() },
    )
    .unwrap();
    assert_eq!(s.initial_ecds(), Some(EcdsOutcome::Accepted));
    s
}

fn run(app: &Sidecar, certs: &Certs, row: &Row) -> Outcome {
    let from = source_ip(row.from, &PODS).unwrap();
    let (plain, mtls) = match row.from {
        Src::V4(_) => (app.plain_addr(), app.mtls_addr()),
        Src::V6 => (app.plain_addr_on(V6).unwrap(), app.mtls_addr_on(V6).unwrap()),
        // Through the pod IP to the `::` listeners' ports.
        Src::Mapped(_) => (
            SocketAddr::new(IpAddr::V4(app.ip()), app.plain_addr_on(DUAL_STACK).unwrap().port()),
            SocketAddr::new(IpAddr::V4(app.ip()), app.mtls_addr_on(DUAL_STACK).unwrap().port()),
        ),
    };
    let cert = certs.get(row.cert);
    match &row.req {
        Req::Raw(bytes) => {
            assert!(cert.is_none(), "raw rows are plaintext");
            match raw_request(from, plain, bytes, Duration::from_secs(10)) {
                Ok(r) => Outcome::Status(r.status, r.body_text()),
                Err(e) => Outcome::Transport(format!("{e:#}")),
            }
        }
        Req::Http { method, target, headers } => {
            let mut r = Request::from_ip(from).method(method).path(target);
            r = match cert {
                None => r.to(plain),
                Some(id) => r.to(mtls).tls(&certs.mesh_ca, Some(id), app.server_name()),
            };
            for (k, v) in headers {
                r = r.header(k, v);
            }
            let resp = r.send().unwrap();
            match &resp.error {
                None => Outcome::Status(resp.status, resp.body),
                Some(e) if resp.is_tls_failure() => Outcome::TlsRefused(e.message.clone()),
                Some(e) => Outcome::Transport(format!("curl {}: {}", e.curl_exit, e.message)),
            }
        }
    }
}

#[test]
fn no_bypass_under_any_of_istios_path_normalisations() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), TRUST_DOMAIN).unwrap();
    let certs = Certs::issue(&pki, &dir.path().join("other-pki")).unwrap();
    // The sidecar's own certificate (DNS name `app`).
    let server = pki.issue("app", "default", "app").unwrap();
    let rows = corpus(&PODS);
    let mut report = String::new();
    let mut failures = Vec::new();
    for (mode, host) in PathNormalization::ALL.into_iter().zip(1u8..) {
        let normalize = mode.name();
        let mut app = sidecar(dir.path(), &certs, &server, Ipv4Addr::new(127, 0, 7, host), mode);
        let (mut allowed, mut krites_denied, mut envoy_refused, mut tls_refused) = (0, 0, 0, 0);
        for row in &rows {
            let outcome = run(&app, &certs, row);
            match &outcome {
                // Only Krites answers 403 here ("RBAC: access denied"; no body for HEAD).
                Outcome::Status(403, _) => krites_denied += 1,
                Outcome::Status(s, _) if (200..300).contains(s) => allowed += 1,
                Outcome::Status(..) => envoy_refused += 1,
                Outcome::TlsRefused(_) => tls_refused += 1,
                Outcome::Transport(_) => {}
            }
            let expect = row.expect_on(SanCheck::TrustDomain);
            if !matches(expect, &outcome) {
                let bypass = is_bypass(expect, &outcome);
                failures.push(format!(
                    "{}pathNormalization={normalize}: {} expected {:?}, got {outcome:?}",
                    if bypass { "BYPASS " } else { "" },
                    row.describe(),
                    expect
                ));
            }
        }
        // The VM is alive and still deciding after all of it.
        assert!(app.is_running(), "pathNormalization={normalize}: Envoy exited");
        assert_eq!(Request::from(PODS.web).to(app.plain_addr()).path("/public").send().unwrap().status, 200);
        assert_eq!(Request::from(PODS.web).to(app.plain_addr()).path("/admin").send().unwrap().status, 403);
        let ok = Request::from(PODS.admin).to(app.mtls_addr()).tls(&certs.mesh_ca, Some(&certs.admin), app.server_name()).path("/admin").send().unwrap();
        assert_eq!(ok.status, 200, "pathNormalization={normalize}: {ok:?}");
        let denied = app.stat("wasmcustom.krites_denied_total").unwrap();
        assert_eq!(denied, krites_denied + 1, "pathNormalization={normalize}: every 403 was Krites'");
        let log = app.log().unwrap();
        for bad in ["panic", "wasm_fail", "Wasm VM failed", "Failed to"] {
            assert!(!log.contains(bad), "pathNormalization={normalize}: {bad:?} in the log:\n{log}");
        }
        writeln!(
            report,
            "pathNormalization={normalize}: {} rows: {allowed} allowed, {krites_denied} denied by Krites, {envoy_refused} refused by Envoy (4xx), {tls_refused} TLS handshakes refused",
            rows.len()
        )
        .unwrap();
    }
    let deny_rows = rows.iter().filter(|r| r.expect != Allow).count();
    println!(
        "attack corpus: {} rows ({} expected allowed as controls, {deny_rows} attacks), run under each of Istio's {} path normalisations = {} requests in {:.1?}\n{report}",
        rows.len(),
        rows.len() - deny_rows,
        PathNormalization::ALL.len(),
        rows.len() * PathNormalization::ALL.len(),
        started.elapsed()
    );
    assert!(failures.is_empty(), "{} of {} requests wrong:\n{}", failures.len(), rows.len() * PathNormalization::ALL.len(), failures.join("\n"));
}
