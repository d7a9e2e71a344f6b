//! A sidecar's Envoy configuration as istiod builds it, as one static bootstrap.
//!
//! Named and shaped after istio/istio `pilot/pkg/networking/core` (1.28): `listener_inbound.go`
//! (`buildInboundListeners`, `inboundVirtualListener`, `buildInboundPassthroughChains`,
//! `populateListenerFilters`), `filterchain_options.go` (the match options per mTLS mode and
//! port protocol), `networkfilter.go` (`buildInboundNetworkFilters`), `listener_builder.go`
//! (HTTP filter order, path normalisation), `pkg/bootstrap/config.go` (node metadata, the
//! static runtime layer) and `pkg/wasm` / `pilot/pkg/model/extensions.go` (ECDS, the
//! `pluginConfig` transform). See shared/reference/istio-sidecar.md.
//!
//! What differs from a real sidecar, and why:
//! - Everything is static (no ADS): listeners and clusters in the bootstrap, the Krites HTTP
//!   plugin by ECDS from a watched file. The NETWORK plugin is inline: Istio delivers it by
//!   ECDS too, but it carries no configuration, so inline is the same filter.
//! - No `istio.metadata_exchange` / `peer_metadata` / `istio.stats` / `istio.alpn` filters:
//!   they exist only in istio-proxy's Envoy build. So Krites is first on every chain here
//!   (after the peer-metadata filter in Istio), and the outbound HTTP cluster offers ALPN
//!   `istio-http/1.1` from its own TLS context instead of through `istio.alpn`.
//! - No Service VIPs or EDS: a client's outbound listener per destination is
//!   `<pod IP>_<port>` (`bind_to_port: false`, picked by `virtualOutbound`'s original
//!   destination) and its cluster is STATIC to the pod.
//! - Admin on 127.0.0.1:15000 as in Istio; no 15021/15090 listeners (nothing probes them).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::pki::Identity;

const WASM_HTTP_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const RBAC_HTTP_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

/// `mtlsHTTPALPNs`: a client sidecar that detected HTTP.
pub const MTLS_HTTP_ALPNS: &[&str] = &["istio-http/1.0", "istio-http/1.1", "istio-h2"];
/// `plaintextHTTPALPNs`: what `http_inspector` reports for plaintext HTTP.
pub const PLAINTEXT_HTTP_ALPNS: &[&str] = &["http/1.0", "http/1.1", "h2c"];
/// `mtlsTCPWithMxcALPNs` (`listener.go:94`): a client sidecar's TCP.
pub const MTLS_TCP_ALPNS: &[&str] = &["istio-peer-exchange", "istio"];

/// The inbound capture port (`ProxyInboundListenPort`).
pub const INBOUND_PORT: u16 = 15006;
/// The outbound capture port.
pub const OUTBOUND_PORT: u16 = 15001;
/// Envoy's admin port in a sidecar (localhost only).
pub const ADMIN_PORT: u16 = 15000;
/// Istio's sidecar uid and gid.
pub const PROXY_UID: u32 = 1337;

pub const INBOUND_PASSTHROUGH_CLUSTER: &str = "InboundPassthroughCluster";
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";
/// The source of the sidecar -> application hop (`InboundPassthroughBindIpv4`).
pub const INBOUND_PASSTHROUGH_BIND: &str = "127.0.0.6";

/// PeerAuthentication mode of the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtlsMode {
    Strict,
    Permissive,
}

/// A port's protocol as the Service declares it (`http-*` name or `appProtocol`, `tcp-*`,
/// or anything else: auto-detected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Tcp,
    Auto,
}

/// A listener protocol after `ModelProtocolToListenerProtocol` and option splitting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListenerProtocol {
    Http,
    Tcp,
}

/// `meshConfig.pathNormalization.normalization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathNormalization {
    None,
    /// `DEFAULT` is `BASE`.
    #[default]
    Base,
    MergeSlashes,
    DecodeAndMergeSlashes,
}

