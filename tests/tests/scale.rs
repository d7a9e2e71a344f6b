//! A large config loaded by the filter inside Envoy, with its endpoints as
//! JSON, in the compact table, and as control delivers it (the table, and
//! compressed when large): each must be accepted and enforce; the time `on_configure` took (measured by
//! the filter with the host clock, exported as a gauge) is printed for the
//! record.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::net::Ipv4Addr;

use krites_bench::{delivered_json, generate, target_workload, to_json, Scale, DEFAULT_SEED};
use krites_testbed::{module_path, EcdsOutcome, Pki, Request, Sidecar, SidecarSpec};

/// Starts a sidecar on `config` for the scale's target workload, checks it
/// was accepted and decides, and returns the gauge of `on_configure`'s time
/// in µs.
fn load_in_envoy(scale: &Scale, form: &str, config: &str, dir: &std::path::Path, pki: &Pki) -> u64 {
    let workload = target_workload(scale);
    let name = form.to_ascii_lowercase().replace(' ', "-");
    let sidecar = Sidecar::start(SidecarSpec {
        name: name.clone(),
        ip: Ipv4Addr::new(127, 0, 9, 1),
        namespace: workload.namespace.clone(),
        service_account: workload.service_account.clone(),
        labels: workload.labels.clone(),
        identity: pki.issue("target", &workload.namespace, &workload.service_account).unwrap(),
        ca: pki.ca_cert().to_path_buf(),
        wasm: Some(module_path()),
        plugin_config: config.to_string(),
        work_dir: dir.join(&name),
        normalize_path: true,
        peer_address_filter: true,
    })
    .unwrap();
    assert_eq!(sidecar.initial_ecds(), Some(EcdsOutcome::Accepted));
    let gauge = |n: &str| sidecar.stat(&format!("wasmcustom.{n}")).unwrap();
    let (policies, rules, endpoints, micros, linear) = (
        gauge("krites_config_policies"),
        gauge("krites_config_rules"),
        gauge("krites_config_endpoints"),
        gauge("krites_config_compile_micros"),
        gauge("krites_memory_linear_bytes"),
    );
    println!(
        "on_configure in Envoy ({form}): {} bytes of config, {} policies / {endpoints} endpoint IPs; \
         {policies} policies select the workload, {rules} rules apply; compiled in {:.1} ms; linear memory {:.1} MiB",
        config.len(),
        scale.policies,
        micros as f64 / 1000.0,
        linear as f64 / (1 << 20) as f64
    );
    // The VM's stack alone is 1 MiB; a compiled config of this size holds more.
    assert!(linear > 1 << 20, "krites_memory_linear_bytes = {linear}");
    assert_eq!(endpoints as usize, scale.endpoints);
    assert!(policies > 0 && rules > 0);
    // It decides: a plaintext request from an address no pod owns gets an answer, not an error.
    let resp = Request::from(Ipv4Addr::new(127, 0, 9, 2)).to(sidecar.plain_addr()).send().unwrap();
    assert!(resp.status == 200 || resp.status == 403, "{resp:?}");
    assert_eq!(gauge("krites_requests_total"), 1);
    micros
}

#[test]
fn thousand_policies_ten_thousand_endpoints_load_in_envoy() {
    let scale = Scale { policies: 1000, rules_per_policy: 1, endpoints: 10_000, namespaces: 20, seed: DEFAULT_SEED };
    let generated = generate(&scale);
    let table = to_json(&generated.clone().with_endpoint_table().unwrap());
    let delivered = delivered_json(&generated).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), "cluster.local").unwrap();
    for (form, config) in [("JSON endpoints", to_json(&generated)), ("endpoint table", table), ("as delivered", delivered)] {
        load_in_envoy(&scale, form, &config, dir.path(), &pki);
    }
}

/// Calico's production shape, with JSON endpoints and as control writes it
/// (the endpoint table):
/// `cargo test -p krites-testbed --test scale -- --ignored --nocapture`.
#[test]
#[ignore]
fn calico_shape_loads_in_envoy() {
    let scale = Scale::calico_production();
    let generated = generate(&scale);
    let table = to_json(&generated.clone().with_endpoint_table().unwrap());
    let delivered = delivered_json(&generated).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), "cluster.local").unwrap();
    let forms = [
        ("calico shape JSON endpoints", to_json(&generated)),
        ("calico shape endpoint table", table),
        ("calico shape as delivered", delivered),
    ];
    for (form, config) in forms {
        load_in_envoy(&scale, form, &config, dir.path(), &pki);
    }
}
