//! The attack corpus (issue #12): a table of (request, source pod, client certificate,
//! expected verdict) rows against one workload `app`, shared by the loopback rig
//! (`tests/tests/attacks.rs`) and the namespace mesh (`tests/tests/netns_attacks.rs`), each run
//! under every one of Istio's path normalisations.
//!
//! Rows name their source by role ([`Role`]: the admin pod, the web pod where the attacker
//! runs, an address no pod owns, a blocked address) and by address family ([`Src`]); each rig
//! maps the roles to its own addresses ([`Addresses`]), from which [`config`] fills the
//! policy's endpoints and [`corpus`] the forged headers that claim the admin's address.
//!
//! The rows: path encodings against exact and prefix rules, method tricks, forged identity
//! headers, foreign and malformed certificates, valid certificates from the wrong addresses,
//! IPv6 and IPv4-mapped IPv6 sources, oversized and non-UTF-8 requests.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::pki::{Identity, Pki};

/// The trust domain of the corpus' mesh CA and of its SPIFFE ids.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// Who a source address belongs to, in the policy's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// The pod of service account `admin` (an endpoint of the config).
    Admin,
    /// The pod of service account `web`: the attacker runs here (a known address, web's own
    /// identity).
    Web,
    /// An address no pod owns (no endpoint names it).
    Unowned,
    /// An address inside the net ingress[0] denies.
    Blocked,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Web, Role::Unowned, Role::Blocked];
}

/// Each role's IPv4 address on a rig, and the IPv6 address the web pod also owns if the rig
/// has IPv6 sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    pub admin: Ipv4Addr,
    pub web: Ipv4Addr,
    pub unowned: Ipv4Addr,
    pub blocked: Ipv4Addr,
    /// `Some(::1)` on the loopback rig; `None` on an IPv4-only rig.
    pub web_v6: Option<Ipv6Addr>,
}

impl Addresses {
    pub fn of(&self, role: Role) -> Ipv4Addr {
        match role {
            Role::Admin => self.admin,
            Role::Web => self.web,
            Role::Unowned => self.unowned,
            Role::Blocked => self.blocked,
        }
    }
}

/// The workload `app`'s plugin config:
/// - ingress[0]: nothing from the blocked address;
/// - ingress[1]: the admin identity is refused from ::1 (restricts: either factor matches);
/// - ingress[2]: anyone may GET/POST under the prefix /public;
/// - ingress[3]: anyone may DELETE exactly /items (the target of method-override tricks);
/// - ingress[4]: service account admin may GET exactly /admin;
/// - ingress[5]: service account web may GET exactly /web.
///
/// Endpoints: admin at its address; web at its address (and its IPv6 address, if any).
pub fn config(pods: &Addresses) -> String {
    let mut web_ips = vec![format!("\"{}\"", pods.web)];
    if let Some(v6) = pods.web_v6 {
        web_ips.push(format!("\"{v6}\""));
    }
    format!(
        r#"{{
  "version": 1,
  "policies": [{{"name": "app", "selector": "app == 'app'", "ingress": [
    {{"action": "Deny", "source": {{"nets": ["{blocked}/32"]}}}},
    {{"action": "Deny", "source": {{"nets": ["::1/128"], "serviceAccounts": {{"names": ["admin"]}}}}}},
    {{"action": "Allow", "http": {{"methods": ["GET", "POST"], "paths": [{{"prefix": "/public"}}]}}}},
    {{"action": "Allow", "http": {{"methods": ["DELETE"], "paths": [{{"exact": "/items"}}]}}}},
    {{"action": "Allow", "source": {{"serviceAccounts": {{"names": ["admin"]}}}}, "http": {{"methods": ["GET"], "paths": [{{"exact": "/admin"}}]}}}},
    {{"action": "Allow", "source": {{"serviceAccounts": {{"names": ["web"]}}}}, "http": {{"methods": ["GET"], "paths": [{{"exact": "/web"}}]}}}}
  ]}}],
  "endpoints": [
    {{"namespace": "default", "serviceAccount": "admin", "labels": {{"app": "console"}}, "ips": ["{admin}"]}},
    {{"namespace": "default", "serviceAccount": "web", "labels": {{"app": "web"}}, "ips": [{web}]}}
  ]
}}"#,
        blocked = pods.blocked,
        admin = pods.admin,
        web = web_ips.join(", "),
    )
}

