//! Calico's policy kinds (`projectcalico.org/v3`, and `crd.projectcalico.org/v1`
//! as clusters store them), their staged versions included: typed specs,
//! converted to the plugin config's policy model, which is Calico's own
//! (rules need no translation).

use serde::Deserialize;
use serde_json::Value;

use krites_policy::config::{NetworkSetSpec, PolicySpec, PolicyType, RuleSpec, StagedAction, TierDefaultAction, TierSpec};

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
    /// Enforced on the selected workloads' own sidecars (the egress role).
    #[serde(default)]
    pub egress: Vec<RuleSpec>,
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

/// `GlobalNetworkSet` / `NetworkSet` spec: the CIDRs its labels stand for.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CalicoNetworkSetSpec {
    #[serde(default)]
    pub nets: Vec<String>,
    /// Calico Enterprise: domains for egress rules. Krites matches addresses,
    /// not names, so it is accepted and carries no meaning here.
    #[serde(default)]
    pub allowed_egress_domains: Option<Value>,
}

/// Converts a network set. `namespace` is set for a `NetworkSet`; `labels`
/// are the object's metadata labels.
pub fn network_set(name: &str, namespace: Option<&str>, labels: std::collections::BTreeMap<String, String>, spec: CalicoNetworkSetSpec) -> NetworkSetSpec {
    NetworkSetSpec { name: name.to_string(), namespace: namespace.map(str::to_string), labels, nets: spec.nets }
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
    // Calico's defaulting of unset types: Ingress, plus Egress when there are
    // egress rules; only Egress when there are only egress rules. (Emitting
    // Ingress alone for a policy with both lists would drop its egress rules.)
    let types = match spec.types {
        Some(t) if !t.is_empty() => t,
        _ => match (spec.ingress.is_empty(), spec.egress.is_empty()) {
            (true, false) => vec![PolicyType::Egress],
            (false, false) => vec![PolicyType::Ingress, PolicyType::Egress],
            _ => vec![PolicyType::Ingress],
        },
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
        egress: spec.egress,
        staged_action: None,
    }
}

/// The staged kinds' `stagedAction` (Calico's default: `Set`), and the spec
/// without it: the rest of a StagedGlobalNetworkPolicy/StagedNetworkPolicy
/// spec is a (Global)NetworkPolicy spec, and the rest of a
/// StagedKubernetesNetworkPolicy spec a Kubernetes NetworkPolicy spec.
/// `Err` names the field.
pub fn split_staged_action(spec: Option<&Value>) -> Result<(StagedAction, Value), (String, String)> {
    let mut rest = spec.cloned().unwrap_or_else(|| Value::Object(serde_json::Map::new()));
    let action = match rest.as_object_mut().and_then(|m| m.remove("stagedAction")) {
        None | Some(Value::Null) => StagedAction::Set,
        Some(v) => serde_json::from_value::<StagedAction>(v.clone())
            .map_err(|_| ("spec.stagedAction".to_string(), format!("{v} is not Set or Delete")))?,
    };
    Ok((action, rest))
}

/// The staged version of a converted Calico policy: named as the policy it
/// would set (tier prefix and `default.` handled as for enforced ones), of
/// kind `Staged<kind>`.
pub fn staged(mut converted: PolicySpec, action: StagedAction) -> PolicySpec {
    converted.kind = converted.kind.map(|k| format!("Staged{k}"));
    converted.staged_action = Some(action);
    converted
}

/// A staged `Delete`: only the name matters (Calico lets the spec be
/// partial), so nothing but the tier is read from it.
pub fn staged_delete(api: Api, name: &str, namespace: Option<&str>, tier: Option<String>) -> PolicySpec {
    let spec = CalicoPolicySpec { tier, ..CalicoPolicySpec::default() };
    let mut p = staged(policy(api, name, namespace, spec), StagedAction::Delete);
    p.types = None;
    p
}

/// Calico validates `http` matches on ingress rules only; Krites can
/// enforce them on egress too (the client's sidecar sees the request), as an
/// extension a user must ask for. The fields of egress rules that carry one.
pub fn egress_http_fields(spec: &CalicoPolicySpec) -> Vec<String> {
    spec.egress.iter().enumerate().filter(|(_, r)| r.http.is_some()).map(|(i, _)| format!("spec.egress[{i}].http")).collect()
}

pub fn tier(name: &str, spec: CalicoTierSpec) -> TierSpec {
    TierSpec { name: name.to_string(), order: spec.order, default_action: spec.default_action }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code

    use super::*;
    use krites_policy::config::{Action, PortSpec};

    fn spec(v: serde_json::Value) -> CalicoPolicySpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn egress_rules_are_carried_as_calico_writes_them() {
        // "reviews may call ratings only" (Calico's post on policy with Istio).
        let s = spec(serde_json::json!({
            "selector": "app == 'reviews'",
            "egress": [
                {"action": "Allow", "protocol": "TCP", "destination": {"selector": "app == 'ratings'", "ports": [9080]}},
                {"action": "Allow", "protocol": "UDP", "destination": {"ports": [53]}}
            ]
        }));
        assert!(egress_http_fields(&s).is_empty());
        let p = policy(Api::V3, "reviews", Some("bookinfo"), s);
        // Only egress rules: Calico defaults types to [Egress].
        assert_eq!(p.types, Some(vec![PolicyType::Egress]));
        assert_eq!(p.egress.len(), 2);
        assert_eq!(p.egress[0].action, Action::Allow);
        let d = p.egress[0].destination.as_ref().unwrap();
        assert_eq!((d.selector.as_deref(), d.ports.as_slice()), (Some("app == 'ratings'"), &[PortSpec::Number(9080)][..]));

        // Both lists, as stored in crd.projectcalico.org/v1: both types, name without `default.`.
        let both = spec(serde_json::json!({"ingress": [{"action": "Allow"}], "egress": [{"action": "Deny", "destination": {"nets": ["0.0.0.0/0"]}}]}));
        let p = policy(Api::CrdV1, "default.lockdown", None, both);
        assert_eq!(p.name, "lockdown");
        assert_eq!(p.types, Some(vec![PolicyType::Ingress, PolicyType::Egress]));
        assert_eq!(p.egress[0].action, Action::Deny);
        // Explicit types are kept.
        let explicit = spec(serde_json::json!({"types": ["Ingress", "Egress"], "egress": [{"action": "Allow"}]}));
        assert_eq!(policy(Api::V3, "x", None, explicit).types, Some(vec![PolicyType::Ingress, PolicyType::Egress]));

        // http on egress: named so that control can refuse it unless asked.
        let http = spec(serde_json::json!({"egress": [{"action": "Allow"}, {"action": "Allow", "http": {"methods": ["GET"]}}]}));
        assert_eq!(egress_http_fields(&http), ["spec.egress[1].http"]);
        // A typo in an egress rule is an error, as on ingress.
        let typo = serde_json::from_value::<CalicoPolicySpec>(serde_json::json!({"egress": [{"action": "Allow", "destinaton": {}}]}));
        assert!(typo.unwrap_err().to_string().contains("destinaton"));
    }
}
