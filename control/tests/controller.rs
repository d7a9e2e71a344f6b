//! `control run` without a cluster: the API server is a `tower-test` mock
//! behind a real `kube::Client`, and each scenario states the exact requests
//! the controller must send (method, path and query, body) and what the
//! "API server" answers, in the style of kube-rs's controller-rs fixtures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use tokio::time::timeout;

use krites_control::compile::{self, Options};
use krites_control::controller::sources::{self, CalicoApi};
use krites_control::controller::{Metrics, Reconciler, Settings, Snapshot, Stores, Writers};
use krites_control::inventory::Inventory;
use krites_control::manifests::{self, Manifest};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Reply = tower_test::mock::SendResponse<Response<Body>>;

const PLUGINS: &str = "/apis/extensions.istio.io/v1alpha1";
const APPLY_QUERY: &str = "?&force=true&fieldManager=krites-control";

fn mock() -> (Client, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
}

/// One request as the API server sees it.
struct Seen {
    method: Method,
    /// Path and query, as sent.
    uri: String,
    body: Value,
    reply: Reply,
}

async fn next(handle: &mut Handle) -> Seen {
    let (req, reply) = timeout(Duration::from_secs(5), handle.next_request())
        .await
        .expect("the controller sent no request in time")
        .expect("the client is gone");
    let method = req.method().clone();
    let uri = req.uri().path_and_query().map(ToString::to_string).unwrap_or_default();
    let bytes = req.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
    Seen { method, uri, body, reply }
}

fn respond(reply: Reply, status: StatusCode, body: &Value) {
    reply.send_response(Response::builder().status(status).body(Body::from(serde_json::to_vec(body).unwrap())).unwrap());
}

fn not_found(what: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": format!("{what} not found"), "reason": "NotFound", "code": 404})
}

fn plugin_list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPluginList", "metadata": {"resourceVersion": "7"}, "items": items})
}

/// Expects `method uri`, checks nothing else, answers `status` + `body`;
/// returns the request body.
async fn expect(handle: &mut Handle, method: Method, uri: &str, status: StatusCode, answer: impl FnOnce(&Value) -> Value) -> Value {
    let seen = next(handle).await;
    assert_eq!((&seen.method, seen.uri.as_str()), (&method, uri), "unexpected request");
    let body = answer(&seen.body);
    respond(seen.reply, status, &body);
    seen.body
}

/// Runs one reconcile while the mock answers with `scenario`; returns the
/// reconcile's result and what the scenario returned.
async fn reconcile_with<T: Send + 'static>(
    reconciler: &mut Reconciler,
    snapshot: &Snapshot,
    handle: Handle,
    scenario: impl FnOnce(Handle) -> futures::future::BoxFuture<'static, (Handle, T)>,
) -> (krites_control::controller::Outcome, Handle, T) {
    let server = tokio::spawn(scenario(handle));
    let outcome = timeout(Duration::from_secs(10), reconciler.reconcile(snapshot)).await.expect("reconcile hung").expect("reconcile failed");
    let (handle, t) = timeout(Duration::from_secs(5), server).await.expect("scenario hung").expect("scenario failed");
    (outcome, handle, t)
}

/// A reconcile that must not talk to the API server at all.
async fn reconcile_silently(reconciler: &mut Reconciler, snapshot: &Snapshot, handle: &mut Handle) -> krites_control::controller::Outcome {
    tokio::select! {
        r = reconciler.reconcile(snapshot) => r.expect("reconcile failed"),
        req = handle.next_request() => {
            let (req, _) = req.expect("client gone");
            panic!("unexpected request {} {}", req.method(), req.uri());
        }
    }
}

fn fixtures() -> Vec<Manifest> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/yaobank");
    manifests::load(&[dir]).unwrap()
}

fn yaobank_stores() -> (Stores, Writers) {
    let (stores, mut writers) = sources::stores(Some(CalicoApi::V3));
    for m in fixtures() {
        writers.apply(&m.value).unwrap();
    }
    writers.mark_synced();
    (stores, writers)
}

