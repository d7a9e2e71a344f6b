//! Every Envoy the project starts, configured as istiod configures a sidecar: one static
//! bootstrap per proxy, and the ECDS documents istiod pushes for the Krites WasmPlugins.
//!
//! Named and shaped after istio/istio `pilot/pkg/networking/core` (1.28), one module per
//! source file there:
//! - [`bootstrap`]: `pkg/bootstrap/config.go` (node metadata, the static runtime layer);
//! - [`filterchain_options`]: the match options per mTLS mode and port protocol;
//! - [`listener_inbound`]: `buildInboundListeners`, `inboundVirtualListener`,
//!   `buildInboundPassthroughChains`, `populateListenerFilters`, `BuildInboundTLS`;
//! - [`networkfilter`]: `buildInboundNetworkFilters[ForHTTP]`, the HTTP connection manager;
//! - [`httpfilters`]: `listener_builder.go`'s inbound HTTP filter order;
//! - [`listener_outbound`]: `virtualOutbound` and the per-destination listeners;
//! - [`cluster`]: inbound, passthrough and outbound mTLS clusters;
//! - [`gateway`]: `gateway.go`, the ingress gateway of the loopback rig's demo;
//! - [`client_sidecars`]: the load benchmark's calling pods, many sidecars' outbound clusters
//!   in one Envoy;
//! - [`extensions`]: `pkg/wasm` / `pilot/pkg/model/extensions.go`: WasmPlugin -> ECDS, the
//!   `pluginConfig` transform;
//! - [`envoyfilter`]: `envoyfilter/listener_patch.go`, EnvoyFilters patched into the listeners.
//!
//! The Istio facts (ALPN lists, HCM settings, runtime layer, TLS contexts, node metadata,
//! ECDS names, filter order) live only here. The namespace mesh ([`crate::mesh`]), the
//! loopback rig ([`crate::Sidecar`]) and the load benchmark build their Envoys with
//! [`build_sidecar_bootstrap`] (the load benchmark's callers with
//! [`client_sidecars::build_client_sidecars_bootstrap`]).
//!
//! What differs from a real sidecar, and why:
//! - Everything is static (no ADS): listeners and clusters in the bootstrap, both Krites
//!   WasmPlugins (HTTP, and NETWORK `krites_peer_address`) by ECDS from watched files.
//! - No `istio.metadata_exchange` / `peer_metadata` / `istio.stats` / `istio.alpn` filters:
//!   they exist only in istio-proxy's Envoy build. So Krites NETWORK is first on every
//!   chain here (after the peer-metadata filter in Istio), and the outbound HTTP cluster
//!   offers ALPN `istio-http/1.1` from its own TLS context instead of through `istio.alpn`.
//! - No EDS: a Service's `outbound|port||host` cluster is STATIC to its endpoints. A
//!   destination given as a pod address gets a `<pod IP>_<port>` listener and a cluster STATIC
//!   to the pod; a destination given as a Service ([`Upstream::endpoints`]) gets istiod's
//!   Service listeners: HTTP ports share `0.0.0.0_<port>`, routed by `Host` over the Services'
//!   virtual hosts with Istio's `allow_any` virtual host (ALLOW_ANY: PassthroughCluster) last;
//!   TCP ports get `<ClusterIP>_<port>`. The HTTP listener has no `http_inspector` and no
//!   passthrough chain for non-HTTP bytes (Istio's has).
//! - Krites on outbound listeners (WasmPlugins `match: CLIENT_AND_SERVER`, capture only): the
//!   HTTP filter in every outbound connection manager before the router, the NETWORK filter
//!   first on every outbound chain, as `buildCompleteNetworkFilters` / `buildHTTPConnectionManager`
//!   insert CLIENT-mode plugins. Istio puts no WasmPlugin on `virtualOutbound`'s catch-all
//!   chain (`buildOutboundCatchAllNetworkFiltersOnly`: metrics and `tcp_proxy` only), so raw
//!   TCP to an address outside the mesh bypasses a NETWORK WasmPlugin there; the shipped
//!   EnvoyFilter (`istio-manifests/egress-passthrough/`, in [`Proxy::envoy_filters`]) puts
//!   the NETWORK filter there too, applied by [`envoyfilter`] as istiod applies it.
//! - [`CaptureMode::None`] (Istio's `interceptionMode: NONE` with a `Sidecar` resource's
//!   ingress/egress listeners bound on the pod IP) is how the loopback rig and the benchmark
//!   run: every pod shares the host's network, so nothing can be intercepted. Each inbound
//!   port gets its own listener with the same filter chains as `virtualInbound` has for it;
//!   there are no passthrough chains, and outbound clusters bind the pod IP as their source
//!   (on loopback the kernel would pick 127.0.0.1 otherwise).
//! - [`InboundEndpoint::Echo`] / [`InboundEndpoint::Ok`]: Envoy answers itself instead of an
//!   application (the loopback rig shows what the app would have received; the benchmark
//!   measures the proxy, not an app).

