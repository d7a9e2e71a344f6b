//! A large config is delivered compressed, still fits one WasmPlugin, and
//! reads back (as the filter and `control check` read it) as the same policy.

#![allow(clippy::unwrap_used)] // test code

use krites_policy::config::compressed::COMPRESS_FROM_BYTES;
use krites_policy::PolicySet;

use super::*;
use crate::manifests;
use crate::wasmplugin::Module;

/// `pods` pods of distinct apps in one namespace, all read by one rule.
fn cluster(pods: usize) -> Inventory {
    let mut text = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n\
         apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: from-apps, namespace: shop}\n\
         spec:\n  selector: app == 'app-0'\n  ingress: [{action: Allow, source: {selector: has(app)}}]\n",
    );
    for i in 0..pods {
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p-{i}, namespace: shop, labels: {{app: app-{i}}}}}\n\
             spec: {{serviceAccountName: sa-{}, containers: [{{name: c, image: c}}]}}\n\
             status: {{phase: Running, podIP: 10.1.{}.{}}}\n",
            i % 40,
            i / 250,
            i % 250 + 1
        ));
    }
    let mut parsed = Vec::new();
    manifests::parse_text("cluster.yaml", &text, &mut parsed).unwrap();
    let inv = Inventory::from_manifests(&parsed);
    assert!(inv.errors.is_empty(), "{:?}", inv.errors);
    inv
}

#[test]
fn a_large_config_is_delivered_compressed_and_reads_back_as_compiled() {
    let inv = cluster(12_000);
    let compiled = compile(&inv, &Options::default()).unwrap();
    let plain = serde_json::to_vec(&compiled.config).unwrap().len();
    assert!(plain >= COMPRESS_FROM_BYTES, "{plain} bytes plain");
    assert!(compiled.delivered.get("compressed").is_some(), "delivered plain at {plain} bytes");
    assert!(compiled.bytes * 2 < plain, "{} compressed vs {plain} plain", compiled.bytes);
    // What the filter reads from the WasmPlugin is what was compiled.
    let read = PolicySet::from_json(&serde_json::to_vec(&compiled.delivered).unwrap()).unwrap();
    assert_eq!(read.revision(), compiled.revision);
    assert_eq!(read.universe().group_count(), 12_000);

    // One WasmPlugin pair carries it, compressed.
    let module = Module { url: "oci://example/krites:1".into(), sha256: None };
    let opts = PlanOptions { namespace: None, mesh_namespace: "istio-system", per_namespace: false, limit: MAX_CONFIG_BYTES };
    let planned = plan(&inv, &opts, &module).unwrap();
    assert!(!planned.sharded);
    let carried = planned.objects.iter().find_map(|o| o.pointer("/spec/pluginConfig")).unwrap();
    assert_eq!(carried, &compiled.delivered);
}

#[test]
fn a_small_config_stays_readable() {
    let compiled = compile(&cluster(20), &Options::default()).unwrap();
    assert!(compiled.delivered.get("compressed").is_none());
    assert_eq!(compiled.delivered, serde_json::to_value(&compiled.config).unwrap());
    assert_eq!(compiled.bytes, serde_json::to_vec(&compiled.config).unwrap().len());
}