fn settings() -> Settings {
    Settings {
        module: krites_control::wasmplugin::Module { url: "oci://registry.test/krites:1".into(), sha256: Some("sha256:abc".into()) },
        reporting_instance: Some("krites-control-6c9d-7xk2p".into()),
        ..Settings::default()
    }
}

/// What `control compile` makes of the same manifests.
fn expected_config(manifests: &[Manifest]) -> (Value, String) {
    let inv = Inventory::from_manifests(manifests);
    assert!(inv.errors.is_empty(), "{:?}", inv.errors);
    let c = compile::compile(&inv, &Options::default()).unwrap();
    (serde_json::to_value(&c.config).unwrap(), c.revision)
}

fn revision_of(body: &Value) -> &str {
    body.pointer("/metadata/annotations/krites.io~1config-revision").and_then(Value::as_str).unwrap()
}

/// Every WasmPlugin of the cluster: what control reads after a start (and
/// at each resync or foreign edit), unfiltered so that an object stripped of
/// its label is still found.
const LIST_ALL: &str = "/apis/extensions.istio.io/v1alpha1/wasmplugins?";

/// The first reconcile against an empty cluster, as the API server sees it:
/// list the WasmPlugins (none: nothing to recover, nothing stale), apply
/// krites, apply krites-peer-address. Returns the two applied bodies.
async fn first_apply(handle: Handle) -> (Handle, (Value, Value)) {
    let mut h = handle;
    let mesh = format!("{PLUGINS}/namespaces/istio-system/wasmplugins");
    expect(&mut h, Method::GET, LIST_ALL, StatusCode::OK, |_| plugin_list(vec![])).await;
    let http = expect(&mut h, Method::PATCH, &format!("{mesh}/krites{APPLY_QUERY}"), StatusCode::OK, Value::clone).await;
    let network = expect(&mut h, Method::PATCH, &format!("{mesh}/krites-peer-address{APPLY_QUERY}"), StatusCode::OK, Value::clone).await;
    (h, (http, network))
}

/// A config change: only krites is written (krites-peer-address does not
/// carry the config, nor its revision).
fn krites_only(mut h: Handle) -> futures::future::BoxFuture<'static, (Handle, Value)> {
    Box::pin(async move {
        let mesh = format!("{PLUGINS}/namespaces/istio-system/wasmplugins");
        let a = expect(&mut h, Method::PATCH, &format!("{mesh}/krites{APPLY_QUERY}"), StatusCode::OK, Value::clone).await;
        (h, a)
    })
}

fn first_apply_boxed(handle: Handle) -> futures::future::BoxFuture<'static, (Handle, (Value, Value))> {
    Box::pin(first_apply(handle))
}

fn pod(name: &str, ip: &str, app: &str, sa: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "default", "labels": {"app": app}, "uid": format!("uid-{name}")},
           "spec": {"serviceAccountName": sa, "containers": [{"name": "app", "image": "x"}]},
           "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

