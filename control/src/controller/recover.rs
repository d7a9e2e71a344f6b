//! The last valid version of each policy and tier, read back from the cluster
//! after a start: the `krites` WasmPlugins' `pluginConfig` is the config the
//! previous run compiled, so a policy that is invalid now (edited while
//! control was down, or before it restarted) keeps the version in force
//! there instead of being dropped, which would loosen enforcement.
//!
//! The config is read with the filter's own reader and validator
//! ([`PluginConfig::from_json`], [`PolicySet::from_config`]), and used only
//! when its content digest is the revision control annotated it with: a
//! config someone else edited is not a version control ever compiled.

use std::collections::BTreeMap;

use kube::api::DynamicObject;
use kube::ResourceExt;
use serde_json::Value;
use tracing::{debug, info, warn};

use krites_policy::config::{NetworkSetSpec, PluginConfig, PolicySpec, TierSpec};
use krites_policy::PolicySet;

use super::apply::REVISION_ANNOTATION;
use crate::knp;
use crate::wasmplugin::NAME;

/// A policy's identity in the compiled config: (namespace, name).
type PolicyId = (Option<String>, String);

/// A version of an object, as the compiled config holds it.
#[derive(Debug, Clone, PartialEq)]
pub enum Compiled {
    Policy(PolicySpec),
    Tier(TierSpec),
    /// A network set a rule matched (the config carries only those): without
    /// it a Deny rule would match fewer addresses.
    NetworkSet(NetworkSetSpec),
    /// A staged policy: no verdict depends on it, but its report does.
    StagedPolicy(PolicySpec),
}

