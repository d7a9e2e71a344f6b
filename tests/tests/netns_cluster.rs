//! The real apiserver's config on the real-shaped mesh (issue #13): `control run` (as its
//! ServiceAccount, under the shipped ClusterRole) watches a real kube-apiserver holding
//! Calico's CRDs, the tutorial's three policies and YAO Bank's pods, whose IPs (written
//! through the status subresource, as a kubelet would) are this namespace mesh's addresses.
//! It writes both WasmPlugins; the `krites` plugin's `spec.pluginConfig` goes through
//! istiod's transform into the sidecars of YAO Bank on the namespace mesh
//! (`krites_testbed::yaobank::mesh`), and the tutorial's verdicts hold there, on the HTTP
//! port and on the TCP port.
//!
//! Then the cluster changes: the `database` policy is edited to admit customer instead of
//! summary. control writes the new config; it is pushed to the running sidecars as
//! istio-agent does (a new ECDS version in each sidecar's watched file), and the verdicts
//! follow: summary is refused, the customer pod gets in, the stolen summary certificate
//! still opens nothing. The edit is undone and the tutorial's verdicts come back. Timings are
//! printed for each stage.
//!
//! Needs root and the mesh's tools (skipped otherwise, failing under `CI=true`), and the
//! cached Kubernetes binaries of `scripts/build-kube.sh` (skipped without them outside CI,
//! built in CI). Bounded: about a minute; every wait has a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

#[path = "../../control/tests/kube/mod.rs"]
mod kube;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use krites_control::controller::apply::REVISION_ANNOTATION;
use krites_demo::{balance_in_page, BALANCE_KEY};
use krites_testbed::mesh::istiod;
use krites_testbed::yaobank::mesh::{put_request, MeshBank, PodIps, ETCD_HTTP, ETCD_TCP};
use kube::{eventually, policies, policy_names, CalicoForm, Control, Kube};

const BALANCE: &str = "1500.00";
const STOLEN: &str = "1000000000.00";

/// Every pod of the tutorial whose IP is one of the fixture's gets this mesh's address
/// instead, through the status subresource (the finished summary pod keeps sharing the
/// attack pod's address; the second summary replica, with no pod here, keeps its own).
fn move_pods_to_the_mesh(kube: &Kube, ips: &PodIps) -> Vec<String> {
    let pods = kube.get_json(&["pods", "-n", "default"]).unwrap();
    let mut moved = Vec::new();
    for pod in pods["items"].as_array().unwrap() {
        let name = pod["metadata"]["name"].as_str().unwrap();
        let Some(ip) = pod["status"]["podIP"].as_str() else { continue };
        let Some((_, here)) = ips
            .fixture_mapping()
            .into_iter()
            .find(|(fixture, _)| fixture.to_string() == ip)
        else {
            continue;
        };
        kube.pod_status(
            "default",
            name,
            &json!({"podIP": here.to_string(), "podIPs": [{"ip": here.to_string()}]}),
        );
        moved.push(format!("{name} {ip} -> {here}"));
    }
    moved
}

fn revision(plugin: &Value) -> String {
    plugin["metadata"]["annotations"][REVISION_ANNOTATION]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// The live `krites` WasmPlugin's `pluginConfig`, as the user-facing JSON istiod reads,
/// once its revision differs from `not` (waits up to 20 s).
fn live_config(kube: &Kube, not: &str) -> (Value, String) {
    let mut got = None;
    eventually(20, "a new krites WasmPlugin revision", || {
        got = kube
            .plugin("krites")
            .filter(|p| !revision(p).is_empty() && revision(p) != not);
        got.is_some()
    });
    let plugin = got.unwrap();
    (plugin["spec"]["pluginConfig"].clone(), revision(&plugin))
}

/// What the database's policy admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DatabaseAdmits {
    /// The tutorial: service account summary.
    Summary,
    /// The edit: service account customer.
    Customer,
}

