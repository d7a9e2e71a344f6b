//! Envoy bootstrap and ECDS documents for one emulated Istio sidecar.
//!
//! Built as JSON values (Envoy reads `.json` config files natively) so that arbitrary plugin
//! configuration strings need no YAML quoting. The shape follows
//! shared/reference/istio-envoy-wasm.md section 4, which was validated against Envoy 1.40.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use serde_json::{json, Value};

use crate::envoy::{Mesh, Outbound, SidecarSpec};
use crate::pki::Identity;

const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

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

/// The cluster behind the inbound listeners when the sidecar has an application.
const APP_CLUSTER: &str = "inbound|app";
/// The cluster behind the TCP chains, named as Istio names inbound clusters.
const TCP_APP_CLUSTER: &str = "inbound|5432||";

/// The HTTP filter / ECDS resource name Istio 1.21-1.29 gives a WasmPlugin `krites`.
pub fn ecds_name(namespace: &str) -> String {
    format!("extensions.istio.io/wasmplugin/{namespace}.krites")
}

/// The bootstrap. `ecds_file`/`ecds_dir` are only used when `spec.wasm` is set.
pub fn bootstrap(
    spec: &SidecarSpec,
    mesh: &Mesh,
    ports: &Ports,
    ecds_file: &Path,
    ecds_dir: &Path,
    access_log: &Path,
) -> Value {
    let ns = &spec.namespace;
    let mut http_filters = Vec::new();
    if spec.wasm.is_some() {
        http_filters.push(json!({
            "name": ecds_name(ns),
            "config_discovery": {
                "config_source": {
                    "resource_api_version": "V3",
                    "path_config_source": {
                        "path": ecds_file,
                        "watched_directory": { "path": ecds_dir }
                    }
                },
                "type_urls": [WASM_TYPE]
            }
        }));
    }
    http_filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" }
    }));
    let mut listeners = vec![
        listener(
            "inbound_mtls",
            spec,
            mesh,
            socket(spec.ip, ports.mtls),
            &http_filters,
            access_log,
            true,
        ),
        listener(
            "inbound_plain",
            spec,
            mesh,
            socket(spec.ip, ports.plain),
            &http_filters,
            access_log,
            false,
        ),
    ];
    // The same two listeners again on each extra address (Envoy's `additional_addresses`
    // would share one listener, but it refuses `ipv4_compat` there).
    for (i, &(ip, mtls, plain)) in ports.extra.iter().enumerate() {
        for (kind, port, tls) in [("mtls", mtls, true), ("plain", plain, false)] {
            listeners.push(listener(
                &format!("inbound_{kind}_x{i}"),
                spec,
                mesh,
                socket_ip(ip, port),
                &http_filters,
                access_log,
                tls,
            ));
        }
    }
    let mut clusters = Vec::new();
    if let Some(app) = mesh.app {
        clusters.push(static_cluster(APP_CLUSTER, &[app]));
    }
    if let (Some(app), Some((mtls, plain))) = (mesh.tcp_app, ports.tcp) {
        clusters.push(static_cluster(TCP_APP_CLUSTER, &[app]));
        for (name, port, tls) in [("inbound_tcp_mtls", mtls, true), ("inbound_tcp_plain", plain, false)] {
            listeners.push(tcp_listener(name, spec, socket(spec.ip, port), tls));
        }
    }
    for (o, port) in mesh.outbound.iter().zip(&ports.outbound) {
        let cluster = outbound_cluster_name(&o.service);
        listeners.push(outbound_listener(
            spec.ip, *port, &o.service, &cluster, access_log,
        ));
        clusters.push(mtls_cluster(&cluster, o, &spec.identity, &spec.ca, spec.ip));
    }
    let mut metadata = json!({
        "NAMESPACE": ns,
        "SERVICE_ACCOUNT": spec.service_account,
        "LABELS": spec.labels,
        "NAME": spec.name,
        "INSTANCE_IPS": spec.ip.to_string(),
    });
    if !mesh.pod_ports.is_empty() {
        metadata["POD_PORTS"] = Value::String(pod_ports_json(mesh));
    }
    json!({
        "node": {
            "id": format!("sidecar~{}~{}.{ns}~{ns}.svc.cluster.local", spec.ip, spec.name),
            "cluster": format!("{}.{ns}", spec.name),
            "metadata": metadata
        },
        "admin": { "address": socket(spec.ip, ports.admin) },
        "static_resources": { "listeners": listeners, "clusters": clusters },
        "layered_runtime": istio_runtime()
    })
}

