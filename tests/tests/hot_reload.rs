//! Hot reload under load: 100 config updates through ECDS (a watched file, renamed into
//! place, as Istio delivers a WasmPlugin's config) while load runs from several pod IPs over
//! keep-alive plaintext and mTLS connections. Every response of the requests whose verdict no
//! update changes is checked: zero transport failures, zero wrong verdicts. After each update
//! a probe measures how long until the new config decides (must be under one second). Envoy's
//! memory stays flat across the updates.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use krites_testbed::{raw_request, EcdsOutcome, Identity, Pki, RawConn, Sidecar, SidecarSpec};
use serde_json::json;

const UPDATES: usize = 100;
/// Enforcement of each update must be visible within this.
const DEADLINE: Duration = Duration::from_secs(1);

const SIDECAR_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 10, 1);
/// The stable web pods: always allowed on /always.
const WEB_IPS: [Ipv4Addr; 4] = [Ipv4Addr::new(127, 0, 10, 11), Ipv4Addr::new(127, 0, 10, 12), Ipv4Addr::new(127, 0, 10, 13), Ipv4Addr::new(127, 0, 10, 14)];
/// A blocked net: always denied.
const BLOCKED_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 10, 200);
/// No pod ever owns it: always denied where a service account is required.
const UNOWNED_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 10, 201);
/// Probe for the policy change "allow 127.0.10.50 on /probe".
const RULE_PROBE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 10, 50);
/// Probe for the endpoint change "127.0.10.60 joins / leaves the web pods".
const MOVING_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 10, 60);

/// Everything a config is made from; each update changes one thing.
#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    /// Policy: the rule that lets RULE_PROBE_IP GET /probe.
    probe_rule: bool,
    /// Policy: web pods may GET exactly this path ("/left" or "/right").
    flip_path: &'static str,
    /// Endpoints: MOVING_IP is a web pod.
    moving_is_web: bool,
    /// Endpoints: the one batch pod (allowed on /batch) is 127.0.11.<n>.
    batch_pod: u8,
    /// Endpoints: churned unrelated groups (their addresses and labels change every update).
    generation: usize,
}

impl State {
    fn config(&self) -> String {
        let mut ingress = vec![
            json!({"action": "Deny", "source": {"nets": [format!("{BLOCKED_IP}/32")]}}),
            json!({"action": "Allow", "source": {"serviceAccounts": {"names": ["web"]}}, "http": {"methods": ["GET"], "paths": [{"prefix": "/always"}]}}),
            json!({"action": "Allow", "source": {"serviceAccounts": {"names": ["web"]}}, "http": {"methods": ["GET"], "paths": [{"exact": self.flip_path}]}}),
            json!({"action": "Allow", "source": {"serviceAccounts": {"names": ["batch"]}}, "http": {"methods": ["GET"], "paths": [{"exact": "/batch"}]}}),
            json!({"action": "Allow", "source": {"selector": "tier == 'unrelated'"}, "http": {"methods": ["GET"], "paths": [{"exact": "/unrelated"}]}}),
        ];
        if self.probe_rule {
            ingress.push(json!({"action": "Allow", "source": {"nets": [format!("{RULE_PROBE_IP}/32")]}, "http": {"methods": ["GET"], "paths": [{"exact": "/probe"}]}}));
        }
        let mut web: Vec<String> = WEB_IPS.iter().map(ToString::to_string).collect();
        if self.moving_is_web {
            web.push(MOVING_IP.to_string());
        }
        let mut endpoints = vec![
            json!({"namespace": "default", "serviceAccount": "web", "labels": {"app": "web"}, "ips": web}),
            json!({"namespace": "default", "serviceAccount": "batch", "labels": {"app": "batch"}, "ips": [format!("127.0.11.{}", self.batch_pod)]}),
        ];
        // 200 unrelated groups of 25 pods (10.g.x.y), re-addressed and relabelled each generation.
        let g = self.generation;
        for group in 0..200usize {
            let ips: Vec<String> = (0..25usize).map(|i| format!("10.{}.{}.{}", group, (g * 7 + i) % 250, (g * 13 + i * 3) % 250 + 1)).collect();
            endpoints.push(json!({
                "namespace": format!("ns-{}", group % 10),
                "serviceAccount": format!("svc-{group}"),
                "labels": {"app": format!("svc-{group}"), "tier": "unrelated", "pod-template-hash": format!("{g:08x}")},
                "ips": ips
            }));
        }
        json!({
            "version": 1,
            "revision": format!("hot-reload-{g}"),
            "policies": [{"name": "app", "selector": "app == 'app'", "ingress": ingress}],
            "endpoints": endpoints
        })
        .to_string()
    }

