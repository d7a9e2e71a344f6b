//! The generated world as Kubernetes manifests (Calico policies, Pods,
//! ServiceAccounts, Namespaces), so `control compile` can be measured from
//! the same input a user gives it.

use serde_json::{json, Value};

use krites_policy::PluginConfig;

/// One manifest per policy, pod (one per endpoint IP), namespace and service account.
pub fn to_manifests(config: &PluginConfig) -> Vec<Value> {
    let mut out = Vec::new();
    for t in &config.tiers {
        out.push(json!({"apiVersion": "projectcalico.org/v3", "kind": "Tier", "metadata": {"name": t.name},
            "spec": {"order": t.order, "defaultAction": t.default_action}}));
    }
    for p in &config.policies {
        let mut spec = json!({"order": p.order, "selector": p.selector, "ingress": p.ingress, "types": ["Ingress"]});
        if let Some(t) = &p.tier {
            spec["tier"] = json!(t);
        }
        if let Some(s) = &p.namespace_selector {
            spec["namespaceSelector"] = json!(s);
        }
        let (kind, metadata) = match &p.namespace {
            Some(ns) => ("NetworkPolicy", json!({"name": p.name, "namespace": ns})),
            None => ("GlobalNetworkPolicy", json!({"name": p.name})),
        };
        out.push(json!({"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": metadata, "spec": spec}));
    }
    for n in &config.namespaces {
        out.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n.name, "labels": n.labels}}));
    }
    for sa in &config.service_accounts {
        out.push(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa.name, "namespace": sa.namespace, "labels": sa.labels}}));
    }
    for (g, e) in config.endpoints.iter().enumerate() {
        for (i, ip) in e.ips.iter().enumerate() {
            out.push(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("{}-{g}-{i}", e.service_account), "namespace": e.namespace, "labels": e.labels},
                "spec": {"serviceAccountName": e.service_account, "containers": [{"name": "app", "image": "app", "ports": [{"name": "http", "containerPort": 8080}]}]},
                "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
            }));
        }
    }
    out
}
