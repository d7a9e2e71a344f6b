//! `control run` never loosens enforcement (issue 13): across a restart with
//! an invalid policy, against a foreign writer of its WasmPlugins, with a
//! `--calico-api` the cluster does not serve, and after its WasmPlugin is
//! deleted, under the shipped RBAC. The whole loop runs against the stateful
//! mock API server of `fake/`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod fake;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use fake::{eventually, Cluster};
use krites_control::compile::{self, Options};
use krites_control::controller::{self, CalicoApiFlag, Metrics, Settings};
use krites_control::inventory::Inventory;
use krites_control::manifests;

const MESH: &str = "istio-system";
const V3: (&str, &[&str]) = ("projectcalico.org/v3", &["globalnetworkpolicies", "networkpolicies", "tiers"]);
const CRD: (&str, &[&str]) = ("crd.projectcalico.org/v1", &["globalnetworkpolicies", "networkpolicies", "tiers"]);

fn yaobank() -> Vec<Value> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/yaobank");
    manifests::load(&[dir]).unwrap().into_iter().map(|m| m.value).collect()
}

/// What `control compile` makes of `objects`.
fn compiled(objects: &[Value]) -> Value {
    let mut inv = Inventory::default();
    for o in objects {
        inv.add(o);
    }
    inv.validate();
    assert!(inv.errors.is_empty(), "{:?}", inv.errors);
    serde_json::to_value(compile::compile(&inv, &Options::default()).unwrap().config).unwrap()
}

fn policy_names(config: &Value) -> Vec<String> {
    config["policies"].as_array().map(|a| a.iter().map(|p| p["name"].as_str().unwrap().to_string()).collect()).unwrap_or_default()
}

struct Running {
    metrics: Arc<Metrics>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(5), self.task).await.expect("the loop did not stop").unwrap().unwrap();
    }
}

/// `control run`'s loop, as a new process would start it, against `cluster`.
fn start(cluster: &Cluster, flag: CalicoApiFlag) -> Running {
    // `cargo test -- --nocapture` with RUST_LOG=debug shows the controller's log.
    if let Ok(filter) = std::env::var("RUST_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(filter)).with_test_writer().try_init();
    }
    let metrics = Arc::new(Metrics::default());
    let settings = Settings {
        module: krites_control::wasmplugin::Module { url: "oci://registry.test/krites:1".into(), sha256: Some("sha256:abc".into()) },
        reporting_instance: Some("krites-control-5d8f7-x2x9q".into()),
        ..Settings::default()
    };
    let opts = controller::Options { settings, calico_api: flag, debounce: Duration::from_millis(50), resync: Duration::from_secs(3600), leader: None };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(controller::run_with_client(cluster.client(), opts, metrics.clone(), async {
        let _ = stopped.await;
    }));
    Running { metrics, stop, task }
}

async fn started(cluster: &Cluster, flag: CalicoApiFlag) -> Running {
    let run = start(cluster, flag);
    let m = run.metrics.clone();
    eventually(20, "control ready", || m.ready()).await;
    eventually(5, "control watching its WasmPlugins", || cluster.watching_plugins()).await;
    run
}

fn database(objects: &[Value]) -> Value {
    objects.iter().find(|v| v["kind"] == "GlobalNetworkPolicy" && v["metadata"]["name"] == "database").unwrap().clone()
}

