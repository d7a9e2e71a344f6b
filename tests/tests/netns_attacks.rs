//! The attack corpus (`krites_testbed::attack_corpus`, the rows `attacks.rs` runs on the
//! loopback rig) on the namespace mesh (issue #12, part 4): one server pod `app` per Istio path
//! normalisation (NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES), each a network
//! namespace behind Istio's iptables interception with an istiod-shaped sidecar (uid 1337,
//! PERMISSIVE, port 8080 declared `http-app`, Istio's runtime flags), and one client pod per
//! source role (admin, web, an address no pod owns, the blocked address) WITHOUT a sidecar:
//! the attacker talks to the server pod's address directly from its own namespace, in
//! plaintext or in TLS with ALPN `istio-http/1.1` (what a client sidecar offers) and the
//! stolen or forged certificate of the row, so the source address the sidecar sees is the
//! client pod's own.
//!
//! Rows the mesh cannot express (IPv6 and IPv4-mapped IPv6 sources: the mesh is IPv4 only)
//! are skipped and counted; every other row runs under every mode. Zero bypasses, and no
//! request takes a VM down: each sidecar still answers afterwards and its log has no Wasm
//! failure. Afterwards, per mode: the application received exactly the allowed requests, all
//! through the sidecar; a forged XFCC reaches it as Istio delivers it (dropped on plaintext,
//! the connection's own element appended last on mTLS); a mesh-CA certificate whose SPIFFE id
//! has a foreign trust domain is refused in the handshake (the corpus' empty trust domain,
//! `spiffe:///ns/default/sa/admin`, is too: Istio's SAN check, where the loopback rig lets
//! Krites deny it).
//!
//! Needs root (skipped otherwise, with the reason; in CI, `CI=true`, it fails instead) and the
//! Debian packages iproute2, iptables, util-linux, python3, openssl, curl.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::thread;
use std::time::{Duration, Instant};

use krites_testbed::attack_corpus::{
    config, corpus, get, http, is_bypass, matches, row, Addresses, Cert, Certs, Outcome, Req, Role, Row, SanCheck, Src, Verdict,
    TRUST_DOMAIN,
};
use krites_testbed::Identity;
use krites_testbed::mesh::{self, ContainerPort, Mesh, MeshPod, PathNormalization, PodSpec, Protocol};
use serde_json::{json, Value};

/// The server pods' port, declared HTTP (`http-app`).
const HTTP: u16 = 8080;

/// An XFCC header a client forges: the admin's identity, "forwarded" by the server itself.
const FORGED_XFCC: &str = "By=spiffe://cluster.local/ns/default/sa/app;URI=spiffe://cluster.local/ns/default/sa/admin";

/// The admin's service account in another trust domain, signed by the mesh CA.
const FOREIGN_TRUST_DOMAIN_ID: &str = "spiffe://evil.example/ns/default/sa/admin";

/// The sidecar -> application source in Istio.
const PASSTHROUGH_SOURCE: &str = "127.0.0.6";

/// What a client sidecar offers on Istio mTLS to an HTTP port: the ALPN that selects the
/// inbound mTLS HTTP chain (`MTLS_HTTP_ALPNS`). An attacker with stolen keys offers it too.
const MTLS_HTTP_ALPN: &str = "istio-http/1.1";

/// Connections at once per client pod: the rows are independent.
const CONNECTIONS: usize = 8;

const MODES: [(PathNormalization, &str, &str); 4] = [
    (PathNormalization::None, "NONE", "app-none"),
    (PathNormalization::Base, "BASE", "app-base"),
    (PathNormalization::MergeSlashes, "MERGE_SLASHES", "app-merge-slashes"),
    (PathNormalization::DecodeAndMergeSlashes, "DECODE_AND_MERGE_SLASHES", "app-decode-and-merge-slashes"),
];

/// The attacker's client, one process per client pod for a batch of requests: each stdin
/// line is a job (`id`, server address, ALPN, certificate, the request's bytes in hex); for
/// each, on its own connection: connect, (TLS with that ALPN and certificate,) send the bytes
/// unchanged, read one HTTP response (or EOF, or 8 s). One JSON line per job on stdout, in
/// completion order. Raw sockets rather than curl: curl cannot offer ALPN `istio-http/1.1`,
/// and the same client then sends every row byte for byte; one process rather than one per
/// row keeps 750 requests within seconds.
const ATTACK_CLIENT_PY: &str = r#"
import json, socket, ssl, sys, threading
from concurrent.futures import ThreadPoolExecutor
out_lock = threading.Lock()
def complete(buf, head_only):
    i = buf.find(b"\r\n\r\n")
    if i < 0:
        return False
    if head_only:
        return True
    n, chunked = None, False
    for h in buf[:i].decode("latin-1").split("\r\n")[1:]:
        k, _, v = h.partition(":")
        k = k.strip().lower()
        if k == "content-length":
            n = int(v.strip())
        elif k == "transfer-encoding" and "chunked" in v.lower():
            chunked = True
    body = buf[i + 4:]
    if n is not None:
        return len(body) >= n
    return chunked and body.endswith(b"0\r\n\r\n")