/// Istio's static runtime layer (`pkg/bootstrap/config.go`): Envoy strips a `#fragment` from
/// the request target instead of answering 400, so `/admin#x` reaches filters as `/admin`.
/// The admin layer lets tests change flags at run time, as `istioctl` can.
fn istio_runtime() -> Value {
    json!({ "layers": [
        { "name": "global config", "static_layer": { "envoy.reloadable_features.http_reject_path_with_fragment": false } },
        { "name": "admin", "admin_layer": {} }
    ] })
}

/// Istio's `POD_PORTS`: the container ports as a JSON *string*.
fn pod_ports_json(mesh: &Mesh) -> String {
    let ports: Vec<Value> = mesh
        .pod_ports
        .iter()
        .map(|p| json!({ "name": p.name, "containerPort": p.container_port, "protocol": p.protocol }))
        .collect();
    Value::Array(ports).to_string()
}

fn outbound_cluster_name(service: &str) -> String {
    format!("outbound|{service}")
}

/// The ingress gateway: a plaintext listener for browsers on `ip:port`, routing everything to
/// `upstream` over mTLS with the gateway's own certificate, from `ip`. No Krites filter (the
/// tutorial's policies select sidecars, and a gateway authorizes nothing here).
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
    let cluster = outbound_cluster_name(&upstream.service);
    let mut listener = outbound_listener(ip, port, name, &cluster, access_log);
    listener["name"] = json!(format!("{name}_http"));
    // A gateway faces clients directly: their address is the connection's, not a header's.
    listener["filter_chains"][0]["filters"][0]["typed_config"]["use_remote_address"] = json!(true);
    json!({
        "node": {
            "id": format!("router~{ip}~{name}.istio-system~istio-system.svc.cluster.local"),
            "cluster": format!("{name}.istio-system"),
            "metadata": {
                "NAMESPACE": "istio-system",
                "SERVICE_ACCOUNT": "istio-ingressgateway-service-account",
                "LABELS": { "istio": "ingressgateway", "app": "istio-ingressgateway" },
                "NAME": name,
                "INSTANCE_IPS": ip.to_string(),
            }
        },
        "admin": { "address": socket(ip, admin_port) },
        "static_resources": {
            "listeners": [listener],
            "clusters": [mtls_cluster(&cluster, upstream, identity, ca, ip)]
        }
    })
}

/// Plaintext HTTP in from the local application, routed to `cluster`.
fn outbound_listener(
    ip: Ipv4Addr,
    port: u16,
    service: &str,
    cluster: &str,
    access_log: &Path,
) -> Value {
    let stat_prefix = format!("outbound_{service}");
    json!({
        "name": cluster,
        "address": socket(ip, port),
        "enable_reuse_port": false,
        "traffic_direction": "OUTBOUND",
        "filter_chains": [{ "filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": stat_prefix,
                "use_remote_address": false,
                "access_log": [access_log_config(access_log, &stat_prefix)],
                "route_config": {
                    "name": cluster,
                    "virtual_hosts": [{
                        "name": service,
                        "domains": ["*"],
                        "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": cluster, "timeout": "15s" } }]
                    }]
                },
                "http_filters": [{
                    "name": "envoy.filters.http.router",
                    "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" }
                }]
            }
        }] }]
    })
}