/// A container port (`.spec.containers[].ports[]`), as `POD_PORTS` carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPort {
    pub name: String,
    pub port: u16,
    /// Declared by a Service whose target port this is; `None`: no Service names it
    /// (traffic to it takes the passthrough chains).
    pub service: Option<Protocol>,
}

impl ContainerPort {
    pub fn new(name: &str, port: u16, service: Option<Protocol>) -> ContainerPort {
        ContainerPort {
            name: name.to_string(),
            port,
            service,
        }
    }
}

/// A destination a client pod's app calls through its sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The Service host, e.g. `database.default.svc.cluster.local`.
    pub host: String,
    pub ip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    /// The server's SPIFFE id, checked as the client sidecar checks it.
    pub identity: String,
}

/// Files the sidecar reads and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyFiles {
    pub ecds: PathBuf,
    pub ecds_dir: PathBuf,
    pub access_log: PathBuf,
}

/// Everything istiod and pilot-agent know about one sidecar (`model.Proxy` and its push).
#[derive(Debug, Clone)]
pub struct Proxy {
    pub pod_name: String,
    pub namespace: String,
    pub service_account: String,
    /// The pod's labels as Kubernetes has them (`pod-template-hash` included: it is
    /// dropped here, as pilot-agent drops it).
    pub labels: BTreeMap<String, String>,
    pub ip: Ipv4Addr,
    pub ports: Vec<ContainerPort>,
    pub mtls: MtlsMode,
    pub path_normalization: PathNormalization,
    pub trust_domain: String,
    pub identity: Identity,
    pub ca: PathBuf,
    /// The Krites module; `None` builds the sidecar without Krites.
    pub wasm: Option<PathBuf>,
    pub outbound: Vec<Upstream>,
    pub files: ProxyFiles,
}

/// The WasmPlugin's namespace and name, as the shipped manifests have them.
pub const PLUGIN_NAMESPACE: &str = "istio-system";

/// The ECDS resource name of WasmPlugin `<ns>.<name>` in Istio 1.26-1.29.
pub fn ecds_resource_name(namespace: &str, name: &str) -> String {
    format!("extensions.istio.io/wasmplugin/{namespace}.{name}")
}

/// The bootstrap: node, admin, static runtime, listeners and clusters.
pub fn build_sidecar_bootstrap(p: &Proxy) -> Value {
    let mut listeners = build_inbound_listeners(p);
    listeners.extend(build_outbound_listeners(p));
    json!({
        "node": build_node(p),
        "admin": {
            "address": socket("127.0.0.1", ADMIN_PORT),
        },
        // pkg/bootstrap/config.go: Istio's static runtime layer, then the admin layer.
        "layered_runtime": { "layers": [
            { "name": "global config", "static_layer": {
                "envoy.reloadable_features.http_reject_path_with_fragment": false,
                "re2.max_program_size.error_level": 32768,
            } },
            { "name": "admin", "admin_layer": {} }
        ] },
        "static_resources": { "listeners": listeners, "clusters": build_clusters(p) }
    })
}

/// Node metadata as pilot-agent writes it (`pkg/bootstrap/config.go`, `pkg/model/proxy.go`).
pub fn build_node(p: &Proxy) -> Value {
    let ns = &p.namespace;
    let app = p
        .labels
        .get("app")
        .cloned()
        .unwrap_or_else(|| p.pod_name.clone());
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
            "INTERCEPTION_MODE": "REDIRECT",
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

// ---------------------------------------------------------------------------------------
// filterchain_options.go

/// `FilterChainMatchOptions`.
#[derive(Debug, Clone, Copy)]
struct FilterChainMatchOptions {
    application_protocols: &'static [&'static str],
    /// `tls` or `raw_buffer`.
    transport_protocol: &'static str,
    protocol: ListenerProtocol,
    /// Terminate mTLS on this chain.
    tls: bool,
}

const fn opt(
    alpn: &'static [&'static str],
    transport: &'static str,
    protocol: ListenerProtocol,
    tls: bool,
) -> FilterChainMatchOptions {
    FilterChainMatchOptions {
        application_protocols: alpn,
        transport_protocol: transport,
        protocol,
        tls,
    }
}

