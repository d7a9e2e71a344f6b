//! The Dikastes architecture with the Krites engine: an out-of-process
//! authorizer that Envoy asks over gRPC (`envoy.service.auth.v3.Authorization/Check`,
//! Envoy's `ext_authz` filter) for every request.
//!
//! # Why
//!
//! Calico enforced application-layer policy this way: Dikastes, a sidecar
//! process, answered Envoy's ext_authz calls. Krites decides inside Envoy
//! instead. To measure what leaving the proxy costs, and nothing else, the
//! benchmark runs the *same* engine ([`krites_policy::WorkloadPolicy`], the code
//! the Wasm filter runs) behind ext_authz: the difference between the two is
//! the architecture (a gRPC round trip per request over HTTP/2, protobuf
//! encoding, a second process), not the policy code.
//!
//! # Facts
//!
//! [`request_facts`] maps a `CheckRequest` onto the engine's [`RequestFacts`]
//! as the filter gathers them from Envoy:
//! - source address and port: `attributes.source.address.socket_address`,
//!   which Envoy fills from the *connection's* peer (not from
//!   `x-forwarded-for`), as the filter's NETWORK role does;
//! - destination address and port: `attributes.destination.address`;
//! - the peer: Envoy sets `attributes.source.principal` from the client
//!   certificate's first URI SAN, else its first DNS SAN, else its subject,
//!   and leaves it empty without a client certificate. Empty is plaintext; a
//!   `spiffe://` principal is the URI SAN; anything else is a certificate
//!   without a URI SAN the engine could read (the engine then sees mTLS without
//!   a SPIFFE id, as for any non-SPIFFE URI);
//! - method and path: `attributes.request.http.method` and `.path` (the request
//!   target with its query; the engine normalises it).
//!
//! A request without a source address or HTTP attributes is malformed and
//! denied: the authorizer fails closed, like the filter.
//!
//! # Answers
//!
//! Allowed: gRPC status OK (0) with an `OkHttpResponse`. Denied:
//! `PERMISSION_DENIED` (7) with a `DeniedHttpResponse` of HTTP 403 and the body
//! `RBAC: access denied`, what Istio's RBAC and the Krites filter return, so
//! clients cannot tell the three apart. The engine's explanation goes into the
//! gRPC status message (Envoy logs it at debug), not to the client.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::{bail, Context};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode as HttpStatusCode};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{Authorization, AuthorizationServer};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse};
use envoy_types::pb::google::rpc;
use krites_policy::{Peer, PolicySet, RequestFacts, Workload, WorkloadPolicy};

/// The body of a denial, as Istio's RBAC filter and the Krites filter send it.
pub const DENIED_BODY: &str = "RBAC: access denied";

/// The Krites engine for one workload, answering ext_authz checks.
#[derive(Debug)]
pub struct Authorizer {
    policy: WorkloadPolicy,
    workload: Workload,
    in_scope: bool,
}

impl Authorizer {
    /// Compiles plugin config JSON (the filter's format) for `workload`, as
    /// the filter compiles it (only the policies selecting it kept).
    pub fn new(config_json: &[u8], workload: &Workload) -> anyhow::Result<Authorizer> {
        let set = PolicySet::for_workload(config_json.to_vec(), workload).map_err(|e| anyhow::anyhow!("plugin config: {e}"))?;
        Ok(Authorizer::from_policy_set(set, workload))
    }

    /// For a config already compiled.
    pub fn from_policy_set(set: PolicySet, workload: &Workload) -> Authorizer {
        let in_scope = set.in_scope(&workload.namespace);
        Authorizer { policy: WorkloadPolicy::new(Arc::new(set), workload), workload: workload.clone(), in_scope }
    }

    pub fn policy(&self) -> &WorkloadPolicy {
        &self.policy
    }

    pub fn workload(&self) -> &Workload {
        &self.workload
    }

    /// Decides one check: (allowed, why). Malformed requests are denied.
    pub fn decide(&self, req: &CheckRequest) -> (bool, String) {
        if !self.in_scope {
            // As the filter: a config for other namespaces decides nothing here.
            return (true, format!("ALLOW out of scope: the config is not for namespace {}", self.workload.namespace));
        }
        match request_facts(req) {
            Ok(facts) => {
                let decision = self.policy.decide(&facts);
                (decision.allowed(), decision.to_string())
            }
            Err(e) => (false, format!("DENY malformed check request: {e}")),
        }
    }
}

/// What is missing or wrong in a `CheckRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FactsError {
    NoAttributes,
    NoSourceAddress,
    /// The source is not an IP socket address (a pipe, an internal address).
    SourceNotIp(String),
    NoHttpRequest,
}