/// The tutorial's verdicts on the mesh, or the edited policy's (`admits`).
fn verdicts(bank: &MeshBank, admits: DatabaseAdmits, stage: &str, r: &mut krites_testbed::mesh::Report) {
    let ips = bank.ips();
    let db = (ips.database, 0);
    let summary_in = admits == DatabaseAdmits::Summary;
    let (_, index_before) = bank.etcd_state().unwrap();

    let c = bank.curl(&bank.browser, &[&bank.page_url()]).unwrap();
    let shown = balance_in_page(&c.body);
    r.check(
        if summary_in {
            c.code == 200 && shown == Some(BALANCE)
        } else {
            shown.is_none()
        },
        &format!(
            "[{stage}] browser -> customer -> summary -> database: {}",
            if summary_in { "the page shows the balance" } else { "no balance (summary refused by the database)" }
        ),
        || format!("{}: {} {}", c.command, c.code, c.body),
    );
    let c = bank.curl(&bank.browser, &["-X", "POST", &bank.page_url()]).unwrap();
    r.check(c.code == 403, &format!("[{stage}] browser POST customer -> 403"), || {
        format!("{}: {} {}", c.command, c.code, c.body)
    });
    for port in [ETCD_HTTP, ETCD_TCP] {
        let c = bank.curl(&bank.customer, &[&bank.balance_url(port)]).unwrap();
        let (ok, want) = match (summary_in, port) {
            (true, ETCD_HTTP) => (c.code == 403, "403"),
            (true, _) => (c.code == 0, "closed"),
            (false, _) => (c.code == 200 && c.body.contains(BALANCE), "200, the balance"),
        };
        r.check(
            ok,
            &format!("[{stage}] customer pod (its sidecar) -> database:{port} -> {want}"),
            || format!("{}: {} {}", c.command, c.code, c.body),
        );
        let c = bank.curl(&bank.summary, &[&bank.balance_url(port)]).unwrap();
        let (ok, want) = match (summary_in, port) {
            (true, _) => (c.code == 200 && c.body.contains(BALANCE), "200, the balance"),
            (false, ETCD_HTTP) => (c.code == 403, "403"),
            (false, _) => (c.code == 0, "closed"),
        };
        r.check(
            ok,
            &format!("[{stage}] summary pod (its sidecar) -> database:{port} -> {want}"),
            || format!("{}: {} {}", c.command, c.code, c.body),
        );
    }
    // The attack pod with summary's stolen certificate: refused whichever service account
    // the database admits (the address belongs to no pod of that account).
    let put = put_request(BALANCE_KEY, STOLEN);
    let stolen = bank.summary.identity();
    let t = bank
        .openssl(&bank.attack, (db.0, ETCD_HTTP), "istio-http/1.1", stolen, &put)
        .unwrap();
    r.check(
        t.output.starts_with("HTTP/1.1 403"),
        &format!("[{stage}] attack, summary's stolen cert, PUT -> database:{ETCD_HTTP} (http) -> 403"),
        || format!("{}: {:?}", t.command, t.output),
    );
    let t = bank
        .openssl(&bank.attack, (db.0, ETCD_TCP), "istio", stolen, &put)
        .unwrap();
    r.check(
        !t.output.contains("HTTP/1."),
        &format!("[{stage}] attack, summary's stolen cert, PUT -> database:{ETCD_TCP} (tcp) -> closed"),
        || format!("{}: {:?}", t.command, t.output),
    );
    let got = bank
        .mesh
        .client(&bank.attack, (db.0, ETCD_TCP), &put, None)
        .unwrap();
    r.check(
        !got.reply.contains("HTTP/1.") && got.closed,
        &format!("[{stage}] attack, plaintext PUT -> database:{ETCD_TCP} (tcp) -> closed"),
        || format!("{}: {got:?}", got.command),
    );
    let (balance, index) = bank.etcd_state().unwrap();
    r.check(
        balance == BALANCE && index == index_before,
        &format!("[{stage}] etcd got no write: balance {BALANCE}, index {index_before}"),
        || format!("balance {balance:?}, index {index_before} -> {index}"),
    );
}

