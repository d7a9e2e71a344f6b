//! The loopback rig's sidecars as istiod builds them: an adapter from [`SidecarSpec`] and
//! [`Mesh`] to an [`istiod::Proxy`] in `interceptionMode: NONE` (every "pod" shares the
//! host's network on its own 127.0.0.x, so nothing can be intercepted). Every Istio fact
//! comes from [`crate::istiod`]; what is the rig's own:
//! - Each pod listens on ports picked at start, as `Sidecar` ingress listeners bound on the
//!   pod IP: an HTTP port under `portLevelMtls: STRICT` (the "mTLS listener") and one under
//!   `DISABLE` (the "plaintext listener"), so a test chooses the transport by address; the
//!   same pair again on each `Mesh::extra_inbound` address; with `Mesh::tcp_app`, a TCP port
//!   of each kind. Istio would serve both transports on one PERMISSIVE port, but only to
//!   clients offering its ALPN (`istio-http/1.1`), which curl cannot.
//! - Without `Mesh::app`, Envoy answers in place of the application, echoing what it would
//!   have received (`InboundEndpoint::Echo`).
//! - Outbound listeners are `Sidecar` egress listeners on the pod IP, one per `Mesh::outbound`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use serde_json::Value;

use crate::envoy::{Mesh, Outbound, SidecarSpec};
use crate::istiod::{
    self, Authorization, CaptureMode, EgressListener, HttpAuthz, InboundEndpoint, IngressListener,
    MtlsMode, PathNormalization, Protocol, ProxyFiles, Upstream,
};
use crate::pki::Identity;

/// Where a sidecar's listeners and admin endpoint live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ports {
    pub admin: u16,
    pub mtls: u16,
    pub plain: u16,
    /// The TCP chains' listeners (mTLS, plaintext) when `Mesh::tcp_app` is set.
    pub tcp: Option<(u16, u16)>,
    /// One per `Mesh::outbound`, in order.
    pub outbound: Vec<u16>,
    /// One per `Mesh::extra_inbound`, in order: (address, mTLS port, plaintext port).
    pub extra: Vec<(IpAddr, u16, u16)>,
}

impl Ports {
    /// Every inbound port; the rig keeps them distinct (a port's mTLS mode and cluster are
    /// keyed by its number, as in Istio).
    pub fn inbound(&self) -> Vec<u16> {
        let mut all = vec![self.mtls, self.plain];
        all.extend(self.tcp.iter().flat_map(|&(m, p)| [m, p]));
        all.extend(self.extra.iter().flat_map(|&(_, m, p)| [m, p]));
        all
    }
}

/// The HTTP filter / ECDS resource name of the Krites WasmPlugin (`istio-system/krites`).
pub fn ecds_name() -> String {
    istiod::ecds_resource_name(istiod::PLUGIN_NAMESPACE, istiod::HTTP_PLUGIN)
}

