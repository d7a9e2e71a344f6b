//! `pilot/pkg/networking/core/envoyfilter/listener_patch.go`: EnvoyFilters patched into a
//! sidecar's listeners after they are built, as istiod applies them.
//!
//! Only what Krites ships is modelled: `NETWORK_FILTER` patches with `INSERT_FIRST`, matched
//! by context (`SIDECAR_INBOUND` / `SIDECAR_OUTBOUND`, from the listener's
//! `traffic_direction`), listener name and filter chain name. Anything else in a manifest is
//! an error naming the field, so a change to the shipped file that the mesh cannot apply
//! fails the tests instead of being skipped.
//!
//! The shipped one is `istio-manifests/egress-passthrough/envoyfilter.yaml`, read here at
//! compile time: the namespace mesh builds `virtualOutbound`'s catch-all chain from exactly
//! that file. Its filter takes its config by ECDS from ADS; the mesh has no ADS, so a
//! `config_source` naming a resource this proxy is sent (the NETWORK WasmPlugin) is pointed
//! at that resource's watched file, as istio-agent serves ECDS locally. A name no
//! WasmPlugin delivers is left as written, and Envoy refuses the bootstrap: a wrong name in
//! the manifest fails the test.

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::extensions::{ecds_resource_name, NETWORK_PLUGIN, PLUGIN_NAMESPACE};
use super::networkfilter::krites_network_filter;
use super::Proxy;

/// The EnvoyFilter that puts Krites' NETWORK plugin on `virtualOutbound`'s catch-all chain.
pub const EGRESS_PASSTHROUGH_MANIFEST: &str = include_str!("../../../istio-manifests/egress-passthrough/envoyfilter.yaml");

/// `EnvoyFilter.spec.configPatches[].match.context`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchContext {
    SidecarInbound,
    SidecarOutbound,
}

/// One `NETWORK_FILTER` patch with `operation: INSERT_FIRST`.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkFilterPatch {
    pub context: PatchContext,
    /// `match.listener.name`; `None`: every listener of the context.
    pub listener: Option<String>,
    /// `match.listener.filterChain.name`; `None`: every chain.
    pub filter_chain: Option<String>,
    /// `patch.value`: the network filter, as Envoy's `Filter` in JSON.
    pub value: Value,
}

/// An EnvoyFilter as far as the mesh applies it.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvoyFilter {
    pub name: String,
    pub namespace: String,
    pub patches: Vec<NetworkFilterPatch>,
}

impl EnvoyFilter {
    /// The shipped egress passthrough EnvoyFilter.
    pub fn egress_passthrough() -> Result<EnvoyFilter> {
        EnvoyFilter::parse(EGRESS_PASSTHROUGH_MANIFEST).context("istio-manifests/egress-passthrough/envoyfilter.yaml")
    }

    /// One `networking.istio.io/v1alpha3` EnvoyFilter from YAML; an error names the field.
    pub fn parse(yaml: &str) -> Result<EnvoyFilter> {
        let doc: Value = serde_yaml::from_str(yaml).context("not YAML")?;
        let text = |pointer: &str| doc.pointer(pointer).and_then(Value::as_str);
        if text("/apiVersion") != Some("networking.istio.io/v1alpha3") || text("/kind") != Some("EnvoyFilter") {
            bail!("apiVersion/kind: not a networking.istio.io/v1alpha3 EnvoyFilter");
        }
        let name = text("/metadata/name").context("metadata.name: missing")?.to_string();
        let namespace = text("/metadata/namespace").context("metadata.namespace: missing")?.to_string();
        let Some(patches) = doc.pointer("/spec/configPatches").and_then(Value::as_array) else {
            bail!("EnvoyFilter {namespace}/{name}: spec.configPatches: missing");
        };
        let patches = patches
            .iter()
            .enumerate()
            .map(|(i, p)| parse_patch(p).with_context(|| format!("EnvoyFilter {namespace}/{name}: spec.configPatches[{i}]")))
            .collect::<Result<_>>()?;
        Ok(EnvoyFilter { name, namespace, patches })
    }
}

fn parse_patch(p: &Value) -> Result<NetworkFilterPatch> {
    let field = |pointer: &str| p.pointer(pointer).and_then(Value::as_str);
    if field("/applyTo") != Some("NETWORK_FILTER") {
        bail!("applyTo: {:?} (the mesh applies NETWORK_FILTER only)", p.get("applyTo"));
    }
    if field("/patch/operation") != Some("INSERT_FIRST") {
        bail!("patch.operation: {:?} (the mesh applies INSERT_FIRST only)", p.pointer("/patch/operation"));
    }
    let context = match field("/match/context") {
        Some("SIDECAR_INBOUND") => PatchContext::SidecarInbound,
        Some("SIDECAR_OUTBOUND") => PatchContext::SidecarOutbound,
        other => bail!("match.context: {other:?} (the mesh has SIDECAR_INBOUND and SIDECAR_OUTBOUND)"),
    };
    if let Some(listener) = p.pointer("/match/listener").and_then(Value::as_object) {
        for key in listener.keys() {
            if key != "name" && key != "filterChain" {
                bail!("match.listener.{key}: not modelled by the mesh");
            }
        }
    }
    if let Some(chain) = p.pointer("/match/listener/filterChain").and_then(Value::as_object) {
        if let Some(key) = chain.keys().find(|k| *k != "name") {
            bail!("match.listener.filterChain.{key}: not modelled by the mesh");
        }
    }
    let value = p.pointer("/patch/value").cloned().context("patch.value: missing")?;
    if value.get("name").and_then(Value::as_str).is_none() {
        bail!("patch.value.name: missing");
    }
    Ok(NetworkFilterPatch {
        context,
        listener: field("/match/listener/name").map(str::to_string),
        filter_chain: field("/match/listener/filterChain/name").map(str::to_string),
        value,
    })
}

/// Apply `filters` to `listeners`, in order, as istiod does after building them.
pub fn apply_listener_patches(p: &Proxy, filters: &[EnvoyFilter], listeners: &mut [Value]) {
    for patch in filters.iter().flat_map(|f| &f.patches) {
        let direction = match patch.context {
            PatchContext::SidecarInbound => "INBOUND",
            PatchContext::SidecarOutbound => "OUTBOUND",
        };
        for listener in listeners.iter_mut() {
            if listener["traffic_direction"] != direction {
                continue;
            }
            if patch.listener.as_deref().is_some_and(|n| listener["name"] != n) {
                continue;
            }
            let Some(chains) = listener["filter_chains"].as_array_mut() else { continue };
            for chain in chains {
                if patch.filter_chain.as_deref().is_some_and(|n| chain["name"] != n) {
                    continue;
                }
                if let Some(chain_filters) = chain["filters"].as_array_mut() {
                    chain_filters.insert(0, delivered(p, &patch.value));
                }
            }
        }
    }
}

/// `value` with an ADS `config_source` for a resource this proxy is sent pointed at that
/// resource's file (istio-agent's local ECDS); anything else unchanged.
fn delivered(p: &Proxy, value: &Value) -> Value {
    let mut value = value.clone();
    let network = krites_network_filter(p);
    let ads = value.pointer("/config_discovery/config_source/ads").is_some();
    if ads && value["name"] == ecds_resource_name(PLUGIN_NAMESPACE, NETWORK_PLUGIN) {
        value["config_discovery"]["config_source"] = network["config_discovery"]["config_source"].clone();
    }
    value
}
