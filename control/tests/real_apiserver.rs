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
    let control = Control::start(&kube, "auto");
    control.wait_ready(30);
    let before = assert_matches_compile(&kube, CalicoForm::V3);
    let watch = PluginWatch::start(&kube);
    let mark = watch.mark();

    let t = Instant::now();
    kube.kubectl(&["patch", "globalnetworkpolicies.projectcalico.org", "database", "--type=json", "-p",
        r#"[{"op":"replace","path":"/spec/ingress/0/source/serviceAccounts","value":{"selector":"summary =="}}]"#]);
    let took = eventually(15, "an InvalidPolicy Event about database", || {
        kube.events().iter().any(|e| e["reason"] == "InvalidPolicy" && e["regarding"]["name"] == "database")
    });
    println!("invalid edit -> InvalidPolicy Event: {:?}", took.max(t.elapsed()));
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
    std::thread::sleep(SETTLE);
    let after = kube.plugin("krites").unwrap();
    assert_eq!(after["spec"]["pluginConfig"], before["spec"]["pluginConfig"], "the last valid `database` stays in force");
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
    println!("max change -> enforced: {:?} (debounce {})", latencies.iter().max().unwrap(), kube::DEBOUNCE);
    assert!(forbidden_in(&control.log_text()).is_empty(), "{}", control.log_text());
    control.stop();
}

/// Scenario 7: Outage: the apiserver stops for a few seconds and starts again. control
/// stays up, `/readyz` keeps saying what it knows, the WasmPlugins are not
/// rewritten, and after the outage its watches work again (a change is
/// enforced).
#[test]
fn an_apiserver_outage_loses_no_enforcement() {
    let _serial = kube::serial();
    let Some(kube) = yaobank_cluster(CalicoForm::V3) else { return };
    let control = Control::start(&kube, "auto");
    control.wait_ready(30);
    let before = kube.plugin("krites").unwrap();
    let applies = control.metric("krites_control_applies_total");

    let t = Instant::now();
    kube.component("stop", "apiserver");
    println!("apiserver stopped in {:?} (kube-up.sh stop: SIGTERM, SIGKILL after 10 s)", t.elapsed());
    let t = Instant::now();
    let mut said = std::collections::BTreeSet::new();
    while t.elapsed() < Duration::from_secs(6) {
        if let Some((code, body)) = control.readyz() {
            said.insert(format!("{code} {}", body.trim()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("/readyz during the outage: {said:?}");
    assert!(control.readyz().is_some(), "control still serves");
    assert_eq!(http_get(control.port, "/healthz").map(|(c, _)| c), Some(200), "the loop still runs");
    assert!(said.iter().all(|s| s.starts_with("200")), "the config in force stays in force: {said:?}");
    let t = Instant::now();
    kube.component("start", "apiserver");
    println!("apiserver back in {:?}", t.elapsed());
    let t = Instant::now();
    eventually(60, "control ready", || control.ready());
    std::thread::sleep(Duration::from_secs(2));
    let after = kube.plugin("krites").unwrap();
    assert_eq!(after["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"], "not rewritten");
    assert_eq!(control.metric("krites_control_applies_total"), applies);

    // The watches work again: a change is enforced.
    let watch = PluginWatch::start(&kube);
    let mark = watch.mark();
    let t2 = Instant::now();
    kube.kubectl(&["patch", "globalnetworkpolicies.projectcalico.org", "database", "--type=merge", "-p", r#"{"spec":{"order":50}}"#]);
    eventually(30, "a change after the outage", || !watch.since(mark, "krites").is_empty());
    println!("after the outage: change -> enforced {:?} ({:?} after the apiserver came back)", watch.since(mark, "krites")[0].at - t2, t.elapsed());
    assert_matches_compile(&kube, CalicoForm::V3);
    let (rss, hwm) = control.memory_kib();
    println!("control memory: RSS {rss} KiB, peak {hwm} KiB");
    control.stop();
}
