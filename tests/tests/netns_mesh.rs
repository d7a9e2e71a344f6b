//! The namespace mesh (issue 12, part 1): pods are network namespaces, sidecars run as uid
//! 1337 behind Istio's iptables rules with istiod's `virtualInbound`, clients go through
//! their own sidecar's `virtualOutbound`, and the attack pod (no sidecar) uses curl, openssl
//! and raw sockets with summary's stolen certificate.
//!
//! Needs root (skipped otherwise, with the reason; in CI, `CI=true`, it fails instead) and
//! the Debian packages iproute2, iptables, util-linux, python3, openssl, curl.
//!
//! Policy: the database pods allow the service account `summary` only (two factors: the
//! certificate and the pod address must agree).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use krites_testbed::mesh::{
    self, ContainerPort, Mesh, MeshPod, MtlsMode, PodSpec, Protocol, Upstream,
};
use krites_testbed::Identity;
use serde_json::Value;

/// Declared HTTP (`http-web`).
const HTTP: u16 = 8080;
/// Declared TCP (`tcp-db`).
const TCP: u16 = 5432;
/// Named by a Service without a protocol: auto-detected.
const AUTO: u16 = 9000;
/// A container port no Service names: the passthrough chains.
const UNNAMED: u16 = 7000;

/// The sidecar -> application source in Istio.
const PASSTHROUGH_SOURCE: &str = "127.0.0.6";

fn database_spec(name: &str, mtls: MtlsMode) -> PodSpec {
    let mut spec = PodSpec::new(name, "database", "database");
    spec.mtls = mtls;
    spec.ports = vec![
        ContainerPort::new("http-web", HTTP, Some(Protocol::Http)),
        ContainerPort::new("tcp-db", TCP, Some(Protocol::Tcp)),
        ContainerPort::new("raw", AUTO, Some(Protocol::Auto)),
        ContainerPort::new("debug", UNNAMED, None),
    ];
    spec
}

/// The plugin config (README "How it works"): the database takes summary only. Written with
/// indentation and unsorted keys, as a user would; istiod's transform compacts it.
fn policy(summary: Ipv4Addr, databases: &[Ipv4Addr], attack: Ipv4Addr) -> String {
    let ep = |sa: &str, app: &str, ips: String| {
        format!(
            r#"{{"serviceAccount": "{sa}", "namespace": "default", "labels": {{"app": "{app}"}}, "ips": [{ips}]}}"#
        )
    };
    let db_ips = databases
        .iter()
        .map(|ip| format!("\"{ip}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"{{"version": 1,
  "policies": [
    {{"name": "database", "selector": "app == 'database' && has(app)",
      "ingress": [{{"action": "Allow", "source": {{"serviceAccounts": {{"names": ["summary"]}}}}}}]}}
  ],
  "endpoints": [{}, {}, {}]}}"#,
        ep("summary", "summary", format!("\"{summary}\"")),
        ep("database", "database", db_ips),
        ep("default", "attack", format!("\"{attack}\"")),
    )
}

fn upstreams(db: &MeshPod) -> Vec<Upstream> {
    let host = format!("{}.default.svc.cluster.local", db.spec.name);
    let identity = "spiffe://cluster.local/ns/default/sa/database".to_string();
    [
        (HTTP, Protocol::Http),
        (TCP, Protocol::Tcp),
        (AUTO, Protocol::Auto),
    ]
    .into_iter()
    .map(|(port, protocol)| Upstream {
        host: host.clone(),
        ip: db.ip(),
        port,
        protocol,
        identity: identity.clone(),
        endpoints: Vec::new(),
    })
    .collect()
}

/// What the database's applications received that contains `marker` (request path or bytes).
fn app_received(db: &MeshPod, marker: &str) -> Vec<Value> {
    db.app_events()
        .into_iter()
        .filter(|e| {
            e["data"].as_str().is_some_and(|d| d.contains(marker))
                || e["path"].as_str().is_some_and(|p| p.contains(marker))
        })
        .collect()
}

/// `openssl s_client` from `from` with `cert`, offering `alpn`, sending `payload` and
/// reading for 2 s. Returns the command line and stdout.
fn openssl(
    from: &MeshPod,
    to: (Ipv4Addr, u16),
    alpn: &str,
    cert: &Identity,
    payload: &str,
) -> (String, String) {
    let alpn_arg = if alpn.is_empty() {
        String::new()
    } else {
        format!("-alpn {alpn} ")
    };
    let client = format!(
        "openssl s_client -connect {}:{} {alpn_arg}-cert {} -key {} -quiet -no_ign_eof",
        to.0,
        to.1,
        cert.cert.display(),
        cert.key.display()
    );
    let script = format!("(cat; sleep 2) | {client}");
    let out = from
        .pod()
        .exec(
            &["sh", "-c", &script],
            Some(payload.as_bytes()),
            Duration::from_secs(15),
        )
        .unwrap();
    let shown = format!(
        "printf {payload:?} | ip netns exec {} {client}",
        from.pod().netns()
    );
    (shown, String::from_utf8_lossy(&out.stdout).into_owned())
}

fn curl(from: &MeshPod, args: &[&str]) -> (String, String, i32) {
    let mut all = vec![
        "curl",
        "-sS",
        "--max-time",
        "8",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
    ];
    all.extend_from_slice(args);
    let out = from
        .pod()
        .exec(&all, None, Duration::from_secs(15))
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_str()));
    (
        format!("ip netns exec {} {}", from.pod().netns(), all.join(" ")),
        body.to_string(),
        code.trim().parse().unwrap_or(0) + out.status.code().unwrap_or(-1) * 1000,
    )
}

