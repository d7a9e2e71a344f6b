//! `pkg/bootstrap/config.go`, `pkg/model/proxy.go`: what pilot-agent puts in the bootstrap.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{CaptureMode, Proxy};

/// Node metadata as pilot-agent writes it.
pub fn build_node(p: &Proxy) -> Value {
    let ns = &p.namespace;
    let app = p
        .labels
        .get("app")
        .cloned()
        .unwrap_or_else(|| p.pod_name.clone());
    let interception = match p.capture {
        CaptureMode::Iptables => "REDIRECT",
        CaptureMode::None { .. } => "NONE",
    };
    json!({
        "id": format!("sidecar~{}~{}.{ns}~{ns}.svc.cluster.local", p.ip, p.pod_name),
        "cluster": format!("{app}.{ns}"),
        "metadata": {
            "NAMESPACE": ns,
            "SERVICE_ACCOUNT": p.service_account,
            "LABELS": node_labels(p),
            "POD_PORTS": pod_ports(p),
            "NAME": p.pod_name,
            "INSTANCE_IPS": p.ip.to_string(),
            "CLUSTER_ID": "Kubernetes",
            "MESH_ID": p.trust_domain,
            "WORKLOAD_NAME": app,
            "INTERCEPTION_MODE": interception,
            "ISTIO_VERSION": "1.28.0",
        }
    })
}

/// `LABELS`: the downward-API labels without `pod-template-hash`, plus the injector's.
pub fn node_labels(p: &Proxy) -> BTreeMap<String, String> {
    let mut labels = p.labels.clone();
    labels.remove("pod-template-hash");
    let app = labels
        .get("app")
        .cloned()
        .unwrap_or_else(|| p.pod_name.clone());
    labels
        .entry("security.istio.io/tlsMode".into())
        .or_insert_with(|| "istio".into());
    labels
        .entry("service.istio.io/canonical-name".into())
        .or_insert(app);
    labels
        .entry("service.istio.io/canonical-revision".into())
        .or_insert_with(|| "latest".into());
    labels
}

/// `POD_PORTS`: a JSON *string* of the containers' ports.
pub fn pod_ports(p: &Proxy) -> String {
    let ports: Vec<Value> = p
        .ports
        .iter()
        .map(|c| json!({ "name": c.name, "containerPort": c.port, "protocol": "TCP" }))
        .collect();
    Value::Array(ports).to_string()
}

/// Istio's static runtime layer, then the admin layer (so tests can flip flags at run time,
/// as `istioctl` can). Envoy strips a `#fragment` from the request target instead of
/// answering 400, so `/admin#x` reaches filters as `/admin`.
pub fn istio_runtime() -> Value {
    json!({ "layers": [
        { "name": "global config", "static_layer": {
            "envoy.reloadable_features.http_reject_path_with_fragment": false,
            "re2.max_program_size.error_level": 32768,
        } },
        { "name": "admin", "admin_layer": {} }
    ] })
}

/// `stats_config` as Istio's `envoy_bootstrap.json` renders `extraStatTags`: each tag is
/// taken out of stat names that carry it as `<tag>=.=<value>;.;` and becomes a label of the
/// remaining name (Istio's own tags and Envoy's defaults are left out: nothing here reads them).
pub fn stats_config(extra_stat_tags: &[String]) -> Value {
    let tags: Vec<Value> = extra_stat_tags
        .iter()
        .map(|tag| json!({ "tag_name": tag, "regex": format!("({tag}=\\.=(.*?);\\.;)") }))
        .collect();
    json!({ "use_all_default_tags": false, "stats_tags": tags })
}
