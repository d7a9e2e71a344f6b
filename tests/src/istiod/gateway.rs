//! `gateway.go`: an ingress gateway (a `router` proxy, not a sidecar): a plaintext HTTP
//! listener for browsers that routes everything to one in-mesh destination over Istio mTLS
//! with the gateway's own certificate. No Krites filter: the shipped WasmPlugins select
//! sidecars, and a gateway authorizes nothing here.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde_json::{json, Value};

use super::cluster::{bind_source, outbound_alpn, outbound_upstream_tls, static_cluster};
use super::listener_outbound::outbound_cluster_name;
use super::networkfilter::file_access_logs;
use super::{istio_runtime, socket, Protocol, Upstream, HCM_TYPE, ROUTER_TYPE};
use crate::pki::Identity;

/// What istiod knows about the gateway and its one route.
#[derive(Debug, Clone)]
pub struct Gateway {
    pub name: String,
    /// Its pod IP: the listener and admin bind here, and upstream connections come from here
    /// (the gateway shares the host's network, as the loopback rig's pods do).
    pub ip: Ipv4Addr,
    pub admin_port: u16,
    pub port: u16,
    /// The destination Service's host, e.g. `customer.default.svc.cluster.local`.
    pub upstream_host: String,
    pub upstream_endpoints: Vec<SocketAddr>,
    /// The SPIFFE id the destination must present.
    pub upstream_identity: String,
    /// The gateway's workload certificate
    /// (`spiffe://<td>/ns/istio-system/sa/istio-ingressgateway-service-account`).
    pub identity: Identity,
    pub ca: PathBuf,
    pub access_log: Option<PathBuf>,
}

pub fn build_gateway_bootstrap(g: &Gateway) -> Value {
    let port = g.upstream_endpoints.first().map_or(0, |e| e.port());
    let stat_prefix = format!("outbound_0.0.0.0_{}", g.port);
    let upstream = Upstream {
        host: g.upstream_host.clone(),
        ip: match g.upstream_endpoints.first().map(|e| e.ip()) {
            Some(IpAddr::V4(ip)) => ip,
            _ => Ipv4Addr::UNSPECIFIED,
        },
        port,
        protocol: Protocol::Http,
        identity: g.upstream_identity.clone(),
        endpoints: Vec::new(),
    };
    let cluster = outbound_cluster_name(&upstream);
    let mut tls_cluster = static_cluster(&cluster, &g.upstream_endpoints);
    bind_source(&mut tls_cluster, g.ip);
    tls_cluster["transport_socket"] =
        outbound_upstream_tls(&g.identity, &g.ca, &upstream, outbound_alpn(Protocol::Http));
    let ip = g.ip.to_string();
    json!({
        "node": {
            "id": format!("router~{ip}~{}.istio-system~istio-system.svc.cluster.local", g.name),
            "cluster": format!("{}.istio-system", g.name),
            "metadata": {
                "NAMESPACE": "istio-system",
                "SERVICE_ACCOUNT": "istio-ingressgateway-service-account",
                "LABELS": { "istio": "ingressgateway", "app": "istio-ingressgateway" },
                "NAME": g.name,
                "INSTANCE_IPS": ip,
            }
        },
        "admin": { "address": socket(&ip, g.admin_port) },
        "layered_runtime": istio_runtime(),
        "static_resources": {
            "listeners": [{
                "name": format!("{}_http", g.name),
                "address": socket(&ip, g.port),
                "enable_reuse_port": false,
                "traffic_direction": "OUTBOUND",
                "filter_chains": [{ "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": HCM_TYPE,
                        "stat_prefix": stat_prefix,
                        // A gateway faces clients directly: their address is the connection's,
                        // not a header's.
                        "use_remote_address": true,
                        "access_log": file_access_logs(g.access_log.as_deref(), &stat_prefix),
                        "route_config": {
                            "name": format!("http.{}", g.port),
                            "virtual_hosts": [{
                                "name": format!("{}:{port}", g.upstream_host),
                                "domains": ["*"],
                                "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": cluster, "timeout": "15s" } }]
                            }]
                        },
                        "http_filters": [{ "name": "envoy.filters.http.router", "typed_config": { "@type": ROUTER_TYPE } }]
                    }
                }] }]
            }],
            "clusters": [tls_cluster]
        }
    })
}
