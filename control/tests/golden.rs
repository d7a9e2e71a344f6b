//! Golden files: manifests in, plugin config out. `KRITES_UPDATE_GOLDEN=1
//! cargo test -p krites-control --test golden` rewrites them; review the diff.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::path::{Path, PathBuf};

use krites_control::compile::{compile, EndpointTableUse, Options};
use krites_policy::PluginConfig;
use krites_control::inventory::Inventory;
use krites_control::manifests;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// (inputs folder, expected output, namespace scope, endpoint table use)
fn cases() -> Vec<(PathBuf, PathBuf, Option<&'static str>, EndpointTableUse)> {
    let golden = root().join("control/tests/golden");
    let json = |(input, output, namespace): (PathBuf, PathBuf, Option<&'static str>)| (input, output, namespace, EndpointTableUse::Auto);
    let mut cases: Vec<_> = [
        (root().join("tests/fixtures/yaobank"), root().join("tests/fixtures/yaobank-plugin-config.json"), None),
        (golden.join("kubernetes"), golden.join("kubernetes.json"), None),
        (golden.join("kubernetes"), golden.join("kubernetes.team-a.json"), Some("team-a")),
        (golden.join("calico-tiers"), golden.join("calico-tiers.json"), None),
        (golden.join("calico-network-sets"), golden.join("calico-network-sets.json"), None),
        (golden.join("bookinfo-egress"), golden.join("bookinfo-egress.json"), None),
        (golden.join("calico-staged"), golden.join("calico-staged.json"), None),
        (golden.join("bookinfo-egress"), golden.join("bookinfo-egress.kube-system.json"), Some("kube-system")),
    ]
    .into_iter()
    .map(json)
    .collect();
    // Small clusters get JSON endpoints; this is what a large one gets.
    cases.push((golden.join("kubernetes"), golden.join("kubernetes.table.json"), None, EndpointTableUse::Always));
    cases.push((golden.join("calico-tiers"), golden.join("calico-tiers.table.json"), None, EndpointTableUse::Always));
    cases
}

#[test]
fn compiled_configs_match_the_golden_files() {
    let update = std::env::var_os("KRITES_UPDATE_GOLDEN").is_some();
    let mut stale = Vec::new();
    for (input, expected, namespace, endpoint_table) in cases() {
        let inv = Inventory::from_manifests(&manifests::load(std::slice::from_ref(&input)).unwrap());
        assert!(inv.errors.is_empty(), "{}: {:?}", input.display(), inv.errors);
        let compiled = compile(&inv, &Options { namespace: namespace.map(str::to_string), endpoint_table }).unwrap();
        let got = serde_json::to_string_pretty(&compiled.config).unwrap() + "\n";
        if update {
            std::fs::write(&expected, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&expected).unwrap_or_default();
        if got != want {
            stale.push(format!("{} (from {})", expected.display(), input.display()));
        }
    }
    assert!(stale.is_empty(), "golden files differ; rerun with KRITES_UPDATE_GOLDEN=1 and review: {stale:#?}");
}

/// The table golden says what the JSON one says: the same endpoint groups,
/// service accounts, policies and the rest.
#[test]
fn the_endpoint_table_goldens_hold_the_json_goldens() {
    let golden = root().join("control/tests/golden");
    let read = |name: &str| PluginConfig::from_json(&std::fs::read(golden.join(name)).unwrap()).unwrap();
    for name in ["kubernetes", "calico-tiers"] {
        let (json, table) = (read(&format!("{name}.json")), read(&format!("{name}.table.json")));
        assert!(json.endpoint_table.is_none() && table.endpoints.is_empty() && table.endpoint_table.is_some(), "{name}");
        assert_eq!(table.endpoint_specs(), json.endpoints, "{name}");
        assert!(table.service_accounts.is_empty(), "{name}");
        assert_eq!(table.service_account_specs(), json.service_accounts, "{name}");
        let rest = |c: PluginConfig| PluginConfig { endpoints: Vec::new(), service_accounts: Vec::new(), endpoint_table: None, ..c };
        assert!(rest(table) == rest(json), "{name}");
    }
    assert!(!read("calico-tiers.json").service_accounts.is_empty(), "a golden with service accounts in the table");
}