const TLS: &str = "tls";
const RAW: &str = "raw_buffer";
const NONE: &[&str] = &[];

/// `getFilterChainMatchOptions(mtls, protocol)`.
fn filter_chain_match_options(
    mode: MtlsMode,
    protocol: Protocol,
) -> &'static [FilterChainMatchOptions] {
    use ListenerProtocol::{Http, Tcp};
    const STRICT_AUTO: &[FilterChainMatchOptions] = &[
        // inboundStrictFilterChainMatchOptions
        opt(MTLS_HTTP_ALPNS, TLS, Http, true),
        opt(NONE, TLS, Tcp, true),
    ];
    const STRICT_HTTP: &[FilterChainMatchOptions] = &[opt(NONE, TLS, Http, true)];
    const STRICT_TCP: &[FilterChainMatchOptions] = &[opt(NONE, TLS, Tcp, true)];
    const PERMISSIVE_AUTO: &[FilterChainMatchOptions] = &[
        // inboundPermissiveFilterChainMatchWithMxcOptions
        opt(MTLS_HTTP_ALPNS, TLS, Http, true),
        opt(PLAINTEXT_HTTP_ALPNS, RAW, Http, false),
        opt(MTLS_TCP_ALPNS, TLS, Tcp, true),
        opt(NONE, RAW, Tcp, false),
        // One-way TLS from a client without a sidecar: passed through, not terminated.
        opt(NONE, TLS, Tcp, false),
    ];
    const PERMISSIVE_HTTP: &[FilterChainMatchOptions] = &[
        opt(MTLS_HTTP_ALPNS, TLS, Http, true),
        opt(NONE, RAW, Http, false),
    ];
    const PERMISSIVE_TCP: &[FilterChainMatchOptions] = &[
        opt(MTLS_TCP_ALPNS, TLS, Tcp, true),
        opt(NONE, TLS, Tcp, false),
        opt(NONE, RAW, Tcp, false),
    ];
    match (mode, protocol) {
        (MtlsMode::Strict, Protocol::Auto) => STRICT_AUTO,
        (MtlsMode::Strict, Protocol::Http) => STRICT_HTTP,
        (MtlsMode::Strict, Protocol::Tcp) => STRICT_TCP,
        (MtlsMode::Permissive, Protocol::Auto) => PERMISSIVE_AUTO,
        (MtlsMode::Permissive, Protocol::Http) => PERMISSIVE_HTTP,
        (MtlsMode::Permissive, Protocol::Tcp) => PERMISSIVE_TCP,
    }
}

// ---------------------------------------------------------------------------------------
// listener_inbound.go

/// `inboundChainConfig`: one per Service target port, or a passthrough.
struct InboundChainConfig {
    /// 0 for passthrough.
    port: u16,
    protocol: Protocol,
    cluster_name: String,
    passthrough: bool,
}

impl InboundChainConfig {
    /// `Name(protocol)`.
    fn name(&self, protocol: ListenerProtocol) -> String {
        if self.passthrough {
            return match protocol {
                ListenerProtocol::Http => "virtualInbound-catchall-http".into(),
                ListenerProtocol::Tcp => "virtualInbound".into(),
            };
        }
        format!("0.0.0.0_{}", self.port)
    }

    /// `StatPrefix()` of the HTTP connection manager.
    fn http_stat_prefix(&self) -> String {
        if self.passthrough {
            return self.cluster_name.clone();
        }
        format!("inbound_{}", self.name(ListenerProtocol::Http))
    }

