//! YAO Bank on the namespace mesh (issue 12, part 5): Calico's tutorial with its real parts
//! (etcd v2 as the database, the `customer` and `summary` services of `demo/`) in pods that
//! are network namespaces, each workload behind an istiod-shaped sidecar (uid 1337, Istio's
//! iptables interception, PERMISSIVE mTLS, the Krites module), and the tutorial's three
//! policies compiled by `control` from `tests/fixtures/yaobank/` with this mesh's pod IPs.
//!
//! The database pod serves etcd on two ports: 2379, declared HTTP (the tutorial's `http`
//! Service port: HTTP chains, the HTTP role answers 403), and 12379, declared TCP (a `tcp`
//! Service port to the same etcd: TCP chains, the NETWORK role closes the connection). The
//! attack pod (no sidecar) holds summary's stolen certificate and tries both, over mTLS as a
//! sidecar would and in plaintext; etcd's index shows that none of its writes arrived.
//!
//! ```text
//! browser ─plain─▶ customer sidecar ─▶ customer app ─▶ (15001) ─mTLS─▶ summary sidecar ─▶ summary app
//!   summary app ─▶ (15001) ─mTLS─▶ database sidecar ─▶ etcd :2379 (http) / :12379 (tcp)
//! attack (summary's stolen cert, or plaintext) ──▶ database :2379 / :12379  → 403 / closed
//! ```
//!
//! Needs root (skipped otherwise, with the reason; with `CI=true` it fails instead), the
//! namespace mesh's Debian packages (iproute2, iptables, util-linux, python3, openssl, curl)
//! and etcd (Debian's etcd-server).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::thread::sleep;
use std::time::{Duration, Instant};

use krites_control::compile::{compile, Options};
use krites_control::inventory::Inventory;
use krites_control::manifests;
use krites_demo::{balance_in_page, BALANCE_KEY};
use krites_testbed::mesh::{self, ContainerPort, Mesh, MeshPod, PodSpec, Protocol, Upstream};
use krites_testbed::process::ChildGuard;
use krites_testbed::Identity;

const POLICY_YAML: &str = include_str!("../fixtures/yaobank/policy.yaml");
const CLUSTER_YAML: &str = include_str!("../fixtures/yaobank/cluster.yaml");

/// The tutorial's Service ports: customer and summary `http` 80, database `http` 2379.
const APP_PORT: u16 = 80;
const ETCD_HTTP: u16 = 2379;
/// The same etcd behind a port a Service declares `tcp`.
const ETCD_TCP: u16 = 12379;
/// etcd's peer port, on the database pod's loopback only.
const ETCD_PEER: u16 = 2380;

const BALANCE: &str = "1500.00";
const STOLEN: &str = "1000000000.00";

/// Skip (outside CI) or fail (in CI) when the machine cannot run the mesh.
fn runnable() -> bool {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let why = mesh::preflight().err().or_else(|| {
        krites_testbed::etcd::etcd_binary()
            .err()
            .map(|e| format!("{e:#}"))
    });
    if let Some(why) = why {
        if ci {
            panic!("the tutorial on the namespace mesh must run in CI: {why}");
        }
        eprintln!("SKIPPED netns_tutorial: {why}");
        return false;
    }
    assert!(
        krites_testbed::module_path().is_file(),
        "no Krites module at {}: run `make build`",
        krites_testbed::module_path().display()
    );
    true
}

/// The tutorial's policies and `cluster.yaml`'s pods, with the fixture's 127.0.0.x pod IPs
/// replaced by this mesh's, compiled by `control` into the WasmPlugin's config. The
/// finished summary pod whose IP the attack pod reuses keeps sharing the attack pod's
/// address; the second summary replica (127.0.0.22) has no pod here and keeps its address.
fn compile_policies(
    customer: Ipv4Addr,
    summary: Ipv4Addr,
    database: Ipv4Addr,
    attack: Ipv4Addr,
) -> String {
    let cluster = CLUSTER_YAML
        .replace("127.0.0.11", &customer.to_string())
        .replace("127.0.0.12", &summary.to_string())
        .replace("127.0.0.13", &database.to_string())
        .replace("127.0.0.66", &attack.to_string());
    let mut docs = Vec::new();
    manifests::parse_text("tests/fixtures/yaobank/policy.yaml", POLICY_YAML, &mut docs).unwrap();
    manifests::parse_text(
        "tests/fixtures/yaobank/cluster.yaml (mesh IPs)",
        &cluster,
        &mut docs,
    )
    .unwrap();
    let inv = Inventory::from_manifests(&docs);
    assert!(inv.errors.is_empty(), "invalid objects: {:?}", inv.errors);
    for (ip, sa) in [
        (customer, "customer"),
        (summary, "summary"),
        (database, "database"),
        (attack, "default"),
    ] {
        assert!(
            inv.pods
                .iter()
                .any(|p| p.service_account == sa && p.ips.contains(&ip.into())),
            "the inventory has no running pod {ip} with service account {sa}"
        );
    }
    let compiled = compile(&inv, &Options::default()).unwrap();
    serde_json::to_string(&compiled.config).unwrap()
}

