//! What the filter does when things are not as they should be: bad configs,
//! no config, no workload identity, and no NETWORK role to vouch for the peer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::net::Ipv4Addr;
use std::time::Duration;

use krites_testbed::yaobank::POLICY_CONFIG;
use krites_testbed::{EcdsOutcome, Mesh, Pki, Request, Response, Sidecar, SidecarSpec};

struct Rig {
    _dir: tempfile::TempDir,
    pki: Pki,
    db: Sidecar,
}

/// A database sidecar on `ip`, in namespace `ns` (empty: no NAMESPACE metadata).
fn database(ip: [u8; 4], ns: &str, config: &str, peer_address_filter: bool) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), "cluster.local").unwrap();
    let spec = SidecarSpec::krites("database", Ipv4Addr::from(ip), &pki, config, dir.path().join("database")).unwrap();
    // The module's info lines (config loads, decisions) are what these tests read.
    let mesh = Mesh { component_log_level: Some("wasm:info".into()), ..Mesh::default() };
    let db = Sidecar::start_with(SidecarSpec { namespace: ns.into(), peer_address_filter, ..spec }, mesh).unwrap();
    Rig { _dir: dir, pki, db }
}

impl Rig {
    /// mTLS request from `from` presenting a certificate for `sa`.
    fn call(&self, from: [u8; 4], sa: &str, headers: &[(&str, &str)]) -> Response {
        let cert = self.pki.issue(&format!("client-{sa}"), "default", sa).unwrap();
        let mut r = Request::from(Ipv4Addr::from(from)).to(self.db.mtls_addr()).tls(self.pki.ca_cert(), Some(&cert), self.db.server_name());
        for (k, v) in headers {
            r = r.header(k, v);
        }
        r.send().unwrap()
    }

    fn stat(&self, name: &str) -> u64 {
        self.db.stat(&format!("wasmcustom.{name}")).unwrap()
    }
}

const SUMMARY: [u8; 4] = [127, 0, 0, 12];
const ATTACK: [u8; 4] = [127, 0, 0, 66];

