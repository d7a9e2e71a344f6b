//! The Istio `WasmPlugin` objects that deliver Krites: the HTTP filter
//! (phase AUTHZ, inbound, fail closed) carrying the plugin config, and its
//! NETWORK companion that records each connection's real peer address.

use serde_json::{json, Value};


/// Where the module comes from.
#[derive(Debug, Clone)]
pub struct Module {
    /// `oci://registry/repo:tag`, `https://...` or `file:///...`.
    pub url: String,
    /// For `oci://`: the image manifest digest; for `http(s)`: the module's sha256.
    pub sha256: Option<String>,
}

/// Istio applies a WasmPlugin in its root namespace to every workload.
pub const MESH_NAMESPACE: &str = "istio-system";
pub const NAME: &str = "krites";
pub const PEER_ADDRESS_NAME: &str = "krites-peer-address";
/// Must match the filter's `PEER_ADDRESS_ROOT_ID`.
pub const PEER_ADDRESS_ROOT_ID: &str = "krites_peer_address";

fn common(module: &Module) -> serde_json::Map<String, Value> {
    let mut spec = serde_json::Map::new();
    spec.insert("url".into(), json!(module.url));
    if let Some(sha) = &module.sha256 {
        spec.insert("sha256".into(), json!(sha));
    }
    spec.insert("imagePullPolicy".into(), json!("IfNotPresent"));
    spec.insert("failStrategy".into(), json!("FAIL_CLOSE"));
    // Both sides of every sidecar (and gateways, which count as CLIENT): the
    // module decides ingress on inbound listeners and the workload's egress
    // rules on outbound ones, by each listener's traffic direction.
    spec.insert("match".into(), json!([{"mode": "CLIENT_AND_SERVER"}]));
    spec
}

/// A WasmPlugin; `revision` (the config's) only on the one carrying the config.
fn object(name: &str, namespace: &str, revision: Option<&str>, spec: serde_json::Map<String, Value>) -> Value {
    let mut o = json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "krites", "app.kubernetes.io/managed-by": "krites-control"}
        },
        "spec": spec
    });
    if let Some(r) = revision {
        o["metadata"]["annotations"] = json!({"krites.io/config-revision": r});
    }
    o
}

/// The two WasmPlugins, placed in `ns` (Istio's root namespace: the whole mesh).
/// `config`: the document as delivered ([`crate::compile::Compiled::delivered`]).
pub fn manifests(config: &Value, revision: &str, ns: &str, module: &Module) -> Vec<Value> {
    let mut http = common(module);
    http.insert("phase".into(), json!("AUTHZ"));
    http.insert("type".into(), json!("HTTP"));
    http.insert("pluginConfig".into(), config.clone());
    let mut network = common(module);
    network.insert("type".into(), json!("NETWORK"));
    // Early in the network filter chain, before the connection manager.
    network.insert("phase".into(), json!("AUTHN"));
    network.insert("pluginName".into(), json!(PEER_ADDRESS_ROOT_ID));
    // The NETWORK plugin does not depend on the config: no revision, so a
    // config change does not rewrite it (every rewrite makes Istio push new
    // listeners to every sidecar).
    vec![object(NAME, ns, Some(revision), http), object(PEER_ADDRESS_NAME, ns, None, network)]
}