#[test]
fn the_apiservers_config_holds_on_the_namespace_mesh_and_follows_a_policy_edit() {
    let _serial = kube::serial();
    if !krites_testbed::mesh::runnable("netns_cluster") {
        return;
    }
    let started = Instant::now();
    let Some(kube) = Kube::up() else { return };
    let t = Instant::now();
    kube.install(CalicoForm::V3);
    let mut bank = MeshBank::create().unwrap();
    let ips = bank.ips();
    kube.yaobank(CalicoForm::V3);
    let moved = move_pods_to_the_mesh(&kube, &ips);
    println!(
        "apiserver up in {:?}; CRDs, RBAC, YAO Bank and pod IPs on the mesh in {:?}:\n  {}",
        kube.started_in,
        t.elapsed(),
        moved.join("\n  ")
    );
    assert_eq!(moved.len(), 5, "{moved:?}");

    let control = Control::start(&kube, "auto");
    let ready = control.wait_ready(30);
    let written = eventually(10, "both WasmPlugins", || {
        kube.plugin("krites").is_some() && kube.plugin("krites-peer-address").is_some()
    });
    println!("control run: ready in {ready:?}, both WasmPlugins written +{written:?}");
    let (plugin_config, rev) = live_config(&kube, "");
    assert_eq!(
        policy_names(&plugin_config),
        ["customer", "database", "summary"]
    );
    // The endpoints the policies name (the sources: customer and summary) are the mesh's
    // pods, from the status subresource; the second summary replica keeps its address.
    let text = plugin_config.to_string();
    for (ip, sa) in [(ips.customer, "customer"), (ips.summary, "summary")] {
        assert!(text.contains(&format!("\"{ip}\"")), "{sa} pod {ip} is not in the live config:\n{text}");
    }
    assert!(!text.contains("127.0.0.11") && !text.contains("127.0.0.12"), "{text}");
    let as_written = serde_json::to_string(&plugin_config).unwrap();
    let istiod_sends = istiod::plugin_config_transform(&as_written).unwrap();
    println!(
        "live krites pluginConfig: revision {rev}, {} bytes as written, {} bytes after istiod's transform",
        as_written.len(),
        istiod_sends.len()
    );

    let t = Instant::now();
    bank.start(
        &as_written,
        BALANCE,
        Path::new(env!("CARGO_BIN_EXE_krites-demo")),
        &mut |what| {
            println!("  up: {what}");
            Ok(())
        },
    )
    .unwrap();
    println!("YAO Bank on the mesh with the live config in {:?}", t.elapsed());
    // Each sidecar runs exactly what istiod would send: the ECDS filter's configuration.
    for p in bank.sidecars() {
        let dump: Value = serde_json::from_str(
            &p.admin("GET", "/config_dump?resource=ecds_filters").unwrap(),
        )
        .unwrap();
        let value = dump["configs"][0]["ecds_filter"]["typed_config"]["config"]["configuration"]["value"]
            .as_str()
            .unwrap_or("");
        assert_eq!(value, istiod_sends, "the {} sidecar's ECDS configuration", p.spec.name);
    }

    let mut r = krites_testbed::mesh::Report::default();
    let t = Instant::now();
    verdicts(&bank, DatabaseAdmits::Summary, "live config", &mut r);
    let denials = bank.denials_of(ips.attack, 3, Duration::from_secs(3));
    r.check(
        denials.len() >= 3 && denials.iter().all(|l| l.contains(&format!("revision {rev}"))),
        &format!("[live config] the database sidecar's denials name the attack pod {} and revision {rev}", ips.attack),
        || denials.join("\n"),
    );
    println!("tutorial verdicts in {:?}", t.elapsed());

    // The cluster changes: the database admits customer instead of summary.
    let edit = |names: &[&str]| -> Vec<Value> {
        let mut db: Value = policies(CalicoForm::V3)
            .into_iter()
            .find(|p| p["metadata"]["name"] == "database")
            .unwrap();
        db["spec"]["ingress"][0]["source"]["serviceAccounts"]["names"] = json!(names);
        vec![db]
    };
    let mut last_rev = rev;
    for (names, admits, stage) in [
        (["customer"], DatabaseAdmits::Customer, "database admits customer"),
        (["summary"], DatabaseAdmits::Summary, "edit undone"),
    ] {
        let changed = Instant::now();
        kube.apply(&edit(&names));
        let (config, new_rev) = live_config(&kube, &last_rev);
        let to_plugin = changed.elapsed();
        let t = Instant::now();
        let version = bank.apply(&serde_json::to_string(&config).unwrap()).unwrap();
        let to_sidecars = t.elapsed();
        let t = Instant::now();
        verdicts(&bank, admits, stage, &mut r);
        println!(
            "[{stage}] kubectl apply -> control wrote revision {new_rev}: {to_plugin:?}; -> ECDS version {version} taken by 3 sidecars: {to_sidecars:?}; verdicts checked in {:?}",
            t.elapsed()
        );
        last_rev = new_rev;
    }
    println!(
        "{} rows in {:?} (attack pod {}); control's log: {}",
        r.rows,
        started.elapsed(),
        ips.attack,
        control.log.display()
    );
    assert!(
        r.failures.is_empty(),
        "{} of {} rows failed:\n{}\n--- database access log ---\n{}\n--- database envoy log (krites) ---\n{}",
        r.failures.len(),
        r.rows,
        r.failures.join("\n"),
        bank.database.access_log(),
        bank.database
            .envoy_log()
            .lines()
            .filter(|l| l.contains("krites"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(started.elapsed() < Duration::from_secs(180), "took {:?}", started.elapsed());
    control.stop();
}
