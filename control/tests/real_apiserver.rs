//! `control run` end to end against a real kube-apiserver + etcd
//! (`scripts/build-kube.sh`, `scripts/kube-up.sh`): the process runs as the
//! `krites-control` ServiceAccount with a TokenRequest token, so every
//! request goes through the shipped ClusterRole
//! (`istio-manifests/control/rbac.yaml`) as the API server enforces it. The
//! CRDs are the real ones: Istio's WasmPlugin (`istio-manifests/istio-crds/`)
//! and Calico's, in the `projectcalico.org/v3` form (`calico-crds/`) or the
//! `crd.projectcalico.org/v1` form (`fixtures/calico-crd-v1/` + the v1 Tier).
//!
//! Each test starts its own cluster (one at a time), is bounded in time and
//! prints what it measured (`cargo test -- --nocapture` shows it). Without
//! the cached binaries, outside CI, each test prints SKIPPED and passes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod kube;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use krites_control::controller::apply::{same_json, REVISION_ANNOTATION};
use kube::{eventually, http_get, in_form, policy_names, CalicoForm, Control, Kube, PluginWatch, MESH};

/// A cluster with the CRDs, RBAC and YAO Bank in `form`; `None`: skipped.
fn yaobank_cluster(form: CalicoForm) -> Option<Kube> {
    let kube = Kube::up()?;
    let t = Instant::now();
    kube.install(form);
    kube.yaobank(form);
    println!("cluster up in {:?}, CRDs + RBAC + YAO Bank ({form:?}) in {:?}", kube.started_in, t.elapsed());
    Some(kube)
}

fn revision(plugin: &Value) -> String {
    plugin["metadata"]["annotations"][REVISION_ANNOTATION].as_str().unwrap_or("").to_string()
}

/// The live `krites` config is what `control compile` makes of a dump of
/// the same cluster (parsed JSON, numbers by value; and the revision).
fn assert_matches_compile(kube: &Kube, form: CalicoForm) -> Value {
    let live = kube.plugin("krites").expect("the krites WasmPlugin");
    let (want, want_revision) = kube.compile_dump(form);
    assert!(same_json(&live["spec"]["pluginConfig"], &want), "live:\n{}\ncompile:\n{}", live["spec"]["pluginConfig"], want);
    assert_eq!(revision(&live), want_revision);
    live
}

fn forbidden_in(log: &str) -> Vec<&str> {
    // (kube's errors read `reason: "Forbidden", code: 403`.)
    log.lines().filter(|l| l.to_ascii_lowercase().contains("forbidden") || l.contains("code: 403")).collect()
}

/// One change to the cluster.
type Step = Box<dyn Fn(&Kube)>;

/// The settle time after a change: no further write may come in it.
const SETTLE: Duration = Duration::from_millis(1500);

/// Scenario 1: control writes both WasmPlugins, and the `krites` config is exactly
/// what `control compile` emits for the same objects.
#[test]
fn writes_both_wasmplugins_with_the_compiled_config() {
    let _serial = kube::serial();
    let Some(kube) = yaobank_cluster(CalicoForm::V3) else { return };
    let control = Control::start(&kube, "auto");
    let ready = control.wait_ready(30);
    let converged = eventually(5, "both WasmPlugins", || kube.plugin("krites").is_some() && kube.plugin("krites-peer-address").is_some());
    println!("start -> ready (both WasmPlugins written): {ready:?} (+{converged:?})");
    let live = assert_matches_compile(&kube, CalicoForm::V3);
    assert_eq!(policy_names(&live["spec"]["pluginConfig"]), ["customer", "database", "summary"]);
    let peer = kube.plugin("krites-peer-address").unwrap();
    assert!(peer["metadata"]["annotations"].get(REVISION_ANNOTATION).is_none(), "{peer}");
    assert_eq!(live["metadata"]["labels"]["app.kubernetes.io/managed-by"], "krites-control");
    assert_eq!(control.metric("krites_control_ready"), 1.0);
    let (rss, hwm) = control.memory_kib();
    println!("control memory: RSS {rss} KiB, peak {hwm} KiB");
    assert!(forbidden_in(&control.log_text()).is_empty(), "{}", control.log_text());
    control.stop();
}