/// Scenarios 1-3: apply, unchanged inputs cost nothing, a change re-applies.
#[tokio::test]
async fn applies_yaobank_then_only_changes() {
    let (client, handle) = mock();
    let metrics = Arc::new(Metrics::default());
    let mut reconciler = Reconciler::new(client, settings(), metrics.clone());
    let (stores, mut writers) = yaobank_stores();
    let manifests = fixtures();
    let (config, revision) = expected_config(&manifests);

    // (1) One reconcile: server-side apply of both WasmPlugins.
    let (outcome, mut handle, (http, network)) = reconcile_with(&mut reconciler, &stores.snapshot(), handle, first_apply_boxed).await;
    assert_eq!(outcome.applied.written, ["istio-system/krites", "istio-system/krites-peer-address"]);
    assert_eq!(http["apiVersion"], "extensions.istio.io/v1alpha1");
    assert_eq!(http["kind"], "WasmPlugin");
    assert_eq!(http["metadata"]["name"], "krites");
    assert_eq!(http["metadata"]["namespace"], "istio-system");
    assert_eq!(http["metadata"]["labels"]["app.kubernetes.io/managed-by"], "krites-control");
    assert_eq!(http["spec"]["pluginConfig"], config, "the applied pluginConfig is what `control compile` makes of the same objects");
    assert_eq!(revision_of(&http), revision);
    assert_eq!(http["spec"]["url"], "oci://registry.test/krites:1");
    assert_eq!(http["spec"]["sha256"], "sha256:abc");
    assert_eq!(http["spec"]["phase"], "AUTHZ");
    assert_eq!(http["spec"]["failStrategy"], "FAIL_CLOSE");
    assert_eq!(network["spec"]["type"], "NETWORK");
    assert_eq!(network["spec"]["pluginName"], "krites_peer_address");
    assert_eq!(network["metadata"].get("annotations"), None, "no revision: a config change does not rewrite it");
    assert!(metrics.ready());
    assert_eq!(metrics.applies(), 2);

    // (2) Unchanged inputs: no request at all.
    let outcome = reconcile_silently(&mut reconciler, &stores.snapshot(), &mut handle).await;
    assert!(outcome.applied.written.is_empty());
    assert_eq!(outcome.applied.unchanged, 2);

    // A pod that no rule can tell apart from others changes nothing either... (the
    // attack pod's service account is referenced by no rule; a second one is invisible)
    writers.apply(&pod("attack-2", "127.0.0.67", "attack", "default")).unwrap();
    reconcile_silently(&mut reconciler, &stores.snapshot(), &mut handle).await;

    // (3) A new customer pod: the summary policy admits its service account, so
    // the endpoint table changes -> a new revision, applied to krites only
    // (no read: the controller knows what it applied; the NETWORK plugin does
    // not depend on the config, so Istio pushes no listener change for it).
    writers.apply(&pod("customer-2", "127.0.0.31", "customer", "customer")).unwrap();
    let (outcome, _handle, http2) = reconcile_with(&mut reconciler, &stores.snapshot(), handle, krites_only).await;
    assert_eq!(outcome.applied.written, ["istio-system/krites"]);
    assert_eq!(outcome.applied.unchanged, 1);
    assert_ne!(revision_of(&http2), revision);
    let ips: Vec<String> = http2["spec"]["pluginConfig"]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["ips"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_string()))
        .collect();
    assert!(ips.contains(&"127.0.0.31".to_string()), "{ips:?}");
    assert_eq!(metrics.applies(), 3);
}

fn calico_np(name: &str, selector: &str) -> Value {
    json!({"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "resourceVersion": "41"},
           "spec": {"selector": selector, "ingress": [{"action": "Allow"}]}})
}

/// Expects the Event about an invalid object; returns its body.
async fn expect_event(h: &mut Handle, namespace: &str) -> Value {
    expect(h, Method::POST, &format!("/apis/events.k8s.io/v1/namespaces/{namespace}/events?"), StatusCode::CREATED, Value::clone).await
}