/// Fail-open 1: a GlobalNetworkPolicy in force is edited into an invalid one
/// and control restarts. The new instance reads the version in force back
/// from the live `krites` WasmPlugin and keeps it: the config does not
/// change (no write at all). A policy that appears invalid for the first
/// time has no version to keep: it is left out, with an Event naming it and
/// the field.
#[tokio::test]
async fn a_restart_keeps_the_last_valid_version_of_an_invalid_policy() {
    let objects = yaobank();
    let cluster = Cluster::new(&objects, &[V3]);
    let first = started(&cluster, CalicoApiFlag::Auto).await;
    let before = cluster.plugin(MESH, "krites").unwrap();
    assert_eq!(before["spec"]["pluginConfig"], compiled(&objects));
    assert!(policy_names(&before["spec"]["pluginConfig"]).contains(&"database".to_string()));
    first.stop().await;

    // While control is down: `database` gets a bad selector, and a new,
    // invalid policy appears.
    let mut broken = database(&objects);
    broken["spec"]["ingress"][0]["source"]["serviceAccounts"]["selector"] = json!("summary ==");
    broken["metadata"]["resourceVersion"] = json!("77");
    cluster.put_input(broken);
    cluster.put_input(json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
        "metadata": {"name": "newcomer", "uid": "uid-newcomer", "resourceVersion": "78"},
        "spec": {"selector": "app ==", "ingress": [{"action": "Deny"}]}}));
    let writes_before = cluster.state().writes.len();

    let second = start(&cluster, CalicoApiFlag::Auto);
    eventually(20, "two InvalidPolicy events", || cluster.state().events.iter().filter(|e| e["reason"] == "InvalidPolicy").count() == 2).await;
    let m = second.metrics.clone();
    eventually(10, "ready", || m.ready()).await;
    let after = cluster.plugin(MESH, "krites").unwrap();
    assert_eq!(after["spec"]["pluginConfig"], before["spec"]["pluginConfig"], "the last valid `database` stays in force");
    assert_eq!(after["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"], "nothing rewritten");
    assert_eq!(cluster.state().writes.len(), writes_before, "no write: the config in force is still right");

    let events = cluster.state().events.clone();
    let about = |name: &str| events.iter().find(|e| e["regarding"]["name"] == name).unwrap().clone();
    let kept = about("database");
    assert!(kept["note"].as_str().unwrap().contains("read back from the WasmPlugin in force"), "{kept}");
    assert!(kept["note"].as_str().unwrap().contains("spec.ingress[0].source.serviceAccounts.selector"), "{kept}");
    let left_out = about("newcomer");
    assert_eq!(left_out["reason"], "InvalidPolicy");
    assert_eq!(left_out["regarding"]["kind"], "GlobalNetworkPolicy");
    let note = left_out["note"].as_str().unwrap();
    assert!(note.contains("GlobalNetworkPolicy/newcomer") && note.contains("spec.selector") && note.contains("left out"), "{note}");
    assert_eq!(left_out["reportingInstance"], "krites-control-5d8f7-x2x9q", "Events name the pod (POD_NAME)");
    assert!(cluster.state().denied.is_empty(), "{:?}", cluster.state().denied);
    second.stop().await;
}

/// Fail-open 2: another field manager force-applies `policies: []` and
/// `scope: ["nobody"]` into the `krites` WasmPlugin's pluginConfig (the
/// revision annotation untouched). The WasmPlugin watch sees it, control
/// replaces the object: the foreign `scope` is gone, the policies are back,
/// in exactly one write.
#[tokio::test]
async fn a_foreign_edit_of_plugin_config_is_repaired_in_one_write() {
    let objects = yaobank();
    let cluster = Cluster::new(&objects, &[V3]);
    let run = started(&cluster, CalicoApiFlag::Auto).await;
    let want = compiled(&objects);
    let writes_before = cluster.state().writes.len();

    cluster.foreign_apply(MESH, "krites", &json!({"spec": {"pluginConfig": {"policies": [], "scope": ["nobody"]}}}));
    let edited = cluster.plugin(MESH, "krites").unwrap();
    assert_eq!(edited["spec"]["pluginConfig"]["scope"], json!(["nobody"]), "the fake applies as a real API server does");

    eventually(10, "the repair", || cluster.plugin(MESH, "krites").unwrap()["spec"]["pluginConfig"] == want).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // would any further write come?
    let writes: Vec<_> = cluster.state().writes[writes_before..].to_vec();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(writes[0].method, Method::PUT, "a replace: server-side apply would keep the foreign scope");
    let live = cluster.plugin(MESH, "krites").unwrap();
    assert!(live["spec"]["pluginConfig"].get("scope").is_none(), "foreign key removed");
    assert_eq!(policy_names(&live["spec"]["pluginConfig"]), ["customer", "database", "summary"]);
    assert!(cluster.state().denied.is_empty(), "{:?}", cluster.state().denied);
    assert!(run.metrics.ready());
    run.stop().await;
}

/// Any other part of the spec too (a foreign `priority`, a changed URL), and
/// the label control selects its WasmPlugins by.
#[tokio::test]
async fn a_foreign_edit_elsewhere_in_the_spec_or_labels_is_repaired() {
    let objects = yaobank();
    let cluster = Cluster::new(&objects, &[V3]);
    let run = started(&cluster, CalicoApiFlag::Auto).await;
    let original = cluster.plugin(MESH, "krites-peer-address").unwrap();
    cluster.foreign_apply(MESH, "krites-peer-address", &json!({"spec": {"priority": 1000, "url": "oci://evil/x:1"},
        "metadata": {"labels": {"app.kubernetes.io/managed-by": "someone-else"}}}));
    eventually(10, "the repair", || {
        let p = cluster.plugin(MESH, "krites-peer-address").unwrap();
        p["spec"] == original["spec"] && p["metadata"]["labels"] == original["metadata"]["labels"]
    })
    .await;
    assert!(cluster.state().denied.is_empty(), "{:?}", cluster.state().denied);
    run.stop().await;
}

