//! `listener.go` (outbound): `virtualOutbound` on 15001 and the listeners per destination.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::httpfilters::krites_http_filter;
use super::networkfilter::{access_logs, krites_network_filter, tcp_proxy};
use super::{socket, CaptureMode, Protocol, Proxy, Upstream, OUTBOUND_PORT, PASSTHROUGH_CLUSTER, ROUTER_TYPE};

/// The outbound cluster name, `outbound|<port>||<host>`.
pub fn outbound_cluster_name(u: &Upstream) -> String {
    format!("outbound|{}||{}", u.port, u.host)
}

/// `virtualOutbound`'s catch-all chain (`VirtualOutboundCatchAllTCPFilterChainName`).
pub const VIRTUAL_OUTBOUND_CATCHALL_CHAIN: &str = "virtualOutbound-catchall-tcp";

/// Under capture: `virtualOutbound` and the listeners only `original_dst` reaches: a
/// `<pod IP>_<port>` listener per pod destination, a shared `0.0.0.0_<port>` per HTTP Service
/// port and a `<ClusterIP>_<port>` per TCP Service port. Without: an egress listener per
/// destination on the pod IP.
pub fn build_outbound_listeners(p: &Proxy) -> Vec<Value> {
    let mut listeners = Vec::new();
    let capture = p.capture == CaptureMode::Iptables;
    let local_ports: Vec<Option<u16>> = match &p.capture {
        CaptureMode::Iptables => {
            // `buildOutboundCatchAllNetworkFiltersOnly`: no WasmPlugin here (an EnvoyFilter
            // may add one: `Proxy::envoy_filters`).
            let catch_all = vec![tcp_proxy(PASSTHROUGH_CLUSTER, PASSTHROUGH_CLUSTER)];
            listeners.push(json!({
                "name": "virtualOutbound",
                "address": socket("0.0.0.0", OUTBOUND_PORT),
                "use_original_dst": true,
                "traffic_direction": "OUTBOUND",
                "filter_chains": [{ "name": VIRTUAL_OUTBOUND_CATCHALL_CHAIN, "filters": catch_all }]
            }));
            vec![None; p.outbound.len()]
        }
        CaptureMode::None { egress, .. } => egress.iter().map(|e| Some(e.port)).collect(),
    };
    // HTTP Service ports: one listener per port, a virtual host per Service.
    let mut http_services: BTreeMap<u16, Vec<&Upstream>> = BTreeMap::new();
    for (u, local_port) in p.outbound.iter().zip(local_ports) {
        if capture && u.is_service() && u.protocol == Protocol::Http {
            http_services.entry(u.port).or_default().push(u);
            continue;
        }
        let cluster = outbound_cluster_name(u);
        let name = format!("{}_{}", u.ip, u.port);
        let terminal = match u.protocol {
            Protocol::Tcp | Protocol::Auto => tcp_proxy(&cluster, &cluster),
            Protocol::Http => {
                let stat_prefix = format!("outbound_{name}");
                outbound_hcm_with_filters(
                    &stat_prefix,
                    access_logs(p, &stat_prefix),
                    json!({
                        "name": u.port.to_string(),
                        "virtual_hosts": [{
                            "name": format!("{}:{}", u.host, u.port),
                            "domains": ["*"],
                            "routes": [{ "name": "default", "match": { "prefix": "/" },
                                         "route": { "cluster": cluster, "timeout": "0s" } }]
                        }]
                    }),
                    build_outbound_http_filters(p),
                )
            }
        };
        let mut listener = json!({
            "name": name,
            "traffic_direction": "OUTBOUND",
            "filter_chains": [{ "filters": outbound_network_filters(p, terminal) }]
        });
        match local_port {
            None => {
                listener["address"] = socket(&u.ip.to_string(), u.port);
                listener["bind_to_port"] = json!(false);
            }
            Some(port) => {
                listener["address"] = socket(&p.ip.to_string(), port);
                listener["enable_reuse_port"] = json!(false);
            }
        }
        listeners.push(listener);
    }
    for (port, services) in http_services {
        listeners.push(outbound_http_service_listener(p, port, &services));
    }
    listeners
}

