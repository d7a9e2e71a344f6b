//! What the cluster says about workloads: pods (who owns which address),
//! service accounts and namespaces (labels selectors can test).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};

/// A pod that can send traffic: running, on the pod network, with addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    pub ips: Vec<IpAddr>,
    /// Named TCP container ports (what Istio puts in `POD_PORTS`).
    pub ports: BTreeMap<String, u16>,
    pub first_port: Option<u16>,
}

/// Why a pod is left out of the endpoint table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skipped {
    NotRunning(String),
    HostNetwork,
    NoAddress,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skipped::NotRunning(phase) => write!(f, "not running (phase {phase})"),
            // Its address is the node's: it must never stand for a pod identity.
            Skipped::HostNetwork => f.write_str("uses the host network"),
            Skipped::NoAddress => f.write_str("has no pod IP yet"),
        }
    }
}

pub fn pod(p: &Pod) -> Result<PodInfo, Skipped> {
    let spec = p.spec.clone().unwrap_or_default();
    let status = p.status.clone().unwrap_or_default();
    let phase = status.phase.clone().unwrap_or_else(|| "Unknown".to_string());
    if phase != "Running" {
        return Err(Skipped::NotRunning(phase));
    }
    if spec.host_network == Some(true) {
        return Err(Skipped::HostNetwork);
    }
    let mut ips: Vec<IpAddr> = status.pod_ips.iter().flatten().filter_map(|i| i.ip.parse().ok()).collect();
    if ips.is_empty() {
        ips.extend(status.pod_ip.as_deref().and_then(|i| i.parse::<IpAddr>().ok()));
    }
    if ips.is_empty() {
        return Err(Skipped::NoAddress);
    }
    ips.sort();
    ips.dedup();
    let container_ports: Vec<_> = spec.containers.iter().flat_map(|c| c.ports.iter().flatten()).collect();
    let tcp = |proto: &Option<String>| proto.as_deref().is_none_or(|p| p == "TCP");
    Ok(PodInfo {
        namespace: p.metadata.namespace.clone().unwrap_or_else(|| "default".to_string()),
        name: p.metadata.name.clone().unwrap_or_default(),
        service_account: spec.service_account_name.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| "default".to_string()),
        labels: workload_labels(p.metadata.labels.clone().unwrap_or_default()),
        ips,
        ports: container_ports
            .iter()
            .filter(|cp| tcp(&cp.protocol))
            .filter_map(|cp| Some((cp.name.clone()?, u16::try_from(cp.container_port).ok()?)))
            .collect(),
        first_port: container_ports.iter().filter(|cp| tcp(&cp.protocol)).find_map(|cp| u16::try_from(cp.container_port).ok()),
    })
}

/// The label the Deployment controller stamps on each ReplicaSet's pods.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// A pod's labels as its sidecar sees its own: Istio's `LABELS` node metadata comes from the
/// downward-API labels file without `pod-template-hash`, so the filter never sees that label
/// on the workload it protects. Leaving it out of the endpoint table too keeps selectors
/// meaning the same on both sides (and keeps one endpoint group per Deployment, not per
/// rollout).
pub fn workload_labels(mut labels: BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels.remove(POD_TEMPLATE_HASH);
    labels
}

pub fn namespace(n: &Namespace) -> (String, BTreeMap<String, String>) {
    (n.metadata.name.clone().unwrap_or_default(), n.metadata.labels.clone().unwrap_or_default())
}

pub fn service_account(sa: &ServiceAccount) -> (String, String, BTreeMap<String, String>) {
    (
        sa.metadata.namespace.clone().unwrap_or_else(|| "default".to_string()),
        sa.metadata.name.clone().unwrap_or_default(),
        sa.metadata.labels.clone().unwrap_or_default(),
    )
}

/// A Service as the egress role needs it: its ClusterIPs (none: headless)
/// and its TCP ports by name, to be joined with its EndpointSlices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    pub namespace: String,
    pub name: String,
    pub cluster_ips: Vec<IpAddr>,
    /// (port name, port): an EndpointSlice port of the same name serves it.
    pub ports: Vec<(String, u16)>,
    /// `spec.publishNotReadyAddresses`: every endpoint takes traffic.
    pub publish_not_ready: bool,
}

/// Why a Service is left out on purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceSkipped {
    /// A DNS alias: clients resolve and dial the external name themselves,
    /// so egress rules read that address (outside the cluster), not a Service.
    ExternalName,
    /// No `clusterIP` at all (not `None`): a manifest as written, before the
    /// API server allocated one; whether it is headless, and where its
    /// endpoints are, is not known.
    NotAllocated,
}

impl std::fmt::Display for ServiceSkipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServiceSkipped::ExternalName => f.write_str("an ExternalName Service has no endpoints of its own (its clients' egress is read against the address they resolve)"),
            ServiceSkipped::NotAllocated => f.write_str("has no spec.clusterIP (a manifest, not the API server's copy: give `kubectl get services -o yaml`)"),
        }
    }
}

/// (field, problem) pairs of an object that does not convert.
pub type FieldErrors = Vec<(String, String)>;

