//! Envoy bootstrap and ECDS documents for one emulated Istio sidecar.
//!
//! Built as JSON values (Envoy reads `.json` config files natively) so that arbitrary plugin
//! configuration strings need no YAML quoting. The shape follows
//! shared/reference/istio-envoy-wasm.md section 4, which was validated against Envoy 1.40.

use std::net::Ipv4Addr;
use std::path::Path;

use serde_json::{json, Value};

use crate::envoy::SidecarSpec;

const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// Where a sidecar's listeners and admin endpoint live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub admin: u16,
    pub mtls: u16,
    pub plain: u16,
}

/// The HTTP filter / ECDS resource name Istio 1.21-1.29 gives a WasmPlugin `krites`.
pub fn ecds_name(namespace: &str) -> String {
    format!("extensions.istio.io/wasmplugin/{namespace}.krites")
}

/// The bootstrap. `ecds_file`/`ecds_dir` are only used when `spec.wasm` is set.
pub fn bootstrap(
    spec: &SidecarSpec,
    ports: Ports,
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
    let listeners = vec![
        listener(
            "inbound_mtls",
            spec,
            ports.mtls,
            &http_filters,
            access_log,
            true,
        ),
        listener(
            "inbound_plain",
            spec,
            ports.plain,
            &http_filters,
            access_log,
            false,
        ),
    ];
    json!({
        "node": {
            "id": format!("sidecar~{}~{}.{ns}~{ns}.svc.cluster.local", spec.ip, spec.name),
            "cluster": format!("{}.{ns}", spec.name),
            "metadata": {
                "NAMESPACE": ns,
                "SERVICE_ACCOUNT": spec.service_account,
                "LABELS": spec.labels,
                "NAME": spec.name,
                "INSTANCE_IPS": spec.ip.to_string(),
            }
        },
        "admin": { "address": socket(spec.ip, ports.admin) },
        "static_resources": { "listeners": listeners }
    })
}

/// The ECDS resource file carrying the Krites plugin (`version` must grow on every update).
pub fn ecds(namespace: &str, version: u64, wasm: &Path, plugin_config: &str) -> Value {
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

fn listener(
    name: &str,
    spec: &SidecarSpec,
    port: u16,
    http_filters: &[Value],
    access_log: &Path,
    mtls: bool,
) -> Value {
    let mut filters = Vec::new();
    if let (true, Some(wasm)) = (spec.peer_address_filter, &spec.wasm) {
        filters.push(peer_address_filter(&spec.namespace, wasm));
    }
    filters.push(hcm(name, spec, http_filters, access_log));
    let mut chain = json!({ "filters": filters });
    if mtls {
        chain["transport_socket"] = json!({
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
        });
    }
    json!({
        "name": name,
        "address": socket(spec.ip, port),
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
fn hcm(stat_prefix: &str, spec: &SidecarSpec, http_filters: &[Value], access_log: &Path) -> Value {
    let upstream = &spec.name;
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat_prefix,
            "forward_client_cert_details": "SANITIZE_SET",
            "set_current_client_cert_details": { "uri": true },
            "use_remote_address": false,
            "normalize_path": spec.normalize_path,
            "merge_slashes": spec.normalize_path,
            "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
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
    })
}