/// Scenario 4: an invalid policy is skipped, reported once (log, Event,
/// metrics), and enforcement of the rest goes on unchanged.
#[tokio::test]
async fn invalid_policy_is_skipped_and_reported_once() {
    let (client, handle) = mock();
    let metrics = Arc::new(Metrics::default());
    let mut reconciler = Reconciler::new(client, settings(), metrics.clone());
    let (stores, mut writers) = yaobank_stores();
    let (_, handle, (http, _)) = reconcile_with(&mut reconciler, &stores.snapshot(), handle, first_apply_boxed).await;
    let revision = revision_of(&http).to_string();

    writers.apply(&calico_np("broken", "app == ")).unwrap();
    // The config is what it was (the bad policy is left out): no PATCH; one Event.
    let (outcome, mut handle, event) = reconcile_with(&mut reconciler, &stores.snapshot(), handle, |mut h| {
        Box::pin(async move {
            let e = expect_event(&mut h, "default").await;
            (h, e)
        })
    })
    .await;
    assert!(outcome.applied.written.is_empty(), "{outcome:?}");
    assert_eq!(outcome.revisions.get("istio-system"), Some(&revision));
    assert_eq!(outcome.invalid, 1);
    assert_eq!(outcome.events, 1);
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "InvalidPolicy");
    assert_eq!(event["action"], "Compile");
    assert_eq!(event["reportingController"], "krites-control");
    assert_eq!(event["reportingInstance"], "krites-control-6c9d-7xk2p", "the pod (POD_NAME), not the controller's name");
    assert_eq!(event["regarding"]["kind"], "NetworkPolicy");
    assert_eq!(event["regarding"]["apiVersion"], "projectcalico.org/v3");
    assert_eq!(event["regarding"]["name"], "broken");
    assert_eq!(event["regarding"]["namespace"], "default");
    assert_eq!(event["regarding"]["uid"], "uid-broken");
    let note = event["note"].as_str().unwrap();
    assert!(note.contains("spec.selector"), "{note}");
    assert_eq!(metrics.invalid_objects(), 1);
    assert!(metrics.render().lines().any(|l| l == "krites_control_invalid_objects 1"));
    assert!(metrics.render().lines().any(|l| l == "krites_control_events_total 1"));

    // Same object version again: no second Event, no PATCH.
    let outcome = reconcile_silently(&mut reconciler, &stores.snapshot(), &mut handle).await;
    assert_eq!((outcome.invalid, outcome.events), (1, 0));

    // Fixed: compiled in (a new revision applied), nothing left to report.
    let mut fixed = calico_np("broken", "app == 'customer'");
    fixed["metadata"]["resourceVersion"] = json!("42");
    writers.apply(&fixed).unwrap();
    let (outcome, _handle, http2) = reconcile_with(&mut reconciler, &stores.snapshot(), handle, krites_only).await;
    assert_eq!(outcome.invalid, 0);
    assert_eq!(outcome.applied.written, ["istio-system/krites"], "a policy change writes only krites");
    assert_ne!(revision_of(&http2), revision);
    let names: Vec<&str> = http2["spec"]["pluginConfig"]["policies"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"broken"), "{names:?}");
    assert_eq!(metrics.invalid_objects(), 0);
}

/// A policy in force that is edited into an invalid one keeps its last valid
/// version in force (dropping it would loosen enforcement); deleting it does
/// remove it.
#[tokio::test]
async fn a_policy_turned_invalid_keeps_its_last_valid_version() {
    let (client, handle) = mock();
    let metrics = Arc::new(Metrics::default());
    let mut reconciler = Reconciler::new(client, settings(), metrics.clone());
    let (stores, mut writers) = yaobank_stores();
    let (_, handle, (http, _)) = reconcile_with(&mut reconciler, &stores.snapshot(), handle, first_apply_boxed).await;
    let revision = revision_of(&http).to_string();

    let database = fixtures()
        .into_iter()
        .map(|m| m.value)
        .find(|v| v["kind"] == "GlobalNetworkPolicy" && v["metadata"]["name"] == "database")
        .unwrap();
    let mut broken = database.clone();
    broken["spec"]["ingress"][0]["source"]["serviceAccounts"]["selector"] = json!("summary ==");
    broken["metadata"]["resourceVersion"] = json!("99");
    writers.apply(&broken).unwrap();
    let (outcome, mut handle, event) = reconcile_with(&mut reconciler, &stores.snapshot(), handle, |mut h| {
        Box::pin(async move {
            // Cluster-scoped objects get their Events in `default`.
            let e = expect_event(&mut h, "default").await;
            (h, e)
        })
    })
    .await;
    assert!(outcome.applied.written.is_empty());
    assert_eq!(outcome.revisions.get("istio-system"), Some(&revision), "the last valid `database` policy stays in force");
    assert_eq!(event["regarding"]["kind"], "GlobalNetworkPolicy");
    assert_eq!(event["regarding"]["name"], "database");
    assert!(event["note"].as_str().unwrap().contains("last valid version stays in force"), "{event}");
    reconcile_silently(&mut reconciler, &stores.snapshot(), &mut handle).await;

    writers.delete(&broken).unwrap();
    let (_, _handle, http2) = reconcile_with(&mut reconciler, &stores.snapshot(), handle, krites_only).await;
    let names: Vec<&str> = http2["spec"]["pluginConfig"]["policies"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["customer", "summary"]);
}