/// `0.0.0.0_<port>`: the HTTP Services on `port`, routed by `Host` (route config `<port>`),
/// then Istio's `allow_any` virtual host (`outboundTrafficPolicy: ALLOW_ANY`): a `Host` no
/// Service answers to goes to PassthroughCluster, the connection's original destination.
fn outbound_http_service_listener(p: &Proxy, port: u16, services: &[&Upstream]) -> Value {
    let mut virtual_hosts: Vec<Value> = services
        .iter()
        .map(|u| {
            json!({
                "name": format!("{}:{}", u.host, u.port),
                "domains": u.domains(),
                "routes": [{ "name": "default", "match": { "prefix": "/" },
                             "route": { "cluster": outbound_cluster_name(u), "timeout": "0s" } }]
            })
        })
        .collect();
    virtual_hosts.push(json!({
        "name": "allow_any",
        "domains": ["*"],
        "routes": [{ "name": "allow_any", "match": { "prefix": "/" },
                     "route": { "cluster": PASSTHROUGH_CLUSTER, "timeout": "0s" } }]
    }));
    let name = format!("0.0.0.0_{port}");
    let stat_prefix = format!("outbound_{name}");
    let hcm = outbound_hcm_with_filters(
        &stat_prefix,
        access_logs(p, &stat_prefix),
        json!({ "name": port.to_string(), "virtual_hosts": virtual_hosts, "validate_clusters": false }),
        build_outbound_http_filters(p),
    );
    json!({
        "name": name,
        "address": socket("0.0.0.0", port),
        "bind_to_port": false,
        "traffic_direction": "OUTBOUND",
        "filter_chains": [{ "filters": outbound_network_filters(p, hcm) }]
    })
}

/// `buildCompleteNetworkFilters` for the sidecar's outbound class: CLIENT-mode network Wasm
/// plugins (Krites NETWORK, AUTHN phase), then the terminal filter. Capture only (the
/// loopback rig's and benchmark's sidecars run no egress role).
fn outbound_network_filters(p: &Proxy, terminal: Value) -> Vec<Value> {
    let mut filters = Vec::new();
    if p.capture == CaptureMode::Iptables && p.authz.krites_network {
        filters.push(krites_network_filter(p));
    }
    filters.push(terminal);
    filters
}

/// `buildHTTPConnectionManager`'s HTTP filters for the outbound class: (metadata exchange,
/// absent here) CLIENT-mode HTTP Wasm plugins of the AUTHZ phase (Krites), then the router.
fn build_outbound_http_filters(p: &Proxy) -> Vec<Value> {
    let mut filters = Vec::new();
    if p.capture == CaptureMode::Iptables && p.authz.uses_http_plugin() {
        filters.push(krites_http_filter(p));
    }
    filters.push(json!({ "name": "envoy.filters.http.router", "typed_config": { "@type": ROUTER_TYPE } }));
    filters
}

/// The connection manager of a sidecar's outbound HTTP listener (`use_remote_address: false`,
/// as istiod sets it for outbound): the app's requests, routed by `route_config`.
pub fn outbound_http_connection_manager(stat_prefix: &str, access_log: Value, route_config: Value) -> Value {
    outbound_hcm_with_filters(
        stat_prefix,
        access_log,
        route_config,
        vec![json!({ "name": "envoy.filters.http.router", "typed_config": { "@type": ROUTER_TYPE } })],
    )
}

fn outbound_hcm_with_filters(stat_prefix: &str, access_log: Value, route_config: Value, http_filters: Vec<Value>) -> Value {
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": super::HCM_TYPE,
            "stat_prefix": stat_prefix,
            "use_remote_address": false,
            "access_log": access_log,
            "route_config": route_config,
            "http_filters": http_filters
        }
    })
}