/// What the client sends.
#[derive(Debug, Clone)]
pub enum Req {
    /// Through curl: method and request target byte-for-byte, extra headers.
    Http { method: String, target: String, headers: Vec<(String, String)> },
    /// These bytes on a plain TCP connection (non-UTF-8, NUL, raw CONNECT).
    Raw(Vec<u8>),
}

/// Where the client connects from (and so which listener it reaches).
#[derive(Debug, Clone, Copy)]
pub enum Src {
    /// An IPv4 client from the pod of this role to the server pod's address.
    V4(Role),
    /// ::1 to the sidecar's [::1] listeners (a web pod, per the config).
    V6,
    /// An IPv4 client of this role to the dual-stack `::` listeners (`ipv4_compat`): the
    /// kernel hands Envoy an IPv4-mapped IPv6 peer, ::ffff:a.b.c.d.
    Mapped(Role),
}

/// Which certificate the client presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cert {
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

pub const MALFORMED: &[&str] = &[
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
pub enum Verdict {
    /// 2xx: the request reached the application.
    Allow,
    /// 4xx: refused by Krites (403) or by Envoy before it (400, 404, 431, ...).
    Deny,
    /// The TLS handshake fails: Envoy refuses the certificate; no HTTP at all.
    Refused,
}
use Verdict::{Allow, Deny, Refused};

#[derive(Debug, Clone)]
pub struct Row {
    pub req: Req,
    pub from: Src,
    pub cert: Cert,
    pub expect: Verdict,
}

pub fn http(method: &str, target: &str, headers: &[(&str, &str)]) -> Req {
    Req::Http {
        method: method.into(),
        target: target.into(),
        headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

pub fn get(target: &str) -> Req {
    http("GET", target, &[])
}

pub fn raw(bytes: &[u8]) -> Req {
    Req::Raw(bytes.to_vec())
}

pub fn row(req: Req, from: Src, cert: Cert, expect: Verdict) -> Row {
    Row { req, from, cert, expect }
}

use Src::Mapped;
const WEB: Src = Src::V4(Role::Web);
const ADMIN: Src = Src::V4(Role::Admin);
const UNOWNED: Src = Src::V4(Role::Unowned);
const BLOCKED: Src = Src::V4(Role::Blocked);

/// The corpus.
pub fn corpus(pods: &Addresses) -> Vec<Row> {
    let admin_ip = pods.admin.to_string();
    let admin_ip = admin_ip.as_str();
    let mapped_admin = format!("::ffff:{admin_ip}");
    let twice = format!("{admin_ip}, {admin_ip}");
    let forwarded_for = format!("for={admin_ip}");
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
        ("x-forwarded-for", admin_ip),
        ("x-forwarded-for", &mapped_admin),
        ("x-forwarded-for", &twice),
        ("x-envoy-external-address", admin_ip),
        ("x-real-ip", admin_ip),
        ("forwarded", &forwarded_for),
        ("x-client-ip", admin_ip),
    ];
    for &(k, v) in forged {
        // The admin's certificate stolen into the web pod.
        add(http("GET", "/admin", &[(k, v)]), WEB, Cert::Admin, Deny);
        // Plaintext from the web pod, claiming the admin's address or certificate.
        add(http("GET", "/admin", &[(k, v)]), WEB, Cert::Plain, Deny);
        // The blocked net tries to launder itself as the admin pod.
        add(http("GET", "/public", &[(k, v)]), BLOCKED, Cert::Plain, Deny);
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
    add(get("/admin"), UNOWNED, Cert::Admin, Deny);
    add(get("/admin"), WEB, Cert::Admin, Deny);
    add(get("/web"), UNOWNED, Cert::Web, Deny);
    add(get("/web"), ADMIN, Cert::Web, Deny);
    add(get("/admin"), BLOCKED, Cert::Admin, Deny);
    add(get("/public"), BLOCKED, Cert::Admin, Deny);
    add(get("/public"), BLOCKED, Cert::Plain, Deny);
    add(get("/public"), UNOWNED, Cert::Admin, Allow);
    add(get("/admin"), UNOWNED, Cert::Plain, Deny);

    // IPv6: ::1 is a web pod.
    add(get("/public"), Src::V6, Cert::Plain, Allow);
    add(get("/web"), Src::V6, Cert::Plain, Allow);
    add(get("/web"), Src::V6, Cert::Web, Allow);
    add(get("/admin"), Src::V6, Cert::Plain, Deny);
    add(get("/admin"), Src::V6, Cert::Web, Deny);
    add(get("/admin"), Src::V6, Cert::Admin, Deny);
    add(get("/public"), Src::V6, Cert::Admin, Deny); // ingress[1] denies admin from ::1
    add(http("GET", "/admin", &[("x-forwarded-for", admin_ip)]), Src::V6, Cert::Admin, Deny);
    add(get("/public/../admin"), Src::V6, Cert::Plain, Deny);
    add(get("/admin"), Src::V6, Cert::OtherCa, Refused);

    // IPv4-mapped IPv6 peers (dual-stack listener): the same decisions as over IPv4.
    add(get("/public"), Mapped(Role::Web), Cert::Plain, Allow);
    add(get("/admin"), Mapped(Role::Admin), Cert::Admin, Allow);
    add(get("/web"), Mapped(Role::Web), Cert::Web, Allow);
    add(get("/admin"), Mapped(Role::Web), Cert::Plain, Deny);
    add(get("/admin"), Mapped(Role::Web), Cert::Admin, Deny);
    add(get("/admin"), Mapped(Role::Unowned), Cert::Admin, Deny);
    add(get("/public"), Mapped(Role::Blocked), Cert::Plain, Deny);
    add(get("/public"), Mapped(Role::Blocked), Cert::Admin, Deny);
    add(http("GET", "/admin", &[("x-forwarded-for", &mapped_admin)]), Mapped(Role::Web), Cert::Plain, Deny);

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


impl Cert {
    /// The URI SANs the certificate carries (`None`: no certificate).
    pub fn uris(self) -> Option<Vec<String>> {
        let spiffe = |sa: &str| format!("spiffe://{TRUST_DOMAIN}/ns/default/sa/{sa}");
        Some(match self {
            Cert::Plain => return None,
            Cert::Admin | Cert::OtherCa => vec![spiffe("admin")],
            Cert::Web => vec![spiffe("web")],
            Cert::NonSpiffe => vec![format!("https://{TRUST_DOMAIN}/ns/default/sa/admin")],
            Cert::NoUri => Vec::new(),
            Cert::NonSpiffeThenAdmin => vec![format!("https://{TRUST_DOMAIN}/ns/default/sa/admin"), spiffe("admin")],
            Cert::Malformed(i) => MALFORMED.get(i).map(|u| vec![u.to_string()]).unwrap_or_default(),
        })
    }
}

/// What a rig's inbound TLS demands of a client certificate's URI SANs (before any HTTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanCheck {
    /// One URI SAN starts with `spiffe://<trust domain>/`: Istio's `BuildInboundTLS`, so a
    /// SPIFFE id with an empty or a foreign trust domain is refused in the handshake.
    TrustDomain,
}

impl Row {
    /// The verdict on a rig whose TLS checks `san`. A row expecting Deny for a certificate
    /// that the rig's handshake already refuses (no SAN under `spiffe://<trust domain>/`)
    /// expects Refused there: stricter, never weaker.
    pub fn expect_on(&self, san: SanCheck) -> Verdict {
        let Some(uris) = self.cert.uris() else { return self.expect };
        let prefix = match san {
            SanCheck::TrustDomain => format!("spiffe://{TRUST_DOMAIN}/"),
        };
        if self.expect == Deny && !uris.iter().any(|u| u.starts_with(&prefix)) {
            Refused
        } else {
            self.expect
        }
    }

    /// One line for a failure report (long targets and headers shortened).
    pub fn describe(&self) -> String {
        let req = match &self.req {
            Req::Http { method, target, headers } => {
                let target: String =
                    if target.len() > 80 { format!("{}...({} bytes)", target.chars().take(60).collect::<String>(), target.len()) } else { target.clone() };
                let hs: Vec<String> = headers
                    .iter()
                    .take(3)
                    .map(|(k, v)| format!("{k}: {}", if v.len() > 40 { format!("<{} bytes>", v.len()) } else { v.clone() }))
                    .collect();
                let more = if headers.len() > 3 { format!(" +{} headers", headers.len() - 3) } else { String::new() };
                format!("{method} {target:?} [{}]{more}", hs.join("; "))
            }
            Req::Raw(bytes) => format!("raw {:?}", String::from_utf8_lossy(&bytes[..bytes.len().min(90)])),
        };
        format!("{req} from {:?} cert {:?}", self.from, self.cert)
    }
}

/// The certificates the rows present, all but one from the mesh CA.
pub struct Certs {
    pub admin: Identity,
    pub web: Identity,
    pub other_ca: Identity,
    pub non_spiffe: Identity,
    pub no_uri: Identity,
    pub non_spiffe_then_admin: Identity,
    pub malformed: Vec<Identity>,
    /// The mesh CA: the sidecar trusts it for clients, and clients for the sidecar.
    pub mesh_ca: PathBuf,
}

impl Certs {
    /// Issue the set from `mesh` (trust domain [`TRUST_DOMAIN`]); the foreign CA lives in
    /// `other_dir`.
    pub fn issue(mesh: &Pki, other_dir: &Path) -> Result<Certs> {
        let other = Pki::new(other_dir, TRUST_DOMAIN)?;
        let admin_id = format!("spiffe://{TRUST_DOMAIN}/ns/default/sa/admin");
        let non_spiffe = format!("https://{TRUST_DOMAIN}/ns/default/sa/admin");
        Ok(Certs {
            admin: mesh.issue("admin-client", "default", "admin")?,
            web: mesh.issue("web-client", "default", "web")?,
            other_ca: other.issue("admin-forged", "default", "admin")?,
            non_spiffe: mesh.issue_with_uri("non-spiffe", Some(&non_spiffe))?,
            no_uri: mesh.issue_with_uri("no-uri", None)?,
            non_spiffe_then_admin: mesh.issue_with_uris("two-uris", &[&non_spiffe, &admin_id])?,
            malformed: MALFORMED
                .iter()
                .enumerate()
                .map(|(i, uri)| mesh.issue_with_uri(&format!("malformed-{i}"), Some(uri)))
                .collect::<Result<_>>()?,
            mesh_ca: mesh.ca_cert().to_path_buf(),
        })
    }

    /// The certificate a row presents; `None` for plaintext.
    pub fn get(&self, cert: Cert) -> Option<&Identity> {
        Some(match cert {
            Cert::Plain => return None,
            Cert::Admin => &self.admin,
            Cert::Web => &self.web,
            Cert::OtherCa => &self.other_ca,
            Cert::NonSpiffe => &self.non_spiffe,
            Cert::NoUri => &self.no_uri,
            Cert::NonSpiffeThenAdmin => &self.non_spiffe_then_admin,
            Cert::Malformed(i) => self.malformed.get(i)?,
        })
    }
}

/// What happened to one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP response: status and body.
    Status(u16, String),
    /// The TLS layer refused the client (handshake failed, or closed before any response).
    TlsRefused(String),
    /// No response below TLS (reset, timeout, closed on plaintext).
    Transport(String),
}

impl Outcome {
    pub fn allowed(&self) -> bool {
        matches!(self, Outcome::Status(s, _) if (200..300).contains(s))
    }
}

/// Whether `outcome` is the verdict `expect`.
pub fn matches(expect: Verdict, outcome: &Outcome) -> bool {
    match (expect, outcome) {
        (Allow, Outcome::Status(s, _)) => (200..300).contains(s),
        (Deny, Outcome::Status(s, _)) => (400..500).contains(s),
        // Envoy closes the connection on some malformed requests without a response.
        (Deny, Outcome::Transport(_)) => false,
        (Refused, Outcome::TlsRefused(_)) => true,
        _ => false,
    }
}

/// Whether `outcome` for a row expecting `expect` is a bypass: something the policy
/// refuses reached the application.
pub fn is_bypass(expect: Verdict, outcome: &Outcome) -> bool {
    expect != Allow && outcome.allowed()
}

/// The source address of `src` on a rig with `pods`, if the rig can express it.
pub fn source_ip(src: Src, pods: &Addresses) -> Option<IpAddr> {
    match src {
        Src::V4(role) | Src::Mapped(role) => Some(IpAddr::V4(pods.of(role))),
        Src::V6 => pods.web_v6.map(IpAddr::V6),
    }
}