/// Scenario 3: Fail-open 1: a GlobalNetworkPolicy in force is edited into an
/// invalid one (bad selector): an InvalidPolicy Event, the last valid version
/// stays; control is killed and started again: the config still holds it
/// (read back from the live WasmPlugin), with no write. A policy invalid
/// from the start is left out with an Event.
#[test]
fn an_invalid_edit_keeps_the_last_valid_version_across_a_restart() {
    let _serial = kube::serial();
    let Some(kube) = yaobank_cluster(CalicoForm::V3) else { return };
    // A staged policy too: its last valid version is kept alike.
    kube.apply(&[json!({"apiVersion": "projectcalico.org/v3", "kind": "StagedGlobalNetworkPolicy", "metadata": {"name": "summary"},
        "spec": {"selector": "app == 'summary'", "ingress": [{"action": "Allow", "source": {"serviceAccounts": {"names": ["customer"]}}}]}})]);
    let control = Control::start(&kube, "auto");
    control.wait_ready(30);
    let before = assert_matches_compile(&kube, CalicoForm::V3);
    assert_eq!(before["spec"]["pluginConfig"]["stagedPolicies"][0]["name"], "summary");
    let watch = PluginWatch::start(&kube);
    let mark = watch.mark();
    let staged_event = |note: &str| {
        kube.events().iter().any(|e| {
            e["regarding"]["kind"] == "StagedGlobalNetworkPolicy" && e["regarding"]["name"] == "summary" && e["note"].as_str().unwrap_or("").contains(note)
        })
    };

    let t = Instant::now();
    kube.kubectl(&["patch", "globalnetworkpolicies.projectcalico.org", "database", "--type=json", "-p",
        r#"[{"op":"replace","path":"/spec/ingress/0/source/serviceAccounts","value":{"selector":"summary =="}}]"#]);
    let took = eventually(15, "an InvalidPolicy Event about database", || {
        kube.events().iter().any(|e| e["reason"] == "InvalidPolicy" && e["regarding"]["name"] == "database")
    });
    println!("invalid edit -> InvalidPolicy Event: {:?}", took.max(t.elapsed()));
    kube.kubectl(&["patch", "stagedglobalnetworkpolicies.projectcalico.org", "summary", "--type=merge", "-p", r#"{"spec":{"selector":"app =="}}"#]);
    eventually(15, "an InvalidPolicy Event about the staged summary", || staged_event("last valid version"));
    std::thread::sleep(SETTLE);
    let event = kube.events().into_iter().find(|e| e["reason"] == "InvalidPolicy" && e["regarding"]["name"] == "database").unwrap();
    let note = event["note"].as_str().unwrap();
    assert!(note.contains("spec.ingress[0].source.serviceAccounts.selector") && note.contains("last valid version"), "{note}");
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["regarding"]["kind"], "GlobalNetworkPolicy");
    assert_eq!(event["reportingInstance"], "krites-control-e2e");
    assert!(watch.since(mark, "krites").is_empty(), "no write for an invalid edit: {:?}", watch.since(mark, "krites"));
    control.kill();

    // While control is down, a new policy that is invalid from the start.
    kube.apply(&[json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
        "metadata": {"name": "newcomer"}, "spec": {"selector": "app ==", "ingress": [{"action": "Deny"}]}})]);
    let second = Control::start(&kube, "auto");
    let ready = second.wait_ready(30);
    println!("restart -> ready: {ready:?}");
    eventually(15, "an InvalidPolicy Event about newcomer", || {
        kube.events().iter().any(|e| e["reason"] == "InvalidPolicy" && e["regarding"]["name"] == "newcomer")
    });
    eventually(15, "the restarted control's Event about database", || {
        kube.events().iter().any(|e| e["regarding"]["name"] == "database" && e["note"].as_str().unwrap_or("").contains("read back from the WasmPlugin in force"))
    });
    eventually(15, "the restarted control's Event about the staged summary", || staged_event("read back from the WasmPlugin in force"));
    std::thread::sleep(SETTLE);
    let after = kube.plugin("krites").unwrap();
    assert_eq!(after["spec"]["pluginConfig"], before["spec"]["pluginConfig"], "the last valid `database` (and staged `summary`) stays in force");
    assert_eq!(after["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"], "nothing rewritten");
    assert!(watch.since(mark, "krites").is_empty(), "{:?}", watch.since(mark, "krites"));
    let newcomer = kube.events().into_iter().find(|e| e["regarding"]["name"] == "newcomer").unwrap();
    assert!(newcomer["note"].as_str().unwrap().contains("left out"), "{newcomer}");
    assert!(forbidden_in(&second.log_text()).is_empty(), "{}", second.log_text());

    // Fixed: the new version is enforced.
    let t = Instant::now();
    kube.kubectl(&["patch", "globalnetworkpolicies.projectcalico.org", "database", "--type=json", "-p",
        r#"[{"op":"replace","path":"/spec/ingress/0/source/serviceAccounts","value":{"selector":"database == 'reader'"}}]"#]);
    eventually(15, "the fixed policy in force", || watch.since(mark, "krites").len() == 1);
    println!("fix -> enforced: {:?}", watch.since(mark, "krites")[0].at - t);
    kube.kubectl(&["delete", "globalnetworkpolicies.projectcalico.org", "newcomer"]);
    std::thread::sleep(SETTLE);
    assert_eq!(watch.since(mark, "krites").len(), 1, "one write for the fix, none for deleting a policy never in force");
    // The staged policy fixed: its new version in stagedPolicies.
    kube.kubectl(&["patch", "stagedglobalnetworkpolicies.projectcalico.org", "summary", "--type=merge", "-p", r#"{"spec":{"selector":"app == 'summary' && version == 'v2'"}}"#]);
    eventually(15, "the fixed staged policy in the config", || watch.since(mark, "krites").len() == 2);
    assert_matches_compile(&kube, CalicoForm::V3);
    second.stop();
}

/// Scenario 4: Fail-open 2: another field manager force-applies `policies: []` and
/// `scope: ["nobody"]` into the `krites` pluginConfig. control repairs it in
/// one write: the foreign `scope` gone, the policies back.
#[test]
fn a_foreign_field_manager_is_repaired() {
    let _serial = kube::serial();
    let Some(kube) = yaobank_cluster(CalicoForm::V3) else { return };
    let control = Control::start(&kube, "auto");
    control.wait_ready(30);
    let before = assert_matches_compile(&kube, CalicoForm::V3);
    let watch = PluginWatch::start(&kube);
    let mark = watch.mark();
    let applies = control.metric("krites_control_applies_total");

    let intruder = json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
        "metadata": {"name": "krites", "namespace": MESH},
        "spec": {"pluginConfig": {"policies": [], "scope": ["nobody"]}}});
    let t = Instant::now();
    kube.kubectl_in(&["apply", "--server-side", "--force-conflicts", "--field-manager=intruder", "-f", "-"], &intruder.to_string());
    eventually(15, "the repair", || watch.since(mark, "krites").len() >= 2);
    let seen = watch.since(mark, "krites");
    assert_eq!(seen[0].object["spec"]["pluginConfig"]["scope"], json!(["nobody"]), "the intruder's write took");
    println!("foreign edit -> repaired: {:?} (seen by the watch {:?} after kubectl started)", seen[1].at - seen[0].at, seen[1].at - t);
    std::thread::sleep(SETTLE);
    let seen = watch.since(mark, "krites");
    assert_eq!(seen.len(), 2, "the intruder's write and one repair: {:?}", seen.iter().map(|s| &s.resource_version).collect::<Vec<_>>());
    let live = kube.plugin("krites").unwrap();
    assert!(live["spec"]["pluginConfig"].get("scope").is_none(), "foreign key removed: {}", live["spec"]["pluginConfig"]);
    assert!(same_json(&live["spec"], &before["spec"]), "{}", live["spec"]);
    assert_eq!(policy_names(&live["spec"]["pluginConfig"]), ["customer", "database", "summary"]);
    assert_eq!(control.metric("krites_control_applies_total") - applies, 1.0);
    assert!(control.log_text().contains("repairing"), "{}", control.log_text());

    // Another writer on the NETWORK plugin's spec: repaired too.
    let mark = watch.mark();
    let peer = kube.plugin("krites-peer-address").unwrap();
    let edit = json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
        "metadata": {"name": "krites-peer-address", "namespace": MESH}, "spec": {"priority": 1000, "url": "oci://evil/x:1"}});
    kube.kubectl_in(&["apply", "--server-side", "--force-conflicts", "--field-manager=intruder", "-f", "-"], &edit.to_string());
    eventually(15, "the peer plugin repaired", || watch.since(mark, "krites-peer-address").len() >= 2);
    std::thread::sleep(SETTLE);
    assert_eq!(watch.since(mark, "krites-peer-address").len(), 2);
    assert!(same_json(&kube.plugin("krites-peer-address").unwrap()["spec"], &peer["spec"]));
    assert!(forbidden_in(&control.log_text()).is_empty(), "{}", control.log_text());
    control.stop();
}

/// Scenario 5: Fail-open 3, both ways: a `--calico-api` naming a group the cluster
/// does not serve keeps control not ready (`/readyz` says why), with a
/// CalicoApiNotServed Event, and writes no WasmPlugin; `auto` picks the
/// served group and enforces the policies (as `control compile` does).
fn calico_api_not_served(form: CalicoForm, wrong: &str) {
    let _serial = kube::serial();
    let Some(kube) = yaobank_cluster(form) else { return };
    let control = Control::start(&kube, wrong);
    let t = Instant::now();
    eventually(15, "a CalicoApiNotServed Event", || kube.events().iter().any(|e| e["reason"] == "CalicoApiNotServed"));
    println!("--calico-api={wrong} on a {form:?} cluster -> Event: {:?}", t.elapsed());
    std::thread::sleep(Duration::from_millis(2500)); // past the first retries
    let (code, why) = control.readyz().expect("/readyz answers");
    assert_eq!(code, 503, "{why}");
    let (wanted, served) = match form {
        CalicoForm::V3 => ("crd.projectcalico.org/v1", "projectcalico.org/v3"),
        CalicoForm::Crd => ("projectcalico.org/v3", "crd.projectcalico.org/v1"),
    };
    assert!(why.contains(wanted) && why.contains(served), "{why}");
    println!("/readyz: {code} {}", why.trim());
    assert!(kube.get_json(&["wasmplugins.extensions.istio.io", "-n", MESH]).unwrap()["items"].as_array().unwrap().is_empty(), "nothing applied");
    let events: Vec<Value> = kube.events().into_iter().filter(|e| e["reason"] == "CalicoApiNotServed").collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "Warning");
    assert_eq!(events[0]["regarding"]["kind"], "WasmPlugin");
    assert_eq!(control.metric("krites_control_ready"), 0.0);
    assert!(forbidden_in(&control.log_text()).is_empty(), "{}", control.log_text());
    control.stop();

    let control = Control::start(&kube, "auto");
    let ready = control.wait_ready(30);
    println!("--calico-api=auto on a {form:?} cluster -> ready: {ready:?}");
    let live = assert_matches_compile(&kube, form);
    assert_eq!(policy_names(&live["spec"]["pluginConfig"]), ["customer", "database", "summary"]);
    control.stop();
}

