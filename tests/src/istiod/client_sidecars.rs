//! Many client pods' sidecars in one Envoy: the load benchmark's stand-in for the pods that
//! call the workload. A load generator (h2load) can neither bind a source address per pod nor
//! present a certificate per pod, so one Envoy originates each pod's connections as that
//! pod's sidecar would: from the pod's address, with the pod's workload certificate, over
//! Istio's outbound cluster TLS ([`super::cluster::outbound_upstream_tls`]: SNI
//! `outbound_.<port>_._.<host>`, istio.alpn's ALPN, the server's SPIFFE id checked). The load
//! generator speaks plaintext to one listener; `/<destination>/<pod>/...` says which pod calls
//! which destination, and the prefix is stripped.
//!
//! What is not a sidecar's, and why:
//! - One outbound listener for every pod (a sidecar's serves its own pod only): the route
//!   prefix stands for "which pod's app is calling", the one thing the load generator can vary.
//! - One cluster per pod and destination, `<pod>~outbound|<port>||<host>`: each pod has its own
//!   connection pool, source address and certificate, which a sidecar gets by being its pod's.
//! - A pod without a certificate has no sidecar: its requests reach the destination in
//!   plaintext as its app sends them (here over HTTP/2 with prior knowledge), still from its
//!   address.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde_json::{json, Value};

use super::cluster::{bind_source, h2_cluster, outbound_alpn, outbound_upstream_tls, static_cluster, MTLS_H2_UPSTREAM_ALPNS};
use super::listener_outbound::{outbound_cluster_name, outbound_http_connection_manager};
use super::networkfilter::file_access_logs;
use super::{istio_runtime, socket_addr, Upstream};
use crate::pki::Identity;

/// A pod that calls the destinations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallingPod {
    /// Its route segment (`/<destination>/<pod>/`).
    pub name: String,
    pub ip: Ipv4Addr,
    /// Its workload certificate; `None`: no sidecar, plaintext.
    pub identity: Option<Identity>,
}

/// A destination the pods call, reached at `upstream.ip:upstream.port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Its route segment (`/<destination>/<pod>/`).
    pub name: String,
    pub upstream: Upstream,
}

/// The one Envoy standing in for every calling pod's sidecar.
#[derive(Debug, Clone)]
pub struct ClientSidecars {
    pub name: String,
    pub namespace: String,
    /// The plaintext listener the load generator sends to.
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// The mesh CA, which the destinations' certificates chain to.
    pub ca: PathBuf,
    pub pods: Vec<CallingPod>,
    pub destinations: Vec<Destination>,
    /// `DestinationRule` `h2UpgradePolicy: UPGRADE`: the sidecars speak HTTP/2 to the
    /// destinations (and offer istio.alpn's `istio-h2`); else what the port's protocol says.
    pub h2_upgrade: bool,
    /// `meshConfig.accessLogFile`; `None`: no access log.
    pub access_log: Option<PathBuf>,
}

impl ClientSidecars {
    /// The route prefix of `pod` calling `destination`.
    pub fn route_prefix(destination: &str, pod: &str) -> String {
        format!("/{destination}/{pod}/")
    }

    /// The cluster of `pod` calling `destination`.
    pub fn cluster_name(pod: &CallingPod, destination: &Destination) -> String {
        format!("{}~{}", pod.name, outbound_cluster_name(&destination.upstream))
    }
}

/// The bootstrap: one plaintext outbound listener routing `/<destination>/<pod>/...` to the
/// cluster of that pod and destination, with the prefix stripped.
pub fn build_client_sidecars_bootstrap(c: &ClientSidecars) -> Value {
    let mut routes = Vec::new();
    let mut clusters = Vec::new();
    for d in &c.destinations {
        let to = SocketAddr::from((d.upstream.ip, d.upstream.port));
        for pod in &c.pods {
            let name = ClientSidecars::cluster_name(pod, d);
            routes.push(json!({
                "name": name,
                "match": { "prefix": ClientSidecars::route_prefix(&d.name, &pod.name) },
                "route": { "cluster": name, "prefix_rewrite": "/", "timeout": "0s" }
            }));
            let mut cluster = static_cluster(&name, &[to]);
            bind_source(&mut cluster, pod.ip);
            if let Some(identity) = &pod.identity {
                let alpn = if c.h2_upgrade { MTLS_H2_UPSTREAM_ALPNS } else { outbound_alpn(d.upstream.protocol) };
                cluster["transport_socket"] = outbound_upstream_tls(identity, &c.ca, &d.upstream, alpn);
            }
            if c.h2_upgrade {
                cluster = h2_cluster(cluster);
            }
            clusters.push(cluster);
        }
    }
    let ip = c.listen.ip().to_string();
    let stat_prefix = format!("outbound_{ip}_{}", c.listen.port());
    let pod_ips: Vec<String> = c.pods.iter().map(|p| p.ip.to_string()).collect();
    let ns = &c.namespace;
    json!({
        "node": {
            "id": format!("sidecar~{ip}~{}.{ns}~{ns}.svc.cluster.local", c.name),
            "cluster": format!("{}.{ns}", c.name),
            "metadata": {
                "NAMESPACE": ns,
                "NAME": c.name,
                // Every pod it stands for (Istio's list is comma-separated).
                "INSTANCE_IPS": pod_ips.join(","),
                "INTERCEPTION_MODE": "NONE",
            }
        },
        "admin": { "address": socket_addr(c.admin) },
        "layered_runtime": istio_runtime(),
        "static_resources": {
            "listeners": [{
                "name": format!("{ip}_{}", c.listen.port()),
                "address": socket_addr(c.listen),
                "traffic_direction": "OUTBOUND",
                "enable_reuse_port": false,
                "filter_chains": [{ "filters": [outbound_http_connection_manager(
                    &stat_prefix,
                    file_access_logs(c.access_log.as_deref(), &stat_prefix),
                    json!({ "name": c.listen.port().to_string(), "virtual_hosts": [{ "name": "calling-pods", "domains": ["*"], "routes": routes }] }),
                )] }]
            }],
            "clusters": clusters
        }
    })
}
