//! Calico's policy kinds (`projectcalico.org/v3`, and `crd.projectcalico.org/v1`
//! as clusters store them): typed specs, converted to the plugin config's
//! policy model, which is Calico's own (rules need no translation).

use serde::Deserialize;
use serde_json::Value;

use krites_policy::config::{PolicySpec, PolicyType, RuleSpec, TierDefaultAction, TierSpec};

/// `GlobalNetworkPolicy` / `NetworkPolicy` spec. Unknown fields are errors: a
/// misspelt `selector` must not silently select everything.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CalicoPolicySpec {
    #[serde(default)]
    pub tier: Option<String>,
    #[serde(default)]
    pub order: Option<f64>,
    #[serde(default)]
    pub selector: Option<String>,
    /// GlobalNetworkPolicy only.
    #[serde(default)]
    pub namespace_selector: Option<String>,
    #[serde(default)]
    pub service_account_selector: Option<String>,
    #[serde(default)]
    pub types: Option<Vec<PolicyType>>,
    #[serde(default)]
    pub ingress: Vec<RuleSpec>,
    /// Egress is enforced by Calico's dataplane, not by Krites; only its
    /// presence matters (it decides the default `types`).
    #[serde(default)]
    pub egress: Vec<Value>,
    #[serde(default, rename = "doNotTrack")]
    pub do_not_track: Option<bool>,
    #[serde(default, rename = "preDNAT")]
    pub pre_dnat: Option<bool>,
    #[serde(default)]
    pub apply_on_forward: Option<bool>,
    #[serde(default)]
    pub performance_hints: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CalicoTierSpec {
    #[serde(default)]
    pub order: Option<f64>,
    #[serde(default)]
    pub default_action: Option<TierDefaultAction>,
}

/// Which API the object came from: the v1 CRDs store default-tier policies
/// under `default.<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    V3,
    CrdV1,
}

/// Converts a Calico policy. `namespace` is set for a `NetworkPolicy`.
pub fn policy(api: Api, name: &str, namespace: Option<&str>, spec: CalicoPolicySpec) -> PolicySpec {
    let tier = spec.tier.clone().filter(|t| !t.is_empty()).unwrap_or_else(|| "default".to_string());
    let name = match api {
        Api::CrdV1 if tier == "default" => name.strip_prefix("default.").unwrap_or(name),
        _ => name,
    };
    // Calico: unset types mean Ingress unless the policy has only egress rules.
    let types = match spec.types {
        Some(t) if !t.is_empty() => t,
        _ if spec.ingress.is_empty() && !spec.egress.is_empty() => vec![PolicyType::Egress],
        _ => vec![PolicyType::Ingress],
    };
    PolicySpec {
        name: name.to_string(),
        namespace: namespace.map(str::to_string),
        kind: Some(if namespace.is_some() { "NetworkPolicy" } else { "GlobalNetworkPolicy" }.to_string()),
        tier: (tier != "default").then_some(tier),
        order: spec.order,
        selector: spec.selector,
        namespace_selector: spec.namespace_selector,
        service_account_selector: spec.service_account_selector,
        types: Some(types),
        ingress: spec.ingress,
    }
}

pub fn tier(name: &str, spec: CalicoTierSpec) -> TierSpec {
    TierSpec { name: name.to_string(), order: spec.order, default_action: spec.default_action }
}