impl std::fmt::Display for FactsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FactsError::NoAttributes => f.write_str("no attributes"),
            FactsError::NoSourceAddress => f.write_str("no attributes.source.address"),
            FactsError::SourceNotIp(what) => write!(f, "attributes.source.address is not an IP socket address: {what}"),
            FactsError::NoHttpRequest => f.write_str("no attributes.request.http"),
        }
    }
}

impl std::error::Error for FactsError {}

/// The engine's facts for one check (see the module doc).
pub fn request_facts(req: &CheckRequest) -> Result<RequestFacts<'_>, FactsError> {
    let attrs = req.attributes.as_ref().ok_or(FactsError::NoAttributes)?;
    let source = attrs.source.as_ref().ok_or(FactsError::NoSourceAddress)?;
    let (source_ip, source_port) = match socket(source.address.as_ref()) {
        Socket::Ip(ip, port) => (ip, port),
        Socket::Missing => return Err(FactsError::NoSourceAddress),
        Socket::Other(what) => return Err(FactsError::SourceNotIp(what)),
    };
    let (destination_ip, destination_port) = match socket(attrs.destination.as_ref().and_then(|d| d.address.as_ref())) {
        Socket::Ip(ip, port) => (Some(ip), port),
        Socket::Missing | Socket::Other(_) => (None, None),
    };
    let principal = source.principal.as_str();
    let peer = if principal.is_empty() {
        Peer::Plaintext
    } else if principal.starts_with("spiffe://") {
        Peer::Mtls { uri_san: Some(principal) }
    } else {
        Peer::Mtls { uri_san: None }
    };
    let http = attrs.request.as_ref().and_then(|r| r.http.as_ref()).ok_or(FactsError::NoHttpRequest)?;
    Ok(RequestFacts {
        source_ip: Some(source_ip),
        source_port,
        destination_ip,
        destination_port,
        peer,
        // Empty means Envoy sent none: such a request matches no HTTP clause.
        method: Some(http.method.as_str()).filter(|m| !m.is_empty()),
        path: Some(http.path.as_str()).filter(|p| !p.is_empty()),
    })
}

enum Socket {
    Ip(IpAddr, Option<u16>),
    Missing,
    Other(String),
}

fn socket(address: Option<&Address>) -> Socket {
    match address.and_then(|a| a.address.as_ref()) {
        None => Socket::Missing,
        Some(AddressKind::SocketAddress(s)) => match s.address.parse::<IpAddr>() {
            Ok(ip) => {
                let port = match s.port_specifier {
                    Some(PortSpecifier::PortValue(p)) => u16::try_from(p).ok(),
                    _ => None,
                };
                Socket::Ip(ip, port)
            }
            Err(_) => Socket::Other(format!("{:?}", s.address)),
        },
        Some(AddressKind::Pipe(p)) => Socket::Other(format!("pipe {:?}", p.path)),
        Some(AddressKind::EnvoyInternalAddress(_)) => Socket::Other("an Envoy internal address".into()),
    }
}

/// The answer Envoy's ext_authz filter acts on.
pub fn check_response(allowed: bool, reason: String) -> CheckResponse {
    if allowed {
        return CheckResponse {
            status: Some(rpc::Status { code: tonic::Code::Ok as i32, message: reason, details: Vec::new() }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
            dynamic_metadata: None,
        };
    }
    let content_type = HeaderValueOption {
        header: Some(HeaderValue { key: "content-type".into(), value: "text/plain".into(), raw_value: Vec::new() }),
        ..HeaderValueOption::default()
    };
    CheckResponse {
        status: Some(rpc::Status { code: tonic::Code::PermissionDenied as i32, message: reason, details: Vec::new() }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: HttpStatusCode::Forbidden as i32 }),
            headers: vec![content_type],
            body: DENIED_BODY.to_string(),
        })),
        dynamic_metadata: None,
    }
}

#[tonic::async_trait]
impl Authorization for Authorizer {
    async fn check(&self, request: tonic::Request<CheckRequest>) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let (allowed, reason) = self.decide(request.get_ref());
        Ok(tonic::Response::new(check_response(allowed, reason)))
    }
}

/// Only loopback: the authorizer has no authentication of its own, and the
/// benchmark never leaves 127.0.0.0/8.
pub fn check_loopback(listen: SocketAddr) -> anyhow::Result<()> {
    let ok = match listen.ip() {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback(),
    };
    if !ok {
        bail!("refusing to listen on {listen}: only 127.0.0.0/8 or ::1");
    }
    Ok(())
}

/// Binds `listen` (loopback only) and serves until SIGINT or SIGTERM.
pub async fn serve(authorizer: Authorizer, listen: SocketAddr) -> anyhow::Result<()> {
    let listener = bind(listen).await?;
    serve_on(authorizer, listener, shutdown_signal()).await
}