pub mod bootstrap;
pub mod client_sidecars;
pub mod cluster;
pub mod envoyfilter;
pub mod extensions;
pub mod filterchain_options;
pub mod gateway;
pub mod httpfilters;
pub mod listener_inbound;
pub mod listener_outbound;
pub mod networkfilter;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde_json::{json, Value};

use crate::pki::Identity;

pub use bootstrap::{build_node, istio_runtime, node_labels, pod_ports};
pub use extensions::{
    build_ecds, build_http_ecds, build_network_ecds, ecds_resource_name, jsonpb,
    plugin_config_or_raw, plugin_config_transform, HTTP_PLUGIN, NETWORK_PLUGIN, PLUGIN_NAMESPACE,
};
pub use filterchain_options::{MTLS_HTTP_ALPNS, MTLS_TCP_ALPNS, PLAINTEXT_HTTP_ALPNS};
pub use listener_inbound::{inbound_cluster_name, inbound_http_stat_prefix};
pub use listener_outbound::outbound_cluster_name;

pub(crate) const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
pub(crate) const TCP_PROXY_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
pub(crate) const ROUTER_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";

/// The inbound capture port (`ProxyInboundListenPort`).
pub const INBOUND_PORT: u16 = 15006;
/// The outbound capture port.
pub const OUTBOUND_PORT: u16 = 15001;
/// Envoy's admin port in a sidecar (localhost only).
pub const ADMIN_PORT: u16 = 15000;
/// Istio's sidecar uid and gid.
pub const PROXY_UID: u32 = 1337;
/// pilot-agent's `--concurrency` for a sidecar with a 2-CPU limit.
pub const SIDECAR_CONCURRENCY: u32 = 2;
/// pilot-agent's default `--log-level` (`global.logging.level: default:warning`).
pub const SIDECAR_LOG_LEVEL: &str = "warning";

pub const INBOUND_PASSTHROUGH_CLUSTER: &str = "InboundPassthroughCluster";
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";
/// The source of the sidecar -> application hop (`InboundPassthroughBindIpv4`).
pub const INBOUND_PASSTHROUGH_BIND: &str = "127.0.0.6";

/// PeerAuthentication mode of the workload (or of one port, `portLevelMtls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtlsMode {
    Strict,
    Permissive,
    /// Plaintext only: no TLS is terminated.
    Disable,
}

/// A port's protocol as the Service declares it (`http-*` name or `appProtocol`, `tcp-*`,
/// or anything else: auto-detected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Tcp,
    Auto,
}

/// `meshConfig.pathNormalization.normalization`, as istiod sets it on the inbound
/// connection manager (`listener_builder.go`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathNormalization {
    /// Nothing: the filter sees the path as sent.
    None,
    /// Istio's default (`DEFAULT` means `BASE`): `normalize_path` (RFC 3986 dot segments, `\`).
    #[default]
    Base,
    /// `BASE` and `merge_slashes`.
    MergeSlashes,
    /// `MERGE_SLASHES` and `path_with_escaped_slashes_action: UNESCAPE_AND_FORWARD`.
    DecodeAndMergeSlashes,
}

impl PathNormalization {
    pub const ALL: [PathNormalization; 4] = [
        PathNormalization::None,
        PathNormalization::Base,
        PathNormalization::MergeSlashes,
        PathNormalization::DecodeAndMergeSlashes,
    ];

    /// (`normalize_path`, `merge_slashes`, `path_with_escaped_slashes_action`).
    pub fn hcm_settings(self) -> (bool, bool, &'static str) {
        match self {
            PathNormalization::None => (false, false, "KEEP_UNCHANGED"),
            PathNormalization::Base => (true, false, "KEEP_UNCHANGED"),
            PathNormalization::MergeSlashes => (true, true, "KEEP_UNCHANGED"),
            PathNormalization::DecodeAndMergeSlashes => (true, true, "UNESCAPE_AND_FORWARD"),
        }
    }

    /// Istio's name for the mode.
    pub fn name(self) -> &'static str {
        match self {
            PathNormalization::None => "NONE",
            PathNormalization::Base => "BASE",
            PathNormalization::MergeSlashes => "MERGE_SLASHES",
            PathNormalization::DecodeAndMergeSlashes => "DECODE_AND_MERGE_SLASHES",
        }
    }
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
    /// A pod's address (`endpoints` empty), or the Service's ClusterIP.
    pub ip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    /// The server's SPIFFE id, checked as the client sidecar checks it.
    pub identity: String,
    /// The Service's endpoints (what EDS would deliver for `outbound|port||host`), when `ip`
    /// is its ClusterIP: under capture the sidecar then routes as istiod builds it for a
    /// Service (HTTP: the shared `0.0.0.0_<port>` listener, routed by `Host`; TCP: a
    /// `<ClusterIP>_<port>` listener). Empty: `ip` is the pod itself (a `<pod IP>_<port>`
    /// listener, the cluster STATIC to it).
    pub endpoints: Vec<SocketAddr>,
}