/// Plain HTTP to fixed addresses.
fn static_cluster(name: &str, endpoints: &[SocketAddr]) -> Value {
    let lb_endpoints: Vec<Value> = endpoints
        .iter()
        .map(|a| json!({ "endpoint": { "address": socket_addr(*a) } }))
        .collect();
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": lb_endpoints }] }
    })
}

/// Istio mTLS to other sidecars: present `identity`, trust `ca`, require the destination's
/// SPIFFE id, and connect from `source` (the pod IP) so the server sidecar sees who we are.
fn mtls_cluster(
    name: &str,
    to: &Outbound,
    identity: &Identity,
    ca: &Path,
    source: Ipv4Addr,
) -> Value {
    let mut cluster = static_cluster(name, &to.endpoints);
    cluster["upstream_bind_config"] =
        json!({ "source_address": { "address": source.to_string(), "port_value": 0 } });
    cluster["transport_socket"] = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": format!("outbound_.{}.default.svc.cluster.local", to.service),
            "common_tls_context": {
                "tls_certificates": [{
                    "certificate_chain": { "filename": identity.cert },
                    "private_key": { "filename": identity.key }
                }],
                "validation_context": {
                    "trusted_ca": { "filename": ca },
                    "match_typed_subject_alt_names": [
                        { "san_type": "URI", "matcher": { "exact": to.server_identity } }
                    ]
                }
            }
        }
    });
    cluster
}

fn access_log_config(path: &Path, stat_prefix: &str) -> Value {
    json!({
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": path,
            "log_format": { "text_format_source": { "inline_string": format!(
                "[%START_TIME%] {stat_prefix} %DOWNSTREAM_REMOTE_ADDRESS% \"%REQ(:METHOD)% %REQ(:PATH)%\" %RESPONSE_CODE% %RESPONSE_CODE_DETAILS% peer=%DOWNSTREAM_PEER_URI_SAN% upstream=%UPSTREAM_HOST%\n"
            ) } }
        }
    })
}

/// `WasmPlugin.spec.pluginConfig` as istiod hands it to Envoy (the namespace mesh's
/// `mesh::istiod::jsonpb`: keys sorted, compact, numbers through float64, `<` `>` `&` written
/// `\u003c` `\u003e` `\u0026`). Text that is not JSON passes unchanged: the tests that feed
/// the filter broken configs mean exactly those bytes (istiod would refuse them earlier).
pub fn istiod_plugin_config(plugin_config: &str) -> String {
    match serde_json::from_str::<Value>(plugin_config) {
        Ok(value) => crate::mesh::istiod::jsonpb(&value),
        Err(_) => plugin_config.to_string(),
    }
}

/// The ECDS resource file carrying the Krites plugin (`version` must grow on every update).
pub fn ecds(namespace: &str, version: u64, wasm: &Path, plugin_config: &str) -> Value {
    let plugin_config = istiod_plugin_config(plugin_config);
    json!({
        "version_info": version.to_string(),
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": ecds_name(namespace),
            "typed_config": {
                "@type": WASM_TYPE,
                "config": {
                    "name": format!("{namespace}.krites"),
                    "root_id": "",
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": plugin_config
                    },
                    "vm_config": {
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": { "local": { "filename": wasm } }
                    },
                    "failure_policy": "FAIL_CLOSED"
                }
            }
        }]
    })
}

fn socket(ip: Ipv4Addr, port: u16) -> Value {
    json!({ "socket_address": { "address": ip.to_string(), "port_value": port } })
}

fn socket_addr(addr: SocketAddr) -> Value {
    json!({ "socket_address": { "address": addr.ip().to_string(), "port_value": addr.port() } })
}

/// A listener address on any family. `::` is dual-stack (`ipv4_compat`): IPv4 clients reach it
/// too, and the kernel reports them as IPv4-mapped IPv6 peers (`::ffff:a.b.c.d`).
fn socket_ip(ip: IpAddr, port: u16) -> Value {
    let mut addr = json!({ "socket_address": { "address": ip.to_string(), "port_value": port } });
    if ip == IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) {
        addr["socket_address"]["ipv4_compat"] = json!(true);
    }
    addr
}