/// Binds a listener for [`serve_on`], loopback only.
pub async fn bind(listen: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    check_loopback(listen)?;
    tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))
}

/// Serves h2c gRPC on `listener` until `shutdown` completes.
pub async fn serve_on(
    authorizer: Authorizer,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let addr = listener.local_addr().context("listener address")?;
    check_loopback(addr)?;
    // No Nagle: one small response per request, latency is what is measured.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(AuthorizationServer::new(authorizer))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .with_context(|| format!("serving ext_authz on {addr}"))
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::collections::BTreeMap;

    use envoy_types::pb::envoy::config::core::v3::{Pipe, SocketAddress};
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer as AttrPeer, Request};
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;

    use super::*;

    fn sock(ip: &str, port: u32) -> Option<Address> {
        Some(Address {
            address: Some(AddressKind::SocketAddress(SocketAddress {
                address: ip.into(),
                port_specifier: Some(PortSpecifier::PortValue(port)),
                ..SocketAddress::default()
            })),
        })
    }

    fn check(src: Option<Address>, principal: &str, method: &str, path: &str) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(AttrPeer { address: src, principal: principal.into(), ..AttrPeer::default() }),
                destination: Some(AttrPeer { address: sock("127.0.0.13", 2379), ..AttrPeer::default() }),
                request: Some(Request {
                    time: None,
                    http: Some(HttpRequest { method: method.into(), path: path.into(), ..HttpRequest::default() }),
                }),
                ..AttributeContext::default()
            }),
        }
    }

    /// (source ip, source port, peer, method, path)
    type Want<'a> = (Option<&'a str>, Option<u16>, Peer<'a>, Option<&'a str>, Option<&'a str>);

    #[test]
    fn facts_table() {
        let summary = "spiffe://cluster.local/ns/default/sa/summary";
        let cases: Vec<(CheckRequest, Result<Want<'_>, FactsError>)> = vec![
            (check(sock("127.0.0.12", 40000), summary, "GET", "/v2/keys?x=1"), Ok((Some("127.0.0.12"), Some(40000), Peer::Mtls { uri_san: Some(summary) }, Some("GET"), Some("/v2/keys?x=1")))),
            (check(sock("127.0.0.12", 1), "", "PUT", "/"), Ok((Some("127.0.0.12"), Some(1), Peer::Plaintext, Some("PUT"), Some("/")))),
            // DNS SAN or subject: a certificate without a URI SAN.
            (check(sock("127.0.0.12", 1), "localhost", "GET", "/"), Ok((Some("127.0.0.12"), Some(1), Peer::Mtls { uri_san: None }, Some("GET"), Some("/")))),
            (check(sock("127.0.0.12", 1), "https://example.com/w", "GET", "/"), Ok((Some("127.0.0.12"), Some(1), Peer::Mtls { uri_san: None }, Some("GET"), Some("/")))),
            (check(sock("::ffff:127.0.0.12", 70000), "", "GET", "/"), Ok((Some("::ffff:127.0.0.12"), None, Peer::Plaintext, Some("GET"), Some("/")))),
            (check(sock("127.0.0.12", 1), "", "", ""), Ok((Some("127.0.0.12"), Some(1), Peer::Plaintext, None, None))),
            (check(None, "", "GET", "/"), Err(FactsError::NoSourceAddress)),
            (check(Some(Address { address: None }), "", "GET", "/"), Err(FactsError::NoSourceAddress)),
            (check(sock("not-an-ip", 1), "", "GET", "/"), Err(FactsError::SourceNotIp("\"not-an-ip\"".into()))),
            (
                check(Some(Address { address: Some(AddressKind::Pipe(Pipe { path: "/s".into(), mode: 0 })) }), "", "GET", "/"),
                Err(FactsError::SourceNotIp("pipe \"/s\"".into())),
            ),
            (CheckRequest { attributes: None }, Err(FactsError::NoAttributes)),
        ];
        for (req, want) in &cases {
            let got = request_facts(req).map(|f| {
                (f.source_ip, f.source_port, f.peer, f.method, f.path, f.destination_ip, f.destination_port)
            });
            match (got, want) {
                (Ok((ip, port, peer, method, path, dip, dport)), Ok((wip, wport, wpeer, wmethod, wpath))) => {
                    assert_eq!(ip, wip.map(|s| s.parse().unwrap()), "{req:?}");
                    assert_eq!((port, peer, method, path), (*wport, *wpeer, *wmethod, *wpath), "{req:?}");
                    assert_eq!((dip, dport), (Some("127.0.0.13".parse().unwrap()), Some(2379)));
                }
                (Err(e), Err(w)) => assert_eq!(&e, w),
                (got, want) => panic!("{req:?}: got {got:?}, want {want:?}"),
            }
        }
        let mut no_http = check(sock("127.0.0.12", 1), "", "GET", "/");
        no_http.attributes.as_mut().unwrap().request = None;
        assert_eq!(request_facts(&no_http).unwrap_err(), FactsError::NoHttpRequest);
    }

    fn yaobank_authorizer(ns: &str, sa: &str, app: &str) -> Authorizer {
        let path = krites_testbed::workspace_root().join("tests/fixtures/yaobank-plugin-config.json");
        let workload = Workload {
            namespace: ns.into(),
            service_account: sa.into(),
            labels: [("app".to_string(), app.to_string())].into(),
            ports: BTreeMap::new(),
        };
        Authorizer::new(&std::fs::read(path).unwrap(), &workload).unwrap()
    }

    #[test]
    fn yaobank_database_decisions() {
        let db = yaobank_authorizer("default", "database", "database");
        let summary = "spiffe://cluster.local/ns/default/sa/summary";
        let customer = "spiffe://cluster.local/ns/default/sa/customer";
        let cases = [
            ("summary, its cert", check(sock("127.0.0.12", 5), summary, "GET", "/v2/keys"), true),
            ("summary-2, its cert", check(sock("127.0.0.22", 5), summary, "PUT", "/v2/keys/a/b"), true),
            ("summary, plaintext", check(sock("127.0.0.12", 5), "", "GET", "/v2/keys"), true),
            ("customer's cert", check(sock("127.0.0.11", 5), customer, "GET", "/v2/keys"), false),
            ("summary's cert from customer's pod", check(sock("127.0.0.11", 5), summary, "GET", "/v2/keys"), false),
            ("stolen cert, attacker address", check(sock("127.0.0.66", 5), summary, "PUT", "/v2/keys"), false),
            ("plaintext, unknown address", check(sock("127.0.0.99", 5), "", "GET", "/v2/keys"), false),
            ("no SPIFFE id", check(sock("127.0.0.12", 5), "localhost", "GET", "/v2/keys"), false),
            ("malformed", check(None, summary, "GET", "/v2/keys"), false),
        ];
        for (what, req, want) in cases {
            let (allowed, reason) = db.decide(&req);
            assert_eq!(allowed, want, "{what}: {reason}");
            assert!(reason.starts_with(if want { "ALLOW" } else { "DENY" }), "{what}: {reason}");
        }
        assert_eq!(db.policy().policies_selecting(), 1);
    }

    #[test]
    fn responses() {
        let ok = check_response(true, "ALLOW x".into());
        assert_eq!(ok.status.as_ref().unwrap().code, 0);
        assert!(matches!(ok.http_response, Some(HttpResponse::OkResponse(_))));
        let denied = check_response(false, "DENY y".into());
        assert_eq!(denied.status.as_ref().unwrap().code, 7);
        assert_eq!(denied.status.as_ref().unwrap().message, "DENY y");
        let Some(HttpResponse::DeniedResponse(d)) = &denied.http_response else { panic!("{denied:?}") };
        assert_eq!(d.status.as_ref().unwrap().code, 403);
        assert_eq!(d.body, DENIED_BODY);
    }

    #[test]
    fn loopback_only() {
        for (addr, ok) in [("127.0.0.1:1", true), ("127.9.8.7:1", true), ("[::1]:1", true), ("0.0.0.0:1", false), ("10.0.0.1:1", false), ("[::]:1", false), ("[::ffff:127.0.0.1]:1", false)] {
            assert_eq!(check_loopback(addr.parse().unwrap()).is_ok(), ok, "{addr}");
        }
        let c = yaobank_authorizer("default", "database", "database");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let err = rt.block_on(serve(c, "0.0.0.0:0".parse().unwrap())).unwrap_err();
        assert!(err.to_string().contains("refusing"), "{err}");
    }

    #[test]
    fn out_of_scope_decides_nothing() {
        let path = krites_testbed::workspace_root().join("tests/fixtures/yaobank-plugin-config.json");
        let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        config["scope"] = serde_json::json!(["elsewhere"]);
        let workload = Workload { namespace: "default".into(), service_account: "database".into(), labels: [("app".to_string(), "database".to_string())].into(), ports: BTreeMap::new() };
        let a = Authorizer::new(config.to_string().as_bytes(), &workload).unwrap();
        assert!(a.decide(&check(sock("127.0.0.66", 1), "", "GET", "/")).0);
        assert!(Authorizer::new(b"[]", &workload).unwrap_err().to_string().contains("plugin config"));
    }
}
