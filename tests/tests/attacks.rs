//! Attack corpus in real Envoy, under each of Istio's path normalisations (NONE, BASE, MERGE_SLASHES,
//! DECODE_AND_MERGE_SLASHES) and its runtime flags (a `#fragment` is stripped, not refused). Each row of the
//! table is (request, source address, client certificate, expected verdict): path encodings
//! against exact and prefix rules, method tricks, forged identity headers, foreign and
//! malformed certificates, valid certificates from the wrong addresses, IPv6 and IPv4-mapped
//! IPv6 sources, oversized and non-UTF-8 requests. Zero bypasses, and no request takes the
//! VM down.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use krites_testbed::{module_path, raw_request, EcdsOutcome, Identity, Mesh, PathNormalization, Pki, Request, Sidecar, SidecarSpec};

/// The workload `app`:
/// - ingress[0]: nothing from 127.0.0.99 (a blocked net);
/// - ingress[1]: the admin identity is refused from ::1 (restricts: either factor matches);
/// - ingress[2]: anyone may GET/POST under the prefix /public;
/// - ingress[3]: anyone may DELETE exactly /items (the target of method-override tricks);
/// - ingress[4]: service account admin may GET exactly /admin;
/// - ingress[5]: service account web may GET exactly /web.
///
/// Pods: admin on 127.0.0.31; web on 127.0.0.66 (the attacker's own pod) and ::1.
const CONFIG: &str = r#"{
  "version": 1,
  "policies": [{"name": "app", "selector": "app == 'app'", "ingress": [
    {"action": "Deny", "source": {"nets": ["127.0.0.99/32"]}},
    {"action": "Deny", "source": {"nets": ["::1/128"], "serviceAccounts": {"names": ["admin"]}}},
    {"action": "Allow", "http": {"methods": ["GET", "POST"], "paths": [{"prefix": "/public"}]}},
    {"action": "Allow", "http": {"methods": ["DELETE"], "paths": [{"exact": "/items"}]}},
    {"action": "Allow", "source": {"serviceAccounts": {"names": ["admin"]}}, "http": {"methods": ["GET"], "paths": [{"exact": "/admin"}]}},
    {"action": "Allow", "source": {"serviceAccounts": {"names": ["web"]}}, "http": {"methods": ["GET"], "paths": [{"exact": "/web"}]}}
  ]}],
  "endpoints": [
    {"namespace": "default", "serviceAccount": "admin", "labels": {"app": "console"}, "ips": ["127.0.0.31"]},
    {"namespace": "default", "serviceAccount": "web", "labels": {"app": "web"}, "ips": ["127.0.0.66", "::1"]}
  ]
}"#;

const ADMIN_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 31);
/// The attacker runs in the web pod: a known address, and web's own identity.
const WEB_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 66);
/// No pod owns it.
const UNOWNED_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 77);
const BLOCKED_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 99);
const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);
const DUAL_STACK: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

/// What the client sends.
#[derive(Debug, Clone)]
enum Req {
    /// Through curl: method and request target byte-for-byte, extra headers.
    Http { method: String, target: String, headers: Vec<(String, String)> },
    /// These bytes on a plain TCP connection (non-UTF-8, NUL, raw CONNECT).
    Raw(Vec<u8>),
}

/// Where the client connects from (and so which listener it reaches).
#[derive(Debug, Clone, Copy)]
enum Src {
    /// An IPv4 client to the pod IP.
    V4(Ipv4Addr),
    /// ::1 to the sidecar's [::1] listeners.
    V6,
    /// An IPv4 client to the dual-stack `::` listeners (`ipv4_compat`): the kernel hands
    /// Envoy an IPv4-mapped IPv6 peer, ::ffff:a.b.c.d.
    Mapped(Ipv4Addr),
}

/// Which certificate the client presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cert {
    /// Plaintext (Istio PERMISSIVE): no certificate.
    Plain,
    /// spiffe://cluster.local/ns/default/sa/admin from the mesh CA.
    Admin,
    /// spiffe://cluster.local/ns/default/sa/web from the mesh CA.
    Web,
    /// The admin's SPIFFE id, signed by another CA.
    OtherCa,
    /// Mesh CA, a URI SAN that is not SPIFFE.
    NonSpiffe,
    /// Mesh CA, no URI SAN at all.
    NoUri,
    /// Mesh CA, a non-SPIFFE URI SAN first and the admin's SPIFFE id second.
    NonSpiffeThenAdmin,
    /// Mesh CA, `spiffe://` URI SANs that are not Istio's shape (index into `MALFORMED`).
    Malformed(usize),
}