/// A network set a Deny rule matches, edited into an invalid one, keeps its
/// last valid version in force: dropping it would let its addresses in.
#[tokio::test]
async fn a_network_set_turned_invalid_keeps_its_last_valid_version() {
    let (client, handle) = mock();
    let metrics = Arc::new(Metrics::default());
    let mut reconciler = Reconciler::new(client, settings(), metrics.clone());
    let (stores, mut writers) = yaobank_stores();
    let (_, handle, _) = reconcile_with(&mut reconciler, &stores.snapshot(), handle, first_apply_boxed).await;

    let feed = json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkSet",
                      "metadata": {"name": "threat-feed", "uid": "uid-feed", "resourceVersion": "7", "labels": {"feed": "blocked"}},
                      "spec": {"nets": ["203.0.113.0/24"]}});
    let block = json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
                       "metadata": {"name": "block-feed", "uid": "uid-block", "resourceVersion": "8"},
                       "spec": {"order": 1, "selector": "all()", "ingress": [{"action": "Deny", "source": {"selector": "feed == 'blocked'"}}]}});
    writers.apply(&feed).unwrap();
    writers.apply(&block).unwrap();
    let (_, handle, http) = reconcile_with(&mut reconciler, &stores.snapshot(), handle, krites_only).await;
    let revision = revision_of(&http).to_string();
    assert_eq!(http["spec"]["pluginConfig"]["networkSets"][0]["nets"], json!(["203.0.113.0/24"]), "{http}");

    let mut broken = feed.clone();
    broken["spec"]["nets"] = json!(["203.0.113.0/33"]);
    broken["metadata"]["resourceVersion"] = json!("99");
    writers.apply(&broken).unwrap();
    let (outcome, mut handle, event) = reconcile_with(&mut reconciler, &stores.snapshot(), handle, |mut h| {
        Box::pin(async move {
            let e = expect_event(&mut h, "default").await;
            (h, e)
        })
    })
    .await;
    assert!(outcome.applied.written.is_empty(), "{outcome:?}");
    assert_eq!(outcome.revisions.get("istio-system"), Some(&revision), "the last valid threat-feed stays in force");
    assert_eq!(event["regarding"]["kind"], "GlobalNetworkSet");
    assert_eq!(event["regarding"]["name"], "threat-feed");
    let note = event["note"].as_str().unwrap();
    assert!(note.contains("spec.nets[0]") && note.contains("last valid version stays in force"), "{note}");
    reconcile_silently(&mut reconciler, &stores.snapshot(), &mut handle).await;
    println!("an invalid network set: kept revision {revision}, reported: {note}");
}

/// A compile that fails (two running pods claim one address) writes nothing:
/// the WasmPlugins applied before stay in force.
#[tokio::test]
async fn compile_failure_leaves_the_applied_plugins_alone() {
    let (client, handle) = mock();
    let metrics = Arc::new(Metrics::default());
    let mut reconciler = Reconciler::new(client, settings(), metrics.clone());
    let (stores, mut writers) = yaobank_stores();
    let (_, mut handle, _) = reconcile_with(&mut reconciler, &stores.snapshot(), handle, first_apply_boxed).await;
    writers.apply(&pod("impostor", "127.0.0.11", "customer", "customer")).unwrap();
    let snapshot = stores.snapshot();
    let result = tokio::select! {
        r = reconciler.reconcile(&snapshot) => r,
        req = handle.next_request() => panic!("unexpected request {:?}", req.map(|(r, _)| r.uri().clone())),
    };
    assert!(result.is_err());
    assert!(metrics.render().lines().any(|l| l == "krites_control_compile_errors_total 1"), "{}", metrics.render());
    assert_eq!(metrics.applies(), 2);
}

