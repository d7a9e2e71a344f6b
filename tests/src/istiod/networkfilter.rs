//! `networkfilter.go` and the inbound HTTP connection manager (`buildSidecarInboundHTTPOpts`,
//! `buildHTTPConnectionManager`).

use serde_json::{json, Value};

use super::extensions::{ecds_resource_name, NETWORK_PLUGIN, PLUGIN_NAMESPACE};
use super::httpfilters::build_inbound_http_filters;
use super::listener_inbound::InboundChainConfig;
use super::{InboundEndpoint, Proxy, HCM_TYPE, TCP_PROXY_TYPE};

const WASM_NETWORK_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm";
const RBAC_NETWORK_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";

/// Krites' NETWORK WasmPlugin (`type: NETWORK`, phase AUTHN), as istiod sends it: by ECDS
/// under `extensions.istio.io/wasmplugin/istio-system.krites-peer-address`. With
/// `failStrategy: FAIL_CLOSE`, Istio >= 1.25 may substitute a deny-all network RBAC when the
/// module cannot be fetched, hence the second type URL.
pub fn krites_network_filter(p: &Proxy) -> Value {
    json!({
        "name": ecds_resource_name(PLUGIN_NAMESPACE, NETWORK_PLUGIN),
        "config_discovery": {
            "config_source": {
                "resource_api_version": "V3",
                "initial_fetch_timeout": "0s",
                "path_config_source": {
                    "path": p.files.network_ecds,
                    "watched_directory": { "path": p.files.network_ecds_dir }
                }
            },
            "type_urls": [WASM_NETWORK_TYPE, RBAC_NETWORK_TYPE]
        }
    })
}

pub(crate) fn tcp_proxy(stat_prefix: &str, cluster: &str) -> Value {
    json!({
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": { "@type": TCP_PROXY_TYPE, "stat_prefix": stat_prefix, "cluster": cluster }
    })
}

/// `tcp_proxy` with Istio's TCP access log.
fn tcp_proxy_logged(p: &Proxy, stat_prefix: &str, cluster: &str) -> Value {
    let mut f = tcp_proxy(stat_prefix, cluster);
    f["typed_config"]["access_log"] = access_logs(p, stat_prefix);
    f
}

/// `buildInboundNetworkFilters`: network Wasm plugins, then `tcp_proxy` to the app.
pub(crate) fn build_inbound_network_filters(p: &Proxy, cc: &InboundChainConfig) -> Vec<Value> {
    let mut filters = Vec::new();
    if p.authz.krites_network {
        filters.push(krites_network_filter(p));
    }
    filters.push(tcp_proxy_logged(p, &cc.cluster_name, &cc.cluster_name));
    filters
}

/// `buildInboundNetworkFiltersForHTTP`: network Wasm plugins, then the HCM.
pub(crate) fn build_inbound_network_filters_for_http(
    p: &Proxy,
    cc: &InboundChainConfig,
) -> Vec<Value> {
    let mut filters = Vec::new();
    if p.authz.krites_network {
        filters.push(krites_network_filter(p));
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
    let endpoint = p
        .inbound_ports()
        .into_iter()
        .find(|(port, ..)| !cc.passthrough && *port == cc.port)
        .map_or(InboundEndpoint::OriginalDst, |(_, _, endpoint, _)| endpoint);
    let mut route = json!({
        "name": "default",
        "match": { "prefix": "/" },
        "route": { "cluster": cc.cluster_name, "timeout": "0s",
                   "max_stream_duration": { "max_stream_duration": "0s", "grpc_timeout_header_max": "0s" } },
        "decorator": { "operation": format!(":{port}/*") }
    });
    if matches!(endpoint, InboundEndpoint::Echo | InboundEndpoint::Ok) {
        // No application: Envoy answers in its place, naming the pod.
        if let Some(r) = route.as_object_mut() {
            r.remove("route");
        }
        route["direct_response"] = json!({ "status": 200, "body": { "inline_string": format!("ok {}\n", p.pod_name) } });
        route["response_headers_to_add"] =
            json!([{ "header": { "key": "x-krites-upstream", "value": p.pod_name } }]);
    }
    let (normalize_path, merge_slashes, escaped_slashes) = p.path_normalization.hcm_settings();
    let mut tc = json!({
        "@type": HCM_TYPE,
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",
        "server_name": "istio-envoy",
        "use_remote_address": false,
        "forward_client_cert_details": "APPEND_FORWARD",
        "set_current_client_cert_details": { "subject": true, "dns": true, "uri": true },
        "normalize_path": normalize_path,
        "stream_idle_timeout": "0s",
        "upgrade_configs": [{ "upgrade_type": "websocket" }],
        "access_log": access_logs(p, &stat_prefix),
        "route_config": {
            "name": cc.cluster_name,
            "validate_clusters": false,
            "virtual_hosts": [{
                "name": format!("inbound|http|{port}"),
                "domains": ["*"],
                "routes": [route]
            }]
        },
        "http_filters": build_inbound_http_filters(p),
    });
    if merge_slashes {
        tc["merge_slashes"] = json!(true);
    }
    if escaped_slashes != "KEEP_UNCHANGED" {
        tc["path_with_escaped_slashes_action"] = json!(escaped_slashes);
    }
    if endpoint == InboundEndpoint::Echo {
        // The body of each 200 shows what an application would have received (the path after
        // normalisation, XFCC). Denials (403) pass untouched.
        tc["local_reply_config"] = json!({ "mappers": [{
            "filter": { "status_code_filter": { "comparison": { "op": "EQ", "value": {
                "default_value": 200, "runtime_key": "krites_testbed.echo_status" } } } },
            "body_format_override": { "text_format_source": { "inline_string": format!(
                "ok {}\nlistener={stat_prefix}\nmethod=%REQ(:METHOD)%\npath=%REQ(:PATH)%\nsource=%DOWNSTREAM_REMOTE_ADDRESS%\npeer=%DOWNSTREAM_PEER_URI_SAN%\nxfcc=%REQ(X-FORWARDED-CLIENT-CERT)%\n",
                p.pod_name
            ) } }
        }] });
    }
    json!({ "name": "envoy.filters.network.http_connection_manager", "typed_config": tc })
}

/// `meshConfig.accessLogFile`: none when unset (Istio's default profile), else one text line
/// per request or connection, with what the tests look for.
pub(crate) fn access_logs(p: &Proxy, prefix: &str) -> Value {
    file_access_logs(p.files.access_log.as_deref(), prefix)
}

/// [`access_logs`] for a log file path.
pub(crate) fn file_access_logs(path: Option<&std::path::Path>, prefix: &str) -> Value {
    let Some(path) = path else {
        return json!([]);
    };
    json!([{
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": path,
            "log_format": { "text_format_source": { "inline_string": format!(
                "[%START_TIME%] {prefix} chain=%FILTER_CHAIN_NAME% %DOWNSTREAM_REMOTE_ADDRESS% -> %DOWNSTREAM_LOCAL_ADDRESS% \"%REQ(:METHOD)% %REQ(:PATH)%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% sni=%REQUESTED_SERVER_NAME% tls=%DOWNSTREAM_TLS_VERSION% peer=%DOWNSTREAM_PEER_URI_SAN% upstream=%UPSTREAM_HOST% via=%UPSTREAM_LOCAL_ADDRESS%\n"
            ) } }
        }
    }])
}