pub fn service(s: &k8s_openapi::api::core::v1::Service) -> Result<Result<ServiceInfo, ServiceSkipped>, FieldErrors> {
    let spec = s.spec.clone().unwrap_or_default();
    if spec.type_.as_deref() == Some("ExternalName") {
        return Ok(Err(ServiceSkipped::ExternalName));
    }
    let mut errors = FieldErrors::new();
    // `clusterIPs` is authoritative (dual stack); `clusterIP` is its first entry
    // on older objects. `None` is a headless Service.
    let (field, listed) = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ("spec.clusterIPs", ips.clone()),
        _ => ("spec.clusterIP", spec.cluster_ip.clone().into_iter().collect()),
    };
    if listed.iter().all(String::is_empty) {
        return Ok(Err(ServiceSkipped::NotAllocated));
    }
    let mut cluster_ips = Vec::new();
    for (i, text) in listed.iter().enumerate() {
        if text == "None" || text.is_empty() {
            continue;
        }
        match text.parse::<IpAddr>() {
            Ok(ip) => cluster_ips.push(ip),
            Err(_) => {
                let at = if field == "spec.clusterIPs" { format!("{field}[{i}]") } else { field.to_string() };
                errors.push((at, format!("{text:?} is not an IP address")));
            }
        }
    }
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        // Envoy's listeners carry TCP here; other protocols pass no sidecar.
        if p.protocol.as_deref().is_some_and(|proto| proto != "TCP") {
            continue;
        }
        match u16::try_from(p.port) {
            Ok(n) if n > 0 => ports.push((p.name.clone().unwrap_or_default(), n)),
            _ => errors.push((format!("spec.ports[{i}].port"), format!("{} is not a port number (1-65535)", p.port))),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Ok(ServiceInfo {
        namespace: s.metadata.namespace.clone().unwrap_or_else(|| "default".to_string()),
        name: s.metadata.name.clone().unwrap_or_default(),
        cluster_ips,
        ports,
        publish_not_ready: spec.publish_not_ready_addresses == Some(true),
    }))
}

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One EndpointSlice: per TCP port name, the port number its endpoints
/// serve it on, and the endpoints' addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSliceInfo {
    pub namespace: String,
    pub name: String,
    /// The Service it belongs to (its `kubernetes.io/service-name` label).
    pub service: String,
    /// (port name, port number).
    pub ports: Vec<(String, u16)>,
    /// Endpoints that may take traffic (see [`endpoint_slice`]).
    pub ready: Vec<IpAddr>,
    /// Endpoints that take traffic only if the Service publishes not-ready ones.
    pub not_ready: Vec<IpAddr>,
}

/// Why an EndpointSlice is left out on purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SliceSkipped {
    /// No `kubernetes.io/service-name` label: it belongs to no Service.
    NoService,
    /// `addressType: FQDN` (deprecated): names, not addresses.
    Fqdn,
}

impl std::fmt::Display for SliceSkipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SliceSkipped::NoService => write!(f, "has no {SERVICE_NAME_LABEL} label, so it belongs to no Service"),
            SliceSkipped::Fqdn => f.write_str("lists FQDNs (addressType FQDN), not addresses"),
        }
    }
}

