//! Connections no HTTP filter sees. Istio sends TLS with ALPN `istio` on a port whose
//! protocol is auto-detected, unsniffed plaintext in PERMISSIVE mode, and every port declared
//! TCP through a TCP filter chain: network filters, then `tcp_proxy` straight to the
//! application. Krites' NETWORK role decides each such connection with the engine and the
//! two-factor rule; HTTP chains stay with the HTTP role, per request.
//!
//! Each row is a connection: source pod, certificate, ALPN, listener, and what the client and
//! the application see. A denied connection is closed and the application receives nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use krites_testbed::tcp::{plain_exchange, Exchange, TcpApp, TlsClient};
use krites_testbed::{Identity, Mesh, Pki, Request, Sidecar, SidecarSpec};

const SUMMARY: Ipv4Addr = Ipv4Addr::new(127, 0, 12, 12);
const CUSTOMER: Ipv4Addr = Ipv4Addr::new(127, 0, 12, 11);
const DATABASE: Ipv4Addr = Ipv4Addr::new(127, 0, 12, 13);
/// The tutorial's attack pod (service account `default`).
const ATTACK: Ipv4Addr = Ipv4Addr::new(127, 0, 12, 66);
/// No pod owns it.
const UNOWNED: Ipv4Addr = Ipv4Addr::new(127, 0, 12, 77);

/// YAO Bank: the database takes summary's service account only; the customer page takes
/// GET from anyone (an HTTP rule, which no TCP connection can satisfy).
fn config() -> String {
    let ep = |sa: &str, app: &str, ip: Ipv4Addr| {
        format!(r#"{{"namespace": "default", "serviceAccount": "{sa}", "labels": {{"app": "{app}"}}, "ips": ["{ip}"]}}"#)
    };
    format!(
        r#"{{"version": 1,
  "policies": [
    {{"name": "database", "selector": "app == 'database'", "ingress": [{{"action": "Allow", "source": {{"serviceAccounts": {{"names": ["summary"]}}}}}}]}},
    {{"name": "customer", "selector": "app == 'customer'", "ingress": [{{"action": "Allow", "http": {{"methods": ["GET"]}}}}]}}
  ],
  "endpoints": [{}, {}, {}, {}]}}"#,
        ep("summary", "summary", SUMMARY),
        ep("customer", "customer", CUSTOMER),
        ep("database", "database", DATABASE),
        ep("default", "attack", ATTACK),
    )
}

struct Rig {
    _dir: tempfile::TempDir,
    pki: Pki,
    app: TcpApp,
    sidecar: Sidecar,
}

fn rig(name: &str, ip: Ipv4Addr, config: &str, greeting: Option<&'static [u8]>) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), "cluster.local").unwrap();
    let app = TcpApp::start(IpAddr::V4(Ipv4Addr::LOCALHOST), greeting).unwrap();
    let spec = SidecarSpec::krites(name, ip, &pki, config, dir.path().join(name)).unwrap();
    let mesh = Mesh { tcp_app: Some(app.addr()), component_log_level: Some("wasm:info".into()), ..Mesh::default() };
    let sidecar = Sidecar::start_with(spec, mesh).unwrap();
    Rig { _dir: dir, pki, app, sidecar }
}