    /// `ToFilterChainMatch(opt)`.
    fn to_filter_chain_match(&self, o: &FilterChainMatchOptions) -> Value {
        let mut m = json!({ "transport_protocol": o.transport_protocol });
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

/// `model.BuildInboundSubsetKey(port)`.
pub fn inbound_cluster_name(port: u16) -> String {
    format!("inbound|{port}||")
}

/// `buildInboundListeners`: the single `virtualInbound` listener.
pub fn build_inbound_listeners(p: &Proxy) -> Vec<Value> {
    let mut chains = Vec::new();
    for cc in build_inbound_chain_configs(p) {
        let opts = filter_chain_match_options(p.mtls, cc.protocol);
        chains.extend(inbound_chain_for_opts(p, &cc, opts));
    }
    vec![inbound_virtual_listener(p, chains)]
}

/// One chain config per distinct Service target port, in port order.
fn build_inbound_chain_configs(p: &Proxy) -> Vec<InboundChainConfig> {
    let mut by_port: BTreeMap<u16, Protocol> = BTreeMap::new();
    for c in &p.ports {
        if let Some(protocol) = c.service {
            by_port.entry(c.port).or_insert(protocol);
        }
    }
    by_port
        .into_iter()
        .map(|(port, protocol)| InboundChainConfig {
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
    let listener_filters = populate_listener_filters(&all);
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

/// `populateListenerFilters`: `original_dst`, then the TLS and HTTP inspectors where a chain
/// needs them (per destination port, as Istio scopes them).
fn populate_listener_filters(chains: &[Value]) -> Vec<Value> {
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
    let mut lf = vec![json!({
        "name": "envoy.filters.listener.original_dst",
        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst" }
    })];
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
fn build_inbound_tls(p: &Proxy, protocol: ListenerProtocol) -> Value {
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

// ---------------------------------------------------------------------------------------
// networkfilter.go

/// Krites' NETWORK plugin (`type: NETWORK`, phase AUTHN): the same module, root id
/// `krites_peer_address`. Inline here; Istio sends it by ECDS under
/// `extensions.istio.io/wasmplugin/istio-system.krites-peer-address` with the same content.
fn krites_network_filter(wasm: &Path) -> Value {
    json!({
        "name": format!("{PLUGIN_NAMESPACE}.krites-peer-address"),
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm",
            "config": {
                "name": format!("{PLUGIN_NAMESPACE}.krites-peer-address"),
                "root_id": "krites_peer_address",
                "vm_config": { "runtime": "envoy.wasm.runtime.v8", "code": { "local": { "filename": wasm } } },
                "failure_policy": "FAIL_CLOSED"
            }
        }
    })
}

fn tcp_proxy(stat_prefix: &str, cluster: &str) -> Value {
    json!({
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": { "@type": TCP_PROXY_TYPE, "stat_prefix": stat_prefix, "cluster": cluster }
    })
}

/// `tcp_proxy` with Istio's TCP access log.
fn tcp_proxy_logged(stat_prefix: &str, cluster: &str, log: &Path) -> Value {
    let mut f = tcp_proxy(stat_prefix, cluster);
    f["typed_config"]["access_log"] = json!([access_log(log, stat_prefix)]);
    f
}

/// `buildInboundNetworkFilters`: network Wasm plugins, then `tcp_proxy` to the app.
fn build_inbound_network_filters(p: &Proxy, cc: &InboundChainConfig) -> Vec<Value> {
    let mut filters = Vec::new();
    if let Some(wasm) = &p.wasm {
        filters.push(krites_network_filter(wasm));
    }
    filters.push(tcp_proxy_logged(
        &cc.cluster_name,
        &cc.cluster_name,
        &p.files.access_log,
    ));
    filters
}

/// `buildInboundNetworkFiltersForHTTP`: network Wasm plugins, then the HCM.
fn build_inbound_network_filters_for_http(p: &Proxy, cc: &InboundChainConfig) -> Vec<Value> {
    let mut filters = Vec::new();
    if let Some(wasm) = &p.wasm {
        filters.push(krites_network_filter(wasm));
    }
    filters.push(build_sidecar_inbound_hcm(p, cc));
    filters
}

/// `buildSidecarInboundHTTPOpts` + `buildHTTPConnectionManager` for an inbound chain.
fn build_sidecar_inbound_hcm(p: &Proxy, cc: &InboundChainConfig) -> Value {
    let stat_prefix = cc.http_stat_prefix();
    let port = if cc.passthrough {
        "*".to_string()
    } else {
        cc.port.to_string()
    };
    let mut tc = json!({
        "@type": HCM_TYPE,
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",
        "server_name": "istio-envoy",
        "use_remote_address": false,
        "forward_client_cert_details": "APPEND_FORWARD",
        "set_current_client_cert_details": { "subject": true, "dns": true, "uri": true },
        "normalize_path": p.path_normalization != PathNormalization::None,
        "stream_idle_timeout": "0s",
        "upgrade_configs": [{ "upgrade_type": "websocket" }],
        "access_log": [access_log(&p.files.access_log, &stat_prefix)],
        "route_config": {
            "name": cc.cluster_name,
            "validate_clusters": false,
            "virtual_hosts": [{
                "name": format!("inbound|http|{port}"),
                "domains": ["*"],
                "routes": [{
                    "name": "default",
                    "match": { "prefix": "/" },
                    "route": { "cluster": cc.cluster_name, "timeout": "0s",
                               "max_stream_duration": { "max_stream_duration": "0s", "grpc_timeout_header_max": "0s" } },
                    "decorator": { "operation": format!(":{port}/*") }
                }]
            }]
        },
        "http_filters": build_inbound_http_filters(p),
    });
    match p.path_normalization {
        PathNormalization::None | PathNormalization::Base => {}
        PathNormalization::MergeSlashes => tc["merge_slashes"] = json!(true),
        PathNormalization::DecodeAndMergeSlashes => {
            tc["merge_slashes"] = json!(true);
            tc["path_with_escaped_slashes_action"] = json!("UNESCAPE_AND_FORWARD");
        }
    }
    json!({ "name": "envoy.filters.network.http_connection_manager", "typed_config": tc })
}

/// `listener_builder.go`: (peer metadata, absent here) AUTHN/AUTHZ Wasm, RBAC, router.
fn build_inbound_http_filters(p: &Proxy) -> Vec<Value> {
    let mut filters = Vec::new();
    if p.wasm.is_some() {
        let name = ecds_resource_name(PLUGIN_NAMESPACE, "krites");
        filters.push(json!({
            "name": name,
            "config_discovery": {
                "config_source": {
                    "resource_api_version": "V3",
                    "initial_fetch_timeout": "0s",
                    "path_config_source": {
                        "path": p.files.ecds,
                        "watched_directory": { "path": p.files.ecds_dir }
                    }
                },
                // With FAIL_CLOSE, Istio >= 1.25 may substitute an RBAC deny-all.
                "type_urls": [WASM_HTTP_TYPE, RBAC_HTTP_TYPE]
            }
        }));
    }
    // Stands for an AuthorizationPolicy: an ALLOW policy that allows everything.
    filters.push(json!({
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": RBAC_HTTP_TYPE,
            "rules": { "action": "ALLOW", "policies": { "ns[default]-policy[allow-all]-rule[0]": {
                "permissions": [{ "any": true }], "principals": [{ "any": true }]
            } } }
        }
    }));
    filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" }
    }));
    filters
}

fn access_log(path: &Path, prefix: &str) -> Value {
    json!({
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": path,
            "log_format": { "text_format_source": { "inline_string": format!(
                "[%START_TIME%] {prefix} chain=%FILTER_CHAIN_NAME% %DOWNSTREAM_REMOTE_ADDRESS% -> %DOWNSTREAM_LOCAL_ADDRESS% \"%REQ(:METHOD)% %REQ(:PATH)%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% sni=%REQUESTED_SERVER_NAME% tls=%DOWNSTREAM_TLS_VERSION% peer=%DOWNSTREAM_PEER_URI_SAN% upstream=%UPSTREAM_HOST% via=%UPSTREAM_LOCAL_ADDRESS%\n"
            ) } }
        }
    })
}

// ---------------------------------------------------------------------------------------
// Outbound: virtualOutbound on 15001 and one listener per destination.

/// The outbound cluster name, `outbound|<port>||<host>`.
pub fn outbound_cluster_name(u: &Upstream) -> String {
    format!("outbound|{}||{}", u.port, u.host)
}

fn build_outbound_listeners(p: &Proxy) -> Vec<Value> {
    let mut listeners = vec![json!({
        "name": "virtualOutbound",
        "address": socket("0.0.0.0", OUTBOUND_PORT),
        "use_original_dst": true,
        "traffic_direction": "OUTBOUND",
        "filter_chains": [{
            "name": "virtualOutbound-catchall-tcp",
            "filters": [tcp_proxy(PASSTHROUGH_CLUSTER, PASSTHROUGH_CLUSTER)]
        }]
    })];
    for u in &p.outbound {
        let cluster = outbound_cluster_name(u);
        let name = format!("{}_{}", u.ip, u.port);
        let filter = match u.protocol {
            Protocol::Tcp | Protocol::Auto => tcp_proxy(&cluster, &cluster),
            Protocol::Http => json!({
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": HCM_TYPE,
                    "stat_prefix": format!("outbound_{name}"),
                    "use_remote_address": false,
                    "access_log": [access_log(&p.files.access_log, &format!("outbound_{name}"))],
                    "route_config": {
                        "name": u.port.to_string(),
                        "virtual_hosts": [{
                            "name": format!("{}:{}", u.host, u.port),
                            "domains": ["*"],
                            "routes": [{ "name": "default", "match": { "prefix": "/" },
                                         "route": { "cluster": cluster, "timeout": "0s" } }]
                        }]
                    },
                    "http_filters": [{
                        "name": "envoy.filters.http.router",
                        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" }
                    }]
                }
            }),
        };
        listeners.push(json!({
            "name": name,
            "address": socket(&u.ip.to_string(), u.port),
            "bind_to_port": false,
            "traffic_direction": "OUTBOUND",
            "filter_chains": [{ "filters": [filter] }]
        }));
    }
    listeners
}