def one(job):
    payload = bytes.fromhex(job["payload"])
    cert, key, alpn = job["cert"], job["key"], job["alpn"]
    res = {"id": job["id"], "connected": False, "tls": bool(cert), "handshake": None, "status": 0, "body": "", "error": None, "timeout": False}
    buf = b""
    s = None
    try:
        s = socket.create_connection((job["host"], job["port"]), timeout=8)
        res["connected"] = True
        if cert:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            if alpn:
                ctx.set_alpn_protocols([alpn])
            ctx.load_cert_chain(cert, key)
            s = ctx.wrap_socket(s, server_hostname="app")
            res["handshake"] = True
        try:
            s.sendall(payload)
        except OSError as e:
            # Envoy may answer (431, 400) and close before it has read everything: read on.
            res["error"] = "send: " + repr(e)
        head_only = payload.startswith(b"HEAD ")
        while not complete(buf, head_only):
            d = s.recv(65536)
            if not d:
                break
            buf += d
    except socket.timeout:
        res["timeout"] = True
    except Exception as e:
        res["error"] = repr(e)
        if cert and res["connected"] and res["handshake"] is None:
            res["handshake"] = False
    finally:
        if s is not None:
            s.close()
    if buf.startswith(b"HTTP/"):
        first = buf.split(b"\r\n", 1)[0].split(b" ")
        if len(first) > 1 and first[1].isdigit():
            res["status"] = int(first[1])
        i = buf.find(b"\r\n\r\n")
        res["body"] = buf[i + 4:][:2000].decode("latin-1") if i >= 0 else ""
    with out_lock:
        sys.stdout.write(json.dumps(res) + "\n")
        sys.stdout.flush()
with ThreadPoolExecutor(max_workers=int(sys.argv[1])) as pool:
    for line in sys.stdin:
        if line.strip():
            pool.submit(one, json.loads(line))
"#;