#[derive(Debug, Clone, Copy)]
enum Cert {
    Plain,
    Own(&'static str),
    /// Another pod's certificate, from the mesh CA.
    Stolen(&'static str),
    /// A certificate from a CA the mesh does not trust.
    Foreign,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// The application answered.
    Echo,
    /// The connection was closed; the application received nothing.
    Closed,
}

struct Row {
    name: &'static str,
    from: Ipv4Addr,
    cert: Cert,
    alpn: &'static [&'static str],
    payload: &'static [u8],
    want: Want,
}

const fn row(name: &'static str, from: Ipv4Addr, cert: Cert, alpn: &'static [&'static str], payload: &'static [u8], want: Want) -> Row {
    Row { name, from, cert, alpn, payload, want }
}

fn connect(rig: &Rig, foreign: &Pki, r: &Row, wait_first: Duration) -> Exchange {
    let identity = |sa: &str| -> Identity { rig.pki.issue(&format!("{sa}-client"), "default", sa).unwrap() };
    let from = IpAddr::V4(r.from);
    match r.cert {
        Cert::Plain => plain_exchange(from, rig.sidecar.tcp_plain_addr().unwrap(), r.payload, wait_first).unwrap(),
        Cert::Own(sa) | Cert::Stolen(sa) => {
            let id = identity(sa);
            TlsClient::new(Some(&id), r.alpn).unwrap().exchange(from, rig.sidecar.tcp_mtls_addr().unwrap(), r.payload, wait_first).unwrap()
        }
        Cert::Foreign => {
            let id = foreign.issue("summary-foreign", "default", "summary").unwrap();
            TlsClient::new(Some(&id), r.alpn).unwrap().exchange(from, rig.sidecar.tcp_mtls_addr().unwrap(), r.payload, wait_first).unwrap()
        }
    }
}

/// Runs the rows; every failure is listed, with what the client and the application saw.
fn play(rig: &Rig, rows: &[Row], wait_first: Duration) {
    let foreign_dir = tempfile::tempdir().unwrap();
    let foreign = Pki::new(foreign_dir.path(), "cluster.local").unwrap();
    let mut failures = Vec::new();
    for r in rows {
        let before = rig.app.received().len();
        let got = connect(rig, &foreign, r, wait_first);
        std::thread::sleep(Duration::from_millis(100));
        let delivered = rig.app.received().get(before..).map(<[u8]>::to_vec).unwrap_or_default();
        let ok = match r.want {
            Want::Echo => got.reply_text().contains(&format!("echo:{}", String::from_utf8_lossy(r.payload))) && delivered == r.payload,
            Want::Closed => got.closed && !got.reply_text().contains("echo:") && delivered.is_empty(),
        };
        if !ok {
            failures.push(format!(
                "{}: want {:?}, client got {:?} (closed: {}), application received {:?}",
                r.name,
                r.want,
                got.reply_text(),
                got.closed,
                String::from_utf8_lossy(&delivered)
            ));
        }
    }
    assert!(failures.is_empty(), "{} of {} connections wrong:\n{}\n\nEnvoy log:\n{}", failures.len(), rows.len(), failures.join("\n"), rig.sidecar.log().unwrap_or_default());
}

/// The counters now, to measure from.
fn counters(rig: &Rig) -> impl Fn(&str) -> u64 {
    let stats = rig.sidecar.stats().unwrap();
    move |name: &str| stats.get(&format!("wasmcustom.{name}")).copied().unwrap_or(0)
}

/// The bypass of issue #12: a stolen certificate with ALPN `istio` (or any ALPN but
/// Istio's HTTP ones, or none) reaches a TCP chain, where no HTTP filter runs.
#[test]
fn tcp_chains_decide_every_connection_with_two_factors() {
    let rig = rig("database", DATABASE, &config(), None);
    // The rig's readiness probes open (and close) connections too: count from here.
    let base = counters(&rig);
    const ISTIO: &[&str] = &["istio"];
    let rows = [
        row("summary's own certificate, ALPN istio", SUMMARY, Cert::Own("summary"), ISTIO, b"PING", Want::Echo),
        row("summary's certificate, istio-peer-exchange", SUMMARY, Cert::Own("summary"), &["istio-peer-exchange", "istio"], b"PING2", Want::Echo),
        row("summary's certificate, no ALPN", SUMMARY, Cert::Own("summary"), &[], b"PING3", Want::Echo),
        row("plaintext from summary's address (PERMISSIVE)", SUMMARY, Cert::Plain, &[], b"PING4", Want::Echo),
        row("stolen summary certificate from the attack pod, ALPN istio", ATTACK, Cert::Stolen("summary"), ISTIO, b"SET balance 1000000", Want::Closed),
        row("stolen certificate, istio-peer-exchange", ATTACK, Cert::Stolen("summary"), &["istio-peer-exchange"], b"SET balance", Want::Closed),
        row("stolen certificate, raw TLS without ALPN", ATTACK, Cert::Stolen("summary"), &[], b"SET balance", Want::Closed),
        row("stolen certificate, HTTP inside ALPN istio", ATTACK, Cert::Stolen("summary"), ISTIO, b"PUT /v2/keys/balance HTTP/1.1\r\nHost: db\r\n\r\n", Want::Closed),
        row("stolen certificate from an address no pod owns", UNOWNED, Cert::Stolen("summary"), ISTIO, b"SET balance", Want::Closed),
        row("the attack pod's own certificate", ATTACK, Cert::Own("default"), ISTIO, b"SET balance", Want::Closed),
        row("customer's own certificate (not allowed)", CUSTOMER, Cert::Own("customer"), ISTIO, b"GET", Want::Closed),
        row("plaintext from the attack pod, not HTTP", ATTACK, Cert::Plain, &[], b"\x00\x01binary", Want::Closed),
        row("plaintext from the attack pod, HTTP", ATTACK, Cert::Plain, &[], b"GET / HTTP/1.1\r\nHost: db\r\n\r\n", Want::Closed),
        row("a certificate from a foreign CA", SUMMARY, Cert::Foreign, ISTIO, b"SET balance", Want::Closed),
    ];
    play(&rig, &rows, Duration::from_millis(200));
    let s = |n: &str| rig.sidecar.stat(&format!("wasmcustom.{n}")).unwrap() - base(n);
    assert_eq!(s("krites_connections_allowed_total"), 4, "allowed connections");
    // The foreign CA fails the handshake: Envoy closes it before any filter decides.
    assert_eq!(s("krites_connections_denied_total"), 9, "denied connections");
    assert_eq!(s("krites_connections_total"), 13);
    assert_eq!(s("krites_requests_total"), 0, "no HTTP filter ran");
    let log = rig.sidecar.log().unwrap();
    assert!(log.contains("certificate says default/summary but 127.0.12.66 belongs to default/default"), "the denial is logged with its reason:\n{log}");
}

/// A rule with `http` can only allow an HTTP request. On a TCP chain nothing is HTTP to the
/// proxy, so the connection is closed; on the same workload's HTTP chain the HTTP role still
/// decides each request (the NETWORK role never refuses what an HTTP rule could allow).
#[test]
fn http_rules_allow_nothing_on_tcp_chains_and_stay_per_request_on_http_chains() {
    let rig = rig("customer", CUSTOMER, &config(), None);
    let base = counters(&rig);
    let rows = [
        row("plaintext HTTP GET on the TCP chain", ATTACK, Cert::Plain, &[], b"GET / HTTP/1.1\r\nHost: customer\r\n\r\n", Want::Closed),
        row("summary over mTLS on the TCP chain", SUMMARY, Cert::Own("summary"), &["istio"], b"GET / HTTP/1.1\r\nHost: customer\r\n\r\n", Want::Closed),
    ];
    play(&rig, &rows, Duration::from_millis(200));
    let s = |n: &str| rig.sidecar.stat(&format!("wasmcustom.{n}")).unwrap() - base(n);
    assert_eq!(s("krites_connections_denied_http_only_total"), 2);
    let get = Request::from(ATTACK).to(rig.sidecar.plain_addr()).path("/").send().unwrap();
    assert_eq!(get.status, 200, "GET on the HTTP chain is allowed per request");
    let post = Request::from(ATTACK).to(rig.sidecar.plain_addr()).method("POST").path("/").send().unwrap();
    assert_eq!(post.status, 403, "POST on the HTTP chain is denied by the HTTP role with a 403, not a closed connection");
    let summary = rig.pki.issue("summary-http", "default", "summary").unwrap();
    let mtls = Request::from(SUMMARY).to(rig.sidecar.mtls_addr()).tls(rig.pki.ca_cert(), Some(&summary), rig.sidecar.server_name()).path("/").send().unwrap();
    assert_eq!(mtls.status, 200);
    assert!(s("krites_connections_http_total") >= 3, "HTTP chains are left to the HTTP role");
    assert_eq!(s("krites_connections_denied_total"), 2, "no HTTP-chain connection was closed");
}

/// Server-first protocols (SMTP, MySQL) still work when allowed, and a denied plaintext client
/// does not even get the greeting; a denied TLS client may see a greeting sent before its
/// handshake ended (as with Envoy's network RBAC), but no byte of its own reaches the server.
#[test]
fn server_first_applications() {
    let rig = rig("database", Ipv4Addr::new(127, 0, 12, 23), &config().replace("127.0.12.13", "127.0.12.23"), Some(b"220 db ready\r\n"));
    let wait = Duration::from_millis(400);
    let allowed = connect(&rig, &rig.pki, &row("summary", SUMMARY, Cert::Own("summary"), &["istio"], b"PING", Want::Echo), wait);
    assert!(allowed.reply_text().starts_with("220 db ready") && allowed.reply_text().contains("echo:PING"), "{allowed:?}");
    let plain = connect(&rig, &rig.pki, &row("attack", ATTACK, Cert::Plain, &[], b"QUIT", Want::Closed), wait);
    assert!(plain.closed && plain.reply.is_empty(), "a denied plaintext client gets nothing: {plain:?}");
    let before = rig.app.received().len();
    let stolen = connect(&rig, &rig.pki, &row("stolen", ATTACK, Cert::Stolen("summary"), &["istio"], b"SET balance", Want::Closed), wait);
    assert!(stolen.closed && !stolen.reply_text().contains("echo:"), "{stolen:?}");
    assert_eq!(rig.app.received().len(), before, "no byte of a denied client reaches the application");
}

/// Both roles fail closed: with no config the NETWORK role closes TCP connections too.
#[test]
fn no_config_closes_tcp_connections() {
    let rig = rig("database", Ipv4Addr::new(127, 0, 12, 33), "", None);
    let rows = [row("summary with no config loaded", SUMMARY, Cert::Own("summary"), &["istio"], b"PING", Want::Closed)];
    play(&rig, &rows, Duration::from_millis(200));
    assert!(rig.sidecar.log().unwrap().contains("krites: DENY no_config: fail closed"));
}

/// Envoy's CPU time so far, in microseconds: the sum over its threads of
/// the scheduler's run time (`/proc/<pid>/task/*/schedstat`, nanoseconds;
/// `/proc/<pid>/stat` counts 10 ms ticks, too coarse for a round).
fn cpu_micros(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    let nanos: u64 = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    nanos / 1000
}

/// The smallest module Envoy runs as a network filter: it exports no
/// connection callback, so Envoy enters it once per connection (to create
/// the context), and it makes no host call. The floor of any Wasm NETWORK
/// filter, as `bench/load/wasm/minimal.wat` is for HTTP.
const MINIMAL_NETWORK_MODULE: &str = r#"(module
  (memory (export "memory") 1)
  (global $next (mut i32) (i32.const 1024))
  (func (export "malloc") (param $size i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $next))
    (if (i32.gt_u (i32.add (local.get $at) (local.get $size)) (i32.const 65536))
      (then (return (i32.const 0))))
    (global.set $next (i32.add (local.get $at) (local.get $size)))
    (local.get $at))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_context_create") (param i32 i32)))"#;

/// What the NETWORK role costs per connection: the same plaintext TCP chain
/// with no module, with the minimal module above, and with Krites; rounds of
/// N allowed connections each (connect, 4 bytes, echo, close), sequential,
/// the three sidecars in turn so that drift hits all alike. Prints medians of
/// wall time and Envoy CPU per connection; run with `--ignored --nocapture`.
#[test]
#[ignore = "a measurement: cargo test -p krites-testbed --test tcp_chains -- --ignored --nocapture"]
fn network_role_cost_per_connection() {
    const N: usize = 300;
    const ROUNDS: usize = 7;
    let measure = |rig: &Rig, n: usize| {
        let to = rig.sidecar.tcp_plain_addr().unwrap();
        // Connect from summary's address, send, read exactly the echo, close.
        let once = || {
            use std::io::{Read, Write};
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            socket.bind(&std::net::SocketAddr::new(IpAddr::V4(SUMMARY), 0).into()).unwrap();
            socket.connect(&to.into()).unwrap();
            let mut stream: std::net::TcpStream = socket.into();
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            stream.write_all(b"PING").unwrap();
            let mut echo = [0u8; 9];
            stream.read_exact(&mut echo).unwrap();
            assert_eq!(&echo, b"echo:PING");
        };
        let (cpu, started) = (cpu_micros(rig.sidecar.pid()), std::time::Instant::now());
        for _ in 0..n {
            once();
        }
        let wall = started.elapsed().as_micros() as f64 / n as f64;
        let cpu = (cpu_micros(rig.sidecar.pid()) - cpu) as f64 / n as f64;
        (wall, cpu)
    };
    let restart = |rig: &mut Rig, wasm: Option<std::path::PathBuf>| {
        let spec = SidecarSpec { wasm, ..rig.sidecar.spec().clone() };
        let mesh = rig.sidecar.mesh().clone();
        rig.sidecar = Sidecar::start_with(spec, mesh).unwrap();
    };
    let krites = rig("database", Ipv4Addr::new(127, 0, 12, 43), &config().replace("127.0.12.13", "127.0.12.43"), None);
    let mut none = rig("database", Ipv4Addr::new(127, 0, 12, 53), &config(), None);
    restart(&mut none, None);
    let mut minimal = rig("database", Ipv4Addr::new(127, 0, 12, 63), &config().replace("127.0.12.13", "127.0.12.63"), None);
    let module = minimal._dir.path().join("minimal-network.wasm");
    std::fs::write(&module, wat::parse_str(MINIMAL_NETWORK_MODULE).unwrap()).unwrap();
    restart(&mut minimal, Some(module));
    // Other modules to compare (`KRITES_COST_MODULES=a.wasm,b.wat`): Krites
    // built with a step disabled, or a probe that makes N host calls.
    let extra: Vec<(String, Rig)> = std::env::var("KRITES_COST_MODULES")
        .unwrap_or_default()
        .split(',')
        .filter(|p| !p.is_empty())
        .enumerate()
        .map(|(i, path)| {
            let ip = Ipv4Addr::new(127, 0, 12, 73 + 10 * i as u8);
            let mut rig = rig("database", ip, &config().replace("127.0.12.13", &ip.to_string()), None);
            // A .wat file or a .wasm one; either is written out as a binary module.
            let module = rig._dir.path().join(format!("extra-{i}.wasm"));
            std::fs::write(&module, wat::parse_file(path).unwrap()).unwrap();
            restart(&mut rig, Some(module));
            (path.rsplit('/').next().unwrap_or(path).to_string(), rig)
        })
        .collect();
    let mut rigs = vec![("no module", &none), ("minimal module", &minimal), ("Krites", &krites)];
    rigs.extend(extra.iter().map(|(name, rig)| (name.as_str(), rig)));
    for (_, rig) in &rigs {
        measure(rig, 50); // warm up
    }
    let mut samples: Vec<Vec<(f64, f64)>> = vec![Vec::new(); rigs.len()];
    for round in 0..ROUNDS {
        for k in 0..rigs.len() {
            let i = (round + k) % rigs.len();
            samples[i].push(measure(rigs[i].1, N));
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("NETWORK role, {ROUNDS} rounds of {N} plaintext TCP connections per sidecar (medians per connection):");
    let base_cpu = median(samples[0].iter().map(|s| s.1).collect());
    for (i, (name, _)) in rigs.iter().enumerate() {
        let wall = median(samples[i].iter().map(|s| s.0).collect());
        let cpu = median(samples[i].iter().map(|s| s.1).collect());
        // The paired delta: each round's figure minus the same round's no-module figure.
        let delta = median(samples[i].iter().zip(&samples[0]).map(|(s, b)| s.1 - b.1).collect());
        println!("  {name:<18} {wall:8.1} us wall, {cpu:7.1} us Envoy CPU ({:+6.1} us over no module; paired {delta:+6.1})", cpu - base_cpu);
    }
}
