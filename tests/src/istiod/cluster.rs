//! `cluster_builder.go`: inbound, passthrough and outbound mTLS clusters.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use serde_json::{json, Value};

use super::filterchain_options::MTLS_TCP_ALPNS;
use crate::pki::Identity;
use super::httpfilters::EXT_AUTHZ_CLUSTER;
use super::listener_inbound::inbound_cluster_name;
use super::listener_outbound::outbound_cluster_name;
use super::{
    socket_addr, CaptureMode, EgressListener, HttpAuthz, InboundEndpoint, Protocol, Proxy, Upstream,
    BLACKHOLE_CLUSTER, INBOUND_PASSTHROUGH_BIND, INBOUND_PASSTHROUGH_CLUSTER, PASSTHROUGH_CLUSTER,
};

const H2_OPTIONS: &str =
    "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

pub fn build_clusters(p: &Proxy) -> Vec<Value> {
    let mut clusters = Vec::new();
    for (port, _, endpoint, _) in p.inbound_ports() {
        let name = inbound_cluster_name(port);
        clusters.push(match endpoint {
            InboundEndpoint::OriginalDst => inbound_original_dst_cluster(&name),
            InboundEndpoint::Address(a) => static_cluster(&name, &[a]),
            // Only TCP chains would use it: nothing to reach.
            InboundEndpoint::Echo | InboundEndpoint::Ok => {
                json!({ "name": name, "type": "STATIC", "connect_timeout": "10s" })
            }
        });
    }
    if p.capture == CaptureMode::Iptables {
        clusters.push(inbound_original_dst_cluster(INBOUND_PASSTHROUGH_CLUSTER));
        clusters.push(json!({
            "name": PASSTHROUGH_CLUSTER,
            "type": "ORIGINAL_DST",
            "lb_policy": "CLUSTER_PROVIDED",
            "connect_timeout": "10s",
        }));
    }
    clusters.push(json!({ "name": BLACKHOLE_CLUSTER, "type": "STATIC", "connect_timeout": "10s" }));
    for (i, u) in p.outbound.iter().enumerate() {
        let egress = match &p.capture {
            CaptureMode::Iptables => None,
            CaptureMode::None { egress, .. } => egress.get(i),
        };
        clusters.push(outbound_mtls_cluster(p, u, egress));
    }
    if let HttpAuthz::ExtAuthz(addr) = p.authz.http {
        clusters.push(h2_cluster(static_cluster(EXT_AUTHZ_CLUSTER, &[addr])));
    }
    clusters
}

/// Istio's inbound clusters: to the original destination (pod IP : container port), from
/// 127.0.0.6, which `ISTIO_OUTPUT` never redirects.
fn inbound_original_dst_cluster(name: &str) -> Value {
    json!({
        "name": name,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "10s",
        "cleanup_interval": "60s",
        "upstream_bind_config": { "source_address": { "address": INBOUND_PASSTHROUGH_BIND, "port_value": 0 } }
    })
}

/// A `Sidecar` ingress listener's `defaultEndpoint`, or an extension provider's address.
pub fn static_cluster(name: &str, to: &[SocketAddr]) -> Value {
    let lb_endpoints: Vec<Value> = to
        .iter()
        .map(|a| json!({ "endpoint": { "address": socket_addr(*a) } }))
        .collect();
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "10s",
        "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": lb_endpoints }] }
    })
}

/// HTTP/2 to the upstream (gRPC needs it).
pub fn h2_cluster(mut cluster: Value) -> Value {
    cluster["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": H2_OPTIONS,
            "explicit_http_config": { "http2_protocol_options": {} }
        }
    });
    cluster
}

/// What `istio.alpn` makes a client sidecar offer to an in-mesh upstream it speaks HTTP/2 to
/// (`mtlsHTTP2ALPN`: an `http2`/`grpc` port, or `h2UpgradePolicy: UPGRADE`). The server's
/// PERMISSIVE HTTP chain matches `istio-h2`; no ALPN is agreed (the server offers `h2` and
/// `http/1.1`), and its `AUTO` codec finds HTTP/2 by the preface.
pub const MTLS_H2_UPSTREAM_ALPNS: &[&str] = &["istio-h2", "istio"];

/// The ALPN a client sidecar offers to an in-mesh upstream of `protocol`.
pub fn outbound_alpn(protocol: Protocol) -> &'static [&'static str] {
    match protocol {
        // What istio.alpn sets for an HTTP/1.1 upstream.
        Protocol::Http => &["istio-http/1.1"],
        // util.ALPNInMeshWithMxc
        Protocol::Tcp | Protocol::Auto => MTLS_TCP_ALPNS,
    }
}

/// Istio mTLS from the client sidecar: its own certificate, the server's SPIFFE id checked,
/// Istio's in-mesh ALPN. Without capture the pod IP is bound as the source (on a shared
/// host the kernel would pick another local address).
fn outbound_mtls_cluster(p: &Proxy, u: &Upstream, egress: Option<&EgressListener>) -> Value {
    let name = outbound_cluster_name(u);
    let endpoints = match egress {
        Some(e) => e.endpoints.clone(),
        None if u.is_service() => u.endpoints.clone(),
        None => vec![SocketAddr::from((u.ip, u.port))],
    };
    let mut cluster = static_cluster(&name, &endpoints);
    cluster["transport_socket"] = outbound_upstream_tls(&p.identity, &p.ca, u, outbound_alpn(u.protocol));
    if let CaptureMode::None { .. } = p.capture {
        bind_source(&mut cluster, p.ip);
    }
    cluster
}

/// `outbound_.<port>_._.<host>`: the SNI of Istio's outbound mTLS to a Service port.
pub fn outbound_sni(u: &Upstream) -> String {
    format!("outbound_.{}_._.{}", u.port, u.host)
}

/// The transport socket of Istio's outbound cluster to `u`: the caller's certificate, the
/// outbound SNI, `alpn`, and `u`'s SPIFFE id checked exactly.
pub fn outbound_upstream_tls(identity: &Identity, ca: &Path, u: &Upstream, alpn: &[&str]) -> Value {
    upstream_tls(identity, ca, &outbound_sni(u), alpn, &u.identity)
}

/// Connections of `cluster` leave from `ip` (a pod sharing the host's network: the kernel
/// would pick another local address).
pub fn bind_source(cluster: &mut Value, ip: Ipv4Addr) {
    cluster["upstream_bind_config"] = json!({ "source_address": { "address": ip.to_string(), "port_value": 0 } });
}

/// The client side of Istio mTLS: the workload's certificate, the CA, the server's exact
/// SPIFFE id.
pub fn upstream_tls(
    identity: &Identity,
    ca: &Path,
    sni: &str,
    alpn: &[&str],
    server_identity: &str,
) -> Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": sni,
            "common_tls_context": {
                "alpn_protocols": alpn,
                "tls_certificates": [{
                    "certificate_chain": { "filename": identity.cert },
                    "private_key": { "filename": identity.key }
                }],
                "validation_context": {
                    "trusted_ca": { "filename": ca },
                    "match_typed_subject_alt_names": [
                        { "san_type": "URI", "matcher": { "exact": server_identity } }
                    ]
                }
            }
        }
    })
}