/// Policies and tiers of the live config(s), by identity.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    policies: BTreeMap<PolicyId, PolicySpec>,
    tiers: BTreeMap<String, TierSpec>,
    /// By (namespace, name); a GlobalNetworkSet has no namespace.
    network_sets: BTreeMap<PolicyId, NetworkSetSpec>,
    staged_policies: BTreeMap<PolicyId, PolicySpec>,
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// Where an input object lands in the compiled config: its identities (a
/// `crd.projectcalico.org/v1` policy of the default tier is stored as
/// `default.<name>` and compiled as `<name>`) and the `kind` it gets there.
enum Target {
    Policy { ids: Vec<PolicyId>, kind: &'static str },
    Tier(String),
    NetworkSet(PolicyId),
    StagedPolicy { ids: Vec<PolicyId>, kind: &'static str },
}

fn target(v: &Value) -> Option<Target> {
    let group = str_at(v, "/apiVersion").rsplit_once('/').map_or("", |(g, _)| g);
    let name = str_at(v, "/metadata/name").to_string();
    let namespace = || Some(Some(str_at(v, "/metadata/namespace")).filter(|s| !s.is_empty()).unwrap_or("default").to_string());
    let calico = group == "projectcalico.org" || group == "crd.projectcalico.org";
    let names = |ns: Option<String>| {
        let mut ids = vec![(ns.clone(), name.clone())];
        if let Some(short) = name.strip_prefix("default.").filter(|_| group == "crd.projectcalico.org") {
            ids.push((ns, short.to_string()));
        }
        ids
    };
    match (calico, group, str_at(v, "/kind")) {
        (true, _, "Tier") => Some(Target::Tier(name)),
        (true, _, "GlobalNetworkPolicy") => Some(Target::Policy { ids: names(None), kind: "GlobalNetworkPolicy" }),
        (true, _, "NetworkPolicy") => Some(Target::Policy { ids: names(namespace()), kind: "NetworkPolicy" }),
        (true, _, "GlobalNetworkSet") => Some(Target::NetworkSet((None, name))),
        (true, _, "NetworkSet") => Some(Target::NetworkSet((namespace(), name))),
        (true, _, "StagedGlobalNetworkPolicy") => Some(Target::StagedPolicy { ids: names(None), kind: "StagedGlobalNetworkPolicy" }),
        (true, _, "StagedNetworkPolicy") => Some(Target::StagedPolicy { ids: names(namespace()), kind: "StagedNetworkPolicy" }),
        (true, _, "StagedKubernetesNetworkPolicy") => Some(Target::StagedPolicy {
            ids: vec![(namespace(), format!("knp.default.{name}"))],
            kind: "StagedKubernetesNetworkPolicy",
        }),
        (false, "networking.k8s.io", "NetworkPolicy") => {
            Some(Target::Policy { ids: vec![(namespace(), format!("knp.default.{name}"))], kind: knp::KIND })
        }
        _ => None,
    }
}

impl Recovered {
    /// Reads the `krites` WasmPlugins control manages (one, or one per
    /// namespace when sharded) out of `live`.
    pub fn from_live<'a>(live: impl IntoIterator<Item = &'a DynamicObject>) -> Recovered {
        let mut out = Recovered::default();
        for plugin in live {
            let managed = plugin.labels().get("app.kubernetes.io/managed-by").map(String::as_str) == Some("krites-control");
            if plugin.name_any() != NAME || !managed {
                continue;
            }
            let id = format!("{}/{}", plugin.namespace().unwrap_or_default(), plugin.name_any());
            match read(plugin) {
                Ok(Some(config)) => {
                    info!(wasmplugin = %id, policies = config.policies.len(), tiers = config.tiers.len(), "read the config in force, for policies that are invalid now");
                    out.tiers.extend(config.tiers.into_iter().map(|t| (t.name.clone(), t)));
                    out.policies.extend(config.policies.into_iter().map(|p| ((p.namespace.clone(), p.name.clone()), p)));
                    out.network_sets.extend(config.network_sets.into_iter().map(|s| ((s.namespace.clone(), s.name.clone()), s)));
                    out.staged_policies.extend(config.staged_policies.into_iter().map(|p| ((p.namespace.clone(), p.name.clone()), p)));
                }
                Ok(None) => debug!(wasmplugin = %id, "no config revision annotation: nothing to recover"),
                Err(why) => warn!(wasmplugin = %id, problem = %why, "the config in force is not one control compiled; not used to keep invalid policies' last valid versions"),
            }
        }
        out
    }

    /// The version the live config holds of `object` (a policy or tier).
    pub fn version_of(&self, object: &Value) -> Option<Compiled> {
        match target(object)? {
            Target::Tier(name) => self.tiers.get(&name).cloned().map(Compiled::Tier),
            Target::NetworkSet(id) => self.network_sets.get(&id).cloned().map(Compiled::NetworkSet),
            Target::Policy { ids, kind } => ids
                .iter()
                .filter_map(|id| self.policies.get(id))
                .find(|p| p.kind.as_deref().is_none_or(|k| k == kind))
                .cloned()
                .map(Compiled::Policy),
            Target::StagedPolicy { ids, kind } => ids
                .iter()
                .filter_map(|id| self.staged_policies.get(id))
                .find(|p| p.kind.as_deref().is_none_or(|k| k == kind))
                .cloned()
                .map(Compiled::StagedPolicy),
        }
    }

    /// Keeps only what an object of `objects` maps to: a policy deleted and
    /// created again must not get back a version from before.
    pub fn retain<'a>(&mut self, objects: impl IntoIterator<Item = &'a Value>) {
        if self.policies.is_empty() && self.tiers.is_empty() && self.network_sets.is_empty() && self.staged_policies.is_empty() {
            return;
        }
        let mut policies = std::collections::BTreeSet::new();
        let mut tiers = std::collections::BTreeSet::new();
        let mut network_sets = std::collections::BTreeSet::new();
        let mut staged = std::collections::BTreeSet::new();
        for o in objects {
            match target(o) {
                Some(Target::Policy { ids, .. }) => policies.extend(ids),
                Some(Target::Tier(name)) => {
                    tiers.insert(name);
                }
                Some(Target::NetworkSet(id)) => {
                    network_sets.insert(id);
                }
                Some(Target::StagedPolicy { ids, .. }) => staged.extend(ids),
                None => {}
            }
        }
        self.policies.retain(|id, _| policies.contains(id));
        self.tiers.retain(|name, _| tiers.contains(name));
        self.network_sets.retain(|id, _| network_sets.contains(id));
        self.staged_policies.retain(|id, _| staged.contains(id));
    }
}

