//! `control compile` at 1,000 policies x 10,000 pods: the WasmPlugin it
//! produces must fit (the time is measured by `make bench`; printed here).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::time::Instant;

use krites_bench::{generate, manifests::to_manifests, Scale, DEFAULT_SEED};
use krites_control::compile::{compile, MAX_CONFIG_BYTES};
use krites_control::inventory::Inventory;
use krites_control::manifests::Manifest;

#[test]
fn thousand_policies_ten_thousand_pods_fit_one_wasmplugin() {
    let scale = Scale { policies: 1000, rules_per_policy: 1, endpoints: 10_000, namespaces: 20, seed: DEFAULT_SEED };
    let manifests: Vec<Manifest> = to_manifests(&generate(&scale)).into_iter().map(|value| Manifest { source: String::new(), value }).collect();
    let started = Instant::now();
    let inv = Inventory::from_manifests(&manifests);
    assert!(inv.errors.is_empty(), "{:?}", inv.errors.first());
    assert_eq!(inv.pods.len(), 10_000);
    let compiled = compile(&inv, &Default::default()).unwrap();
    println!(
        "control compile: {} manifests -> {} bytes ({} of {} pod addresses referenced) in {:.0} ms (unoptimised test build)",
        manifests.len(),
        compiled.bytes,
        compiled.addresses_emitted,
        compiled.addresses_known,
        started.elapsed().as_secs_f64() * 1000.0
    );
    assert!(compiled.bytes < MAX_CONFIG_BYTES, "{} bytes", compiled.bytes);
}

/// Calico's production shape (294 policies x 68 rules, 256k pods) through
/// control, and one pod added then removed: each is one config update. It
/// prints what each costs end to end: control's compile, the config's size,
/// and reading plus compiling it in the filter's engine (native; the filter
/// in V8 takes ~2-3x that). Slow in a debug build:
/// `cargo test -p krites-bench --release --test control_scale -- --ignored --nocapture`.
#[test]
#[ignore]
fn calico_shape_pod_churn() {
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;

    use krites_bench::target_workload;
    use krites_policy::{PolicySet, WorkloadPolicy};

    let scale = Scale::calico_production();
    let manifests: Vec<Manifest> = to_manifests(&generate(&scale)).into_iter().map(|value| Manifest { source: String::new(), value }).collect();
    let started = Instant::now();
    let mut inv = Inventory::from_manifests(&manifests);
    assert!(inv.errors.is_empty(), "{:?}", inv.errors.first());
    println!("inventory of {} manifests ({} pods): {:.2} s", manifests.len(), inv.pods.len(), started.elapsed().as_secs_f64());
    let workload = target_workload(&scale);
    let update = |what: &str, inv: &Inventory| {
        let t = Instant::now();
        let compiled = compile(inv, &Default::default()).unwrap();
        let compile_time = t.elapsed();
        let json = serde_json::to_vec(&compiled.config).unwrap();
        let part = |v: &serde_json::Value| serde_json::to_vec(v).map_or(0, |b| b.len());
        let value = serde_json::to_value(&compiled.config).unwrap();
        let t = Instant::now();
        let set = Arc::new(PolicySet::from_json(&json).unwrap());
        let read_compile = t.elapsed();
        let t = Instant::now();
        let policy = WorkloadPolicy::new(set, &workload);
        let index = t.elapsed();
        println!(
            "{what}: control compile {:.2} s; config {} bytes (policies {}, endpointTable {} (pods and service accounts), endpoints {}, serviceAccounts {}, namespaces {}), {} addresses; \
             engine: read + PolicySet {:.0} ms, WorkloadPolicy {:.0} ms; revision {}",
            compile_time.as_secs_f64(),
            json.len(),
            part(&value["policies"]),
            part(&value["endpointTable"]),
            part(&value["endpoints"]),
            part(&value["serviceAccounts"]),
            part(&value["namespaces"]),
            compiled.addresses_emitted,
            read_compile.as_secs_f64() * 1e3,
            index.as_secs_f64() * 1e3,
            compiled.revision
        );
        assert!(policy.policies_selecting() > 0);
        compiled.revision
    };
    let before = update("all pods", &inv);
    // A pod added to the target's deployment, at an address next to none of its pods.
    let mut pod = inv.pods.iter().find(|p| p.labels.get("app") == Some(&workload.labels["app"])).unwrap().clone();
    pod.name = "churn-new-pod".into();
    pod.ips = vec![IpAddr::V4(Ipv4Addr::new(10, 200, 0, 1))];
    inv.pods.push(pod);
    let added = update("one pod added", &inv);
    assert_ne!(added, before, "the new address is in the config");
    inv.pods.pop();
    let removed = update("the pod removed", &inv);
    assert_eq!(removed, before, "back to the config before");
}