    /// The next state: updates cycle through two policy changes and two endpoint changes;
    /// the unrelated groups churn every time.
    fn next(&self, i: usize) -> (State, Change) {
        let mut s = self.clone();
        s.generation = i + 1;
        let change = match i % 4 {
            0 => {
                s.probe_rule = !s.probe_rule;
                Change::ProbeRule(s.probe_rule)
            }
            1 => {
                let old = s.flip_path;
                s.flip_path = if old == "/left" { "/right" } else { "/left" };
                Change::FlipPath { old, new: s.flip_path }
            }
            2 => {
                s.moving_is_web = !s.moving_is_web;
                Change::MovingPod(s.moving_is_web)
            }
            _ => {
                let old = s.batch_pod;
                s.batch_pod = old % 200 + 1;
                Change::BatchPod { old, new: s.batch_pod }
            }
        };
        (s, change)
    }
}

/// What an update changed, and so what the probe checks.
#[derive(Debug, Clone, Copy)]
enum Change {
    ProbeRule(bool),
    FlipPath { old: &'static str, new: &'static str },
    MovingPod(bool),
    BatchPod { old: u8, new: u8 },
}

fn status(from: Ipv4Addr, to: SocketAddr, path: &str) -> u16 {
    let req = format!("GET {path} HTTP/1.1\r\nhost: app\r\n\r\n");
    match raw_request(IpAddr::V4(from), to, req.as_bytes(), Duration::from_secs(5)) {
        Ok(r) => r.status,
        Err(e) => panic!("probe {from} {path}: {e:#}"),
    }
}

impl Change {
    /// Whether the sidecar decides as the new config says (every probe must be 200 or 403).
    fn enforced(&self, to: SocketAddr) -> bool {
        let verdict = |from, path| match status(from, to, path) {
            200 => true,
            403 => false,
            other => panic!("probe {from} {path}: HTTP {other}"),
        };
        match *self {
            Change::ProbeRule(on) => verdict(RULE_PROBE_IP, "/probe") == on,
            Change::FlipPath { old, new } => verdict(WEB_IPS[0], new) && !verdict(WEB_IPS[0], old),
            Change::MovingPod(on) => verdict(MOVING_IP, "/always") == on,
            Change::BatchPod { old, new } => {
                verdict(Ipv4Addr::new(127, 0, 11, new), "/batch") && !verdict(Ipv4Addr::new(127, 0, 11, old), "/batch")
            }
        }
    }
}

/// Counts of one load stream.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    wrong: AtomicU64,
    failed: AtomicU64,
    /// The first few problems, for the failure message.
    problems: Mutex<Vec<String>>,
}

impl Tally {
    fn problem(&self, what: String) {
        let mut p = self.problems.lock().unwrap();
        if p.len() < 10 {
            p.push(what);
        }
    }
}

/// One load stream: keep-alive plaintext requests with an invariant verdict, from `sources`
/// in turn, a new connection every 200 requests.
#[allow(clippy::too_many_arguments)]
fn plaintext_stream(name: &'static str, sources: Vec<Ipv4Addr>, to: SocketAddr, path: &'static str, expect: u16, stop: Arc<AtomicBool>, tally: Arc<Tally>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut n = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let from = sources[(n / 200) % sources.len()];
            let mut conn = match RawConn::connect(IpAddr::V4(from), to, Duration::from_secs(5)) {
                Ok(c) => c,
                Err(e) => {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    tally.problem(format!("{name}: connect from {from}: {e:#}"));
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            for _ in 0..200 {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                n += 1;
                match conn.request("GET", path, &[]) {
                    Ok(r) if r.status == expect => {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        tally.wrong.fetch_add(1, Ordering::Relaxed);
                        tally.problem(format!("{name}: GET {path} from {from}: HTTP {} {:?}, expected {expect}", r.status, r.body_text()));
                    }
                    Err(e) => {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                        tally.problem(format!("{name}: GET {path} from {from}: {e:#}"));
                    }
                }
                if conn.is_closed() {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    tally.problem(format!("{name}: the server closed a keep-alive connection from {from}"));
                    break;
                }
            }
        }
    })
}