/// Converts an EndpointSlice. Which endpoints count: a connection to a
/// Service is allowed only if every endpoint it may reach is allowed, so
/// the list must hold every address Envoy may still send traffic to.
/// Istio's EDS sends an endpoint whose `ready` is true or unset as healthy;
/// one that is `serving` while `terminating` it sends as draining (or
/// unhealthy), and Envoy still routes to such hosts (existing sessions,
/// and all hosts once fewer than its panic threshold are healthy). So an
/// endpoint counts unless it is neither ready nor serving (kubelet says it
/// fails its readiness probe: Istio leaves it out of EDS by default); a
/// Service with `publishNotReadyAddresses` counts those too.
pub fn endpoint_slice(s: &k8s_openapi::api::discovery::v1::EndpointSlice) -> Result<Result<EndpointSliceInfo, SliceSkipped>, FieldErrors> {
    let Some(service) = s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)).filter(|n| !n.is_empty()) else {
        return Ok(Err(SliceSkipped::NoService));
    };
    let mut errors = FieldErrors::new();
    match s.address_type.as_str() {
        "IPv4" | "IPv6" => {}
        "FQDN" => return Ok(Err(SliceSkipped::Fqdn)),
        other => errors.push(("addressType".to_string(), format!("{other:?} is not IPv4, IPv6 or FQDN"))),
    }
    let mut ports = Vec::new();
    for (i, p) in s.ports.iter().flatten().enumerate() {
        if p.protocol.as_deref().is_some_and(|proto| proto != "TCP") {
            continue;
        }
        match p.port.map(u16::try_from) {
            Some(Ok(n)) if n > 0 => ports.push((p.name.clone().unwrap_or_default(), n)),
            // No port means "all ports" (a selector-less Service's own
            // slices): the endpoints' port per Service port is not known.
            None => errors.push((format!("ports[{i}].port"), "no port number (\"all ports\"): Krites needs the port each endpoint serves".to_string())),
            Some(_) => errors.push((format!("ports[{i}].port"), format!("{:?} is not a port number (1-65535)", p.port))),
        }
    }
    let (mut ready, mut not_ready) = (Vec::new(), Vec::new());
    for (i, e) in s.endpoints.iter().enumerate() {
        let conditions = e.conditions.clone().unwrap_or_default();
        let counts = conditions.ready != Some(false) || conditions.serving != Some(false);
        for (j, text) in e.addresses.iter().enumerate() {
            match text.parse::<IpAddr>() {
                Ok(ip) if counts => ready.push(ip),
                Ok(ip) => not_ready.push(ip),
                Err(_) => errors.push((format!("endpoints[{i}].addresses[{j}]"), format!("{text:?} is not an IP address"))),
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Ok(EndpointSliceInfo {
        namespace: s.metadata.namespace.clone().unwrap_or_else(|| "default".to_string()),
        name: s.metadata.name.clone().unwrap_or_default(),
        service: service.clone(),
        ports,
        ready,
        not_ready,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code

    use super::*;

    fn slice(endpoints: serde_json::Value) -> k8s_openapi::api::discovery::v1::EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "ratings-b6v2c", "namespace": "bookinfo", "labels": {SERVICE_NAME_LABEL: "ratings"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 9080, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}],
            "endpoints": endpoints
        }))
        .unwrap()
    }

    /// Which endpoints count: every one Envoy may still send traffic to.
    #[test]
    fn endpoint_conditions() {
        // (conditions, counts)
        let rows = [
            (serde_json::json!(null), true),
            (serde_json::json!({}), true),
            (serde_json::json!({"ready": true, "serving": true, "terminating": false}), true),
            // Terminating but still serving: Istio sends it as draining; Envoy may use it.
            (serde_json::json!({"ready": false, "serving": true, "terminating": true}), true),
            // An older apiserver: ready false, serving unknown: it may still serve.
            (serde_json::json!({"ready": false}), true),
            // Failing its readiness probe: out of Istio's EDS by default.
            (serde_json::json!({"ready": false, "serving": false, "terminating": false}), false),
            (serde_json::json!({"ready": false, "serving": false, "terminating": true}), false),
        ];
        for (conditions, counts) in rows {
            let mut endpoint = serde_json::json!({"addresses": ["10.244.1.15"]});
            if !conditions.is_null() {
                endpoint["conditions"] = conditions.clone();
            }
            let info = endpoint_slice(&slice(serde_json::json!([endpoint]))).unwrap().unwrap();
            assert_eq!(info.ready.len() == 1, counts, "{conditions}");
            assert_eq!(info.not_ready.len() == 1, !counts, "{conditions}");
            // TCP ports only: UDP passes no sidecar listener.
            assert_eq!(info.ports, [("http".to_string(), 9080)]);
            assert_eq!(info.service, "ratings");
        }
    }

    #[test]
    fn services_and_slices_left_out_or_refused() {
        let svc = |spec: serde_json::Value| -> k8s_openapi::api::core::v1::Service {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "s", "namespace": "n"}, "spec": spec})).unwrap()
        };
        assert_eq!(service(&svc(serde_json::json!({"type": "ExternalName", "externalName": "example.com"}))).unwrap(), Err(ServiceSkipped::ExternalName));
        assert_eq!(service(&svc(serde_json::json!({"ports": [{"port": 80}]}))).unwrap(), Err(ServiceSkipped::NotAllocated));
        let headless = service(&svc(serde_json::json!({"clusterIP": "None", "ports": [{"port": 80}]}))).unwrap().unwrap();
        assert!(headless.cluster_ips.is_empty());
        let dual = service(&svc(serde_json::json!({"clusterIP": "10.96.0.9", "clusterIPs": ["10.96.0.9", "fd00::9"], "ports": [{"name": "http", "port": 80}]}))).unwrap().unwrap();
        assert_eq!(dual.cluster_ips.len(), 2);
        assert_eq!(dual.ports, [("http".to_string(), 80)]);
        let bad = service(&svc(serde_json::json!({"clusterIP": "10.96.0.300", "ports": [{"port": 80}]}))).unwrap_err();
        assert_eq!(bad[0].0, "spec.clusterIP");

        let unlabelled: k8s_openapi::api::discovery::v1::EndpointSlice =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "x", "namespace": "n"}, "addressType": "IPv4", "endpoints": []})).unwrap();
        assert_eq!(endpoint_slice(&unlabelled).unwrap(), Err(SliceSkipped::NoService));
        let mut fqdn = slice(serde_json::json!([{"addresses": ["db.example.com"]}]));
        fqdn.address_type = "FQDN".into();
        assert_eq!(endpoint_slice(&fqdn).unwrap(), Err(SliceSkipped::Fqdn));
        let mut all_ports = slice(serde_json::json!([{"addresses": ["10.244.1.15"]}]));
        all_ports.ports = Some(vec![k8s_openapi::api::discovery::v1::EndpointPort::default()]);
        assert_eq!(endpoint_slice(&all_ports).unwrap_err()[0].0, "ports[0].port");
    }
}
