//! Regression tests for what the fuzz targets in `fuzz/` found (each input is
//! also kept in `fuzz/corpus/<target>/`, so the smoke run replays it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use krites_policy::{PluginConfig, PolicySet};

/// Found by `fuzz/config`: `{"version":1,"tiers":[{"name":"t","order":5e032}]}`.
/// serde_json's default float parser (the config's reader then) is not correctly rounded: it read `5e32`
/// one ULP above the nearest double (which `5.0e32`, Go and the Rust standard
/// library all give). So the same config compiled to another revision once
/// re-serialised (control's output, Istio's Struct round trip), and two
/// policies with equal orders written differently were not a tie (Calico
/// breaks ties by name).
#[test]
fn orders_parse_exactly() {
    let set = |text: &str| PolicySet::from_json(text.as_bytes()).unwrap_or_else(|e| panic!("{text}: {e}"));
    let raw = r#"{"version":1,"tiers":[{"name":"t","order":5e032}]}"#;
    let parsed = PluginConfig::from_json(raw.as_bytes()).unwrap();
    assert_eq!(parsed.tiers[0].order, Some("5e32".parse::<f64>().unwrap()));
    let canonical = serde_json::to_string(&parsed).unwrap();
    assert_eq!(set(raw).revision(), set(&canonical).revision(), "{canonical}");

    for text in ["5e32", "5.0e32", "500000000000000000000000000000000", "0.1", "1e-7", "1000.0000000000001"] {
        let config = PluginConfig::from_json(format!(r#"{{"version":1,"tiers":[{{"name":"t","order":{text}}}]}}"#).as_bytes()).unwrap();
        assert_eq!(config.tiers[0].order, Some(text.parse::<f64>().unwrap()), "{text}");
    }

    // Equal orders tie, and the tie goes by name.
    let config = r#"{"version":1,"policies":[
        {"name":"b","order":5e32,"ingress":[{"action":"Deny"}]},
        {"name":"a","order":5.0e32,"ingress":[{"action":"Allow"}]}]}"#;
    let compiled = set(config);
    let names: Vec<&str> = compiled.policies().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
}
