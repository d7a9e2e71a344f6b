//! `pkg/wasm/convert.go`, `pilot/pkg/model/extensions.go`: WasmPlugins as istiod sends them
//! by ECDS, and the `pluginConfig` transform.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};

pub const WASM_HTTP_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const WASM_NETWORK_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm";
const TYPED_EXTENSION_CONFIG: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";

/// The WasmPlugins' namespace, as the shipped manifests have it.
pub const PLUGIN_NAMESPACE: &str = "istio-system";
/// WasmPlugin `krites` (`type: HTTP`, phase AUTHZ).
pub const HTTP_PLUGIN: &str = "krites";
/// WasmPlugin `krites-peer-address` (`type: NETWORK`, phase AUTHN, root id
/// `krites_peer_address`).
pub const NETWORK_PLUGIN: &str = "krites-peer-address";
/// The NETWORK plugin's root id in the module.
pub const NETWORK_ROOT_ID: &str = "krites_peer_address";

/// The ECDS resource name of WasmPlugin `<ns>.<name>` in Istio 1.26-1.29.
pub fn ecds_resource_name(namespace: &str, name: &str) -> String {
    format!("extensions.istio.io/wasmplugin/{namespace}.{name}")
}

/// The ECDS file carrying WasmPlugin `istio-system/krites` (`version` must grow per update).
/// `plugin_config` is the WasmPlugin's `pluginConfig` as the user wrote it (JSON); it goes
/// through [`plugin_config_transform`] as istiod sends it.
pub fn build_ecds(version: u64, wasm: &Path, plugin_config: &str) -> Result<Value> {
    let configuration = plugin_config_transform(plugin_config)?;
    Ok(build_http_ecds(version, wasm, (!configuration.is_empty()).then_some(configuration.as_str())))
}

/// The HTTP WasmPlugin's ECDS file with `configuration` exactly as given (already through
/// istiod's transform; `None`: no configuration).
pub fn build_http_ecds(version: u64, wasm: &Path, configuration: Option<&str>) -> Value {
    let mut config = wasm_config(&format!("{PLUGIN_NAMESPACE}.{HTTP_PLUGIN}"), "", wasm);
    if let Some(configuration) = configuration {
        config["configuration"] = json!({ "@type": "type.googleapis.com/google.protobuf.StringValue", "value": configuration });
    }
    ecds_document(version, &ecds_resource_name(PLUGIN_NAMESPACE, HTTP_PLUGIN), WASM_HTTP_TYPE, config)
}

/// The NETWORK WasmPlugin's ECDS file (it carries no configuration).
pub fn build_network_ecds(version: u64, wasm: &Path) -> Value {
    let config = wasm_config(&format!("{PLUGIN_NAMESPACE}.{NETWORK_PLUGIN}"), NETWORK_ROOT_ID, wasm);
    ecds_document(version, &ecds_resource_name(PLUGIN_NAMESPACE, NETWORK_PLUGIN), WASM_NETWORK_TYPE, config)
}

/// `PluginConfig` of a WasmPlugin with `failStrategy: FAIL_CLOSE`, the module from a local file
/// (istio-agent's cache).
fn wasm_config(name: &str, root_id: &str, wasm: &Path) -> Value {
    json!({
        "name": name,
        "root_id": root_id,
        "vm_config": { "runtime": "envoy.wasm.runtime.v8", "code": { "local": { "filename": wasm } } },
        "failure_policy": "FAIL_CLOSED"
    })
}

fn ecds_document(version: u64, name: &str, type_url: &str, config: Value) -> Value {
    json!({
        "version_info": version.to_string(),
        "resources": [{
            "@type": TYPED_EXTENSION_CONFIG,
            "name": name,
            "typed_config": { "@type": type_url, "config": config }
        }]
    })
}

/// `WasmPlugin.spec.pluginConfig` as the loopback rig hands it over: istiod's transform, but
/// text that is not JSON passes unchanged (the tests that feed the filter broken configs mean
/// exactly those bytes; istiod would refuse them earlier).
pub fn plugin_config_or_raw(plugin_config: &str) -> String {
    match serde_json::from_str::<Value>(plugin_config) {
        Ok(value) => jsonpb(&value),
        Err(_) => plugin_config.to_string(),
    }
}

/// istiod's `pluginConfig` serialisation: the object is decoded into a `Struct` (every
/// number a float64) and re-encoded by legacy `jsonpb`: keys sorted at every level, compact,
/// `<` `>` `&` (and U+2028/U+2029) escaped, integers below 1e21 as integers, other numbers
/// as Go formats a float64. An empty or absent object gives no configuration.
pub fn plugin_config_transform(plugin_config: &str) -> Result<String> {
    if plugin_config.trim().is_empty() {
        return Ok(String::new());
    }
    let v: Value = serde_json::from_str(plugin_config).context("pluginConfig is not JSON")?;
    if v.as_object().is_some_and(|o| o.is_empty()) || v.is_null() {
        return Ok(String::new());
    }
    Ok(jsonpb(&v))
}

/// A JSON value as istiod's legacy `jsonpb` writes a `Struct` (see [`plugin_config_transform`]).
pub fn jsonpb(v: &Value) -> String {
    let mut out = String::new();
    write_go_json(v, &mut out);
    out
}

fn write_go_json(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&go_float(n.as_f64().unwrap_or(0.0))),
        Value::String(s) => write_go_string(s, out),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_go_json(x, out);
            }
            out.push(']');
        }
        Value::Object(o) => {
            let sorted: BTreeMap<&String, &Value> = o.iter().collect();
            out.push('{');
            for (i, (k, x)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_go_string(k, out);
                out.push(':');
                write_go_json(x, out);
            }
            out.push('}');
        }
    }
}

/// Go's `encoding/json` for a float64: `'f'` format for 1e-6 <= |x| < 1e21, else `'e'`
/// with a two-digit-minimum-free exponent (`1e+21`, `1e-7`).
fn go_float(x: f64) -> String {
    let a = x.abs();
    if a == 0.0 || (1e-6..1e21).contains(&a) {
        if x.fract() == 0.0 && a < 1e21 {
            return format!("{}", x as i128);
        }
        return format!("{x}");
    }
    let s = format!("{x:e}");
    match s.split_once('e') {
        Some((m, e)) if !e.starts_with('-') => format!("{m}e+{e}"),
        _ => s,
    }
}

fn write_go_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}