/// After a restart: the WasmPlugins in the cluster already carry this config
/// (one list, nothing written again); a stale per-namespace shard is deleted.
#[tokio::test]
async fn after_a_restart_reads_once_and_removes_stale_plugins() {
    let (stores, _writers) = yaobank_stores();
    // What the cluster holds: what a previous run applied.
    let (client, handle) = mock();
    let mut before = Reconciler::new(client, settings(), Arc::new(Metrics::default()));
    let plan = before.desired(&stores.snapshot()).unwrap();
    let live: Vec<Value> = plan
        .objects
        .iter()
        .map(|o| {
            let mut v = serde_json::to_value(o).unwrap();
            v["metadata"]["resourceVersion"] = json!("5");
            v["metadata"]["uid"] = json!("u");
            v
        })
        .collect();
    drop(handle);

    let (client, handle) = mock();
    let metrics = Arc::new(Metrics::default());
    let mut reconciler = Reconciler::new(client, settings(), metrics.clone());
    let (outcome, _handle, ()) = reconcile_with(&mut reconciler, &stores.snapshot(), handle, move |mut h| {
        Box::pin(async move {
            let mut stale = live[0].clone();
            stale["metadata"]["namespace"] = json!("old");
            let items = vec![live[0].clone(), live[1].clone(), stale];
            expect(&mut h, Method::GET, LIST_ALL, StatusCode::OK, move |_| plugin_list(items)).await;
            expect(&mut h, Method::DELETE, &format!("{PLUGINS}/namespaces/old/wasmplugins/krites?"), StatusCode::OK, |_| {
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}})
            })
            .await;
            (h, ())
        })
    })
    .await;
    assert!(outcome.applied.written.is_empty());
    assert_eq!(outcome.applied.deleted, ["old/krites"]);
    assert!(metrics.ready(), "ready: the cluster holds the current config");
}

/// `--per-namespace`: one pair per namespace that has pods or policies, in
/// that namespace.
#[tokio::test]
async fn per_namespace_shards() {
    let (client, _handle) = mock();
    let (stores, _writers) = yaobank_stores();
    let mut reconciler = Reconciler::new(client, Settings { per_namespace: true, ..settings() }, Arc::new(Metrics::default()));
    let plan = reconciler.desired(&stores.snapshot()).unwrap();
    assert!(plan.sharded);
    let placed: Vec<(String, String)> = plan
        .objects
        .iter()
        .map(|o| (o.metadata.namespace.clone().unwrap(), o.metadata.name.clone().unwrap()))
        .collect();
    assert_eq!(placed, [("default".into(), "krites".into()), ("default".into(), "krites-peer-address".into())]);
    assert_eq!(plan.revisions.keys().collect::<Vec<_>>(), ["default"]);
}

// ---- the whole loop: watchers, stores, debounce, reconcile ----

fn list_of(kind: &str, api_version: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": api_version, "kind": format!("{kind}List"), "metadata": {"resourceVersion": "1"}, "items": items})
}