/// Fail-closed but stuck (issue 13, RBAC gap): a deleted WasmPlugin is
/// created again, with only the verbs the shipped ClusterRole grants (the
/// fake API server refuses anything else, and a server-side apply of a
/// missing object needs `create`).
#[tokio::test]
async fn a_deleted_wasmplugin_is_created_again_under_the_shipped_rbac() {
    let objects = yaobank();
    let cluster = Cluster::new(&objects, &[V3]);
    let run = started(&cluster, CalicoApiFlag::Auto).await;
    let want = cluster.plugin(MESH, "krites").unwrap();
    cluster.foreign_delete(MESH, "krites");
    eventually(10, "krites created again", || cluster.plugin(MESH, "krites").is_some()).await;
    let back = cluster.plugin(MESH, "krites").unwrap();
    assert_eq!(back["spec"], want["spec"]);
    assert!(cluster.state().denied.is_empty(), "refused by the shipped ClusterRole: {:?}", cluster.state().denied);
    assert!(run.metrics.ready());
    run.stop().await;
}

/// Fail-open 3: the shipped CRDs are the `projectcalico.org/v3` ones and the
/// flag says `crd`. Control must not apply a config without the policies:
/// it stays not ready, says why (log, `/readyz`, an Event) and writes no
/// WasmPlugin. `auto` reads v3 there and enforces the policies.
#[tokio::test]
async fn a_calico_api_the_cluster_does_not_serve_is_an_error_not_an_empty_config() {
    let objects = yaobank();
    let cluster = Cluster::new(&objects, &[V3]);
    let run = start(&cluster, CalicoApiFlag::Crd);
    eventually(10, "an Event about the flag", || cluster.state().events.iter().any(|e| e["reason"] == "CalicoApiNotServed")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // past the first retry
    assert!(!run.metrics.ready());
    let why = run.metrics.blocked().unwrap();
    assert!(why.contains("crd.projectcalico.org/v1") && why.contains("projectcalico.org/v3"), "{why}");
    assert!(cluster.state().writes.is_empty(), "nothing applied: {:?}", cluster.state().writes);
    assert!(cluster.plugin(MESH, "krites").is_none());
    let events = cluster.state().events.clone();
    assert_eq!(events.len(), 1, "one Event, not one per retry: {events:?}");
    assert_eq!(events[0]["regarding"]["kind"], "WasmPlugin");
    assert_eq!(events[0]["type"], "Warning");
    run.stop().await;

    let run = started(&cluster, CalicoApiFlag::Auto).await;
    let live = cluster.plugin(MESH, "krites").unwrap();
    assert_eq!(policy_names(&live["spec"]["pluginConfig"]), ["customer", "database", "summary"]);
    run.stop().await;
}

/// `auto` takes `crd.projectcalico.org/v1` where only that is served (the
/// objects as Calico stores them: default-tier names carry `default.`).
#[tokio::test]
async fn auto_detects_the_crd_api() {
    let objects: Vec<Value> = yaobank()
        .into_iter()
        .map(|mut v| {
            if v["apiVersion"] == "projectcalico.org/v3" {
                v["apiVersion"] = json!("crd.projectcalico.org/v1");
                let name = format!("default.{}", v["metadata"]["name"].as_str().unwrap());
                v["metadata"]["name"] = json!(name);
            }
            v
        })
        .collect();
    let cluster = Cluster::new(&objects, &[CRD]);
    let run = started(&cluster, CalicoApiFlag::Auto).await;
    let live = cluster.plugin(MESH, "krites").unwrap();
    assert_eq!(policy_names(&live["spec"]["pluginConfig"]), ["customer", "database", "summary"]);
    run.stop().await;
    // And `v3` there is the error.
    let run = start(&cluster, CalicoApiFlag::V3);
    eventually(10, "blocked", || run.metrics.blocked().is_some()).await;
    assert!(!run.metrics.ready());
    run.stop().await;
}

/// A policy change rewrites only `krites`: the NETWORK plugin carries no
/// revision, so Istio does not push new listeners for it.
#[tokio::test]
async fn a_policy_change_writes_only_the_http_plugin() {
    let objects = yaobank();
    let cluster = Cluster::new(&objects, &[V3]);
    let run = started(&cluster, CalicoApiFlag::Auto).await;
    let peer = cluster.plugin(MESH, "krites-peer-address").unwrap();
    assert!(peer["metadata"].get("annotations").is_none_or(|a| a.get("krites.io/config-revision").is_none()), "{peer}");
    run.stop().await;

    let mut changed = database(&objects);
    changed["spec"]["order"] = json!(5);
    cluster.put_input(changed);
    let writes_before = cluster.state().writes.len();
    let run = started(&cluster, CalicoApiFlag::Auto).await;
    eventually(10, "the change applied", || cluster.state().writes.len() > writes_before).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let writes: Vec<String> = cluster.state().writes[writes_before..].iter().map(|w| w.path.clone()).collect();
    assert_eq!(writes, [format!("{}/namespaces/{MESH}/wasmplugins/krites", fake::PLUGINS)]);
    run.stop().await;
}