/// The rig's sidecar as an istiod `Proxy`.
pub fn proxy(spec: &SidecarSpec, mesh: &Mesh, ports: &Ports, files: &ProxyFiles) -> istiod::Proxy {
    let http_endpoint = match mesh.app {
        Some(app) => InboundEndpoint::Address(app),
        None => InboundEndpoint::Echo,
    };
    let pod_ip = IpAddr::V4(spec.ip);
    let mut ingress = Vec::new();
    let mut port_mtls = std::collections::BTreeMap::new();
    let mut add = |port: u16, protocol: Protocol, bind: IpAddr, mtls: MtlsMode, endpoint: InboundEndpoint| {
        ingress.push(IngressListener { port, protocol, bind, default_endpoint: endpoint });
        port_mtls.insert(port, mtls);
    };
    add(ports.mtls, Protocol::Http, pod_ip, MtlsMode::Strict, http_endpoint);
    add(ports.plain, Protocol::Http, pod_ip, MtlsMode::Disable, http_endpoint);
    for &(ip, mtls, plain) in &ports.extra {
        add(mtls, Protocol::Http, ip, MtlsMode::Strict, http_endpoint);
        add(plain, Protocol::Http, ip, MtlsMode::Disable, http_endpoint);
    }
    if let (Some(app), Some((mtls, plain))) = (mesh.tcp_app, ports.tcp) {
        add(mtls, Protocol::Tcp, pod_ip, MtlsMode::Strict, InboundEndpoint::Address(app));
        add(plain, Protocol::Tcp, pod_ip, MtlsMode::Disable, InboundEndpoint::Address(app));
    }
    let outbound: Vec<Upstream> = mesh
        .outbound
        .iter()
        .map(|o| Upstream {
            host: service_host(&o.service),
            // Names the egress listener `<ip>_<port>`, as Istio names it after the Service.
            ip: match o.endpoints.first().map(|e| e.ip()) {
                Some(IpAddr::V4(ip)) => ip,
                _ => Ipv4Addr::UNSPECIFIED,
            },
            port: o.endpoints.first().map_or(0, |e| e.port()),
            protocol: Protocol::Http,
            identity: o.server_identity.clone(),
            endpoints: Vec::new(),
        })
        .collect();
    let egress = mesh
        .outbound
        .iter()
        .zip(&ports.outbound)
        .map(|(o, &port)| EgressListener { port, endpoints: o.endpoints.clone() })
        .collect();
    let path_normalization = match mesh.path_normalization {
        Some(mode) => mode,
        // Normalise dot segments and merge slashes, or leave the path alone.
        None if spec.normalize_path => PathNormalization::MergeSlashes,
        None => PathNormalization::None,
    };
    let authz = match &spec.wasm {
        Some(_) => Authorization { krites_network: spec.peer_address_filter, http: HttpAuthz::Krites },
        None => Authorization { krites_network: false, http: HttpAuthz::None },
    };
    istiod::Proxy {
        pod_name: spec.name.clone(),
        namespace: spec.namespace.clone(),
        service_account: spec.service_account.clone(),
        labels: spec.labels.clone(),
        ip: spec.ip,
        ports: mesh
            .pod_ports
            .iter()
            .map(|p| istiod::ContainerPort::new(&p.name, p.container_port, None))
            .collect(),
        mtls: MtlsMode::Permissive,
        port_mtls,
        path_normalization,
        trust_domain: trust_domain(&spec.identity),
        identity: spec.identity.clone(),
        ca: spec.ca.clone(),
        capture: CaptureMode::None { ingress, egress },
        authz,
        outbound,
        admin: (spec.ip, ports.admin).into(),
        extra_stat_tags: mesh.extra_stat_tags.clone(),
        envoy_filters: Vec::new(),
        files: files.clone(),
    }
}

/// The bootstrap of the rig's sidecar.
pub fn bootstrap(spec: &SidecarSpec, mesh: &Mesh, ports: &Ports, files: &ProxyFiles) -> Value {
    istiod::build_sidecar_bootstrap(&proxy(spec, mesh, ports, files))
}

/// `<service>.default.svc.cluster.local`: the rig's services all live in `default`.
fn service_host(service: &str) -> String {
    format!("{service}.default.svc.cluster.local")
}

/// The trust domain of the workload's own SPIFFE id (`cluster.local` if it has none).
fn trust_domain(identity: &Identity) -> String {
    identity
        .uri
        .as_deref()
        .and_then(|u| u.strip_prefix("spiffe://"))
        .and_then(|u| u.split('/').next())
        .unwrap_or("cluster.local")
        .to_string()
}

/// `WasmPlugin.spec.pluginConfig` as istiod hands it to Envoy (see
/// [`istiod::plugin_config_or_raw`]).
pub fn istiod_plugin_config(plugin_config: &str) -> String {
    istiod::plugin_config_or_raw(plugin_config)
}

/// The HTTP WasmPlugin's ECDS file (`version` must grow on every update).
pub fn ecds(version: u64, wasm: &Path, plugin_config: &str) -> Value {
    istiod::build_http_ecds(version, wasm, Some(&istiod_plugin_config(plugin_config)))
}

