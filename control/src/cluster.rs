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