// ---------------------------------------------------------------------------------------
// Clusters.

fn build_clusters(p: &Proxy) -> Vec<Value> {
    let mut clusters = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for c in &p.ports {
        if c.service.is_some() && seen.insert(c.port) {
            clusters.push(inbound_original_dst_cluster(&inbound_cluster_name(c.port)));
        }
    }
    clusters.push(inbound_original_dst_cluster(INBOUND_PASSTHROUGH_CLUSTER));
    clusters.push(json!({
        "name": PASSTHROUGH_CLUSTER,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "10s",
    }));
    clusters.push(json!({ "name": BLACKHOLE_CLUSTER, "type": "STATIC", "connect_timeout": "10s" }));
    for u in &p.outbound {
        clusters.push(outbound_mtls_cluster(p, u));
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

/// Istio mTLS from the client sidecar: its own certificate, the server's SPIFFE id checked,
/// Istio's in-mesh ALPN.
fn outbound_mtls_cluster(p: &Proxy, u: &Upstream) -> Value {
    let name = outbound_cluster_name(u);
    let alpn: &[&str] = match u.protocol {
        // What istio.alpn sets for an HTTP/1.1 upstream.
        Protocol::Http => &["istio-http/1.1"],
        // util.ALPNInMeshWithMxc
        Protocol::Tcp | Protocol::Auto => MTLS_TCP_ALPNS,
    };
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "10s",
        "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": [
            { "endpoint": { "address": socket(&u.ip.to_string(), u.port) } }
        ] }] },
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": format!("outbound_.{}_._.{}", u.port, u.host),
                "common_tls_context": {
                    "alpn_protocols": alpn,
                    "tls_certificates": [{
                        "certificate_chain": { "filename": p.identity.cert },
                        "private_key": { "filename": p.identity.key }
                    }],
                    "validation_context": {
                        "trusted_ca": { "filename": p.ca },
                        "match_typed_subject_alt_names": [
                            { "san_type": "URI", "matcher": { "exact": u.identity } }
                        ]
                    }
                }
            }
        }
    })
}