fn listener(
    name: &str,
    spec: &SidecarSpec,
    mesh: &Mesh,
    address: Value,
    http_filters: &[Value],
    access_log: &Path,
    mtls: bool,
) -> Value {
    let mut filters = Vec::new();
    if let (true, Some(wasm)) = (spec.peer_address_filter, &spec.wasm) {
        filters.push(peer_address_filter(&spec.namespace, wasm));
    }
    filters.push(hcm(name, spec, mesh, http_filters, access_log));
    let mut chain = json!({ "filters": filters });
    if mtls {
        chain["transport_socket"] = downstream_tls(spec);
    }
    json!({
        "name": name,
        "address": address,
        // Envoy binds with SO_REUSEPORT by default: a second Envoy (another test, another
        // demo) picking the same port would silently share it. Without, it fails to start
        // and `Sidecar::start` retries on another port.
        "enable_reuse_port": false,
        "traffic_direction": "INBOUND",
        "filter_chains": [chain]
    })
}

/// Istio's inbound mTLS: a client certificate is required and must carry a SPIFFE id.
fn downstream_tls(spec: &SidecarSpec) -> Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
            "common_tls_context": {
                "tls_certificates": [{
                    "certificate_chain": { "filename": spec.identity.cert },
                    "private_key": { "filename": spec.identity.key }
                }],
                "validation_context": {
                    "trusted_ca": { "filename": spec.ca },
                    "match_typed_subject_alt_names": [
                        { "san_type": "URI", "matcher": { "prefix": "spiffe://" } }
                    ]
                }
            }
        }
    })
}

/// An Istio TCP filter chain: the NETWORK role, then `tcp_proxy` to the TCP application.
/// No HTTP connection manager, so no HTTP filter runs here.
fn tcp_listener(name: &str, spec: &SidecarSpec, address: Value, mtls: bool) -> Value {
    let mut filters = Vec::new();
    if let (true, Some(wasm)) = (spec.peer_address_filter, &spec.wasm) {
        filters.push(peer_address_filter(&spec.namespace, wasm));
    }
    filters.push(json!({
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": TCP_APP_CLUSTER,
            "cluster": TCP_APP_CLUSTER
        }
    }));
    let mut chain = json!({ "name": name, "filters": filters });
    if mtls {
        chain["transport_socket"] = downstream_tls(spec);
    }
    json!({
        "name": name,
        "address": address,
        "enable_reuse_port": false,
        "traffic_direction": "INBOUND",
        "filter_chains": [chain]
    })
}

/// The module's NETWORK role, inline (it takes no configuration).
fn peer_address_filter(namespace: &str, wasm: &Path) -> Value {
    json!({
        "name": "envoy.filters.network.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm",
            "config": {
                "name": format!("{namespace}.krites-peer-address"),
                "root_id": "krites_peer_address",
                "vm_config": { "runtime": "envoy.wasm.runtime.v8", "code": { "local": { "filename": wasm } } },
                "failure_policy": "FAIL_CLOSED"
            }
        }
    })
}