#[test]
fn bad_config_is_rejected_and_the_last_good_one_keeps_enforcing() {
    let rig = database([127, 0, 1, 13], "default", POLICY_CONFIG, true);
    assert_eq!(rig.call(SUMMARY, "summary", &[]).status, 200);
    assert_eq!(rig.call(ATTACK, "summary", &[]).status, 403);

    // A bad selector in one policy: the whole update is refused, with the object and field named.
    let bad = POLICY_CONFIG.replace("app == 'database'", "app == 'database");
    assert_eq!(rig.db.reconfigure(&bad, Duration::from_secs(10)).unwrap(), EcdsOutcome::Rejected);
    let line = rig.db.wait_for_log("config rejected", Duration::from_secs(5)).unwrap();
    assert!(line.contains("GlobalNetworkPolicy/database: spec.selector"), "{line}");
    assert!(line.contains("unterminated string"), "{line}");
    assert!(rig.stat("krites_config_errors_total") >= 1);
    // Still enforcing the old policy: summary in, attacker out.
    assert_eq!(rig.call(SUMMARY, "summary", &[]).status, 200);
    assert_eq!(rig.call(ATTACK, "summary", &[]).status, 403);

    // Malformed JSON, an unknown version, a bad CIDR and an oversized config are refused the
    // same way: each names the object and field, and counts.
    let mut bad_cidr: serde_json::Value = serde_json::from_str(POLICY_CONFIG).unwrap();
    for p in bad_cidr["policies"].as_array_mut().unwrap() {
        if p["name"] == "database" {
            // Would also open the database to 10/8 and the attack pod's net, if it loaded.
            p["ingress"][0]["source"]["nets"] = serde_json::json!(["10.0.0.0/33"]);
            p["ingress"] = serde_json::json!([p["ingress"][0].clone(), {"action": "Allow", "source": {"nets": ["127.0.0.0/8"]}}]);
        }
    }
    // Valid JSON (a long string pads it; istiod compacts whitespace away) that would open the
    // database to everyone, over the filter's 32 MiB limit: refused before it is read,
    // whatever it says.
    let mut opened: serde_json::Value = serde_json::from_str(POLICY_CONFIG).unwrap();
    opened["policies"] = serde_json::json!([]);
    opened["padding"] = serde_json::json!("x".repeat(33 * 1024 * 1024));
    let oversized = opened.to_string();
    let oversized_len = krites_testbed::istiod_plugin_config(&oversized).len();
    // The compressed form of a config that would open the database, damaged in
    // transit: deflate's checksum finds it, and nothing of it is read.
    let compressed = krites_policy::PluginConfig::from_json(bad_cidr.to_string().replace("10.0.0.0/33", "10.0.0.0/8").as_bytes())
        .unwrap()
        .to_compressed_json()
        .unwrap();
    let text = compressed["compressed"].as_str().unwrap();
    let middle = text.len() / 2;
    let flipped = if &text[middle..=middle] == "A" { "B" } else { "A" };
    let damaged = serde_json::json!({"version": 1, "compressed": format!("{}{flipped}{}", &text[..middle], &text[middle + 1..])}).to_string();
    let rejected = [
        (r#"{"version": 1, "policies": ["#.to_string(), "plugin config: line 1 column 28"),
        (r#"{"version": 99}"#.to_string(), "plugin config: version: unsupported version 99"),
        (bad_cidr.to_string(), r#"GlobalNetworkPolicy/database: spec.ingress[0].source.nets[0]: "10.0.0.0/33" has an invalid prefix length"#),
        (oversized, &format!("plugin config: size: {oversized_len} bytes is over the limit of 33554432 bytes (32 MiB)")),
        (damaged, "plugin config: compressed: not zlib data, or damaged"),
    ];
    for (bad, needle) in &rejected {
        let errors = rig.stat("krites_config_errors_total");
        assert_eq!(rig.db.reconfigure(bad, Duration::from_secs(20)).unwrap(), EcdsOutcome::Rejected, "{needle}");
        let log = rig.db.wait_for_log(needle, Duration::from_secs(5)).unwrap();
        let line = log.lines().find(|l| l.contains(needle)).unwrap();
        assert!(line.contains("config rejected, keeping the last good config"), "{line}");
        assert!(rig.stat("krites_config_errors_total") > errors, "{needle}: krites_config_errors_total did not move");
        assert_eq!(rig.call(ATTACK, "summary", &[]).status, 403, "{needle}");
        assert_eq!(rig.call(SUMMARY, "summary", &[]).status, 200, "{needle}");
    }
    // Envoy's own view: every one of these versions was rejected, the first one still serves.
    assert_eq!(rig.db.ecds_counts().unwrap().rejected, 1 + rejected.len() as u64);

    // A good update is applied without a restart: the database opens to everyone.
    let mut opened: serde_json::Value = serde_json::from_str(POLICY_CONFIG).unwrap();
    for p in opened["policies"].as_array_mut().unwrap() {
        if p["name"] == "database" {
            p["ingress"] = serde_json::json!([{"action": "Allow"}]);
        }
    }
    // Delivered compressed, as control delivers a large config: read alike.
    let opened = krites_policy::PluginConfig::from_json(opened.to_string().as_bytes()).unwrap().to_compressed_json().unwrap().to_string();
    assert_eq!(rig.db.reconfigure(&opened, Duration::from_secs(10)).unwrap(), EcdsOutcome::Accepted);
    assert_eq!(rig.call(ATTACK, "default", &[]).status, 200);
}

#[test]
fn no_config_fails_closed() {
    let rig = database([127, 0, 2, 13], "default", "", true);
    let resp = rig.call(SUMMARY, "summary", &[]);
    assert_eq!((resp.status, resp.body.as_str()), (403, "RBAC: access denied"));
    assert_eq!(rig.stat("krites_reason_no_config_total"), 1);
    assert_eq!(rig.stat("krites_denied_total"), 1);
    rig.db.wait_for_log("no plugin configuration; denying every request", Duration::from_secs(5)).unwrap();
}

#[test]
fn missing_workload_identity_fails_closed() {
    let rig = database([127, 0, 3, 13], "", POLICY_CONFIG, true);
    assert_eq!(rig.call(SUMMARY, "summary", &[]).status, 403);
    assert_eq!(rig.stat("krites_reason_no_workload_identity_total"), 1);
    rig.db.wait_for_log("node metadata NAMESPACE is missing", Duration::from_secs(5)).unwrap();
}

/// Without the NETWORK role, Envoy's `source.address` follows x-forwarded-for
/// (Istio's inbound `use_remote_address: false`). Krites then refuses to use
/// that address as an identity factor: spoofing gains nothing, and requests
/// that needed the address are denied rather than trusted.
#[test]
fn without_the_network_role_forwarded_addresses_are_not_trusted() {
    let rig = database([127, 0, 4, 13], "default", POLICY_CONFIG, false);
    assert_eq!(rig.call(SUMMARY, "summary", &[]).status, 200);
    let spoof = [("x-forwarded-for", "127.0.0.12")];
    assert_eq!(rig.call(ATTACK, "summary", &spoof).status, 403, "stolen cert + forged XFF");
    let plain = Request::from(Ipv4Addr::from(ATTACK)).to(rig.db.plain_addr()).header("x-forwarded-for", "127.0.0.12").send().unwrap();
    assert_eq!(plain.status, 403, "plaintext + forged XFF");
    // Fail closed: summary's own request with an XFF header can't prove its address either.
    assert_eq!(rig.call(SUMMARY, "summary", &[("x-forwarded-for", "10.1.2.3")]).status, 403);
    assert_eq!(rig.stat("krites_source_address_unverified_total"), 3);
    let line = rig.db.wait_for_log("unverified 127.0.0.12 (from x-forwarded-for)", Duration::from_secs(5)).unwrap();
    assert!(line.contains("DENY"), "{line}");
}

/// A per-namespace shard in Istio's root namespace reaches every workload;
/// the filter of a workload outside the shard's scope leaves the decision to
/// its own namespace's shard (a second Krites filter in the chain).
#[test]
fn a_config_scoped_to_other_namespaces_passes_through() {
    let mut scoped: serde_json::Value = serde_json::from_str(POLICY_CONFIG).unwrap();
    scoped["scope"] = serde_json::json!(["istio-system"]);
    let rig = database([127, 0, 5, 13], "default", &scoped.to_string(), true);
    // The attack pod would be denied by this config; out of scope, it decides nothing.
    assert_eq!(rig.call(ATTACK, "summary", &[]).status, 200);
    assert_eq!(rig.stat("krites_out_of_scope_total"), 1);
    assert_eq!(rig.stat("krites_denied_total"), 0);
    rig.db.wait_for_log("is for other namespaces; default is decided by its own namespace's config", Duration::from_secs(5)).unwrap();
    // Scoped to its own namespace, it enforces.
    scoped["scope"] = serde_json::json!(["default", "other"]);
    assert_eq!(rig.db.reconfigure(&scoped.to_string(), Duration::from_secs(10)).unwrap(), EcdsOutcome::Accepted);
    assert_eq!(rig.call(ATTACK, "summary", &[]).status, 403);
}