/// The plugin's config if control compiled it: `Ok(None)` without the
/// revision annotation, `Err` when it does not read or its digest differs.
fn read(plugin: &DynamicObject) -> Result<Option<PluginConfig>, String> {
    let Some(revision) = plugin.annotations().get(REVISION_ANNOTATION) else { return Ok(None) };
    let Some(value) = plugin.data.pointer("/spec/pluginConfig") else { return Err("no spec.pluginConfig".into()) };
    let text = serde_json::to_vec(value).map_err(|e| e.to_string())?;
    let config = PluginConfig::from_json(&text).map_err(|e| e.to_string())?;
    let set = PolicySet::from_config(&config).map_err(|e| e.to_string())?;
    if set.revision() != revision {
        return Err(format!("its content digest is {}, not the annotated revision {revision}", set.revision()));
    }
    Ok(Some(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plugin(config: &Value, revision: &str) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
            "metadata": {"name": "krites", "namespace": "istio-system",
                         "labels": {"app.kubernetes.io/managed-by": "krites-control"},
                         "annotations": {REVISION_ANNOTATION: revision}},
            "spec": {"pluginConfig": config}
        }))
        .unwrap()
    }

    fn config() -> Value {
        json!({"version": 1, "tiers": [{"name": "security", "order": 1.0}],
               "policies": [{"name": "db", "kind": "GlobalNetworkPolicy", "selector": "app == 'db'", "tier": "security",
                             "ingress": [{"action": "Deny", "source": {"selector": "feed == 'blocked'"}}]},
                            {"name": "knp.default.web", "namespace": "shop", "kind": "NetworkPolicy.networking.k8s.io"}],
               "networkSets": [{"name": "feed", "labels": {"feed": "blocked"}, "nets": ["203.0.113.0/24"]},
                               {"name": "feed", "namespace": "shop", "labels": {"feed": "blocked"}, "nets": ["198.51.100.0/24"]}],
               "stagedPolicies": [{"name": "db", "kind": "StagedGlobalNetworkPolicy", "selector": "app == 'db'", "tier": "security", "stagedAction": "Set"},
                                  {"name": "knp.default.web", "namespace": "shop", "kind": "StagedKubernetesNetworkPolicy", "stagedAction": "Delete"}]})
    }

    fn revision(config: &Value) -> String {
        PolicySet::from_json(&serde_json::to_vec(config).unwrap()).unwrap().revision().to_string()
    }

    #[test]
    fn finds_each_kind_by_its_identity_in_the_config() {
        let c = config();
        let r = Recovered::from_live([&plugin(&c, &revision(&c))]);
        let gnp = json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": "default.db"}});
        assert!(matches!(r.version_of(&gnp), Some(Compiled::Policy(p)) if p.name == "db"));
        let knp = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "web", "namespace": "shop"}});
        assert!(matches!(r.version_of(&knp), Some(Compiled::Policy(p)) if p.name == "knp.default.web"));
        // A Calico NetworkPolicy of that name is another object.
        let np = json!({"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy", "metadata": {"name": "knp.default.web", "namespace": "shop"}});
        assert_eq!(r.version_of(&np), None);
        let tier = json!({"apiVersion": "projectcalico.org/v3", "kind": "Tier", "metadata": {"name": "security"}});
        assert!(matches!(r.version_of(&tier), Some(Compiled::Tier(t)) if t.order == Some(1.0)));
        let gns = json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "GlobalNetworkSet", "metadata": {"name": "feed"}});
        assert!(matches!(r.version_of(&gns), Some(Compiled::NetworkSet(s)) if s.namespace.is_none() && s.nets == ["203.0.113.0/24"]));
        let ns = json!({"apiVersion": "projectcalico.org/v3", "kind": "NetworkSet", "metadata": {"name": "feed", "namespace": "shop"}});
        assert!(matches!(r.version_of(&ns), Some(Compiled::NetworkSet(s)) if s.nets == ["198.51.100.0/24"]));
        let elsewhere = json!({"apiVersion": "projectcalico.org/v3", "kind": "NetworkSet", "metadata": {"name": "feed", "namespace": "dev"}});
        assert_eq!(r.version_of(&elsewhere), None);
        // Staged policies, by their own kinds: never taken for the enforced policy of the same name.
        let sgnp = json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "StagedGlobalNetworkPolicy", "metadata": {"name": "default.db"}});
        assert!(matches!(r.version_of(&sgnp), Some(Compiled::StagedPolicy(p)) if p.kind.as_deref() == Some("StagedGlobalNetworkPolicy")));
        let sknp = json!({"apiVersion": "projectcalico.org/v3", "kind": "StagedKubernetesNetworkPolicy", "metadata": {"name": "web", "namespace": "shop"}});
        assert!(matches!(r.version_of(&sknp), Some(Compiled::StagedPolicy(p)) if p.name == "knp.default.web"));
        let snp = json!({"apiVersion": "projectcalico.org/v3", "kind": "StagedNetworkPolicy", "metadata": {"name": "db", "namespace": "shop"}});
        assert_eq!(r.version_of(&snp), None);
    }

    #[test]
    fn a_config_control_did_not_compile_is_not_used() {
        let c = config();
        let mut edited = c.clone();
        edited["policies"][0]["selector"] = json!("app == 'nothing'");
        let r = Recovered::from_live([&plugin(&edited, &revision(&c))]);
        let gnp = json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy", "metadata": {"name": "db"}});
        assert_eq!(r.version_of(&gnp), None);
    }

    #[test]
    fn forgets_what_no_object_maps_to() {
        let c = config();
        let mut r = Recovered::from_live([&plugin(&c, &revision(&c))]);
        let gnp = json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy", "metadata": {"name": "db"}});
        r.retain(std::slice::from_ref(&gnp));
        assert!(r.version_of(&gnp).is_some());
        r.retain(&[]);
        assert_eq!(r.version_of(&gnp), None);
    }
}