/// The request as curl sends it (`--http1.1 -X <method> --request-target <target>`; HEAD as
/// `--head`): Host, User-Agent and Accept, then the row's headers in order.
fn render(req: &Req, host: &str) -> Vec<u8> {
    match req {
        Req::Raw(bytes) => bytes.clone(),
        Req::Http { method, target, headers } => {
            let mut out = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: curl/8.14.1\r\nAccept: */*\r\n");
            for (k, v) in headers {
                write!(out, "{k}: {v}\r\n").unwrap();
            }
            out.push_str("\r\n");
            out.into_bytes()
        }
    }
}

/// One request of a batch: to which server pod, which row.
struct Job<'a> {
    server: Ipv4Addr,
    row: &'a Row,
    /// Presented instead of the row's certificate (one the corpus' set does not have).
    cert: Option<&'a Identity>,
}

/// Run `jobs` from `client` (the source pod of every row in it), up to `CONNECTIONS` at once,
/// each with its row's certificate if any. Outcomes in `jobs`' order.
fn run_batch(mesh: &Mesh, client: &MeshPod, certs: &Certs, jobs: &[Job]) -> Vec<Outcome> {
    let mut lines = String::new();
    for (id, job) in jobs.iter().enumerate() {
        let cert = job.cert.or_else(|| certs.get(job.row.cert));
        let (cert_path, key_path, alpn) = match cert {
            Some(id) => (id.cert.display().to_string(), id.key.display().to_string(), MTLS_HTTP_ALPN),
            None => (String::new(), String::new(), ""),
        };
        // curl's Host: the address for plaintext, the server name for TLS.
        let authority = if cert.is_some() { "app".to_string() } else { format!("{}:{HTTP}", job.server) };
        let payload: String = render(&job.row.req, &authority).iter().map(|b| format!("{b:02x}")).collect();
        let spec = json!({
            "id": id, "host": job.server.to_string(), "port": HTTP, "alpn": alpn,
            "cert": cert_path, "key": key_path, "payload": payload,
        });
        writeln!(lines, "{spec}").unwrap();
    }
    let script = mesh.dir().join("attack_client.py");
    // Bounded: every connection has its own 8 s timeout; this is for a client that hangs.
    let out = client
        .pod()
        .exec(
            &[mesh::python3().to_str().unwrap(), script.to_str().unwrap(), &CONNECTIONS.to_string()],
            Some(lines.as_bytes()),
            Duration::from_secs(120),
        )
        .unwrap();
    let mut outcomes: Vec<Option<Outcome>> = vec![None; jobs.len()];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("client line {line:?}: {e}"));
        let id = v["id"].as_u64().unwrap() as usize;
        outcomes[id] = Some(outcome(&v));
    }
    outcomes
        .into_iter()
        .enumerate()
        .map(|(id, o)| {
            o.unwrap_or_else(|| {
                panic!(
                    "no result for {} from {}: client exit {}, stderr {}",
                    jobs[id].row.describe(),
                    client.spec.name,
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                )
            })
        })
        .collect()
}

/// The client's JSON for one request, as a row outcome.
fn outcome(v: &Value) -> Outcome {
    let status = v["status"].as_u64().unwrap_or(0) as u16;
    let error = v["error"].as_str().unwrap_or("").to_string();
    if status != 0 {
        Outcome::Status(status, v["body"].as_str().unwrap_or("").to_string())
    } else if v["tls"] == true && v["connected"] == true && v["timeout"] != true {
        // As with curl on the loopback rig: connected, then TLS ended without a response.
        Outcome::TlsRefused(format!("handshake {} {error}", v["handshake"]))
    } else {
        Outcome::Transport(format!("connected {} timeout {} {error}", v["connected"], v["timeout"]))
    }
}

/// What the application saw of an allowed request (its JSON answer).
fn app_view(o: &Outcome) -> Value {
    match o {
        Outcome::Status(_, body) => serde_json::from_str(body).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// Per mode: what the sidecar answered.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    run: usize,
    allowed: usize,
    krites_denied: usize,
    envoy_refused: usize,
    tls_refused: usize,
    bypasses: usize,
}

#[test]
fn no_bypass_on_the_namespace_mesh_under_any_of_istios_path_normalisations() {
    if !krites_testbed::mesh::runnable("netns_attacks") {
        return;
    }
    let started = Instant::now();
    let mesh = Mesh::new(TRUST_DOMAIN).unwrap();
    std::fs::write(mesh.dir().join("attack_client.py"), ATTACK_CLIENT_PY).unwrap();

    // The client pods first: their addresses are the policy's endpoints and blocked net.
    let client_pod = |name: &str, app: &str, sa: &str| {
        let mut spec = PodSpec::new(name, app, sa);
        spec.sidecar = false;
        mesh.add_pod(spec).unwrap()
    };
    let clients: BTreeMap<Role, MeshPod> = BTreeMap::from([
        (Role::Admin, client_pod("admin", "console", "admin")),
        (Role::Web, client_pod("web", "web", "web")),
        (Role::Unowned, client_pod("unowned", "unowned", "default")),
        (Role::Blocked, client_pod("blocked", "blocked", "default")),
    ]);
    let pods = Addresses {
        admin: clients[&Role::Admin].ip(),
        web: clients[&Role::Web].ip(),
        unowned: clients[&Role::Unowned].ip(),
        blocked: clients[&Role::Blocked].ip(),
        web_v6: None,
    };
    let plugin_config = config(&pods);
    let mut servers: Vec<MeshPod> = MODES
        .iter()
        .map(|&(mode, _, name)| {
            let mut spec = PodSpec::new(name, "app", "app");
            spec.ports = vec![ContainerPort::new("http-app", HTTP, Some(Protocol::Http))];
            spec.path_normalization = mode;
            spec.plugin_config = plugin_config.clone();
            mesh.add_pod(spec).unwrap()
        })
        .collect();
    for s in &mut servers {
        mesh.start_apps(s, &[("http", HTTP)]).unwrap();
        mesh.start(s).unwrap();
    }
    let certs = Certs::issue(mesh.pki(), &mesh.dir().join("other-pki")).unwrap();
    let foreign = mesh.pki().issue_with_uri("foreign-trust-domain", Some(FOREIGN_TRUST_DOMAIN_ID)).unwrap();
    let setup = started.elapsed();
    println!(
        "mesh up in {setup:.1?}: servers {} (PERMISSIVE, {HTTP} http-app); clients without sidecars: admin {}, web {}, unowned {}, blocked {}",
        servers.iter().zip(MODES).map(|(s, (_, mode, _))| format!("{mode} {}", s.ip())).collect::<Vec<_>>().join(", "),
        pods.admin,
        pods.web,
        pods.unowned,
        pods.blocked
    );

    let rows = corpus(&pods);
    let mut skipped: BTreeMap<&str, usize> = BTreeMap::new();
    let mut runnable_rows: Vec<(Role, &Row)> = Vec::new();
    for r in &rows {
        match r.from {
            Src::V4(role) => runnable_rows.push((role, r)),
            Src::V6 => *skipped.entry("IPv6 source (::1): the mesh is IPv4 only").or_default() += 1,
            Src::Mapped(_) => {
                *skipped.entry("IPv4-mapped IPv6 peer (dual-stack listener): the mesh's sidecars listen on IPv4 only").or_default() += 1
            }
        }
    }

    // Every (mode, row), batched by source pod; the four pods' clients run side by side.
    let corpus_started = Instant::now();
    let results: Vec<(usize, &Row, Outcome)> = thread::scope(|scope| {
        let batches: Vec<_> = Role::ALL
            .iter()
            .map(|&role| {
                let (mesh, certs, servers, client) = (&mesh, &certs, &servers, &clients[&role]);
                let mine: Vec<(usize, &Row)> = (0..MODES.len())
                    .flat_map(|m| runnable_rows.iter().filter(move |(r, _)| *r == role).map(move |&(_, row)| (m, row)))
                    .collect();
                scope.spawn(move || {
                    let jobs: Vec<Job> = mine.iter().map(|&(m, row)| Job { server: servers[m].ip(), row, cert: None }).collect();
                    let outcomes = run_batch(mesh, client, certs, &jobs);
                    mine.into_iter().zip(outcomes).map(|((m, row), o)| (m, row, o)).collect::<Vec<_>>()
                })
            })
            .collect();
        batches.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let corpus_time = corpus_started.elapsed();

    let mut tallies = [Tally::default(); MODES.len()];
    let mut failures = Vec::new();
    for (m, r, outcome) in &results {
        let t = &mut tallies[*m];
        t.run += 1;
        match outcome {
            // Only Krites answers 403 here (the RBAC filter after it allows all).
            Outcome::Status(403, _) => t.krites_denied += 1,
            o if o.allowed() => t.allowed += 1,
            Outcome::Status(..) => t.envoy_refused += 1,
            Outcome::TlsRefused(_) => t.tls_refused += 1,
            Outcome::Transport(_) => {}
        }
        let expect = r.expect_on(SanCheck::TrustDomain);
        if !matches(expect, outcome) {
            let bypass = is_bypass(expect, outcome);
            if bypass {
                t.bypasses += 1;
            }
            failures.push(format!(
                "{}pathNormalization={}: {} expected {expect:?}, got {outcome:?}",
                if bypass { "BYPASS " } else { "" },
                MODES[*m].1,
                r.describe()
            ));
        }
    }

    // The VMs are alive and still deciding after all of it.
    let mut report = String::new();
    for (m, server) in servers.iter().enumerate() {
        let mode = MODES[m].1;
        assert_eq!(server.admin("GET", "/ready").unwrap().trim(), "LIVE", "pathNormalization={mode}: the sidecar is not live");
        let web = &clients[&Role::Web];
        let admin = &clients[&Role::Admin];
        let after_with = |from: &MeshPod, row: &Row, cert: Option<&Identity>| {
            run_batch(&mesh, from, &certs, &[Job { server: server.ip(), row, cert }]).remove(0)
        };
        let after = |from: &MeshPod, row: &Row| after_with(from, row, None);
        let o = after(web, &row(get("/public"), Src::V4(Role::Web), Cert::Plain, Verdict::Allow));
        assert!(o.allowed(), "pathNormalization={mode}: GET /public from web after the corpus: {o:?}");
        let o = after(admin, &row(get("/admin"), Src::V4(Role::Admin), Cert::Admin, Verdict::Allow));
        assert!(o.allowed(), "pathNormalization={mode}: GET /admin from admin with its certificate: {o:?}");
        let o = after(web, &row(get("/admin"), Src::V4(Role::Web), Cert::Plain, Verdict::Deny));
        assert!(matches!(o, Outcome::Status(403, _)), "pathNormalization={mode}: GET /admin from web: {o:?}");
        // A forged XFCC on an allowed request, as the application receives it. Plaintext:
        // Envoy drops it (APPEND_FORWARD sanitises on a connection without a client
        // certificate). mTLS with web's certificate: Envoy appends the connection's element
        // after the forged one, so the last element names web, whatever the client claimed.
        let forged = ("x-forwarded-client-cert", FORGED_XFCC);
        let o = after(web, &row(http("GET", "/public/xfcc", &[forged]), Src::V4(Role::Web), Cert::Plain, Verdict::Allow));
        let seen = app_view(&o);
        assert!(o.allowed() && seen["xfcc"].is_null(), "pathNormalization={mode}: plaintext, forged XFCC: {o:?}");
        let o = after(web, &row(http("GET", "/web", &[forged]), Src::V4(Role::Web), Cert::Web, Verdict::Allow));
        let xfcc = app_view(&o)["xfcc"].as_str().unwrap_or("").to_string();
        let last = xfcc.rsplit(',').next().unwrap_or("");
        assert!(
            o.allowed() && last.contains(&format!("URI=spiffe://{TRUST_DOMAIN}/ns/default/sa/web")) && !last.contains("sa/admin"),
            "pathNormalization={mode}: mTLS as web, forged XFCC: {o:?}"
        );
        if m == 0 {
            println!("forged XFCC as the app receives it: plaintext -> {}; mTLS as web -> {xfcc:?}", seen["xfcc"]);
        }
        // The mesh CA's certificate for the admin's service account under a foreign trust
        // domain, from the admin's own pod: Istio's SAN check refuses it in the handshake.
        let o = after_with(admin, &row(get("/admin"), Src::V4(Role::Admin), Cert::Admin, Verdict::Refused), Some(&foreign));
        assert!(matches!(o, Outcome::TlsRefused(_)), "pathNormalization={mode}: {FOREIGN_TRUST_DOMAIN_ID}: {o:?}");
        // The application received exactly the allowed requests (the four above included),
        // each from the sidecar (127.0.0.6): interception carried everything.
        let t = tallies[m];
        let received: Vec<Value> = server.app_events().into_iter().filter(|e| e["kind"] == "http").collect();
        assert_eq!(received.len(), t.allowed + 4, "pathNormalization={mode}: requests the app received");
        assert!(
            received.iter().all(|e| e["peer"] == PASSTHROUGH_SOURCE),
            "pathNormalization={mode}: the app saw a peer other than {PASSTHROUGH_SOURCE}: {received:?}"
        );
        let stats = server.stats().unwrap();
        let denied = stats.get("wasmcustom.krites_denied_total").copied().unwrap_or(0);
        assert_eq!(denied as usize, t.krites_denied + 1, "pathNormalization={mode}: every 403 was Krites'");
        let log = server.envoy_log();
        for bad in ["panic", "wasm_fail", "Wasm VM failed", "VM failed", "Failed to"] {
            assert!(!log.contains(bad), "pathNormalization={mode}: {bad:?} in the sidecar's log:\n{log}");
        }
        writeln!(
            report,
            "pathNormalization={mode}: {} rows run: {} allowed, {} denied by Krites, {} refused by Envoy (4xx), {} TLS handshakes refused; {} bypasses; \
             afterwards the sidecar is live, decides the controls, refuses {FOREIGN_TRUST_DOMAIN_ID}; the app received {} requests, krites_denied_total {denied}",
            t.run, t.allowed, t.krites_denied, t.envoy_refused, t.tls_refused, t.bypasses, received.len()
        )
        .unwrap();
    }
    let bypasses: usize = tallies.iter().map(|t| t.bypasses).sum();
    let skipped_total: usize = skipped.values().sum();
    println!(
        "attack corpus on the namespace mesh: {} rows, {} run under each of {} path normalisations = {} requests in {corpus_time:.1?} (a client per source pod, {CONNECTIONS} connections each at once); {skipped_total} rows skipped per mode:",
        rows.len(),
        runnable_rows.len(),
        MODES.len(),
        results.len(),
    );
    for (why, n) in &skipped {
        println!("  skipped {n}: {why}");
    }
    println!("{report}bypasses: {bypasses}; wall time {:.1?} (setup {setup:.1?})", started.elapsed());
    assert_eq!(runnable_rows.len() + skipped_total, rows.len());
    assert!(
        failures.is_empty(),
        "{} of {} requests wrong ({bypasses} bypasses):\n{}\n--- {} access log (tail) ---\n{}",
        failures.len(),
        results.len(),
        failures.join("\n"),
        MODES[0].2,
        servers[0].access_log().lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
}
