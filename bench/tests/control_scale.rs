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