const MALFORMED: &[&str] = &[
    "spiffe://cluster.local/ns/default/sa/admin/extra",
    "spiffe://cluster.local/ns/default/serviceaccount/admin",
    "spiffe://cluster.local/ns//sa/admin",
    "spiffe://cluster.local/ns/default/sa/",
    "spiffe://cluster.local/ns/default/sa/ad%20min",
    "spiffe://cluster.local/ns/default/sa/admin?x=1",
    "spiffe:///ns/default/sa/admin",
    "spiffe://cluster.local/sa/admin/ns/default",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// 2xx: the request reached the application.
    Allow,
    /// 4xx: refused by Krites (403) or by Envoy before it (400, 404, 431, ...).
    Deny,
    /// The TLS handshake fails: Envoy refuses the certificate; no HTTP at all.
    Refused,
}
use Verdict::{Allow, Deny, Refused};

#[derive(Debug, Clone)]
struct Row {
    req: Req,
    from: Src,
    cert: Cert,
    expect: Verdict,
}

fn http(method: &str, target: &str, headers: &[(&str, &str)]) -> Req {
    Req::Http {
        method: method.into(),
        target: target.into(),
        headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

fn get(target: &str) -> Req {
    http("GET", target, &[])
}

fn raw(bytes: &[u8]) -> Req {
    Req::Raw(bytes.to_vec())
}

fn row(req: Req, from: Src, cert: Cert, expect: Verdict) -> Row {
    Row { req, from, cert, expect }
}

use Src::{Mapped, V4};
const WEB: Src = V4(WEB_IP);
const ADMIN: Src = V4(ADMIN_IP);

/// The corpus.
fn corpus() -> Vec<Row> {
    let mut rows = Vec::new();
    let mut add = |req: Req, from: Src, cert: Cert, expect: Verdict| rows.push(row(req, from, cert, expect));

    // Positive controls: what the policy allows must still be allowed.
    add(get("/public"), WEB, Cert::Plain, Allow);
    add(get("/public/x"), WEB, Cert::Plain, Allow);
    add(get("/public?x=1"), WEB, Cert::Plain, Allow);
    add(get("/public/"), WEB, Cert::Plain, Allow);
    add(http("POST", "/public/form", &[]), WEB, Cert::Plain, Allow);
    add(http("DELETE", "/items", &[]), WEB, Cert::Plain, Allow);
    add(get("/admin"), ADMIN, Cert::Admin, Allow);
    add(get("/admin?x=1"), ADMIN, Cert::Admin, Allow);
    add(get("/web"), WEB, Cert::Web, Allow);
    add(get(&format!("/public/{}", "a".repeat(8000))), WEB, Cert::Plain, Allow);
    // Istio's runtime sets http_reject_path_with_fragment: false, so Envoy strips a fragment
    // instead of answering 400: the filter and the application see the path without it.
    add(get("/public#x"), WEB, Cert::Plain, Allow);
    add(get("/admin#x"), ADMIN, Cert::Admin, Allow);

    // An exact Allow does not grow: to many servers `/items/` is another resource than
    // `/items` (Calico and Istio match exact paths exactly). Envoy's normalisation keeps the
    // trailing slash, and so does the engine's comparison.
    for target in ["/items/", "/items/.", "/items//", "/items/;x", "/items/?x=1", "/x/../items/"] {
        add(http("DELETE", target, &[]), WEB, Cert::Plain, Deny);
    }
    for target in ["/admin/", "/admin/.", "/admin//"] {
        add(get(target), ADMIN, Cert::Admin, Deny);
    }
    add(http("DELETE", "/items;x", &[]), WEB, Cert::Plain, Allow);
    add(http("DELETE", "//items", &[]), WEB, Cert::Plain, Allow);

    // Path normalisation tricks against the exact /admin and the prefix /public, from the
    // web pod (known address, wrong service account).
    for target in [
        "/admin",
        "/admin/",
        "/admin/.",
        "/%61dmin",
        "/%2561dmin",
        "/ADMIN",
        "/Admin",
        "//admin",
        "///admin",
        "/./admin",
        "/x/../admin",
        "/x/./../admin",
        "/public/../admin",
        "/public/./../admin",
        "/public/x/../../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin",
        "/public/.%2e/admin",
        "/public/%252e%252e/admin",
        "/public%2f..%2fadmin",
        "/public%2F..%2Fadmin",
        "/public/..%2fadmin",
        "/public%5c..%5cadmin",
        "/public/..%5cadmin",
        "/public\\..\\admin",
        "/public/..\\admin",
        "/\\admin",
        "/admin\\",
        "\\admin",
        "/public/..;/admin",
        "/public;/../admin",
        "/admin%2f..",
        "/admin%2F",
        "/%2fadmin",
        "/admin;x",
        "/admin;x=1/",
        "/admin?x",
        "/admin#x",
        "/admin%23x",
        "/admin%3fx",
        "/admin%00",
        "/admin%20",
        "/admin%09",
        "/public/%c0%ae%c0%ae/admin",
        "/public/%c0%af..%c0%afadmin",
        "/public%c0%af..%c0%afadmin",
        "/public/%e0%80%ae%e0%80%ae/admin",
        "/public/%ff/../../admin",
        "/public%00/../admin",
        "/publicity",
        "/PUBLIC",
        "/pub%6cic/../admin",
        "/public/%2e%2e%2fadmin",
        "http://app/admin",
        "http://app/public/../admin",
        "*",
    ] {
        add(get(target), WEB, Cert::Plain, Deny);
    }
    // The same against the mTLS listener with web's own certificate.
    for target in ["/admin", "/%61dmin", "//admin", "/public/../admin", "/public%2f..%2fadmin", "/public\\..\\admin", "/admin;x"] {
        add(get(target), WEB, Cert::Web, Deny);
    }

    // Method tricks: methods match exactly and case-sensitively.
    for method in ["get", "Get", "gEt", "post", "Post", "delete", "HEAD", "PUT", "PATCH", "DELETE", "TRACE", "PROPFIND", "FOO", "G-E-T", "GET_"] {
        add(http(method, "/public", &[]), WEB, Cert::Plain, Deny);
    }
    add(http("OPTIONS", "*", &[]), WEB, Cert::Plain, Deny);
    add(http("delete", "/items", &[]), WEB, Cert::Plain, Deny);
    add(http("Delete", "/items", &[]), WEB, Cert::Plain, Deny);
    add(http("get", "/admin", &[]), ADMIN, Cert::Admin, Deny);
    // Override headers and parameters name a method the request does not have.
    for header in ["x-http-method-override", "x-http-method", "x-method-override"] {
        add(http("POST", "/items", &[(header, "DELETE")]), WEB, Cert::Plain, Deny);
        add(http("GET", "/items", &[(header, "DELETE")]), WEB, Cert::Plain, Deny);
        add(http("POST", "/admin", &[(header, "GET")]), ADMIN, Cert::Admin, Deny);
    }
    add(http("POST", "/items?_method=DELETE", &[]), WEB, Cert::Plain, Deny);
    // CONNECT, in authority form and with a path.
    add(raw(b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nhost: 127.0.0.1:443\r\n\r\n"), WEB, Cert::Plain, Deny);
    add(raw(b"CONNECT /public HTTP/1.1\r\nhost: app\r\n\r\n"), WEB, Cert::Plain, Deny);
    add(raw(b"CONNECT app:80 HTTP/1.1\r\nhost: app:80\r\n\r\n"), ADMIN, Cert::Plain, Deny);
    add(http("CONNECT", "/admin", &[]), ADMIN, Cert::Admin, Deny);

    // Identity spoofing with headers: identity comes from the connection only.
    let forged: &[(&str, &str)] = &[
        ("x-forwarded-client-cert", "By=spiffe://cluster.local/ns/default/sa/app;URI=spiffe://cluster.local/ns/default/sa/admin"),
        ("x-forwarded-for", "127.0.0.31"),
        ("x-forwarded-for", "::ffff:127.0.0.31"),
        ("x-forwarded-for", "127.0.0.31, 127.0.0.31"),
        ("x-envoy-external-address", "127.0.0.31"),
        ("x-real-ip", "127.0.0.31"),
        ("forwarded", "for=127.0.0.31"),
        ("x-client-ip", "127.0.0.31"),
    ];
    for &(k, v) in forged {
        // The admin's certificate stolen into the web pod.
        add(http("GET", "/admin", &[(k, v)]), WEB, Cert::Admin, Deny);
        // Plaintext from the web pod, claiming the admin's address or certificate.
        add(http("GET", "/admin", &[(k, v)]), WEB, Cert::Plain, Deny);
        // The blocked net tries to launder itself as the admin pod.
        add(http("GET", "/public", &[(k, v)]), V4(BLOCKED_IP), Cert::Plain, Deny);
    }
    add(http("GET", "/admin", forged), WEB, Cert::Admin, Deny);

    // Certificates: another CA, non-SPIFFE and malformed URI SANs, all from the admin's own
    // address (so only the certificate can be at fault).
    add(get("/admin"), ADMIN, Cert::OtherCa, Refused);
    add(get("/public"), ADMIN, Cert::OtherCa, Refused);
    add(get("/admin"), ADMIN, Cert::NonSpiffe, Refused);
    add(get("/admin"), ADMIN, Cert::NoUri, Refused);
    // Envoy accepts it (one SAN matches `spiffe://`), but names only the first URI SAN:
    // Krites sees no SPIFFE id, and grants never match on identity.
    add(get("/admin"), ADMIN, Cert::NonSpiffeThenAdmin, Deny);
    add(get("/public"), ADMIN, Cert::NonSpiffeThenAdmin, Allow);
    for i in 0..MALFORMED.len() {
        add(get("/admin"), ADMIN, Cert::Malformed(i), Deny);
    }
    add(get("/public"), ADMIN, Cert::Malformed(0), Allow);

    // Valid certificates from addresses their service account does not own.
    add(get("/admin"), V4(UNOWNED_IP), Cert::Admin, Deny);
    add(get("/admin"), WEB, Cert::Admin, Deny);
    add(get("/web"), V4(UNOWNED_IP), Cert::Web, Deny);
    add(get("/web"), ADMIN, Cert::Web, Deny);
    add(get("/admin"), V4(BLOCKED_IP), Cert::Admin, Deny);
    add(get("/public"), V4(BLOCKED_IP), Cert::Admin, Deny);
    add(get("/public"), V4(BLOCKED_IP), Cert::Plain, Deny);
    add(get("/public"), V4(UNOWNED_IP), Cert::Admin, Allow);
    add(get("/admin"), V4(UNOWNED_IP), Cert::Plain, Deny);

    // IPv6: ::1 is a web pod.
    add(get("/public"), Src::V6, Cert::Plain, Allow);
    add(get("/web"), Src::V6, Cert::Plain, Allow);
    add(get("/web"), Src::V6, Cert::Web, Allow);
    add(get("/admin"), Src::V6, Cert::Plain, Deny);
    add(get("/admin"), Src::V6, Cert::Web, Deny);
    add(get("/admin"), Src::V6, Cert::Admin, Deny);
    add(get("/public"), Src::V6, Cert::Admin, Deny); // ingress[1] denies admin from ::1
    add(http("GET", "/admin", &[("x-forwarded-for", "127.0.0.31")]), Src::V6, Cert::Admin, Deny);
    add(get("/public/../admin"), Src::V6, Cert::Plain, Deny);
    add(get("/admin"), Src::V6, Cert::OtherCa, Refused);

    // IPv4-mapped IPv6 peers (dual-stack listener): the same decisions as over IPv4.
    add(get("/public"), Mapped(WEB_IP), Cert::Plain, Allow);
    add(get("/admin"), Mapped(ADMIN_IP), Cert::Admin, Allow);
    add(get("/web"), Mapped(WEB_IP), Cert::Web, Allow);
    add(get("/admin"), Mapped(WEB_IP), Cert::Plain, Deny);
    add(get("/admin"), Mapped(WEB_IP), Cert::Admin, Deny);
    add(get("/admin"), Mapped(UNOWNED_IP), Cert::Admin, Deny);
    add(get("/public"), Mapped(BLOCKED_IP), Cert::Plain, Deny);
    add(get("/public"), Mapped(BLOCKED_IP), Cert::Admin, Deny);
    add(http("GET", "/admin", &[("x-forwarded-for", "::ffff:127.0.0.31")]), Mapped(WEB_IP), Cert::Plain, Deny);

    // Oversized and non-UTF-8 requests.
    let big = "a".repeat(50_000);
    let huge = "a".repeat(70_000);
    add(http("GET", "/public", &[("x-big", &big)]), WEB, Cert::Plain, Allow); // under Envoy's 60 KiB
    add(http("GET", "/admin", &[("x-big", &big)]), WEB, Cert::Plain, Deny);
    add(http("GET", "/public", &[("x-huge", &huge)]), WEB, Cert::Plain, Deny); // 431 from Envoy
    add(get(&format!("/public/{}", "a".repeat(70_000))), WEB, Cert::Plain, Deny);
    let many: Vec<(String, String)> = (0..150).map(|i| (format!("x-h{i}"), "v".to_string())).collect();
    add(Req::Http { method: "GET".into(), target: "/public".into(), headers: many }, WEB, Cert::Plain, Deny); // over 100 headers
    add(http("GET", "/public/caf\u{e9}", &[]), WEB, Cert::Plain, Deny); // raw UTF-8 in the target
    add(http("GET", "/public", &[("x-utf8", "caf\u{e9}")]), WEB, Cert::Plain, Allow);
    add(raw(b"GET /public HTTP/1.1\r\nhost: app\r\nx-bin: \xff\xfe\x80\r\n\r\n"), WEB, Cert::Plain, Allow);
    add(raw(b"GET /admin HTTP/1.1\r\nhost: app\r\nx-bin: \xff\xfe\x80\r\n\r\n"), WEB, Cert::Plain, Deny);
    add(raw(b"GET /public/\xff HTTP/1.1\r\nhost: app\r\n\r\n"), WEB, Cert::Plain, Deny);
    add(raw(b"GET /public/\xc0\xae\xc0\xae/admin HTTP/1.1\r\nhost: app\r\n\r\n"), WEB, Cert::Plain, Deny);
    add(raw(b"GET /public\x00/../admin HTTP/1.1\r\nhost: app\r\n\r\n"), WEB, Cert::Plain, Deny);
    add(raw(b"GET /admin HTTP/1.1\r\nhost: app\r\nx-nul: a\x00b\r\n\r\n"), WEB, Cert::Plain, Deny);
    add(raw(b"GET /admin HTTP/1.1\r\nhost: app\r\nx-\xff: a\r\n\r\n"), WEB, Cert::Plain, Deny);
    add(raw(b"GET /admin HTTP/1.1\r\nhost: \xff\r\n\r\n"), WEB, Cert::Plain, Deny);
    add(raw(b"G\xffT /public HTTP/1.1\r\nhost: app\r\n\r\n"), WEB, Cert::Plain, Deny);
    add(raw(b"GET /public HTTP/1.0\r\n\r\n"), WEB, Cert::Plain, Deny); // 426: Envoy refuses HTTP/1.0
    add(raw(b"GET /admin HTTP/1.0\r\n\r\n"), WEB, Cert::Plain, Deny);
    add(raw(b"GET /admin\r\n\r\n"), WEB, Cert::Plain, Deny); // HTTP/0.9
    add(raw(b"GET /public HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n0\r\n\r\n"), WEB, Cert::Plain, Deny);
    rows
}

struct Certs {
    admin: Identity,
    web: Identity,
    other_ca: Identity,
    non_spiffe: Identity,
    no_uri: Identity,
    non_spiffe_then_admin: Identity,
    malformed: Vec<Identity>,
    /// The sidecar's own certificate (DNS name `app`).
    server: Identity,
    /// The mesh CA: the sidecar trusts it for clients, and clients for the sidecar.
    mesh_ca: std::path::PathBuf,
}

impl Certs {
    fn new(dir: &Path) -> Certs {
        let pki = Pki::new(&dir.join("pki"), "cluster.local").unwrap();
        let other = Pki::new(&dir.join("other-pki"), "cluster.local").unwrap();
        Certs {
            admin: pki.issue("admin-client", "default", "admin").unwrap(),
            web: pki.issue("web-client", "default", "web").unwrap(),
            other_ca: other.issue("admin-forged", "default", "admin").unwrap(),
            non_spiffe: pki.issue_with_uri("non-spiffe", Some("https://cluster.local/ns/default/sa/admin")).unwrap(),
            no_uri: pki.issue_with_uri("no-uri", None).unwrap(),
            non_spiffe_then_admin: pki
                .issue_with_uris("two-uris", &["https://cluster.local/ns/default/sa/admin", "spiffe://cluster.local/ns/default/sa/admin"])
                .unwrap(),
            malformed: MALFORMED.iter().enumerate().map(|(i, uri)| pki.issue_with_uri(&format!("malformed-{i}"), Some(uri)).unwrap()).collect(),
            server: pki.issue("app", "default", "app").unwrap(),
            mesh_ca: pki.ca_cert().to_path_buf(),
        }
    }

    fn get(&self, cert: Cert) -> Option<&Identity> {
        Some(match cert {
            Cert::Plain => return None,
            Cert::Admin => &self.admin,
            Cert::Web => &self.web,
            Cert::OtherCa => &self.other_ca,
            Cert::NonSpiffe => &self.non_spiffe,
            Cert::NoUri => &self.no_uri,
            Cert::NonSpiffeThenAdmin => &self.non_spiffe_then_admin,
            Cert::Malformed(i) => &self.malformed[i],
        })
    }
}

fn sidecar(dir: &Path, certs: &Certs, ip: Ipv4Addr, mode: PathNormalization) -> Sidecar {
    let s = Sidecar::start_with(
        SidecarSpec {
            name: "app".into(),
            ip,
            namespace: "default".into(),
            service_account: "app".into(),
            labels: BTreeMap::from([("app".to_string(), "app".to_string())]),
            identity: certs.server.clone(),
            ca: certs.mesh_ca.clone(),
            wasm: Some(module_path()),
            plugin_config: CONFIG.into(),
            work_dir: dir.join(format!("app-{}", mode.name())),
            normalize_path: mode != PathNormalization::None,
            peer_address_filter: true,
        },
        Mesh { extra_inbound: vec![V6, DUAL_STACK], path_normalization: Some(mode), ..Mesh::default() },
    )
    .unwrap();
    assert_eq!(s.initial_ecds(), Some(EcdsOutcome::Accepted));
    s
}

/// What happened to one row.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Status(u16, String),
    TlsRefused(String),
    Transport(String),
}

fn run(app: &Sidecar, certs: &Certs, row: &Row) -> Outcome {
    let (from, plain, mtls) = match row.from {
        Src::V4(ip) => (IpAddr::V4(ip), app.plain_addr(), app.mtls_addr()),
        Src::V6 => (V6, app.plain_addr_on(V6).unwrap(), app.mtls_addr_on(V6).unwrap()),
        // Through the pod IP to the `::` listeners' ports.
        Src::Mapped(ip) => (
            IpAddr::V4(ip),
            SocketAddr::new(IpAddr::V4(app.ip()), app.plain_addr_on(DUAL_STACK).unwrap().port()),
            SocketAddr::new(IpAddr::V4(app.ip()), app.mtls_addr_on(DUAL_STACK).unwrap().port()),
        ),
    };
    let cert = certs.get(row.cert);
    match &row.req {
        Req::Raw(bytes) => {
            assert!(cert.is_none(), "raw rows are plaintext");
            match raw_request(from, plain, bytes, Duration::from_secs(10)) {
                Ok(r) => Outcome::Status(r.status, r.body_text()),
                Err(e) => Outcome::Transport(format!("{e:#}")),
            }
        }
        Req::Http { method, target, headers } => {
            let mut r = Request::from_ip(from).method(method).path(target);
            r = match cert {
                None => r.to(plain),
                Some(id) => r.to(mtls).tls(&certs.mesh_ca, Some(id), app.server_name()),
            };
            for (k, v) in headers {
                r = r.header(k, v);
            }
            let resp = r.send().unwrap();
            match &resp.error {
                None => Outcome::Status(resp.status, resp.body),
                Some(e) if resp.is_tls_failure() => Outcome::TlsRefused(e.message.clone()),
                Some(e) => Outcome::Transport(format!("curl {}: {}", e.curl_exit, e.message)),
            }
        }
    }
}

fn matches(expect: Verdict, outcome: &Outcome) -> bool {
    match (expect, outcome) {
        (Allow, Outcome::Status(s, _)) => (200..300).contains(s),
        (Deny, Outcome::Status(s, _)) => (400..500).contains(s),
        // Envoy closes the connection on some malformed requests without a response.
        (Deny, Outcome::Transport(_)) => false,
        (Refused, Outcome::TlsRefused(_)) => true,
        _ => false,
    }
}

fn describe(row: &Row) -> String {
    let req = match &row.req {
        Req::Http { method, target, headers } => {
            let target: String = if target.len() > 80 { format!("{}...({} bytes)", &target[..60], target.len()) } else { target.clone() };
            let hs: Vec<String> = headers.iter().take(3).map(|(k, v)| format!("{k}: {}", if v.len() > 40 { format!("<{} bytes>", v.len()) } else { v.clone() })).collect();
            let more = if headers.len() > 3 { format!(" +{} headers", headers.len() - 3) } else { String::new() };
            format!("{method} {target:?} [{}]{more}", hs.join("; "))
        }
        Req::Raw(bytes) => format!("raw {:?}", String::from_utf8_lossy(&bytes[..bytes.len().min(90)])),
    };
    format!("{req} from {:?} cert {:?}", row.from, row.cert)
}

#[test]
fn no_bypass_under_any_of_istios_path_normalisations() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(dir.path());
    let rows = corpus();
    let mut report = String::new();
    let mut failures = Vec::new();
    for (mode, host) in PathNormalization::ALL.into_iter().zip(1u8..) {
        let normalize = mode.name();
        let mut app = sidecar(dir.path(), &certs, Ipv4Addr::new(127, 0, 7, host), mode);
        let (mut allowed, mut krites_denied, mut envoy_refused, mut tls_refused) = (0, 0, 0, 0);
        for row in &rows {
            let outcome = run(&app, &certs, row);
            match &outcome {
                // Only Krites answers 403 here ("RBAC: access denied"; no body for HEAD).
                Outcome::Status(403, _) => krites_denied += 1,
                Outcome::Status(s, _) if (200..300).contains(s) => allowed += 1,
                Outcome::Status(..) => envoy_refused += 1,
                Outcome::TlsRefused(_) => tls_refused += 1,
                Outcome::Transport(_) => {}
            }
            if !matches(row.expect, &outcome) {
                let bypass = row.expect != Allow && matches!(&outcome, Outcome::Status(s, _) if (200..300).contains(s));
                failures.push(format!(
                    "{}pathNormalization={normalize}: {} expected {:?}, got {outcome:?}",
                    if bypass { "BYPASS " } else { "" },
                    describe(row),
                    row.expect
                ));
            }
        }
        // The VM is alive and still deciding after all of it.
        assert!(app.is_running(), "pathNormalization={normalize}: Envoy exited");
        assert_eq!(Request::from(WEB_IP).to(app.plain_addr()).path("/public").send().unwrap().status, 200);
        assert_eq!(Request::from(WEB_IP).to(app.plain_addr()).path("/admin").send().unwrap().status, 403);
        let ok = Request::from(ADMIN_IP).to(app.mtls_addr()).tls(&certs.mesh_ca, Some(&certs.admin), app.server_name()).path("/admin").send().unwrap();
        assert_eq!(ok.status, 200, "pathNormalization={normalize}: {ok:?}");
        let denied = app.stat("wasmcustom.krites_denied_total").unwrap();
        assert_eq!(denied, krites_denied + 1, "pathNormalization={normalize}: every 403 was Krites'");
        let log = app.log().unwrap();
        for bad in ["panic", "wasm_fail", "Wasm VM failed", "Failed to"] {
            assert!(!log.contains(bad), "pathNormalization={normalize}: {bad:?} in the log:\n{log}");
        }
        writeln!(
            report,
            "pathNormalization={normalize}: {} rows: {allowed} allowed, {krites_denied} denied by Krites, {envoy_refused} refused by Envoy (4xx), {tls_refused} TLS handshakes refused",
            rows.len()
        )
        .unwrap();
    }
    let deny_rows = rows.iter().filter(|r| r.expect != Allow).count();
    println!(
        "attack corpus: {} rows ({} expected allowed as controls, {deny_rows} attacks), run under each of Istio's {} path normalisations = {} requests in {:.1?}\n{report}",
        rows.len(),
        rows.len() - deny_rows,
        PathNormalization::ALL.len(),
        rows.len() * PathNormalization::ALL.len(),
        started.elapsed()
    );
    assert!(failures.is_empty(), "{} of {} rows wrong:\n{}", failures.len(), rows.len() * 2, failures.join("\n"));
}