/// The ingress gateway: a plaintext listener for browsers on `ip:port`, routing everything to
/// `upstream` over mTLS with the gateway's own certificate, from `ip` ([`istiod::gateway`]).
#[allow(clippy::too_many_arguments)]
pub fn ingress_bootstrap(
    name: &str,
    ip: Ipv4Addr,
    admin_port: u16,
    port: u16,
    upstream: &Outbound,
    identity: &Identity,
    ca: &Path,
    access_log: &Path,
) -> Value {
    istiod::gateway::build_gateway_bootstrap(&istiod::gateway::Gateway {
        name: name.to_string(),
        ip,
        admin_port,
        port,
        upstream_host: service_host(&upstream.service),
        upstream_endpoints: upstream.endpoints.clone(),
        upstream_identity: upstream.server_identity.clone(),
        identity: identity.clone(),
        ca: ca.to_path_buf(),
        access_log: Some(access_log.to_path_buf()),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::*;
    use crate::envoy::ContainerPort;
    use serde_json::json;

    fn spec() -> SidecarSpec {
        let id = Identity {
            cert: PathBuf::from("/pki/summary.crt"),
            key: PathBuf::from("/pki/summary.key"),
            uri: None,
        };
        SidecarSpec {
            name: "summary".into(),
            ip: Ipv4Addr::new(127, 0, 0, 12),
            namespace: "default".into(),
            service_account: "summary".into(),
            labels: BTreeMap::new(),
            identity: id,
            ca: PathBuf::from("/pki/ca.crt"),
            wasm: Some(PathBuf::from("/m.wasm")),
            plugin_config: "{}".into(),
            work_dir: PathBuf::from("/w"),
            normalize_path: true,
            peer_address_filter: true,
        }
    }

    fn ports(outbound: Vec<u16>) -> Ports {
        Ports { admin: 1, mtls: 2, plain: 3, tcp: None, outbound, extra: vec![] }
    }

    fn boot(mesh: &Mesh, ports: &Ports) -> Value {
        bootstrap(&spec(), mesh, ports, &ProxyFiles::under(Path::new("/w/summary")))
    }

    fn listener<'a>(boot: &'a Value, name: &str) -> &'a Value {
        let listeners = boot["static_resources"]["listeners"].as_array().unwrap();
        listeners.iter().find(|l| l["name"] == name).unwrap_or_else(|| panic!("no {name} in {listeners:#?}"))
    }

    #[test]
    fn plugin_config_goes_through_istiods_transform() {
        let raw = r#"{"version": 1, "policies": [{"selector": "a == 'x' && b > 2", "order": 100.5, "name": "p"}], "big": 1e22, "neg": -3}"#;
        let want = r#"{"big":1e+22,"neg":-3,"policies":[{"name":"p","order":100.5,"selector":"a == 'x' \u0026\u0026 b \u003e 2"}],"version":1}"#;
        assert_eq!(istiod_plugin_config(raw), want);
        assert_eq!(istiod_plugin_config("not json"), "not json");
        assert_eq!(istiod_plugin_config(""), "");
    }

    #[test]
    fn the_mtls_and_plaintext_listeners_are_strict_and_disable_ports_with_krites_first() {
        let b = boot(&Mesh::default(), &ports(vec![]));
        let mtls = listener(&b, "127.0.0.12_2");
        let chains = mtls["filter_chains"].as_array().unwrap();
        assert_eq!(chains.len(), 1);
        assert_eq!(chains[0]["filter_chain_match"]["transport_protocol"], "tls");
        assert!(chains[0]["transport_socket"].is_object());
        let filters = chains[0]["filters"].as_array().unwrap();
        assert_eq!(filters[0]["name"], "extensions.istio.io/wasmplugin/istio-system.krites-peer-address");
        let hcm = &filters[1]["typed_config"];
        let http: Vec<&str> = hcm["http_filters"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
        assert_eq!(http, [ecds_name().as_str(), "envoy.filters.http.rbac", "envoy.filters.http.router"]);
        // No application: Envoy echoes.
        assert_eq!(hcm["route_config"]["virtual_hosts"][0]["routes"][0]["direct_response"]["status"], 200);
        assert_eq!(hcm["merge_slashes"], true);
        let plain = listener(&b, "127.0.0.12_3");
        assert!(plain["filter_chains"][0].get("transport_socket").is_none());
        assert_eq!(plain["listener_filters"], json!([]));
    }

    #[test]
    fn extra_inbound_addresses_get_their_own_listeners() {
        let mut p = ports(vec![]);
        p.extra = vec![("::1".parse().unwrap(), 4, 5), ("::".parse().unwrap(), 6, 7)];
        let b = boot(&Mesh::default(), &p);
        assert_eq!(b["static_resources"]["listeners"].as_array().unwrap().len(), 6);
        assert_eq!(listener(&b, "::1_4")["address"], json!({"socket_address": {"address": "::1", "port_value": 4}}));
        assert_eq!(
            listener(&b, "::_7")["address"],
            json!({"socket_address": {"address": "::", "port_value": 7, "ipv4_compat": true}})
        );
        assert!(listener(&b, "::_6")["filter_chains"][0].get("transport_socket").is_some());
    }

    #[test]
    fn a_mesh_adds_the_app_outbound_mtls_and_pod_ports() {
        let mesh = Mesh {
            app: Some("127.0.0.12:8080".parse().unwrap()),
            outbound: vec![Outbound {
                service: "database".into(),
                endpoints: vec!["127.0.0.13:4000".parse().unwrap()],
                server_identity: "spiffe://cluster.local/ns/default/sa/database".into(),
            }],
            pod_ports: vec![ContainerPort::tcp("http", 8080)],
            ..Mesh::default()
        };
        let b = boot(&mesh, &ports(vec![5000]));
        let pod_ports = b["node"]["metadata"]["POD_PORTS"].as_str().unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(pod_ports).unwrap(),
            json!([{"name": "http", "containerPort": 8080, "protocol": "TCP"}])
        );
        let clusters = b["static_resources"]["clusters"].as_array().unwrap();
        let app = clusters.iter().find(|c| c["name"] == "inbound|2||").unwrap();
        assert_eq!(app["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"], 8080);
        let out = listener(&b, "127.0.0.13_4000");
        assert_eq!(out["address"]["socket_address"], json!({"address": "127.0.0.12", "port_value": 5000}));
        let db = clusters.iter().find(|c| c["name"] == "outbound|4000||database.default.svc.cluster.local").unwrap();
        // From the pod IP, with the workload's certificate, checking the server's SPIFFE id.
        assert_eq!(db["upstream_bind_config"]["source_address"]["address"], "127.0.0.12");
        let tls = &db["transport_socket"]["typed_config"]["common_tls_context"];
        assert_eq!(tls["tls_certificates"][0]["certificate_chain"]["filename"], "/pki/summary.crt");
        assert_eq!(
            tls["validation_context"]["match_typed_subject_alt_names"][0]["matcher"]["exact"],
            "spiffe://cluster.local/ns/default/sa/database"
        );
    }

    #[test]
    fn the_ingress_faces_clients_and_calls_upstream_over_mtls() {
        let id = Identity { cert: PathBuf::from("/pki/gw.crt"), key: PathBuf::from("/pki/gw.key"), uri: None };
        let up = Outbound {
            service: "customer".into(),
            endpoints: vec!["127.0.0.11:4000".parse().unwrap()],
            server_identity: "spiffe://cluster.local/ns/default/sa/customer".into(),
        };
        let boot = ingress_bootstrap("gw", Ipv4Addr::new(127, 0, 0, 10), 1, 8080, &up, &id, Path::new("/pki/ca.crt"), Path::new("/a"));
        let l = &boot["static_resources"]["listeners"][0];
        assert_eq!(l["address"]["socket_address"]["port_value"], 8080);
        assert!(l["filter_chains"][0].get("transport_socket").is_none());
        assert_eq!(l["filter_chains"][0]["filters"][0]["typed_config"]["use_remote_address"], true);
        let c = &boot["static_resources"]["clusters"][0];
        assert_eq!(c["upstream_bind_config"]["source_address"]["address"], "127.0.0.10");
        assert_eq!(
            c["transport_socket"]["typed_config"]["common_tls_context"]["tls_certificates"][0]["certificate_chain"]["filename"],
            "/pki/gw.crt"
        );
    }
}