#[test]
fn every_inbound_connection_on_the_namespace_mesh_is_decided() {
    if !krites_testbed::mesh::runnable("netns_mesh") {
        return;
    }
    let started = Instant::now();
    let mesh = Mesh::new("cluster.local").unwrap();
    let mut db = mesh
        .add_pod(database_spec("database", MtlsMode::Strict))
        .unwrap();
    let mut dbp = mesh
        .add_pod(database_spec("database-permissive", MtlsMode::Permissive))
        .unwrap();
    let mut summary = mesh
        .add_pod(PodSpec::new("summary", "summary", "summary"))
        .unwrap();
    let mut attack_spec = PodSpec::new("attack", "attack", "default");
    attack_spec.sidecar = false;
    let attack = mesh.add_pod(attack_spec).unwrap();

    let config = policy(summary.ip(), &[db.ip(), dbp.ip()], attack.ip());
    for p in [&mut db, &mut dbp, &mut summary] {
        p.spec.plugin_config = config.clone();
    }
    summary.spec.outbound = upstreams(&db).into_iter().chain(upstreams(&dbp)).collect();
    let servers = [
        ("http", HTTP),
        ("tcp", TCP),
        ("tcp", AUTO),
        ("tcp", UNNAMED),
    ];
    for p in [&mut db, &mut dbp] {
        mesh.start_apps(p, &servers).unwrap();
        mesh.start(p).unwrap();
        p.set_log_level("wasm", "info").unwrap();
    }
    mesh.start(&mut summary).unwrap();
    let setup = started.elapsed();
    eprintln!(
        "mesh up in {setup:?}: database {} (STRICT), database-permissive {} (PERMISSIVE), summary {}, attack {} (no sidecar)",
        db.ip(),
        dbp.ip(),
        summary.ip(),
        attack.ip()
    );

    let stolen = summary.identity().clone();
    let mut r = krites_testbed::mesh::Report::default();

    for (d, mode) in [(&db, "STRICT"), (&dbp, "PERMISSIVE")] {
        let ip = d.ip();
        let name = &d.spec.name;

        // (a) summary's app -> HTTP port, through summary's sidecar (15001, istio-http/1.1).
        let marker = format!("/a-{name}");
        let (cmd, body, code) = curl(&summary, &[&format!("http://{ip}:{HTTP}{marker}")]);
        let seen: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        r.check(
            code == 200 && seen["app"] == "ok",
            &format!("(a) {mode}: summary app -> {name}:{HTTP} via its sidecar -> 200"),
            || format!("{cmd}: {code} {body}"),
        );
        // (f) The app sees the sidecar's 127.0.0.6, and XFCC names summary's certificate.
        let xfcc = seen["xfcc"].as_str().unwrap_or("");
        r.check(
            seen["peer"] == PASSTHROUGH_SOURCE
                && xfcc.contains("URI=spiffe://cluster.local/ns/default/sa/summary"),
            &format!("(f) {mode}: the app sees {PASSTHROUGH_SOURCE} and XFCC with summary's URI"),
            || body.to_string(),
        );

        // (b) summary's app -> declared TCP port and auto-detected port, through its sidecar.
        for port in [TCP, AUTO] {
            let payload = format!("b-{name}-{port}");
            let got = mesh.client(&summary, (ip, port), &payload, None).unwrap();
            r.check(
                got.reply == format!("echo:{payload}"),
                &format!("(b) {mode}: summary app -> {name}:{port} (TCP) via its sidecar -> echo"),
                || format!("{}: {got:?}", got.command),
            );
        }

        // Control: the same raw mTLS client as the attacker (openssl, ALPN istio) but from
        // summary's own pod with its own certificate (as uid 1337, which its own sidecar does
        // not intercept): the chain works, so a refusal below is the policy's.
        {
            let payload = format!("control-{name}");
            let client = format!(
                "openssl s_client -connect {ip}:{TCP} -alpn istio -cert {} -key {} -quiet -no_ign_eof",
                stolen.cert.display(),
                stolen.key.display()
            );
            let script = format!(
                "(cat; sleep 2) | setpriv --reuid=1337 --regid=1337 --clear-groups -- {client}"
            );
            let out = summary
                .pod()
                .exec(
                    &["sh", "-c", &script],
                    Some(payload.as_bytes()),
                    Duration::from_secs(15),
                )
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            r.check(
                stdout.contains(&format!("echo:{payload}")),
                &format!("(control) {mode}: summary's own pod, own cert, ALPN istio -> {name}:{TCP} -> echo"),
                || format!("{script}: {stdout:?} {}", String::from_utf8_lossy(&out.stderr)),
            );
        }

        // (c) The attack pod, summary's stolen certificate, HTTP.
        if d.spec.mtls == MtlsMode::Strict {
            // A port declared HTTP takes any TLS to its HTTP chain: curl works as a client.
            let marker = format!("/c-curl-{name}");
            let (cmd, body, code) = curl(
                &attack,
                &[
                    "-k",
                    "--cert",
                    &stolen.cert.display().to_string(),
                    "--key",
                    &stolen.key.display().to_string(),
                    &format!("https://{ip}:{HTTP}{marker}"),
                ],
            );
            r.check(
                code == 403 && app_received(d, &marker).is_empty(),
                &format!("(c) {mode}: attack, stolen cert, curl https -> {name}:{HTTP} -> 403"),
                || {
                    format!(
                        "{cmd}: {code} {body}; app got {:?}",
                        app_received(d, &marker)
                    )
                },
            );
        } else {
            // PERMISSIVE: plaintext HTTP reaches the HTTP chain; the address alone decides.
            let marker = format!("/c-plain-{name}");
            let (cmd, body, code) = curl(&attack, &[&format!("http://{ip}:{HTTP}{marker}")]);
            r.check(
                code == 403 && app_received(d, &marker).is_empty(),
                &format!("(c) {mode}: attack, plaintext curl -> {name}:{HTTP} -> 403"),
                || {
                    format!(
                        "{cmd}: {code} {body}; app got {:?}",
                        app_received(d, &marker)
                    )
                },
            );
        }
        // With ALPN istio-http/1.1, as a client sidecar would: the HTTP chain of the declared
        // and of the auto-detected port.
        for port in [HTTP, AUTO] {
            let marker = format!("/c-alpn-{name}-{port}");
            let request =
                format!("GET {marker} HTTP/1.1\r\nHost: database\r\nConnection: close\r\n\r\n");
            let (cmd, out) = openssl(&attack, (ip, port), "istio-http/1.1", &stolen, &request);
            r.check(
                out.starts_with("HTTP/1.1 403") && app_received(d, &marker).is_empty(),
                &format!(
                    "(c) {mode}: attack, stolen cert, ALPN istio-http/1.1 -> {name}:{port} -> 403"
                ),
                || format!("{cmd}: {out:?}; app got {:?}", app_received(d, &marker)),
            );
        }

        // (d) Stolen certificate, ALPN istio, to the TCP, auto-detected and unnamed ports:
        // TCP chains. Closed, and the application receives nothing.
        for port in [TCP, AUTO, UNNAMED] {
            let payload = format!("d-istio-{name}-{port}");
            let (cmd, out) = openssl(&attack, (ip, port), "istio", &stolen, &payload);
            let got = app_received(d, &payload);
            r.check(
                !out.contains("echo:") && got.is_empty(),
                &format!("(d) {mode}: attack, stolen cert, ALPN istio -> {name}:{port} -> closed, app got nothing"),
                || format!("{cmd}: {out:?}; app got {got:?}"),
            );
        }
        // Raw TLS without ALPN (STRICT: a TCP chain that terminates TLS; PERMISSIVE: one-way
        // TLS passed through untouched, so only the address can decide).
        for port in [TCP, AUTO] {
            let payload = format!("d-noalpn-{name}-{port}");
            let got = mesh
                .client(&attack, (ip, port), &payload, Some(("", Some(&stolen))))
                .unwrap();
            let delivered = app_received(d, &payload);
            r.check(
                !got.reply.contains("echo:") && delivered.is_empty(),
                &format!("(d) {mode}: attack, stolen cert, no ALPN -> {name}:{port} -> closed, app got nothing"),
                || format!("{}: {got:?}; app got {delivered:?}", got.command),
            );
        }

        // (e) Plaintext that is not HTTP, from the attack pod (PERMISSIVE: a TCP chain;
        // STRICT: no chain at all).
        for port in [TCP, AUTO, UNNAMED] {
            let payload = format!("e-plain-{name}-{port}");
            let got = mesh.client(&attack, (ip, port), &payload, None).unwrap();
            let delivered = app_received(d, &payload);
            r.check(
                !got.reply.contains("echo:") && delivered.is_empty(),
                &format!(
                    "(e) {mode}: attack, plaintext -> {name}:{port} -> closed, app got nothing"
                ),
                || format!("{}: {got:?}; app got {delivered:?}", got.command),
            );
        }
        // The same plaintext from summary's pod (its address is summary's) as uid 1337, so
        // its own sidecar does not wrap it: PERMISSIVE lets the address alone allow it.
        if d.spec.mtls == MtlsMode::Permissive {
            let payload = format!("e-summary-plain-{name}");
            let script = format!(
                "setpriv --reuid=1337 --regid=1337 --clear-groups -- {} {} plain {ip} {TCP} {payload}",
                mesh::python3().display(),
                mesh.dir().join("client.py").display()
            );
            let out = summary
                .pod()
                .exec(&["sh", "-c", &script], None, Duration::from_secs(15))
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            r.check(
                stdout.contains(&format!("echo:{payload}")),
                &format!("(control) {mode}: summary's address, plaintext -> {name}:{TCP} -> echo"),
                || {
                    format!(
                        "{script}: {stdout} {}",
                        String::from_utf8_lossy(&out.stderr)
                    )
                },
            );
        }

        // Interception: every connection the apps saw came from the sidecar (127.0.0.6);
        // virtualInbound and its chains carried them.
        let events = d.app_events();
        let peers: Vec<&str> = events.iter().filter_map(|e| e["peer"].as_str()).collect();
        r.check(
            !peers.is_empty() && peers.iter().all(|p| *p == PASSTHROUGH_SOURCE),
            &format!("(f) {mode}: the apps saw only {PASSTHROUGH_SOURCE}"),
            || format!("{peers:?}"),
        );
        let stats = d.stats().unwrap();
        let stat = |k: &str| stats.get(k).copied().unwrap_or(0);
        r.check(
            stat("listener.0.0.0.0_15006.downstream_cx_total") > 0
                && stat(&format!("tcp.inbound|{TCP}||.downstream_cx_total")) > 0
                && stat(&format!("http.inbound_0.0.0.0_{HTTP}.downstream_rq_2xx")) > 0
                && stat(&format!("http.inbound_0.0.0.0_{HTTP}.downstream_rq_4xx")) > 0,
            &format!(
                "(f) {mode}: {name}'s virtualInbound, TCP and HTTP chains carried the traffic"
            ),
            || {
                format!(
                    "{:#?}",
                    stats
                        .iter()
                        .filter(|(k, _)| k.starts_with("listener.0.0.0.0_15006")
                            || k.starts_with("tcp.")
                            || k.starts_with("http.inbound"))
                        .collect::<Vec<_>>()
                )
            },
        );
        // Krites saw the attack pod's real address (not 127.0.0.6, not a header's).
        let log = d.envoy_log();
        let attack_ip = attack.ip().to_string();
        r.check(
            log.lines()
                .any(|l| l.contains("DENY") && l.contains(&attack_ip))
                && !log
                    .lines()
                    .any(|l| l.contains("DENY") && l.contains(PASSTHROUGH_SOURCE)),
            &format!("(f) {mode}: Krites' denials name the attack pod {attack_ip}"),
            || {
                log.lines()
                    .filter(|l| l.contains("krites"))
                    .take(20)
                    .collect::<Vec<_>>()
                    .join("\n")
            },
        );
    }
    // With `use_original_dst`, virtualOutbound hands each connection to the listener of its
    // original destination (`<pod IP>_<port>`), which counts it; the cluster originated mTLS.
    let sstats = summary.stats().unwrap();
    let outbound: Vec<(String, u64)> = [&db, &dbp]
        .iter()
        .flat_map(|d| {
            [HTTP, TCP, AUTO].map(|port| format!("listener.{}_{port}.downstream_cx_total", d.ip()))
        })
        .map(|k| {
            let v = sstats.get(&k).copied().unwrap_or(0);
            (k, v)
        })
        .collect();
    let tls = sstats
        .iter()
        .filter(|(k, _)| k.starts_with("cluster.outbound|") && k.ends_with(".ssl.handshake"))
        .map(|(_, v)| *v)
        .sum::<u64>();
    r.check(
        outbound.iter().all(|(_, v)| *v > 0) && tls >= 6,
        "summary's app went through its sidecar (15001 -> <pod IP>_<port>, Istio mTLS)",
        || format!("{outbound:?}, outbound handshakes {tls}"),
    );

    eprintln!(
        "{} rows in {:?} (setup {setup:?}); database log tail:\n{}",
        r.rows,
        started.elapsed(),
        db.envoy_log()
            .lines()
            .rev()
            .take(6)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        r.failures.is_empty(),
        "{} of {} rows failed:\n{}\n--- database access log ---\n{}\n--- database-permissive access log ---\n{}",
        r.failures.len(),
        r.rows,
        r.failures.join("\n"),
        db.access_log(),
        dbp.access_log()
    );
}