fn upstream(to: &MeshPod, sa: &str, port: u16, protocol: Protocol) -> Upstream {
    Upstream {
        host: format!("{}.default.svc.cluster.local", to.spec.name),
        ip: to.ip(),
        port,
        protocol,
        identity: format!("spiffe://cluster.local/ns/default/sa/{sa}"),
    }
}

/// `curl` inside `from` (as root, so a sidecar pod's own sidecar intercepts it).
/// Returns the command line, the body and the status (0: no HTTP answer).
fn curl(from: &MeshPod, args: &[&str]) -> (String, String, u16) {
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
        format!("{body}{}", String::from_utf8_lossy(&out.stderr)),
        code.trim().parse().unwrap_or(0),
    )
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
    let client = format!(
        "openssl s_client -connect {}:{} -alpn {alpn} -cert {} -key {} -quiet -no_ign_eof",
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
    (
        format!(
            "printf {payload:?} | ip netns exec {} {client}",
            from.pod().netns()
        ),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The etcd v2 write the tutorial's attacker makes, as raw HTTP/1.1.
fn put_request(key: &str, value: &str) -> String {
    let body = format!("value={value}");
    format!(
        "PUT {key} HTTP/1.1\r\nHost: database\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// etcd as the database pod itself sees it (loopback, which the interception leaves
/// alone): the balance and etcd's index, which every write raises.
fn etcd_state(db: &MeshPod) -> (String, u64) {
    let url = format!("http://127.0.0.1:{ETCD_HTTP}{BALANCE_KEY}");
    let out = db
        .pod()
        .exec(
            &["curl", "-sS", "--max-time", "5", "-i", &url],
            None,
            Duration::from_secs(10),
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let index = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-etcd-index")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no X-Etcd-Index from etcd: {text:?}"));
    let value: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    (
        value["node"]["value"].as_str().unwrap_or("").to_string(),
        index,
    )
}

/// etcd in the database pod: client URLs on 2379 and 12379 (all addresses of the pod),
/// peer on its loopback; seeded with the balance.
fn start_etcd(db: &MeshPod) -> ChildGuard {
    let data = db.dir().join("etcd-data");
    let peer = format!("http://127.0.0.1:{ETCD_PEER}");
    let mut cmd = db
        .pod()
        .command(krites_testbed::etcd::etcd_binary().unwrap());
    cmd.args(["--name", "database"])
        .arg("--data-dir")
        .arg(&data)
        .arg("--enable-v2=true")
        .arg("--listen-client-urls")
        .arg(format!(
            "http://0.0.0.0:{ETCD_HTTP},http://0.0.0.0:{ETCD_TCP}"
        ))
        .arg("--advertise-client-urls")
        .arg(format!("http://{}:{ETCD_HTTP}", db.ip()))
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .arg("--initial-cluster")
        .arg(format!("database={peer}"))
        .args(["--initial-cluster-state", "new"])
        .args(["--logger", "zap", "--log-outputs", "stderr"]);
    let log = db.dir().join("etcd.log");
    let guard = db.pod().spawn("etcd", cmd, &log).unwrap();
    let put = format!("http://127.0.0.1:{ETCD_HTTP}{BALANCE_KEY}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = db
            .pod()
            .exec(
                &[
                    "curl",
                    "-sS",
                    "--max-time",
                    "2",
                    "-X",
                    "PUT",
                    &put,
                    "-d",
                    &format!("value={BALANCE}"),
                ],
                None,
                Duration::from_secs(5),
            )
            .unwrap();
        if out.status.success() && String::from_utf8_lossy(&out.stdout).contains(BALANCE) {
            return guard;
        }
        assert!(
            Instant::now() < deadline,
            "etcd in the database pod did not start:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        sleep(Duration::from_millis(200));
    }
}

/// A YAO Bank service (`krites-demo service <kind>`) in its pod, listening on all of the
/// pod's addresses, its upstream a plain URL its sidecar intercepts.
fn start_service(p: &MeshPod, kind: &str, upstream_flag: &str, upstream: &str) -> ChildGuard {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_krites-demo"));
    let mut cmd = p.pod().command(bin);
    cmd.args([
        "service",
        kind,
        "--listen",
        &format!("0.0.0.0:{APP_PORT}"),
        upstream_flag,
        upstream,
    ]);
    let log = p.dir().join("app.log");
    let guard = p.pod().spawn(kind, cmd, &log).unwrap();
    // Any answer from the pod's loopback (not intercepted) means it listens.
    let url = format!("http://127.0.0.1:{APP_PORT}/ready");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = p
            .pod()
            .exec(
                &[
                    "curl",
                    "-s",
                    "--max-time",
                    "1",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    &url,
                ],
                None,
                Duration::from_secs(5),
            )
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).trim() == "404" {
            return guard;
        }
        assert!(
            Instant::now() < deadline,
            "the {kind} service did not start:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        sleep(Duration::from_millis(100));
    }
}

struct Report {
    failures: Vec<String>,
    rows: usize,
}

impl Report {
    fn check(&mut self, ok: bool, row: &str, detail: impl FnOnce() -> String) {
        self.rows += 1;
        eprintln!("{} {row}", if ok { "ok  " } else { "FAIL" });
        if !ok {
            self.failures.push(format!("{row}\n    {}", detail()));
        }
    }
}

fn stat(p: &MeshPod, key: &str) -> u64 {
    p.stats().unwrap().get(key).copied().unwrap_or(0)
}

#[test]
fn yao_bank_runs_on_the_namespace_mesh_and_the_stolen_key_opens_neither_port() {
    if !runnable() {
        return;
    }
    let started = Instant::now();
    let mesh = Mesh::new("cluster.local").unwrap();
    let mut db = mesh
        .add_pod(PodSpec::new("database", "database", "database"))
        .unwrap();
    let mut summary = mesh
        .add_pod(PodSpec::new("summary", "summary", "summary"))
        .unwrap();
    let mut customer = mesh
        .add_pod(PodSpec::new("customer", "customer", "customer"))
        .unwrap();
    let mut attack_spec = PodSpec::new("attack", "attack", "default");
    attack_spec.sidecar = false;
    let attack = mesh.add_pod(attack_spec).unwrap();
    // The browser (the tutorial's goes through the ingress gateway): no sidecar, plaintext
    // to customer's PERMISSIVE port; customer's policy takes GET from anyone.
    let mut browser_spec = PodSpec::new("browser", "browser", "default");
    browser_spec.sidecar = false;
    let browser = mesh.add_pod(browser_spec).unwrap();

    let config = compile_policies(customer.ip(), summary.ip(), db.ip(), attack.ip());
    db.spec.ports = vec![
        ContainerPort::new("http", ETCD_HTTP, Some(Protocol::Http)),
        ContainerPort::new("tcp-etcd", ETCD_TCP, Some(Protocol::Tcp)),
    ];
    summary.spec.ports = vec![ContainerPort::new("http", APP_PORT, Some(Protocol::Http))];
    customer.spec.ports = vec![ContainerPort::new("http", APP_PORT, Some(Protocol::Http))];
    let to_db = vec![
        upstream(&db, "database", ETCD_HTTP, Protocol::Http),
        upstream(&db, "database", ETCD_TCP, Protocol::Tcp),
    ];
    summary.spec.outbound = to_db.clone();
    // Without a Sidecar resource every proxy knows every Service: the compromised customer
    // pod's sidecar can reach the database too.
    customer.spec.outbound =
        std::iter::once(upstream(&summary, "summary", APP_PORT, Protocol::Http))
            .chain(to_db)
            .collect();
    for p in [&mut db, &mut summary, &mut customer] {
        p.spec.plugin_config = config.clone();
        mesh.start(p).unwrap();
        p.set_log_level("wasm", "info").unwrap();
    }
    let _etcd = start_etcd(&db);
    let _summary_app = start_service(
        &summary,
        "summary",
        "--database",
        &format!("http://{}:{ETCD_HTTP}/", db.ip()),
    );
    let _customer_app = start_service(
        &customer,
        "customer",
        "--summary",
        &format!("http://{}:{APP_PORT}/", summary.ip()),
    );
    let setup = started.elapsed();
    eprintln!(
        "YAO Bank up in {setup:?}: customer {}, summary {}, database {} (etcd :{ETCD_HTTP} http, :{ETCD_TCP} tcp), attack {}, browser {}; {} bytes of compiled policy",
        customer.ip(),
        summary.ip(),
        db.ip(),
        attack.ip(),
        browser.ip(),
        config.len()
    );

    let stolen = summary.identity().clone();
    let mut r = Report {
        failures: Vec::new(),
        rows: 0,
    };
    let db_ip = db.ip();
    let balance_url = |port: u16| format!("http://{db_ip}:{port}{BALANCE_KEY}");

    // (1) The bank page, end to end: browser -> customer -> summary -> etcd, each hop
    // through the caller's sidecar (15001, mTLS) and the callee's (15006, Krites).
    let (cmd, body, code) = curl(&browser, &[&format!("http://{}/", customer.ip())]);
    r.check(
        code == 200 && balance_in_page(&body) == Some(BALANCE),
        &format!("(1) browser GET customer page -> 200, balance {BALANCE} (customer -> summary -> database)"),
        || format!("{cmd}: {code} {body}"),
    );
    let (cmd, body, code) = curl(
        &browser,
        &["-X", "POST", &format!("http://{}/", customer.ip())],
    );
    r.check(
        code == 403,
        "(1) browser POST customer page -> 403 (customer: GET only)",
        || format!("{cmd}: {code} {body}"),
    );
    let summary_out = format!("listener.{db_ip}_{ETCD_HTTP}.downstream_cx_total");
    let customer_out = format!("listener.{}_{APP_PORT}.downstream_cx_total", summary.ip());
    r.check(
        stat(&summary, &summary_out) > 0
            && stat(&customer, &customer_out) > 0
            && stat(&db, &format!("http.inbound_0.0.0.0_{ETCD_HTTP}.downstream_rq_2xx")) > 0
            && stat(&summary, &format!("http.inbound_0.0.0.0_{APP_PORT}.downstream_rq_2xx")) > 0,
        "(1) the page went through the sidecars: customer/summary outbound, summary/database inbound HTTP chains",
        || format!("{summary_out}={}, {customer_out}={}", stat(&summary, &summary_out), stat(&customer, &customer_out)),
    );
    // The tutorial's compromised customer pod, through its own sidecar (its own cert).
    let (cmd, body, code) = curl(&customer, &[&balance_url(ETCD_HTTP)]);
    r.check(
        code == 403,
        &format!("(1) compromised customer pod -> database:{ETCD_HTTP} -> 403"),
        || format!("{cmd}: {code} {body}"),
    );
    let (cmd, body, code) = curl(&customer, &[&balance_url(ETCD_TCP)]);
    r.check(
        code == 0,
        &format!("(1) compromised customer pod -> database:{ETCD_TCP} (tcp) -> closed"),
        || format!("{cmd}: {code} {body}"),
    );

    // (2) + (3): the attack pod. Every attempt is the attacker's etcd write; none may arrive.
    let (before, index_before) = etcd_state(&db);
    assert_eq!(before, BALANCE, "etcd's balance before the attacks");
    let put = put_request(BALANCE_KEY, STOLEN);

    // (2) Summary's stolen certificate, as summary's sidecar would present it.
    let (cmd, out) = openssl(&attack, (db_ip, ETCD_HTTP), "istio-http/1.1", &stolen, &put);
    r.check(
        out.starts_with("HTTP/1.1 403"),
        &format!("(2) attack, stolen cert, ALPN istio-http/1.1, PUT -> database:{ETCD_HTTP} (http) -> 403"),
        || format!("{cmd}: {out:?}"),
    );
    let (cmd, out) = openssl(&attack, (db_ip, ETCD_TCP), "istio", &stolen, &put);
    r.check(
        !out.contains("HTTP/1."),
        &format!("(2) attack, stolen cert, ALPN istio, PUT -> database:{ETCD_TCP} (tcp) -> closed, no answer"),
        || format!("{cmd}: {out:?}"),
    );
    // (3) Plaintext (PERMISSIVE takes it to the same chains; the address decides).
    let (cmd, body, code) = curl(
        &attack,
        &[
            "-X",
            "PUT",
            &balance_url(ETCD_HTTP),
            "-d",
            &format!("value={STOLEN}"),
        ],
    );
    r.check(
        code == 403,
        &format!("(3) attack, plaintext PUT -> database:{ETCD_HTTP} (http) -> 403"),
        || format!("{cmd}: {code} {body}"),
    );
    let got = mesh.client(&attack, (db_ip, ETCD_TCP), &put, None).unwrap();
    r.check(
        !got.reply.contains("HTTP/1.") && got.closed,
        &format!("(3) attack, plaintext PUT -> database:{ETCD_TCP} (tcp) -> closed, no answer"),
        || format!("{}: {got:?}", got.command),
    );
    let (cmd, body, code) = curl(
        &attack,
        &[
            "-X",
            "PUT",
            &balance_url(ETCD_TCP),
            "-d",
            &format!("value={STOLEN}"),
        ],
    );
    r.check(
        code == 0,
        &format!("(3) attack, curl PUT -> database:{ETCD_TCP} (tcp) -> closed"),
        || format!("{cmd}: {code} {body}"),
    );
    let (after, index_after) = etcd_state(&db);
    r.check(
        after == BALANCE && index_after == index_before,
        &format!("(2)(3) etcd got no write: balance {BALANCE}, X-Etcd-Index unchanged"),
        || format!("balance {after:?}, index {index_before} -> {index_after}"),
    );
    // One denial per attempt: HTTP and TCP with the stolen cert, HTTP and twice TCP in
    // plaintext. (Envoy flushes its log every 50 ms.)
    let attack_ip = attack.ip().to_string();
    let denials_of = |log: &str| {
        log.lines()
            .filter(|l| l.contains("DENY") && l.contains(&attack_ip))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut log = db.envoy_log();
    while denials_of(&log) < 5 && Instant::now() < deadline {
        sleep(Duration::from_millis(100));
        log = db.envoy_log();
    }
    let denials = denials_of(&log);
    r.check(
        denials >= 5 && stat(&db, &format!("http.inbound_0.0.0.0_{ETCD_HTTP}.downstream_rq_4xx")) >= 2,
        &format!("(2)(3) Krites' denials on the database name the attack pod {attack_ip} (HTTP and TCP chains)"),
        || {
            format!(
                "{denials} denials:\n{}",
                log.lines().filter(|l| l.contains("krites")).take(20).collect::<Vec<_>>().join("\n")
            )
        },
    );

    // (4) Summary through its own sidecar to the TCP port: allowed, etcd answers.
    let (cmd, body, code) = curl(&summary, &[&balance_url(ETCD_TCP)]);
    r.check(
        code == 200 && body.contains(BALANCE),
        &format!("(4) summary app -> database:{ETCD_TCP} (tcp) via its sidecar -> etcd answers {BALANCE}"),
        || format!("{cmd}: {code} {body}"),
    );
    // The same kind of write the attacker sent, to a scratch key: it does arrive from summary,
    // so the refusals above were the policy's.
    let (cmd, body, code) = curl(
        &summary,
        &[
            "-X",
            "PUT",
            &format!("http://{db_ip}:{ETCD_TCP}/v2/keys/krites/probe"),
            "-d",
            "value=from-summary",
        ],
    );
    let (_, index_probe) = etcd_state(&db);
    r.check(
        (code == 200 || code == 201) && index_probe > index_after,
        &format!("(4) summary app PUT -> database:{ETCD_TCP} (tcp) -> etcd writes it"),
        || format!("{cmd}: {code} {body}; index {index_after} -> {index_probe}"),
    );
    let tcp_out = format!("listener.{db_ip}_{ETCD_TCP}.downstream_cx_total");
    r.check(
        stat(&summary, &tcp_out) >= 2
            && stat(
                &db,
                &format!("tcp.inbound|{ETCD_TCP}||.downstream_cx_total"),
            ) > 0,
        "(4) it went summary outbound TCP listener -> mTLS -> database inbound TCP chain",
        || format!("{tcp_out}={}", stat(&summary, &tcp_out)),
    );
    // The page still shows the untouched balance.
    let (cmd, body, code) = curl(&browser, &[&format!("http://{}/", customer.ip())]);
    r.check(
        code == 200 && balance_in_page(&body) == Some(BALANCE),
        &format!("(1) after the attacks the page still shows {BALANCE}"),
        || format!("{cmd}: {code} {body}"),
    );

    eprintln!(
        "{} rows in {:?} (setup {setup:?})",
        r.rows,
        started.elapsed()
    );
    assert!(
        r.failures.is_empty(),
        "{} of {} rows failed:\n{}\n--- database access log ---\n{}\n--- summary access log ---\n{}\n--- customer access log ---\n{}",
        r.failures.len(),
        r.rows,
        r.failures.join("\n"),
        db.access_log(),
        summary.access_log(),
        customer.access_log()
    );
}