/// mTLS load through curl: one process, one keep-alive connection, `batch` requests, each
/// response's status checked.
#[allow(clippy::too_many_arguments)]
fn mtls_stream(name: &'static str, from: Ipv4Addr, to: SocketAddr, cert: &Identity, ca_path: std::path::PathBuf, path: &'static str, expect: u16, stop: Arc<AtomicBool>, tally: Arc<Tally>) -> thread::JoinHandle<()> {
    let cert = cert.clone();
    thread::spawn(move || {
        let batch = 50;
        while !stop.load(Ordering::Relaxed) {
            let url = format!("https://app:{}{path}", to.port());
            let mut cmd = Command::new("curl");
            cmd.args(["-q", "-sS", "--http1.1", "--noproxy", "*", "--max-time", "20"])
                .arg("--interface")
                .arg(from.to_string())
                .arg("--resolve")
                .arg(format!("app:{}:{}", to.port(), to.ip()))
                .arg("--cacert")
                .arg(&ca_path)
                .arg("--cert")
                .arg(&cert.cert)
                .arg("--key")
                .arg(&cert.key)
                .args(["-w", "%{http_code} %{num_connects}\\n"]);
            for _ in 0..batch {
                cmd.args(["-o", "/dev/null"]).arg(&url);
            }
            let out = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let mut seen = 0;
            let mut connects = 0;
            for line in BufReader::new(text.as_bytes()).lines() {
                let line = line.unwrap();
                let mut f = line.split_whitespace();
                let code: u16 = f.next().and_then(|c| c.parse().ok()).unwrap_or(0);
                connects += f.next().and_then(|c| c.parse::<u32>().ok()).unwrap_or(0);
                seen += 1;
                if code == expect {
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                } else if code == 0 {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    tally.problem(format!("{name}: transfer failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
                } else {
                    tally.wrong.fetch_add(1, Ordering::Relaxed);
                    tally.problem(format!("{name}: GET {path} from {from}: HTTP {code}, expected {expect}"));
                }
            }
            if seen != batch || !out.status.success() {
                tally.failed.fetch_add((batch - seen.min(batch)) as u64, Ordering::Relaxed);
                tally.problem(format!("{name}: curl {:?}, {seen} of {batch} answers: {}", out.status.code(), String::from_utf8_lossy(&out.stderr).trim()));
            }
            // Keep-alive: one connection per batch.
            if connects > 1 {
                tally.problem(format!("{name}: curl opened {connects} connections for one batch"));
            }
        }
    })
}

#[test]
fn hundred_updates_under_load_no_failure_no_wrong_verdict_enforced_within_a_second() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), "cluster.local").unwrap();
    let web_cert = pki.issue("web-client", "default", "web").unwrap();
    let mut state = State { probe_rule: false, flip_path: "/left", moving_is_web: false, batch_pod: 1, generation: 0 };
    let spec = SidecarSpec::krites("app", SIDECAR_IP, &pki, state.config(), dir.path().join("app")).unwrap();
    let sidecar = Sidecar::start(spec).unwrap();
    assert_eq!(sidecar.initial_ecds(), Some(EcdsOutcome::Accepted));
    // Decisions are logged per request at debug (allows) and info (denials): keep the log for
    // config events.
    sidecar.admin("POST", "/logging?wasm=warning").unwrap();
    let plain = sidecar.plain_addr();
    let mtls = sidecar.mtls_addr();
    let rss_start = sidecar.rss_kib().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let streams: Vec<(&str, Arc<Tally>)> = ["allowed web pods", "denied blocked net", "denied unowned", "denied path", "mTLS allowed", "mTLS stolen cert denied"]
        .into_iter()
        .map(|n| (n, Arc::new(Tally::default())))
        .collect();
    let handles = vec![
        plaintext_stream("allowed web pods", WEB_IPS.to_vec(), plain, "/always/x", 200, stop.clone(), streams[0].1.clone()),
        plaintext_stream("denied blocked net", vec![BLOCKED_IP], plain, "/always", 403, stop.clone(), streams[1].1.clone()),
        plaintext_stream("denied unowned", vec![UNOWNED_IP], plain, "/always", 403, stop.clone(), streams[2].1.clone()),
        plaintext_stream("denied path", WEB_IPS.to_vec(), plain, "/secret", 403, stop.clone(), streams[3].1.clone()),
        mtls_stream("mTLS allowed", WEB_IPS[1], mtls, &web_cert, pki.ca_cert().to_path_buf(), "/always", 200, stop.clone(), streams[4].1.clone()),
        mtls_stream("mTLS stolen cert denied", UNOWNED_IP, mtls, &web_cert, pki.ca_cert().to_path_buf(), "/always", 403, stop.clone(), streams[5].1.clone()),
    ];

    // Warm-up: load on the first config.
    thread::sleep(Duration::from_secs(2));
    let rss_warm = sidecar.rss_kib().unwrap();
    let mut latencies = Vec::with_capacity(UPDATES);
    let mut rss_50 = 0;
    let mut slow = Vec::new();
    let mut config_bytes = 0;
    for i in 0..UPDATES {
        let (next, change) = state.next(i);
        let config = next.config();
        config_bytes = config.len();
        let before = sidecar.ecds_counts().unwrap();
        let t0 = Instant::now();
        sidecar.update_config(&config).unwrap();
        // Poll until the new config decides; the old one keeps deciding until then.
        let latency = loop {
            if change.enforced(plain) {
                break t0.elapsed();
            }
            if t0.elapsed() > Duration::from_secs(10) {
                panic!("update {i} ({change:?}) not enforced after 10 s");
            }
            thread::sleep(Duration::from_millis(2));
        };
        let after = sidecar.wait_for_ecds(before.total() + 1, Duration::from_secs(10)).unwrap();
        assert_eq!(after.rejected, before.rejected, "update {i} rejected");
        // Enforced means enforced for good: the probe agrees on a second look.
        assert!(change.enforced(plain), "update {i} ({change:?}) flapped back");
        if latency > DEADLINE {
            slow.push(format!("update {i} ({change:?}): {latency:?}"));
        }
        latencies.push(latency);
        state = next;
        // Let the load run on each config for a moment.
        thread::sleep(Duration::from_millis(150));
        if i + 1 == UPDATES / 2 {
            rss_50 = sidecar.rss_kib().unwrap();
        }
    }
    // Load on the last config for a moment, then stop.
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    let rss_100 = sidecar.rss_kib().unwrap();

    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let p90 = latencies[latencies.len() * 9 / 10];
    let max = *latencies.last().unwrap();
    let mut report = String::new();
    let (mut total, mut wrong, mut failed) = (0, 0, 0);
    for (name, t) in &streams {
        let (o, w, f) = (t.ok.load(Ordering::Relaxed), t.wrong.load(Ordering::Relaxed), t.failed.load(Ordering::Relaxed));
        writeln!(report, "  {name}: {o} correct, {w} wrong, {f} failed").unwrap();
        total += o + w + f;
        wrong += w;
        failed += f;
    }
    let problems: Vec<String> = streams.iter().flat_map(|(_, t)| t.problems.lock().unwrap().clone()).collect();
    let elapsed = started.elapsed();
    println!(
        "hot reload: {UPDATES} ECDS updates (~{} KiB each) under load in {elapsed:.1?}: {total} checked requests, {wrong} wrong, {failed} failed\n{report}\
         enforcement latency: p50 {p50:.1?}, p90 {p90:.1?}, max {max:.1?}\n\
         Envoy RSS: {rss_start} KiB at start, {rss_warm} KiB after warm-up, {rss_50} KiB after 50 updates, {rss_100} KiB after 100",
        config_bytes / 1024
    );
    assert!(problems.is_empty(), "load problems:\n{}", problems.join("\n"));
    assert_eq!((wrong, failed), (0, 0));
    for (name, t) in &streams {
        assert!(t.ok.load(Ordering::Relaxed) > 50, "{name}: too little load to mean anything");
    }
    assert!(slow.is_empty(), "updates enforced later than {DEADLINE:?}:\n{}", slow.join("\n"));
    assert_eq!(sidecar.ecds_counts().unwrap().success, 1 + UPDATES as u64);
    // Flat memory: Envoy keeps a replaced plugin's context only briefly; the second half of
    // the updates must not grow RSS much, nor all of them beyond warm-up.
    let growth_second_half = rss_100.saturating_sub(rss_50);
    let growth_total = rss_100.saturating_sub(rss_warm);
    assert!(growth_second_half < 10 * 1024, "RSS grew {growth_second_half} KiB over updates 50-100");
    assert!(growth_total < (30 * 1024).max(rss_warm / 5), "RSS grew {growth_total} KiB over 100 updates");
    let log = sidecar.log().unwrap();
    assert!(!log.contains("panic"), "{log}");
}