impl Upstream {
    /// A Service reached by its ClusterIP.
    pub fn is_service(&self) -> bool {
        !self.endpoints.is_empty()
    }

    /// The names a client may use in `Host` for it (`VirtualHost.domains`, as istiod lists
    /// them for a Kubernetes Service seen from the same namespace, and the ClusterIP).
    pub fn domains(&self) -> Vec<String> {
        let mut names = vec![self.host.clone()];
        // `<name>.<ns>.svc.<domain>` -> `<name>.<ns>.svc`, `<name>.<ns>`, `<name>`.
        let parts: Vec<&str> = self.host.split('.').collect();
        for n in (1..parts.len().min(4)).rev() {
            names.push(parts[..n].join("."));
        }
        names.push(self.ip.to_string());
        let mut all = Vec::new();
        for n in names {
            all.push(format!("{n}:{}", self.port));
            all.push(n);
        }
        all.dedup();
        all
    }
}

/// Files the sidecar reads and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyFiles {
    /// The HTTP WasmPlugin's ECDS resource, in its watched directory.
    pub ecds: PathBuf,
    pub ecds_dir: PathBuf,
    /// The NETWORK WasmPlugin's ECDS resource, in its own watched directory (one ECDS
    /// subscription takes exactly one resource per file).
    pub network_ecds: PathBuf,
    pub network_ecds_dir: PathBuf,
    /// `meshConfig.accessLogFile`; `None`: no access log (Istio's default profile).
    pub access_log: Option<PathBuf>,
}

impl ProxyFiles {
    /// The usual layout under `dir`: `ecds/krites.json`, `ecds-network/krites-peer-address.json`,
    /// `access.log`.
    pub fn under(dir: &std::path::Path) -> ProxyFiles {
        ProxyFiles {
            ecds: dir.join("ecds").join("krites.json"),
            ecds_dir: dir.join("ecds"),
            network_ecds: dir.join("ecds-network").join("krites-peer-address.json"),
            network_ecds_dir: dir.join("ecds-network"),
            access_log: Some(dir.join("access.log")),
        }
    }
}

/// How traffic reaches the sidecar (`sidecar.istio.io/interceptionMode`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureMode {
    /// istio-iptables `REDIRECT`: `virtualInbound` on 15006 and `virtualOutbound` on 15001
    /// with `original_dst`; the Service ports of [`Proxy::ports`] get the inbound chains,
    /// and each inbound cluster goes to the connection's original destination.
    Iptables,
    /// `NONE`: no interception; a `Sidecar` resource declares the listeners instead. Each
    /// ingress listener binds its own address and port and carries the chains
    /// `virtualInbound` would have for that port; each egress listener (one per
    /// [`Proxy::outbound`], in order) binds the pod IP.
    None {
        ingress: Vec<IngressListener>,
        egress: Vec<EgressListener>,
    },
}

/// `Sidecar.spec.ingress[]`: a port the sidecar listens on and where its traffic goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressListener {
    pub port: u16,
    pub protocol: Protocol,
    /// `bind`: usually the pod IP. `::` listens dual-stack (`ipv4_compat`): IPv4 clients
    /// arrive as IPv4-mapped IPv6 peers (`::ffff:a.b.c.d`), as on a dual-stack pod.
    pub bind: IpAddr,
    /// `defaultEndpoint`.
    pub default_endpoint: InboundEndpoint,
}

/// `Sidecar.spec.egress[]` with its port bound on the pod IP, and the destination's
/// endpoints (what EDS would deliver), balanced round robin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressListener {
    pub port: u16,
    pub endpoints: Vec<SocketAddr>,
}

/// Where an inbound chain's `inbound|<port>||` cluster goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundEndpoint {
    /// The connection's original destination, from 127.0.0.6 (iptables capture).
    OriginalDst,
    /// A fixed address (a `Sidecar` ingress listener's `defaultEndpoint`).
    Address(SocketAddr),
    /// No application: Envoy answers 200 `ok <pod>` itself and rewrites the body to show what
    /// an application would have received (method, normalised path, peer, XFCC). HTTP only.
    Echo,
    /// No application: Envoy answers a bare 200 `ok <pod>` (what the benchmark measures is the
    /// proxy). HTTP only.
    Ok,
}