/// HTTP connection manager configured the way Istio configures inbound sidecar listeners
/// in the respects Krites cares about (XFCC handling, no trust in XFF, path normalization).
fn hcm(
    stat_prefix: &str,
    spec: &SidecarSpec,
    mesh: &Mesh,
    http_filters: &[Value],
    access_log: &Path,
) -> Value {
    let upstream = &spec.name;
    let (normalize_path, merge_slashes, escaped_slashes) = match mesh.path_normalization {
        Some(mode) => mode.hcm_settings(),
        None => (spec.normalize_path, spec.normalize_path, "KEEP_UNCHANGED"),
    };
    let mut hcm = json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat_prefix,
            "forward_client_cert_details": "SANITIZE_SET",
            "set_current_client_cert_details": { "uri": true },
            "use_remote_address": false,
            "normalize_path": normalize_path,
            "merge_slashes": merge_slashes,
            "path_with_escaped_slashes_action": escaped_slashes,
            "access_log": [{
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": access_log,
                    "log_format": { "text_format_source": { "inline_string": format!(
                        "[%START_TIME%] {stat_prefix} %DOWNSTREAM_REMOTE_ADDRESS% \"%REQ(:METHOD)% %REQ(:PATH)%\" %RESPONSE_CODE% %RESPONSE_CODE_DETAILS% peer=%DOWNSTREAM_PEER_URI_SAN%\n"
                    ) } }
                }
            }],
            "route_config": {
                "name": "local",
                "virtual_hosts": [{
                    "name": "app",
                    "domains": ["*"],
                    "routes": [{
                        "match": { "prefix": "/" },
                        "direct_response": { "status": 200, "body": { "inline_string": format!("ok {upstream}\n") } },
                        "response_headers_to_add": [
                            { "header": { "key": "x-krites-upstream", "value": upstream } }
                        ]
                    }]
                }]
            },
            // The "application" is a direct response; rewriting its body with request details
            // lets tests see what the app would receive (path after normalization, XFCC).
            // Only 200s are rewritten; Krites denies with 403, so its replies pass untouched.
            "local_reply_config": { "mappers": [{
                "filter": { "status_code_filter": { "comparison": { "op": "EQ", "value": {
                    "default_value": 200, "runtime_key": "krites_testbed.echo_status" } } } },
                "body_format_override": { "text_format_source": { "inline_string": format!(
                    "ok {upstream}\nlistener={stat_prefix}\nmethod=%REQ(:METHOD)%\npath=%REQ(:PATH)%\nsource=%DOWNSTREAM_REMOTE_ADDRESS%\npeer=%DOWNSTREAM_PEER_URI_SAN%\nxfcc=%REQ(X-FORWARDED-CLIENT-CERT)%\n"
                ) } }
            }] },
            "http_filters": http_filters
        }
    });
    if mesh.app.is_some() {
        // A real application answers: route to it, and leave its replies alone.
        let tc = &mut hcm["typed_config"];
        tc["route_config"]["virtual_hosts"][0]["routes"][0] = json!({
            "match": { "prefix": "/" },
            "route": { "cluster": APP_CLUSTER, "timeout": "15s" }
        });
        if let Some(map) = tc.as_object_mut() {
            map.remove("local_reply_config");
        }
    }
    hcm
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::*;
    use crate::envoy::ContainerPort;

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
            wasm: None,
            plugin_config: "{}".into(),
            work_dir: PathBuf::from("/w"),
            normalize_path: true,
            peer_address_filter: false,
        }
    }

    fn ports(outbound: Vec<u16>) -> Ports {
        Ports {
            admin: 1,
            mtls: 2,
            plain: 3,
            tcp: None,
            outbound,
            extra: vec![],
        }
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
    fn extra_inbound_addresses_get_their_own_listeners() {
        let mut p = ports(vec![]);
        p.extra = vec![
            ("::1".parse().unwrap(), 4, 5),
            ("::".parse().unwrap(), 6, 7),
        ];
        let boot = bootstrap(
            &spec(),
            &Mesh::default(),
            &p,
            Path::new("/e"),
            Path::new("/e"),
            Path::new("/a"),
        );
        let listeners = boot["static_resources"]["listeners"].as_array().unwrap();
        let addr = |i: usize| {
            (
                listeners[i]["name"].clone(),
                listeners[i]["address"].clone(),
            )
        };
        assert_eq!(listeners.len(), 6);
        assert_eq!(
            addr(2),
            (
                json!("inbound_mtls_x0"),
                json!({"socket_address": {"address": "::1", "port_value": 4}})
            )
        );
        assert_eq!(
            addr(5),
            (
                json!("inbound_plain_x1"),
                json!({"socket_address": {"address": "::", "port_value": 7, "ipv4_compat": true}})
            )
        );
        assert!(listeners[4]["filter_chains"][0]
            .get("transport_socket")
            .is_some());
    }

    #[test]
    fn without_a_mesh_the_listeners_answer_themselves() {
        let boot = bootstrap(
            &spec(),
            &Mesh::default(),
            &ports(vec![]),
            Path::new("/e"),
            Path::new("/e"),
            Path::new("/a"),
        );
        let listeners = boot["static_resources"]["listeners"].as_array().unwrap();
        assert_eq!(listeners.len(), 2);
        let route = &listeners[0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
            ["virtual_hosts"][0]["routes"][0];
        assert_eq!(route["direct_response"]["status"], 200);
        assert!(boot["node"]["metadata"].get("POD_PORTS").is_none());
        assert_eq!(boot["static_resources"]["clusters"], json!([]));
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
        let boot = bootstrap(
            &spec(),
            &mesh,
            &ports(vec![5000]),
            Path::new("/e"),
            Path::new("/e"),
            Path::new("/a"),
        );
        // Istio passes POD_PORTS as a JSON string.
        let pod_ports = boot["node"]["metadata"]["POD_PORTS"].as_str().unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(pod_ports).unwrap(),
            json!([{"name": "http", "containerPort": 8080, "protocol": "TCP"}])
        );

        let listeners = boot["static_resources"]["listeners"].as_array().unwrap();
        let hcm = &listeners[0]["filter_chains"][0]["filters"][0]["typed_config"];
        assert_eq!(
            hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"],
            APP_CLUSTER
        );
        assert!(hcm.get("local_reply_config").is_none());

        let out = &listeners[2];
        assert_eq!(
            out["address"]["socket_address"],
            json!({"address": "127.0.0.12", "port_value": 5000})
        );
        assert_eq!(out["traffic_direction"], "OUTBOUND");

        let clusters = boot["static_resources"]["clusters"].as_array().unwrap();
        assert_eq!(clusters[0]["name"], APP_CLUSTER);
        let db = &clusters[1];
        assert_eq!(db["name"], "outbound|database");
        // From the pod IP, with the workload's certificate, checking the server's SPIFFE id.
        assert_eq!(
            db["upstream_bind_config"]["source_address"]["address"],
            "127.0.0.12"
        );
        let tls = &db["transport_socket"]["typed_config"]["common_tls_context"];
        assert_eq!(
            tls["tls_certificates"][0]["certificate_chain"]["filename"],
            "/pki/summary.crt"
        );
        assert_eq!(
            tls["validation_context"]["match_typed_subject_alt_names"][0]["matcher"]["exact"],
            "spiffe://cluster.local/ns/default/sa/database"
        );
    }

    #[test]
    fn the_ingress_faces_clients_and_calls_upstream_over_mtls() {
        let id = Identity {
            cert: PathBuf::from("/pki/gw.crt"),
            key: PathBuf::from("/pki/gw.key"),
            uri: None,
        };
        let up = Outbound {
            service: "customer".into(),
            endpoints: vec!["127.0.0.11:4000".parse().unwrap()],
            server_identity: "spiffe://cluster.local/ns/default/sa/customer".into(),
        };
        let boot = ingress_bootstrap(
            "gw",
            Ipv4Addr::new(127, 0, 0, 10),
            1,
            8080,
            &up,
            &id,
            Path::new("/pki/ca.crt"),
            Path::new("/a"),
        );
        let l = &boot["static_resources"]["listeners"][0];
        assert_eq!(l["address"]["socket_address"]["port_value"], 8080);
        assert!(l["filter_chains"][0].get("transport_socket").is_none());
        assert_eq!(
            l["filter_chains"][0]["filters"][0]["typed_config"]["use_remote_address"],
            true
        );
        let c = &boot["static_resources"]["clusters"][0];
        assert_eq!(
            c["upstream_bind_config"]["source_address"]["address"],
            "127.0.0.10"
        );
        assert_eq!(
            c["transport_socket"]["typed_config"]["common_tls_context"]["tls_certificates"][0]
                ["certificate_chain"]["filename"],
            "/pki/gw.crt"
        );
    }
}
