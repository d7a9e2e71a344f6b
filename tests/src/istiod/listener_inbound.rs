//! `listener_inbound.go`: the inbound listeners, their filter chains and listener filters.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};

use serde_json::{json, Value};

use super::filterchain_options::{
    filter_chain_match_options, FilterChainMatchOptions, ListenerProtocol, TLS,
};
use super::networkfilter::{
    build_inbound_network_filters, build_inbound_network_filters_for_http, tcp_proxy,
};
use super::{
    socket, CaptureMode, Protocol, Proxy, BLACKHOLE_CLUSTER,
    INBOUND_PASSTHROUGH_CLUSTER, INBOUND_PORT,
};

/// `inboundChainConfig`: one per Service target port, or a passthrough.
pub(crate) struct InboundChainConfig {
    /// 0 for passthrough.
    pub port: u16,
    pub protocol: Protocol,
    pub cluster_name: String,
    pub passthrough: bool,
}

impl InboundChainConfig {
    /// `Name(protocol)`.
    pub fn name(&self, protocol: ListenerProtocol) -> String {
        if self.passthrough {
            return match protocol {
                ListenerProtocol::Http => "virtualInbound-catchall-http".into(),
                ListenerProtocol::Tcp => "virtualInbound".into(),
            };
        }
        format!("0.0.0.0_{}", self.port)
    }

    /// `StatPrefix()` of the HTTP connection manager.
    pub fn http_stat_prefix(&self) -> String {
        if self.passthrough {
            return self.cluster_name.clone();
        }
        inbound_http_stat_prefix(self.port)
    }

    /// `ToFilterChainMatch(opt)`.
    fn to_filter_chain_match(&self, o: &FilterChainMatchOptions) -> Value {
        let mut m = json!({});
        if !o.transport_protocol.is_empty() {
            m["transport_protocol"] = json!(o.transport_protocol);
        }
        if !o.application_protocols.is_empty() {
            m["application_protocols"] = json!(o.application_protocols);
        }
        if self.passthrough {
            m["prefix_ranges"] = json!([{ "address_prefix": "0.0.0.0", "prefix_len": 0 }]);
        }
        if self.port > 0 {
            m["destination_port"] = json!(self.port);
        }
        m
    }
}

/// The stat prefix of a Service port's inbound connection manager (`http.<prefix>.*`),
/// shared by all its chains: `inbound_0.0.0.0_<port>`.
pub fn inbound_http_stat_prefix(port: u16) -> String {
    format!("inbound_0.0.0.0_{port}")
}

/// `model.BuildInboundSubsetKey(port)`.
pub fn inbound_cluster_name(port: u16) -> String {
    format!("inbound|{port}||")
}

/// `buildInboundListeners`: the single `virtualInbound` listener under iptables capture; one
/// listener per Service port on the pod IP without capture.
pub fn build_inbound_listeners(p: &Proxy) -> Vec<Value> {
    match p.capture {
        CaptureMode::Iptables => {
            let mut chains = Vec::new();
            for cc in build_inbound_chain_configs(p) {
                let opts = filter_chain_match_options(p.mtls_of(cc.port), cc.protocol);
                chains.extend(inbound_chain_for_opts(p, &cc, opts));
            }
            vec![inbound_virtual_listener(p, chains)]
        }
        CaptureMode::None { .. } => build_chain_configs_listeners(p),
    }
}

/// `interceptionMode: NONE`: a `Sidecar` ingress listener per port, on its bind address,
/// with the chains `virtualInbound` would have for that port.
fn build_chain_configs_listeners(p: &Proxy) -> Vec<Value> {
    p.inbound_ports()
        .into_iter()
        .map(|(port, protocol, _, bind)| {
            let cc = InboundChainConfig {
                port,
                protocol,
                cluster_name: inbound_cluster_name(port),
                passthrough: false,
            };
            let opts = filter_chain_match_options(p.mtls_of(port), protocol);
            let chains = inbound_chain_for_opts(p, &cc, opts);
            let bind = bind.unwrap_or(IpAddr::V4(p.ip));
            let mut address = socket(&bind.to_string(), port);
            if bind == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
                address["socket_address"]["ipv4_compat"] = json!(true);
            }
            json!({
                "name": format!("{bind}_{port}"),
                "address": address,
                "traffic_direction": "INBOUND",
                // Envoy binds with SO_REUSEPORT by default: two Envoys on one host picking the
                // same port would silently share it. Without, the second fails to start.
                "enable_reuse_port": false,
                "listener_filters": populate_listener_filters(&chains, false),
                "listener_filters_timeout": "0s",
                "continue_on_listener_filters_timeout": true,
                "filter_chains": chains,
            })
        })
        .collect()
}

/// One chain config per distinct Service target port, in port order.
fn build_inbound_chain_configs(p: &Proxy) -> Vec<InboundChainConfig> {
    p.inbound_ports()
        .into_iter()
        .map(|(port, protocol, _, _)| InboundChainConfig {
            port,
            protocol,
            cluster_name: inbound_cluster_name(port),
            passthrough: false,
        })
        .collect()
}

/// `inboundVirtualListener`: passthrough chains first, then the service chains.
fn inbound_virtual_listener(p: &Proxy, chains: Vec<Value>) -> Value {
    let mut all = build_inbound_passthrough_chains(p);
    all.extend(chains);
    let listener_filters = populate_listener_filters(&all, true);
    json!({
        "name": "virtualInbound",
        "address": socket("0.0.0.0", INBOUND_PORT),
        "traffic_direction": "INBOUND",
        "filter_chains": all,
        "listener_filters": listener_filters,
        // meshConfig.protocolDetectionTimeout defaults to 0s: no timeout.
        "listener_filters_timeout": "0s",
        "continue_on_listener_filters_timeout": true,
    })
}

