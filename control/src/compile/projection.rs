//! Labels no selector reads: left out of the config. Pods carry many labels
//! that no policy names (Helm's `app.kubernetes.io/*`, `version`,
//! `controller-revision-hash`, ...); each one costs bytes in every endpoint
//! group, and groups that differ only in such labels are one group to every
//! decision. Felix likewise sends Dikastes only what active rules use.
//!
//! Which keys are read is taken from the config itself, from every string
//! under a field named `selector` or `...Selector`, at any depth, in the
//! policies and the staged policies. A selector field added to the config
//! later is covered without a change here; a selector that does not parse
//! (never in a config control validated) keeps every label. A key a pod
//! inherits (`pcns.env`, `pcsa.team`) reads its namespace's or service
//! account's label (`env`, `team`): both are kept.

use std::collections::{BTreeMap, BTreeSet};

use krites_policy::config::{EndpointSpec, PluginConfig};
use krites_policy::model::universe::special::{NAMESPACE_PREFIX, SERVICE_ACCOUNT_PREFIX};
use krites_policy::selector::Selector;
use serde_json::Value;

/// Every label key a selector of `config` reads; `None` if one does not parse.
pub fn keys_read(config: &PluginConfig) -> Option<BTreeSet<String>> {
    let mut texts = Vec::new();
    for policy in config.policies.iter().chain(&config.staged_policies) {
        collect_selectors(&serde_json::to_value(policy).ok()?, &mut texts);
    }
    let mut keys = BTreeSet::new();
    for text in &texts {
        let selector = Selector::parse(text).ok()?;
        let mut read = BTreeSet::new();
        selector.label_keys(&mut read);
        for key in read {
            if let Some(inherited) = key.strip_prefix(NAMESPACE_PREFIX).or_else(|| key.strip_prefix(SERVICE_ACCOUNT_PREFIX)) {
                keys.insert(inherited.to_string());
            }
            keys.insert(key.to_string());
        }
    }
    Some(keys)
}

fn collect_selectors(value: &Value, texts: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            for (name, v) in fields {
                match v {
                    Value::String(text) if name == "selector" || name.ends_with("Selector") => texts.push(text.clone()),
                    _ => collect_selectors(v, texts),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_selectors(v, texts)),
        _ => {}
    }
}

/// Keeps only the labels in `keys` on endpoints, namespaces, service accounts
/// and network sets; merges endpoint groups that become equal, and drops
/// namespace and service-account entries left with no label.
pub fn project(config: &mut PluginConfig, keys: &BTreeSet<String>) {
    let keep = |labels: &mut BTreeMap<String, String>| labels.retain(|k, _| keys.contains(k));
    let mut groups: BTreeMap<(String, String, BTreeMap<String, String>), Vec<String>> = BTreeMap::new();
    for EndpointSpec { namespace, service_account, mut labels, ips } in std::mem::take(&mut config.endpoints) {
        keep(&mut labels);
        groups.entry((namespace, service_account, labels)).or_default().extend(ips);
    }
    config.endpoints = groups
        .into_iter()
        .map(|((namespace, service_account, labels), mut ips)| {
            ips.sort();
            EndpointSpec { namespace, service_account, labels, ips }
        })
        .collect();
    config.namespaces.iter_mut().for_each(|n| keep(&mut n.labels));
    config.namespaces.retain(|n| !n.labels.is_empty());
    config.service_accounts.iter_mut().for_each(|s| keep(&mut s.labels));
    config.service_accounts.retain(|s| !s.labels.is_empty());
    config.network_sets.iter_mut().for_each(|s| keep(&mut s.labels));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A selector naming an inherited label keeps the namespace's or service
    /// account's label it reads, and the pod's own label of that key.
    #[test]
    fn inherited_keys_keep_the_labels_they_read() {
        let config = PluginConfig::from_json(
            br#"{"version": 1,
                "policies": [{"name": "p", "selector": "pcns.env == 'prod'",
                              "ingress": [{"action": "Deny", "source": {"selector": "pcsa.team == 'ops' || app == 'x'"}}]}],
                "endpoints": [{"namespace": "prod", "serviceAccount": "tool", "labels": {"app": "x", "pcns.env": "dev", "env": "y", "tier": "z"}, "ips": ["10.0.0.1"]}],
                "namespaces": [{"name": "prod", "labels": {"env": "prod", "owner": "a"}}, {"name": "dev", "labels": {"owner": "b"}}],
                "serviceAccounts": [{"namespace": "prod", "name": "tool", "labels": {"team": "ops", "cost": "c"}}]}"#,
        )
        .expect("config reads");
        let keys = keys_read(&config).expect("selectors parse");
        let want: BTreeSet<String> = ["app", "env", "pcns.env", "pcsa.team", "team"].map(String::from).into();
        assert_eq!(keys, want);
        let mut projected = config.clone();
        project(&mut projected, &keys);
        let labels = |pairs: &[(&str, &str)]| pairs.iter().map(|&(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>();
        assert_eq!(projected.endpoints[0].labels, labels(&[("app", "x"), ("env", "y"), ("pcns.env", "dev")]));
        assert_eq!(projected.namespaces.iter().map(|n| (n.name.as_str(), n.labels.clone())).collect::<Vec<_>>(), [("prod", labels(&[("env", "prod")]))]);
        assert_eq!(projected.service_accounts[0].labels, labels(&[("team", "ops")]));
    }
}