fn socket(ip: &str, port: u16) -> Value {
    json!({ "socket_address": { "address": ip, "port_value": port } })
}

// ---------------------------------------------------------------------------------------
// WasmPlugin -> ECDS (pkg/wasm/convert.go, pilot/pkg/model/extensions.go)

/// The ECDS file carrying WasmPlugin `istio-system/krites` (`version` must grow per update).
/// `plugin_config` is the WasmPlugin's `pluginConfig` as the user wrote it (JSON); it goes
/// through [`plugin_config_transform`] as istiod sends it.
pub fn build_ecds(version: u64, wasm: &Path, plugin_config: &str) -> Result<Value> {
    let configuration = plugin_config_transform(plugin_config)?;
    let name = format!("{PLUGIN_NAMESPACE}.krites");
    let mut config = json!({
        "name": name,
        "root_id": "",
        "vm_config": { "runtime": "envoy.wasm.runtime.v8", "code": { "local": { "filename": wasm } } },
        "failure_policy": "FAIL_CLOSED"
    });
    if !configuration.is_empty() {
        config["configuration"] = json!({ "@type": "type.googleapis.com/google.protobuf.StringValue", "value": configuration });
    }
    Ok(json!({
        "version_info": version.to_string(),
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": ecds_resource_name(PLUGIN_NAMESPACE, "krites"),
            "typed_config": { "@type": WASM_HTTP_TYPE, "config": config }
        }]
    }))
}