/// `control run`'s loop against the mock API server: the watchers list every
/// kind (Services and EndpointSlices too; Calico tiers and NetworkSets are absent: 404; GlobalNetworkSets
/// listed, none), the first compile waits for all of them, and one burst
/// leads to one apply of both WasmPlugins.
#[tokio::test]
async fn the_loop_lists_watches_and_applies() {
    let (client, mut handle) = mock();
    let manifests = fixtures();
    let (config, revision) = expected_config(&manifests);
    let of_kind = |api_version: &str, kind: &str| -> Vec<Value> {
        manifests.iter().map(|m| m.value.clone()).filter(|v| v["apiVersion"] == api_version && v["kind"] == kind).collect()
    };
    let lists: BTreeMap<&str, Value> = BTreeMap::from([
        ("/api/v1/pods", list_of("Pod", "v1", of_kind("v1", "Pod"))),
        ("/api/v1/serviceaccounts", list_of("ServiceAccount", "v1", of_kind("v1", "ServiceAccount"))),
        ("/api/v1/namespaces", list_of("Namespace", "v1", of_kind("v1", "Namespace"))),
        ("/apis/networking.k8s.io/v1/networkpolicies", list_of("NetworkPolicy", "networking.k8s.io/v1", vec![])),
        ("/api/v1/services", list_of("Service", "v1", of_kind("v1", "Service"))),
        ("/apis/discovery.k8s.io/v1/endpointslices", list_of("EndpointSlice", "discovery.k8s.io/v1", of_kind("discovery.k8s.io/v1", "EndpointSlice"))),
        (
            "/apis/projectcalico.org/v3/globalnetworkpolicies",
            list_of("GlobalNetworkPolicy", "projectcalico.org/v3", of_kind("projectcalico.org/v3", "GlobalNetworkPolicy")),
        ),
        ("/apis/projectcalico.org/v3/networkpolicies", list_of("NetworkPolicy", "projectcalico.org/v3", vec![])),
        ("/apis/projectcalico.org/v3/globalnetworksets", list_of("GlobalNetworkSet", "projectcalico.org/v3", vec![])),
    ]);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Vec<(Method, String, Value)>>();
    let server = tokio::spawn(async move {
        let mut watches = Vec::new(); // held open, never answered: nothing changes
        let mut writes = Vec::new();
        let mut done_tx = Some(done_tx);
        while let Some((req, reply)) = handle.next_request().await {
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or("").to_string();
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let body: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
            if query.contains("watch=true") {
                watches.push(reply);
            } else if path == "/apis/projectcalico.org/v3" {
                let resources: Vec<Value> = ["globalnetworkpolicies", "networkpolicies"]
                    .iter()
                    .map(|r| json!({"name": r, "singularName": "", "namespaced": true, "kind": "X", "verbs": ["list", "watch"]}))
                    .collect();
                respond(reply, StatusCode::OK, &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "projectcalico.org/v3", "resources": resources}));
            } else if let Some(list) = lists.get(path.as_str()) {
                respond(reply, StatusCode::OK, list);
            } else if path == "/apis/projectcalico.org/v3/tiers"
                || path == "/apis/projectcalico.org/v3/networksets"
                || path.starts_with("/apis/projectcalico.org/v3/staged")
            {
                // Kinds this API server does not serve (no CRD): skipped, none exist.
                respond(reply, StatusCode::NOT_FOUND, &not_found("the server could not find the requested resource"));
            } else if path.starts_with(PLUGINS) {
                match method {
                    Method::GET if path.ends_with("/wasmplugins") => respond(reply, StatusCode::OK, &plugin_list(vec![])),
                    Method::GET => respond(reply, StatusCode::NOT_FOUND, &not_found(&path)),
                    Method::PATCH => {
                        respond(reply, StatusCode::OK, &body);
                        writes.push((method, format!("{path}?{query}"), body));
                        if writes.len() == 2 {
                            if let Some(tx) = done_tx.take() {
                                let _ = tx.send(writes.clone());
                            }
                        }
                    }
                    _ => panic!("unexpected {method} {path}"),
                }
            } else {
                panic!("unexpected {method} {path}?{query}");
            }
        }
    });

    let metrics = Arc::new(Metrics::default());
    let opts = krites_control::controller::Options {
        settings: settings(),
        calico_api: krites_control::controller::CalicoApiFlag::V3,
        debounce: Duration::from_millis(50),
        resync: Duration::from_secs(3600),
        leader: None,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let control = tokio::spawn(krites_control::controller::run_with_client(client, opts, metrics.clone(), async {
        let _ = stopped.await;
    }));
    let writes = timeout(Duration::from_secs(20), done_rx).await.expect("no WasmPlugin applied in time").unwrap();
    let uris: Vec<&str> = writes.iter().map(|(_, u, _)| u.as_str()).collect();
    assert_eq!(
        uris,
        [
            "/apis/extensions.istio.io/v1alpha1/namespaces/istio-system/wasmplugins/krites?&force=true&fieldManager=krites-control",
            "/apis/extensions.istio.io/v1alpha1/namespaces/istio-system/wasmplugins/krites-peer-address?&force=true&fieldManager=krites-control",
        ]
    );
    assert_eq!(writes[0].2["spec"]["pluginConfig"], config);
    assert_eq!(revision_of(&writes[0].2), revision);
    // Ready once the first apply finished.
    timeout(Duration::from_secs(5), async {
        while !metrics.ready() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("never ready");
    assert!(metrics.alive());
    let page = metrics.render();
    assert!(page.lines().any(|l| l == "krites_control_objects{group=\"\",kind=\"Pod\"} 7"), "{page}");
    assert!(page.lines().any(|l| l == "krites_control_objects{group=\"projectcalico.org\",kind=\"GlobalNetworkPolicy\"} 3"), "{page}");
    assert!(page.lines().any(|l| l == "krites_control_applies_total 2"), "{page}");
    stop.send(()).unwrap();
    timeout(Duration::from_secs(5), control).await.expect("the loop did not stop").unwrap().unwrap();
    assert!(!metrics.alive());
    server.abort();
}