#[test]
fn calico_api_crd_on_a_v3_cluster_is_an_error_not_an_empty_config() {
    calico_api_not_served(CalicoForm::V3, "crd");
}

#[test]
fn calico_api_v3_on_a_crd_cluster_is_an_error_not_an_empty_config() {
    calico_api_not_served(CalicoForm::Crd, "v3");
}

/// Scenario 6: A deleted WasmPlugin is created again, under the shipped RBAC.
#[test]
fn a_deleted_wasmplugin_is_created_again() {
    let _serial = kube::serial();
    let Some(kube) = yaobank_cluster(CalicoForm::V3) else { return };
    let control = Control::start(&kube, "auto");
    control.wait_ready(30);
    for name in ["krites", "krites-peer-address"] {
        let before = kube.plugin(name).unwrap();
        let t = Instant::now();
        kube.kubectl(&["delete", "wasmplugins.extensions.istio.io", name, "-n", MESH]);
        let took = eventually(15, "created again", || kube.plugin(name).is_some_and(|p| p["metadata"]["uid"] != before["metadata"]["uid"]));
        println!("{name} deleted -> created again: {:?}", took.max(t.elapsed()));
        let back = kube.plugin(name).unwrap();
        assert!(same_json(&back["spec"], &before["spec"]));
        assert_eq!(back["metadata"]["annotations"].get(REVISION_ANNOTATION), before["metadata"]["annotations"].get(REVISION_ANNOTATION));
    }
    assert!(control.ready());
    assert!(forbidden_in(&control.log_text()).is_empty(), "{}", control.log_text());
    control.stop();
}