/// istiod's `pluginConfig` serialisation: the object is decoded into a `Struct` (every
/// number a float64) and re-encoded by legacy `jsonpb`: keys sorted at every level, compact,
/// `<` `>` `&` (and U+2028/U+2029) escaped, integers below 1e21 as integers, other numbers
/// as Go formats a float64. An empty or absent object gives no configuration.
pub fn plugin_config_transform(plugin_config: &str) -> Result<String> {
    if plugin_config.trim().is_empty() {
        return Ok(String::new());
    }
    let v: Value = serde_json::from_str(plugin_config).context("pluginConfig is not JSON")?;
    if v.as_object().is_some_and(|o| o.is_empty()) || v.is_null() {
        return Ok(String::new());
    }
    Ok(jsonpb(&v))
}

/// A JSON value as istiod's legacy `jsonpb` writes a `Struct` (see [`plugin_config_transform`]).
pub fn jsonpb(v: &Value) -> String {
    let mut out = String::new();
    write_go_json(v, &mut out);
    out
}

fn write_go_json(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&go_float(n.as_f64().unwrap_or(0.0))),
        Value::String(s) => write_go_string(s, out),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_go_json(x, out);
            }
            out.push(']');
        }
        Value::Object(o) => {
            let sorted: BTreeMap<&String, &Value> = o.iter().collect();
            out.push('{');
            for (i, (k, x)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_go_string(k, out);
                out.push(':');
                write_go_json(x, out);
            }
            out.push('}');
        }
    }
}

/// Go's `encoding/json` for a float64: `'f'` format for 1e-6 <= |x| < 1e21, else `'e'`
/// with a two-digit-minimum-free exponent (`1e+21`, `1e-7`).
fn go_float(x: f64) -> String {
    let a = x.abs();
    if a == 0.0 || (1e-6..1e21).contains(&a) {
        if x.fract() == 0.0 && a < 1e21 {
            return format!("{}", x as i128);
        }
        return format!("{x}");
    }
    let s = format!("{x:e}");
    match s.split_once('e') {
        Some((m, e)) if !e.starts_with('-') => format!("{m}e+{e}"),
        _ => s,
    }
}