/// `buildInboundPassthroughChains`: the blackhole chain for 15006 itself, then the
/// passthrough chains (ports no Service names) with the mode's auto-detect options.
fn build_inbound_passthrough_chains(p: &Proxy) -> Vec<Value> {
    let mut chains = vec![json!({
        "name": "virtualInbound-blackhole",
        "filter_chain_match": { "destination_port": INBOUND_PORT },
        "filters": [tcp_proxy(BLACKHOLE_CLUSTER, BLACKHOLE_CLUSTER)],
    })];
    let cc = InboundChainConfig {
        port: 0,
        protocol: Protocol::Auto,
        cluster_name: INBOUND_PASSTHROUGH_CLUSTER.into(),
        passthrough: true,
    };
    chains.extend(inbound_chain_for_opts(
        p,
        &cc,
        filter_chain_match_options(p.mtls, Protocol::Auto),
    ));
    chains
}

/// `inboundChainForOpts`.
fn inbound_chain_for_opts(
    p: &Proxy,
    cc: &InboundChainConfig,
    opts: &[FilterChainMatchOptions],
) -> Vec<Value> {
    opts.iter()
        .map(|o| {
            let filters = match o.protocol {
                ListenerProtocol::Http => build_inbound_network_filters_for_http(p, cc),
                ListenerProtocol::Tcp => build_inbound_network_filters(p, cc),
            };
            let mut chain = json!({
                "name": cc.name(o.protocol),
                "filter_chain_match": cc.to_filter_chain_match(o),
                "filters": filters,
            });
            if o.tls {
                chain["transport_socket"] = build_inbound_tls(p, o.protocol);
            }
            chain
        })
        .collect()
}

/// `populateListenerFilters`: `original_dst` (under capture), then the TLS and HTTP
/// inspectors where a chain needs them (per destination port, as Istio scopes them).
fn populate_listener_filters(chains: &[Value], original_dst: bool) -> Vec<Value> {
    // port (0: passthrough) -> (needs TLS, needs HTTP)
    let mut inspectors: BTreeMap<u64, (bool, bool)> = BTreeMap::new();
    for fc in chains {
        let m = &fc["filter_chain_match"];
        let port = m["destination_port"].as_u64().unwrap_or(0);
        let tls = m["transport_protocol"] == TLS;
        let http = m["application_protocols"]
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p == "http/1.1" || p == "h2c"));
        let e = inspectors.entry(port).or_default();
        e.0 |= tls;
        e.1 |= http;
    }
    let mut lf = Vec::new();
    if original_dst {
        lf.push(json!({
            "name": "envoy.filters.listener.original_dst",
            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst" }
        }));
    }
    if inspectors.values().any(|i| i.0) {
        let mut f = json!({
            "name": "envoy.filters.listener.tls_inspector",
            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector" }
        });
        if let Some(d) = inspector_disabled(&inspectors, |i| i.0) {
            f["filter_disabled"] = d;
        }
        lf.push(f);
    }
    // After the TLS inspector: on TLS it does not look.
    if inspectors.values().any(|i| i.1) {
        let mut f = json!({
            "name": "envoy.filters.listener.http_inspector",
            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector" }
        });
        if let Some(d) = inspector_disabled(&inspectors, |i| i.1) {
            f["filter_disabled"] = d;
        }
        lf.push(f);
    }
    lf
}

/// `buildTLSInspector` / `buildHTTPInspector`: if the passthrough (port 0) needs the
/// inspector, disable it on the ports that don't; else enable it only where needed.
fn inspector_disabled(
    inspectors: &BTreeMap<u64, (bool, bool)>,
    needs: impl Fn(&(bool, bool)) -> bool,
) -> Option<Value> {
    let passthrough = inspectors.get(&0).is_some_and(&needs);
    let ports: Vec<u64> = inspectors
        .iter()
        .filter(|(port, i)| **port != 0 && needs(i) != passthrough)
        .map(|(port, _)| *port)
        .collect();
    if ports.is_empty() {
        return None;
    }
    let ranges: Vec<Value> = ports
        .iter()
        .map(|p| json!({ "destination_port_range": { "start": p, "end": p + 1 } }))
        .collect();
    let matched = if ranges.len() == 1 {
        ranges[0].clone()
    } else {
        json!({ "or_match": { "rules": ranges } })
    };
    Some(if passthrough {
        matched
    } else {
        json!({ "not_match": matched })
    })
}

/// `BuildInboundTLS` as a transport socket: a client certificate is required and its URI
/// SAN must be under `spiffe://<trust domain>/`; ALPN as Istio offers it per protocol.
pub(crate) fn build_inbound_tls(p: &Proxy, protocol: ListenerProtocol) -> Value {
    let alpn: &[&str] = match protocol {
        ListenerProtocol::Tcp => &["istio-peer-exchange", "h2", "http/1.1"],
        ListenerProtocol::Http => &["h2", "http/1.1"],
    };
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
            "common_tls_context": {
                "alpn_protocols": alpn,
                "tls_params": { "tls_minimum_protocol_version": "TLSv1_2" },
                "tls_certificates": [{
                    "certificate_chain": { "filename": p.identity.cert },
                    "private_key": { "filename": p.identity.key }
                }],
                "validation_context": {
                    "trusted_ca": { "filename": p.ca },
                    "match_typed_subject_alt_names": [
                        { "san_type": "URI", "matcher": { "prefix": format!("spiffe://{}/", p.trust_domain) } }
                    ]
                }
            }
        }
    })
}