/// Scenario 2: Edit a policy, delete one, add one, add and delete a pod: each change
/// is in the WasmPlugin within a bounded time, in exactly one write.
#[test]
fn each_change_is_enforced_in_one_write() {
    let _serial = kube::serial();
    let Some(kube) = yaobank_cluster(CalicoForm::V3) else { return };
    let control = Control::start(&kube, "auto");
    control.wait_ready(30);
    let watch = PluginWatch::start(&kube);

    // Each step: (what, the change), then wait for the write, settle, count.
    let new_pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "summary-5f6d8b9c7d-new01", "namespace": "default", "labels": {"app": "summary", "version": "v1"}},
        "spec": {"serviceAccountName": "summary", "containers": [{"name": "app", "image": "spikecurtis/yaobank-summary:latest",
                 "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}]}]}});
    let steps: Vec<(&str, Step)> = vec![
        ("edit policy database", Box::new(|k: &Kube| {
            k.kubectl(&["patch", "globalnetworkpolicies.projectcalico.org", "database", "--type=merge", "-p", r#"{"spec":{"order":50}}"#]);
        })),
        ("delete policy customer", Box::new(|k: &Kube| {
            k.kubectl(&["delete", "globalnetworkpolicies.projectcalico.org", "customer"]);
        })),
        ("add policy attack", Box::new(|k: &Kube| {
            k.apply(&[in_form(json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy", "metadata": {"name": "attack"},
                "spec": {"selector": "app == 'attack'", "ingress": [{"action": "Deny"}], "egress": [{"action": "Allow"}]}}), CalicoForm::V3)]);
        })),
        ("add pod (created, then Running with an IP)", Box::new(move |k: &Kube| {
            k.apply(std::slice::from_ref(&new_pod));
            k.pod_status("default", "summary-5f6d8b9c7d-new01", &json!({"phase": "Running", "podIP": "127.0.0.23", "podIPs": [{"ip": "127.0.0.23"}]}));
        })),
        ("delete pod", Box::new(|k: &Kube| {
            k.kubectl(&["delete", "pod", "summary-5f6d8b9c7d-new01", "-n", "default", "--wait=false"]);
        })),
        // Egress rules are read against a Service's endpoints: control watches
        // Services and EndpointSlices (list/watch in the shipped ClusterRole).
        ("add a Service and its EndpointSlice", Box::new(|k: &Kube| {
            k.apply(&[
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "summary", "namespace": "default"},
                    "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 80}], "selector": {"app": "summary"}}}),
                json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": "summary-x7k2p", "namespace": "default", "labels": {"kubernetes.io/service-name": "summary"}},
                    "addressType": "IPv4", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
                    // (The API server refuses loopback endpoint addresses: these name no pod here.)
                    "endpoints": [{"addresses": ["10.244.0.12"], "conditions": {"ready": true}}, {"addresses": ["10.244.0.22"], "conditions": {"ready": true}}]}),
            ]);
        })),
        ("an endpoint leaves the slice", Box::new(|k: &Kube| {
            k.kubectl(&["patch", "endpointslices.discovery.k8s.io", "summary-x7k2p", "-n", "default", "--type=merge", "-p",
                r#"{"endpoints":[{"addresses":["10.244.0.12"],"conditions":{"ready":true}}]}"#]);
        })),
        // Staged policies: watched (list/watch in the shipped ClusterRole) and
        // carried in stagedPolicies, never among the enforced ones.
        ("stage a policy (StagedGlobalNetworkPolicy, Set)", Box::new(|k: &Kube| {
            k.apply(&[json!({"apiVersion": "projectcalico.org/v3", "kind": "StagedGlobalNetworkPolicy", "metadata": {"name": "summary"},
                "spec": {"stagedAction": "Set", "selector": "app == 'summary'",
                         "ingress": [{"action": "Allow", "source": {"serviceAccounts": {"names": ["customer"]}}, "http": {"methods": ["GET"]}}]}})]);
        })),
    ];
    let mut latencies = Vec::new();
    for (what, change) in steps {
        let mark = watch.mark();
        let applies = control.metric("krites_control_applies_total");
        let t = Instant::now();
        change(&kube);
        let done = t.elapsed();
        eventually(15, what, || !watch.since(mark, "krites").is_empty());
        let took = watch.since(mark, "krites")[0].at - t;
        std::thread::sleep(SETTLE);
        let writes = watch.since(mark, "krites");
        assert_eq!(writes.len(), 1, "{what}: {:?}", writes.iter().map(|s| &s.resource_version).collect::<Vec<_>>());
        assert!(watch.since(mark, "krites-peer-address").is_empty(), "{what}: the NETWORK plugin is not rewritten");
        assert_eq!(control.metric("krites_control_applies_total") - applies, 1.0, "{what}");
        let live = assert_matches_compile(&kube, CalicoForm::V3);
        println!("{what}: change -> enforced {took:?} (kubectl took {done:?}); revision {}", revision(&live));
        latencies.push(took);
    }
    let live = kube.plugin("krites").unwrap();
    let mut names = policy_names(&live["spec"]["pluginConfig"]);
    names.sort();
    assert_eq!(names, ["attack", "database", "summary"]);
    let summary = live["spec"]["pluginConfig"]["services"].as_array().unwrap().iter().find(|s| s["name"] == "summary").cloned();
    let summary = summary.expect("the summary Service in the config");
    assert!(summary["clusterIPs"][0].is_string(), "the API server's ClusterIP: {summary}");
    assert_eq!(summary["ports"], json!([{"port": 80, "endpoints": [{"port": 80, "ips": ["10.244.0.12"]}]}]));
    let staged = &live["spec"]["pluginConfig"]["stagedPolicies"];
    assert_eq!((staged[0]["name"].as_str(), staged[0]["kind"].as_str(), staged[0]["stagedAction"].as_str()),
        (Some("summary"), Some("StagedGlobalNetworkPolicy"), Some("Set")), "{staged}");
    println!("max change -> enforced: {:?} (debounce {})", latencies.iter().max().unwrap(), kube::DEBOUNCE);
    assert!(forbidden_in(&control.log_text()).is_empty(), "{}", control.log_text());
    control.stop();
}

/// Scenario 7: Outage: the apiserver stops for a few seconds and starts again. control
/// stays up; `/readyz` keeps its 200 (the config applied before is enforced
/// by Envoy) and its body names each failing watch and since when;
/// `krites_control_watches_failing` counts them. The outage itself causes
/// no write, and a change made as soon as the apiserver is back is
/// enforced in one write within a few seconds (watch backoff capped at 2 s).
#[test]
fn an_apiserver_outage_loses_no_enforcement() {
    let _serial = kube::serial();
    let Some(kube) = yaobank_cluster(CalicoForm::V3) else { return };
    let control = Control::start(&kube, "auto");
    control.wait_ready(30);
    let before = kube.plugin("krites").unwrap();
    let applies = control.metric("krites_control_applies_total");

    assert_eq!(control.metric("krites_control_watches_failing"), 0.0);
    let t = Instant::now();
    kube.component("stop", "apiserver");
    println!("apiserver stopped in {:?} (kube-up.sh stop: SIGTERM, SIGKILL after 3 s)", t.elapsed());
    let t = Instant::now();
    let mut said = std::collections::BTreeSet::new();
    let mut told: Option<(Duration, String)> = None;
    while t.elapsed() < Duration::from_secs(6) {
        if let Some((code, body)) = control.readyz() {
            said.insert(code);
            // The last word: every watch fails by the end of the window.
            if body.contains("watches failing") {
                told = Some((told.map_or_else(|| t.elapsed(), |(first, _)| first), body));
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (when, body) = told.expect("/readyz says which watches fail");
    println!("/readyz during the outage (codes {said:?}; first told {when:?} after the stop); at 6 s:\n{}", body.trim_end());
    for source in ["Pod", "Namespace", "projectcalico.org/GlobalNetworkPolicy", "WasmPlugin"] {
        assert!(body.contains(&format!("  {source}: failing since ")), "{source}: {body}");
    }
    assert!(control.metric("krites_control_watches_failing") >= 4.0);
    assert!(control.metric("krites_control_watch_errors_total") >= 4.0);
    assert!(control.readyz().is_some(), "control still serves");
    assert_eq!(http_get(control.port, "/healthz").map(|(c, _)| c), Some(200), "the loop still runs");
    assert!(said.iter().all(|c| *c == 200), "the config in force stays in force: {said:?}");
    let t = Instant::now();
    kube.component("start", "apiserver");
    println!("apiserver back in {:?}", t.elapsed());
    let t = Instant::now();

    // A change as soon as the apiserver answers: enforced within the capped
    // watch backoff (2 s) + debounce, not kube-runtime's default 30 s.
    let watch = PluginWatch::start(&kube);
    let mark = watch.mark();
    let t2 = Instant::now();
    kube.kubectl(&["patch", "globalnetworkpolicies.projectcalico.org", "database", "--type=merge", "-p", r#"{"spec":{"order":50}}"#]);
    eventually(10, "a change after the outage", || !watch.since(mark, "krites").is_empty());
    let enforced = watch.since(mark, "krites")[0].at - t2;
    println!("after the outage: change -> enforced {enforced:?} ({:?} after the apiserver came back)", t.elapsed());
    std::thread::sleep(SETTLE);
    assert_eq!(watch.since(mark, "krites").len(), 1, "one write for the change, none for the outage");
    assert_eq!(control.metric("krites_control_applies_total"), applies + 1.0, "not rewritten by the outage itself");
    assert!(before["metadata"]["resourceVersion"] != kube.plugin("krites").unwrap()["metadata"]["resourceVersion"]);
    assert!(control.ready());
    eventually(10, "watches healthy again", || control.metric("krites_control_watches_failing") == 0.0);
    assert!(!control.readyz_body().contains("failing"), "{}", control.readyz_body());
    assert_matches_compile(&kube, CalicoForm::V3);
    let (rss, hwm) = control.memory_kib();
    println!("control memory: RSS {rss} KiB, peak {hwm} KiB");
    control.stop();
}

/// How long the `krites` WasmPlugin's resourceVersion is.
fn plugin_rv(kube: &Kube) -> String {
    kube.plugin("krites").unwrap()["metadata"]["resourceVersion"].as_str().unwrap().to_string()
}

/// Patches the `database` policy's order (a change that must be enforced).
fn change_order(kube: &Kube, order: u32) {
    let patch = format!(r#"{{"spec":{{"order":{order}}}}}"#);
    kube.kubectl(&["patch", "globalnetworkpolicies.projectcalico.org", "database", "--type=merge", "-p", &patch]);
}

/// One change, enforced in exactly one write (seen by the watch) within
/// `secs`; returns the time from the change to the write.
fn one_write_for(kube: &Kube, watch: &PluginWatch, what: &str, secs: u64, change: impl FnOnce(&Kube)) -> Duration {
    let mark = watch.mark();
    let t = Instant::now();
    change(kube);
    eventually(secs, what, || !watch.since(mark, "krites").is_empty());
    let took = watch.since(mark, "krites")[0].at - t;
    std::thread::sleep(SETTLE);
    let writes = watch.since(mark, "krites");
    assert_eq!(writes.len(), 1, "{what}: one write, got {:?}", writes.iter().map(|s| &s.resource_version).collect::<Vec<_>>());
    assert!(watch.since(mark, "krites-peer-address").is_empty(), "{what}");
    took
}

/// Leader election (item: two replicas). Two `control run` processes with
/// the default election timing (lease 15 s, renew deadline 10 s, retry 2 s):
/// exactly one writes; the follower is ready and says it follows. The
/// leader is cut off (SIGSTOP) past its lease: the other takes over and
/// enforces a change in one write; woken up, the old leader writes nothing
/// (its leadership lapsed at its renew deadline). The leader crashes
/// (SIGKILL): the other takes over within the lease duration (+ one retry),
/// with no spurious write, and enforces the next change in one write. A
/// leader stopped gracefully releases the Lease: the takeover is quick.
/// All under the shipped RBAC (the Lease Role), as the ServiceAccount.
#[test]
fn two_replicas_only_the_leader_writes_and_failover_is_clean() {
    let _serial = kube::serial();
    let Some(kube) = yaobank_cluster(CalicoForm::V3) else { return };
    let a = Control::start_as(&kube, "auto", "control-a", &[]);
    let ready = a.wait_ready(30);
    eventually(10, "control-a holds the Lease", || kube.lease_holder().as_deref() == Some("control-a"));
    println!("control-a: start -> ready (leader, both WasmPlugins written): {ready:?}");
    assert_matches_compile(&kube, CalicoForm::V3);
    let watch = PluginWatch::start(&kube);
    let mark = watch.mark();
    let b = Control::start_as(&kube, "auto", "control-b", &[]);
    let ready = b.wait_ready(30);
    println!("control-b: start -> ready (follower): {ready:?}");
    let body = b.readyz_body();
    assert!(body.contains("follower (control-b; leader: control-a)"), "{body}");
    assert!(a.readyz_body().contains("leader (control-a)"), "{}", a.readyz_body());
    std::thread::sleep(SETTLE);
    assert!(watch.since(mark, "krites").is_empty() && watch.since(mark, "krites-peer-address").is_empty(), "a follower starting writes nothing");
    assert_eq!((a.metric("krites_control_leader"), b.metric("krites_control_leader")), (1.0, 0.0));
    assert_eq!(b.metric("krites_control_applies_total"), 0.0);
    assert!(b.metric("krites_control_compiles_total") >= 1.0, "the follower compiles");

    // A change: one write, by the leader.
    let applies_a = a.metric("krites_control_applies_total");
    let took = one_write_for(&kube, &watch, "a change with two replicas", 15, |k| change_order(k, 50));
    println!("two replicas: change -> enforced {took:?}");
    assert_eq!(a.metric("krites_control_applies_total") - applies_a, 1.0);
    assert_eq!(b.metric("krites_control_applies_total"), 0.0, "the follower never writes");
    std::thread::sleep(Duration::from_millis(600)); // the follower's debounce + compile
    assert!(b.metric("krites_control_compiles_total") >= 2.0, "the follower compiled the change too");

    // The leader is cut off (SIGSTOP: it cannot renew): control-b takes over.
    a.pause(true);
    let t = Instant::now();
    eventually(25, "control-b leads", || b.metric("krites_control_leader") == 1.0);
    let takeover = t.elapsed();
    assert_eq!(kube.lease_holder().as_deref(), Some("control-b"));
    println!("leader paused -> the other leads: {takeover:?} (lease 15 s)");
    let took = one_write_for(&kube, &watch, "a change while the old leader is cut off", 15, |k| change_order(k, 60));
    println!("after takeover: change -> enforced {took:?}");
    let mark = watch.mark();
    a.pause(false);
    let t = Instant::now();
    eventually(10, "control-a says it follows", || a.readyz_body().contains("follower (control-a; leader: control-b)"));
    println!("old leader woken -> follower: {:?}", t.elapsed());
    std::thread::sleep(SETTLE);
    assert!(watch.since(mark, "krites").is_empty(), "the old leader woke up and wrote: {:?}", watch.since(mark, "krites"));
    assert_eq!(a.metric("krites_control_leader"), 0.0);
    assert_eq!(a.metric("krites_control_applies_total") - applies_a, 1.0, "nothing more from the old leader");
    assert!(a.log_text().contains("not the leader any more"), "{}", a.log_text());

    // The leader crashes: control-a takes over, with no write (nothing changed).
    let rv = plugin_rv(&kube);
    let mark = watch.mark();
    let applies_a = a.metric("krites_control_applies_total");
    b.kill();
    let t = Instant::now();
    eventually(25, "control-a leads again", || a.metric("krites_control_leader") == 1.0);
    let failover = t.elapsed();
    println!("leader killed (SIGKILL) -> the other leads: {failover:?} (lease 15 s, retry 2 s)");
    assert!(failover <= Duration::from_secs(17) + Duration::from_millis(500), "{failover:?}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(plugin_rv(&kube), rv, "no spurious write after a failover");
    assert!(watch.since(mark, "krites").is_empty() && watch.since(mark, "krites-peer-address").is_empty());
    assert_eq!(a.metric("krites_control_applies_total"), applies_a);
    let took = one_write_for(&kube, &watch, "a change after the failover", 15, |k| change_order(k, 70));
    println!("after failover: change -> enforced {took:?}");
    assert_eq!(a.metric("krites_control_applies_total") - applies_a, 1.0);
    assert_matches_compile(&kube, CalicoForm::V3);

    // Graceful: control-a stops (SIGTERM) and releases; control-c takes over fast.
    let c = Control::start_as(&kube, "auto", "control-c", &[]);
    c.wait_ready(30);
    assert!(c.readyz_body().contains("follower"), "{}", c.readyz_body());
    let mark = watch.mark();
    let t = Instant::now();
    let a_log = a.log.clone();
    a.stop();
    eventually(10, "control-c leads", || c.metric("krites_control_leader") == 1.0);
    println!("leader stopped gracefully (Lease released) -> the other leads: {:?}", t.elapsed());
    assert!(std::fs::read_to_string(&a_log).unwrap().contains("Lease released"));
    std::thread::sleep(SETTLE);
    assert!(watch.since(mark, "krites").is_empty(), "no write on a graceful handover");
    for log in [c.log_text(), std::fs::read_to_string(&a_log).unwrap()] {
        assert!(forbidden_in(&log).is_empty(), "{log}");
    }
    c.stop();
}

/// etcd pauses (SIGSTOP) for 5 s and resumes: control keeps serving (200),
/// writes nothing because of it, loses nothing (the config in force is the
/// compiled one), and enforces a change afterwards in one write.
#[test]
fn an_etcd_pause_loses_nothing_and_writes_nothing() {
    let _serial = kube::serial();
    let Some(kube) = yaobank_cluster(CalicoForm::V3) else { return };
    let control = Control::start(&kube, "auto");
    control.wait_ready(30);
    let rv = plugin_rv(&kube);
    let watch = PluginWatch::start(&kube);
    let mark = watch.mark();
    let applies = control.metric("krites_control_applies_total");

    let t = Instant::now();
    kube.signal("etcd", true);
    let mut codes = std::collections::BTreeSet::new();
    while t.elapsed() < Duration::from_secs(5) {
        codes.extend(control.readyz().map(|(c, _)| c));
        std::thread::sleep(Duration::from_millis(200));
    }
    let during = control.readyz_body();
    kube.signal("etcd", false);
    println!("etcd paused 5 s: /readyz codes {codes:?}; body at the end:\n{}", during.trim_end());
    assert!(codes.iter().all(|c| *c == 200), "{codes:?}");
    let t = Instant::now();
    eventually(30, "the apiserver answers again", || kube.try_kubectl(&["get", "--raw", "/readyz"], None).is_ok());
    println!("etcd resumed -> apiserver ready: {:?}", t.elapsed());
    std::thread::sleep(Duration::from_secs(3));
    assert!(watch.since(mark, "krites").is_empty() && watch.since(mark, "krites-peer-address").is_empty(), "no write for a pause");
    assert_eq!(plugin_rv(&kube), rv);
    assert_eq!(control.metric("krites_control_applies_total"), applies);
    assert!(control.ready());
    assert_matches_compile(&kube, CalicoForm::V3);
    let took = one_write_for(&kube, &watch, "a change after the etcd pause", 15, |k| change_order(k, 50));
    println!("after the etcd pause: change -> enforced {took:?}");
    assert_matches_compile(&kube, CalicoForm::V3);
    assert!(forbidden_in(&control.log_text()).is_empty(), "{}", control.log_text());
    control.stop();
}