fn write_go_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn plugin_config_goes_through_istiods_transform() {
        let got = plugin_config_transform(r#"{"b": {"z": 1, "a": 2.5}, "a": "x && y <z>", "n": 1e21, "m": 100000000000000000000, "f": 0.0000001}"#).unwrap();
        assert_eq!(
            got,
            r#"{"a":"x \u0026\u0026 y \u003cz\u003e","b":{"a":2.5,"z":1},"f":1e-7,"m":100000000000000000000,"n":1e+21}"#
        );
        assert_eq!(plugin_config_transform("{}").unwrap(), "");
        assert_eq!(plugin_config_transform("").unwrap(), "");
    }

    fn proxy(mtls: MtlsMode) -> Proxy {
        Proxy {
            pod_name: "database-6d4b9f8c5b-vm7rs".into(),
            namespace: "default".into(),
            service_account: "database".into(),
            labels: [
                ("app".to_string(), "database".to_string()),
                ("pod-template-hash".to_string(), "6d4b9f8c5b".to_string()),
            ]
            .into(),
            ip: Ipv4Addr::new(10, 1, 2, 3),
            ports: vec![
                ContainerPort::new("http", 8080, Some(Protocol::Http)),
                ContainerPort::new("db", 5432, Some(Protocol::Tcp)),
                ContainerPort::new("raw", 9000, Some(Protocol::Auto)),
                ContainerPort::new("debug", 7000, None),
            ],
            mtls,
            path_normalization: PathNormalization::Base,
            trust_domain: "cluster.local".into(),
            identity: Identity {
                cert: "/c".into(),
                key: "/k".into(),
                uri: None,
            },
            ca: "/ca".into(),
            wasm: Some("/m.wasm".into()),
            outbound: vec![],
            files: ProxyFiles {
                ecds: "/e/f.json".into(),
                ecds_dir: "/e".into(),
                access_log: "/a".into(),
            },
        }
    }

    fn chains(b: &Value) -> Vec<Value> {
        b["static_resources"]["listeners"][0]["filter_chains"]
            .as_array()
            .unwrap()
            .clone()
    }

    #[test]
    fn strict_chains_follow_istio() {
        let b = build_sidecar_bootstrap(&proxy(MtlsMode::Strict));
        let c = chains(&b);
        // blackhole + 2 passthrough + http 1 + tcp 1 + auto 2
        assert_eq!(c.len(), 7, "{c:#?}");
        let auto: Vec<&Value> = c
            .iter()
            .filter(|c| c["filter_chain_match"]["destination_port"] == 9000)
            .collect();
        assert_eq!(
            auto[0]["filter_chain_match"]["application_protocols"],
            json!(MTLS_HTTP_ALPNS)
        );
        assert!(auto[1]["filter_chain_match"]
            .get("application_protocols")
            .is_none());
        // TCP chain: Krites network filter then tcp_proxy to inbound|9000||
        assert_eq!(
            auto[1]["filters"][0]["typed_config"]["config"]["root_id"],
            "krites_peer_address"
        );
        assert_eq!(
            auto[1]["filters"][1]["typed_config"]["cluster"],
            "inbound|9000||"
        );
        let lf = b["static_resources"]["listeners"][0]["listener_filters"]
            .as_array()
            .unwrap();
        // No plaintext chains in STRICT: no HTTP inspector, as in Istio.
        assert_eq!(lf.len(), 2);
        let labels = &b["node"]["metadata"]["LABELS"];
        assert!(labels.get("pod-template-hash").is_none());
        assert!(b["node"]["metadata"]["POD_PORTS"].is_string());
    }

    #[test]
    fn permissive_adds_plaintext_and_sniffing() {
        let b = build_sidecar_bootstrap(&proxy(MtlsMode::Permissive));
        let c = chains(&b);
        // blackhole + 5 passthrough + http 2 + tcp 3 + auto 5
        assert_eq!(c.len(), 16);
        let lf = b["static_resources"]["listeners"][0]["listener_filters"]
            .as_array()
            .unwrap();
        assert_eq!(lf.len(), 3);
        // The HTTP inspector is off on the ports declared TCP and HTTP.
        assert!(lf[2]["filter_disabled"].to_string().contains("5432"));
        let hcm =
            &c.iter().find(|c| c["name"] == "0.0.0.0_8080").unwrap()["filters"][1]["typed_config"];
        assert_eq!(hcm["forward_client_cert_details"], "APPEND_FORWARD");
        assert_eq!(hcm["use_remote_address"], false);
        assert_eq!(hcm["normalize_path"], true);
        assert_eq!(
            hcm["http_filters"][0]["name"],
            "extensions.istio.io/wasmplugin/istio-system.krites"
        );
        assert_eq!(hcm["http_filters"][1]["name"], "envoy.filters.http.rbac");
    }
}