/// What authorizes a request in the inbound HTTP filters.
#[derive(Debug, Clone, PartialEq)]
pub enum HttpAuthz {
    /// Nothing (no AuthorizationPolicy, no WasmPlugin).
    None,
    /// The Krites HTTP WasmPlugin by ECDS, then an ALLOW-everything RBAC standing for an
    /// AuthorizationPolicy.
    Krites,
    /// Envoy RBAC filters as istiod writes them for AuthorizationPolicies (in order).
    Rbac(Vec<Value>),
    /// An AuthorizationPolicy `action: CUSTOM` with an `envoyExtAuthzGrpc` provider at this
    /// address (failing closed).
    ExtAuthz(SocketAddr),
}

/// The authorization a proxy runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Authorization {
    /// WasmPlugin `krites-peer-address` (`type: NETWORK`) by ECDS, first on every chain.
    pub krites_network: bool,
    pub http: HttpAuthz,
}

impl Authorization {
    /// Both Krites WasmPlugins, as the shipped manifests install them.
    pub fn krites() -> Authorization {
        Authorization {
            krites_network: true,
            http: HttpAuthz::Krites,
        }
    }

    /// Whether the proxy needs the HTTP plugin's ECDS resource.
    pub fn uses_http_plugin(&self) -> bool {
        self.http == HttpAuthz::Krites
    }
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
    /// `portLevelMtls`: the mode of single ports, overriding `mtls`.
    pub port_mtls: BTreeMap<u16, MtlsMode>,
    pub path_normalization: PathNormalization,
    pub trust_domain: String,
    pub identity: Identity,
    pub ca: PathBuf,
    pub capture: CaptureMode,
    pub authz: Authorization,
    pub outbound: Vec<Upstream>,
    /// Envoy's admin address (`127.0.0.1:15000` in a pod).
    pub admin: SocketAddr,
    /// `proxyConfig.extraStatTags` (mesh-wide, or the pod's `sidecar.istio.io/extraStatTags`):
    /// tags Envoy extracts from stat names written `<tag>=.=<value>;.;`, which Prometheus then
    /// shows as labels (Krites: `krites_tier`, `krites_policy`). Empty: none.
    pub extra_stat_tags: Vec<String>,
    /// The EnvoyFilters that apply to this proxy, patched into its listeners in order.
    pub envoy_filters: Vec<envoyfilter::EnvoyFilter>,
    pub files: ProxyFiles,
}

impl Proxy {
    /// The mTLS mode of `port` (`portLevelMtls` first).
    pub fn mtls_of(&self, port: u16) -> MtlsMode {
        self.port_mtls.get(&port).copied().unwrap_or(self.mtls)
    }

    /// The inbound chains' ports: Service ports under capture, ingress listeners without,
    /// with where each one's cluster goes and the address it binds (`None`: `virtualInbound`).
    pub fn inbound_ports(&self) -> Vec<(u16, Protocol, InboundEndpoint, Option<IpAddr>)> {
        match &self.capture {
            CaptureMode::Iptables => {
                let mut by_port: BTreeMap<u16, Protocol> = BTreeMap::new();
                for c in &self.ports {
                    if let Some(protocol) = c.service {
                        by_port.entry(c.port).or_insert(protocol);
                    }
                }
                by_port
                    .into_iter()
                    .map(|(port, protocol)| (port, protocol, InboundEndpoint::OriginalDst, None))
                    .collect()
            }
            CaptureMode::None { ingress, .. } => ingress
                .iter()
                .map(|i| (i.port, i.protocol, i.default_endpoint, Some(i.bind)))
                .collect(),
        }
    }
}

/// The bootstrap: node, admin, static runtime, listeners and clusters.
pub fn build_sidecar_bootstrap(p: &Proxy) -> Value {
    let mut listeners = listener_inbound::build_inbound_listeners(p);
    listeners.extend(listener_outbound::build_outbound_listeners(p));
    envoyfilter::apply_listener_patches(p, &p.envoy_filters, &mut listeners);
    let mut bootstrap = json!({
        "node": build_node(p),
        "admin": { "address": socket_addr(p.admin) },
        "layered_runtime": istio_runtime(),
        "static_resources": { "listeners": listeners, "clusters": cluster::build_clusters(p) }
    });
    if !p.extra_stat_tags.is_empty() {
        bootstrap["stats_config"] = bootstrap::stats_config(&p.extra_stat_tags);
    }
    bootstrap
}

pub(crate) fn socket(ip: &str, port: u16) -> Value {
    json!({ "socket_address": { "address": ip, "port_value": port } })
}

pub(crate) fn socket_addr(addr: SocketAddr) -> Value {
    socket(&addr.ip().to_string(), addr.port())
}

#[cfg(test)]
mod tests;
