//! `listener_builder.go`: the inbound HTTP filters in Istio's order: (peer metadata, absent
//! here) AUTHN/AUTHZ WasmPlugins, CUSTOM (ext_authz), RBAC, router.

use serde_json::{json, Value};

use super::extensions::{ecds_resource_name, HTTP_PLUGIN, PLUGIN_NAMESPACE, WASM_HTTP_TYPE};
use super::{HttpAuthz, Proxy, ROUTER_TYPE};

pub const RBAC_HTTP_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
/// The cluster of an `envoyExtAuthzGrpc` extension provider (`outbound|<port>||<host>` in
/// Istio; one fixed name here, the provider being a static address).
pub const EXT_AUTHZ_CLUSTER: &str = "outbound|9191||ext-authz";
/// The provider's host, which istiod sets as the gRPC `:authority` (the cluster name, Envoy's
/// default, is not a valid authority).
pub const EXT_AUTHZ_AUTHORITY: &str = "ext-authz";

/// The inbound HTTP filters for `p.authz.http`.
pub fn build_inbound_http_filters(p: &Proxy) -> Vec<Value> {
    let mut filters = Vec::new();
    match &p.authz.http {
        HttpAuthz::None => {}
        HttpAuthz::Krites => {
            filters.push(krites_http_filter(p));
            filters.push(allow_all_rbac());
        }
        HttpAuthz::Rbac(rbac) => filters.extend(rbac.iter().cloned()),
        HttpAuthz::ExtAuthz(_) => filters.push(ext_authz_filter()),
    }
    filters.push(json!({ "name": "envoy.filters.http.router", "typed_config": { "@type": ROUTER_TYPE } }));
    filters
}

/// The Krites HTTP WasmPlugin by ECDS, failing closed until (and whenever) its resource is
/// missing. With FAIL_CLOSE, Istio >= 1.25 may substitute an RBAC deny-all.
pub(crate) fn krites_http_filter(p: &Proxy) -> Value {
    json!({
        "name": ecds_resource_name(PLUGIN_NAMESPACE, HTTP_PLUGIN),
        "config_discovery": {
            "config_source": {
                "resource_api_version": "V3",
                "initial_fetch_timeout": "0s",
                "path_config_source": {
                    "path": p.files.ecds,
                    "watched_directory": { "path": p.files.ecds_dir }
                }
            },
            "type_urls": [WASM_HTTP_TYPE, RBAC_HTTP_TYPE]
        }
    })
}

/// Stands for an AuthorizationPolicy: an ALLOW policy that allows everything.
fn allow_all_rbac() -> Value {
    json!({
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": RBAC_HTTP_TYPE,
            "rules": { "action": "ALLOW", "policies": { "ns[default]-policy[allow-all]-rule[0]": {
                "permissions": [{ "any": true }], "principals": [{ "any": true }]
            } } }
        }
    })
}

/// `action: CUSTOM` with an `envoyExtAuthzGrpc` provider: failing closed, 2 s timeout.
fn ext_authz_filter() -> Value {
    json!({
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "grpc_service": {
                "envoy_grpc": { "cluster_name": EXT_AUTHZ_CLUSTER, "authority": EXT_AUTHZ_AUTHORITY },
                "timeout": "2s"
            },
            "failure_mode_allow": false
        }
    })
}
