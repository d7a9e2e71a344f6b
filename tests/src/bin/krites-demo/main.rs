//! `make demo`: Calico's YAO Bank tutorial, played with real parts.
//!
//! etcd (v2 API) is the database; `summary` reads the balance from it and `customer` renders
//! the bank page from `summary` (crate `krites-demo`, run as `krites-demo service <kind>`:
//! this same binary, so nothing else has to be built or found); every workload has its own
//! Envoy sidecar running Krites, with mTLS from a demo CA; an ingress Envoy serves the browser.
//!
//! Act 1 runs without policy: the page works, a compromised customer pod reads the database,
//! the attack pod with summary's stolen keys changes the balance. Act 2 compiles the tutorial's
//! policies with `control`, pushes them to every sidecar through ECDS (no Envoy restart) and
//! replays: the attacks are denied, the page keeps working.
//!
//! Where it runs: with root, when network namespaces can be made, on the namespace mesh
//! (`mesh.rs`: each pod a network namespace with Istio's iptables interception and an
//! istiod-shaped sidecar as uid 1337, etcd serving the database's `http` and `tcp` ports);
//! otherwise on loopback (each pod an Envoy on its own 127.0.0.x address). The first lines
//! say which and why; `--mesh` / `--loopback` force one.
//!
//! `--once` exits after the story (status 0 only if every step went as the tutorial says);
//! otherwise the bank keeps running until Ctrl-C. Every process it started is stopped either
//! way, on Ctrl-C/SIGTERM, and on errors (see `krites_testbed::process`).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use krites_control::compile::{compile, Options};
use krites_control::inventory::Inventory;
use krites_control::manifests;
use krites_demo::{balance_in_page, Kind, BALANCE_KEY};
use krites_testbed::yaobank::live::LiveBank;
use krites_testbed::yaobank::{ATTACK_IP, CUSTOMER_IP, OPEN_CONFIG};
use krites_testbed::yaobank::mesh::MeshBank;
use krites_testbed::{module_path, process, Response, Sidecar};

mod mesh;

const POLICY_FILE: &str = "tests/fixtures/yaobank/policy.yaml";
const POLICY_YAML: &str = include_str!("../../../fixtures/yaobank/policy.yaml");
const CLUSTER_FILE: &str = "tests/fixtures/yaobank/cluster.yaml";
const CLUSTER_YAML: &str = include_str!("../../../fixtures/yaobank/cluster.yaml");

const BALANCE: &str = "1500.00";
const STOLEN: &str = "1000000000.00";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `krites-demo service customer|summary --listen .. --summary|--database ..`: how the
    // demo runs YAO Bank's services, as child processes of its own binary.
    if let Some(("service", rest)) = args.split_first().map(|(a, r)| (a.as_str(), r)) {
        return match rest.split_first() {
            Some((k, flags)) if k == "customer" => krites_demo::main_for(Kind::Customer, flags),
            Some((k, flags)) if k == "summary" => krites_demo::main_for(Kind::Summary, flags),
            _ => {
                eprintln!("usage: krites-demo service customer|summary --listen IP:PORT ...");
                ExitCode::from(2)
            }
        };
    }
    let mut once = false;
    let mut forced = None;
    for a in &args {
        match a.as_str() {
            "--once" => once = true,
            "--mesh" => forced = Some(Mode::Mesh),
            "--loopback" => forced = Some(Mode::Loopback),
            "-h" | "--help" => {
                println!("usage: krites-demo [--once] [--mesh | --loopback]\n\nPlays Calico's YAO Bank tutorial in Envoy sidecars running Krites.\n--once      exit after the story (status 0 only if every step behaved as the tutorial says)\n--mesh      on the namespace mesh (needs root): each pod a network namespace with Istio's\n            iptables interception and an istiod-shaped sidecar; the default when possible\n--loopback  each pod an Envoy on its own 127.0.0.x address; the default without root");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("krites-demo: unknown argument {other:?} (try --help)");
                return ExitCode::from(2);
            }
        }
    }
    let (stop_tx, stop_rx) = mpsc::channel();
    if let Err(e) = ctrlc::set_handler(move || {
        INTERRUPTED.store(true, Ordering::SeqCst);
        // The handler cannot drop the story's guards; it ends the children so that nothing
        // waits on them, and the guards reap them (and the pods' namespaces go) as the story
        // unwinds.
        process::terminate_all();
        let _ = stop_tx.send(());
    }) {
        eprintln!("demo failed: installing the Ctrl-C handler: {e}");
        return ExitCode::from(2);
    }
    let mut on_mesh = false;
    let outcome = match choose_mode(forced) {
        Ok(Chosen::Mesh(bank, why)) => {
            on_mesh = true;
            println!("mode: namespace mesh: {why}");
            println!("      each pod is a network namespace with Istio's iptables interception and an istiod-shaped sidecar (uid 1337); --loopback for the 127.0.0.x demo");
            mesh::run(bank, once, &stop_rx)
        }
        Ok(Chosen::Loopback(why)) => {
            println!("mode: loopback: {why}");
            println!("      each pod is an Envoy on its own 127.0.0.x address, no interception; --mesh for the namespace mesh (needs root)");
            run(once, &stop_rx)
        }
        Err(e) => Err(e),
    };
    // Every guard has been dropped by now: nothing the demo started is left.
    let left = process::live_children();
    let namespaces = if on_mesh {
        format!(", network namespaces left: {}", mesh::namespaces_left())
    } else {
        String::new()
    };
    if INTERRUPTED.load(Ordering::SeqCst) {
        println!("\ninterrupted: stopped every process the demo started ({left} left){namespaces}");
        return ExitCode::from(130);
    }
    if on_mesh {
        println!("stopped every process the demo started ({left} left){namespaces}");
    }
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Mesh,
    Loopback,
}

/// Where the story runs, and why there.
enum Chosen {
    /// The pods' namespaces exist (created to prove that they can be).
    Mesh(Box<MeshBank>, String),
    Loopback(String),
}

/// The namespace mesh when it can be made (root, `ip netns`, the mesh's tools, etcd), else
/// loopback; `forced` insists on one (`--mesh` fails when the mesh cannot be made).
fn choose_mode(forced: Option<Mode>) -> Result<Chosen> {
    if forced == Some(Mode::Loopback) {
        return Ok(Chosen::Loopback("asked for with --loopback".into()));
    }
    let why_not = match krites_testbed::yaobank::mesh::preflight() {
        Ok(()) => match MeshBank::create() {
            Ok(bank) => {
                let why = if forced == Some(Mode::Mesh) {
                    "asked for with --mesh, and network namespaces can be created here".to_string()
                } else {
                    "running as root and network namespaces can be created here".to_string()
                };
                return Ok(Chosen::Mesh(Box::new(bank), why));
            }
            Err(e) => format!("creating the pods' network namespaces failed: {e:#}"),
        },
        Err(why) => why,
    };
    if forced == Some(Mode::Mesh) {
        bail!("--mesh: the namespace mesh cannot run here: {why_not}");
    }
    Ok(Chosen::Loopback(why_not))
}

/// Bails out once Ctrl-C was pressed; called between steps.
fn checkpoint() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// The story on loopback: each pod an Envoy on its own 127.0.0.x address.
fn run(once: bool, stop_rx: &mpsc::Receiver<()>) -> Result<bool> {
    let started = Instant::now();

    let module = module_path();
    ensure!(
        module.exists(),
        "{} is missing: run `make build`",
        module.display()
    );
    let exe = std::env::current_exe().context("locating the demo's own binary")?;
    let launch = move |kind: Kind| {
        let mut c = Command::new(&exe);
        c.args(["service", kind.name()]);
        c
    };
    let dir = tempfile::Builder::new().prefix("krites-demo-").tempdir()?;

    println!("== Krites demo: Calico's YAO Bank tutorial, enforced inside Envoy ==");
    println!(
        "work dir (configs, logs, certificates): {}\n",
        dir.path().display()
    );
    println!("Starting YAO Bank with no policy (Krites config {OPEN_CONFIG}):");
    let mut bank = LiveBank::start(
        dir.path(),
        &module,
        OPEN_CONFIG,
        BALANCE,
        &launch,
        &mut |what| {
            println!("  up: {what}");
            checkpoint()
        },
    )
    .context("starting YAO Bank")?;
    print_topology(&bank);
    let url = bank.ingress.url();
    println!("\nThe bank: {url}   (open it in a browser)");

    let mut story = Story::default();
    checkpoint()?;
    println!("\n-- Act 1: no policy. The app works, and so do the attacks. --");
    story.page(&bank, "the browser loads the bank page", BALANCE)?;
    story.request(
        "a compromised customer pod reads the database",
        customer_reads(&bank).send()?,
        200,
    );
    checkpoint()?;
    story.request(
        "the attack pod, with summary's stolen keys, changes the balance",
        attack_put(&bank, &[]).send()?,
        200,
    );
    story.page(
        &bank,
        "the bank page now shows the attacker's balance",
        STOLEN,
    )?;
    bank.etcd
        .put(BALANCE_KEY, BALANCE)
        .context("restoring the balance")?;
    println!("  (the bank restores the balance from its books: {BALANCE})");
    checkpoint()?;

    println!("\n-- Act 2: the tutorial's policies, compiled by control and applied hot --");
    println!("  customer: GET only, from anyone | summary: only from service account customer | database: only from service account summary");
    let config = compile_policies(&bank)?;
    let pids: Vec<u32> = bank.sidecars().map(Sidecar::pid).collect();
    bank.apply(&config).context("applying the policies")?;
    let same = bank.sidecars().map(Sidecar::pid).eq(pids.iter().copied());
    let versions: Vec<String> = bank
        .sidecars()
        .map(|s| format!("{} {}", s.name(), ecds_version(s)))
        .collect();
    println!(
        "  pushed through ECDS to {} sidecars (accepted: {}); Envoy restarted: {}",
        pids.len(),
        versions.join(", "),
        if same { "no (same pids)" } else { "YES" }
    );
    story.check(same, "the sidecars took the policies without restarting");
    checkpoint()?;

    story.page(&bank, "the browser loads the bank page", BALANCE)?;
    story.request(
        "the browser POSTs to the bank page",
        bank.browser("POST").send()?,
        403,
    );
    story.request(
        "a compromised customer pod reads the database",
        customer_reads(&bank).send()?,
        403,
    );
    checkpoint()?;
    story.request(
        "the attack pod reads the database with summary's stolen keys",
        bank.mtls(ATTACK_IP, bank.summary_cert(), &bank.database)
            .path(BALANCE_KEY)
            .send()?,
        403,
    );
    story.request(
        "the attack pod, with summary's stolen keys, changes the balance",
        attack_put(&bank, &[]).send()?,
        403,
    );
    let forged = [
        (
            "x-forwarded-client-cert",
            format!(
                "By=spiffe://cluster.local/ns/default/sa/database;URI={}",
                bank.pki.spiffe_id("default", "summary")
            ),
        ),
        ("x-forwarded-for", "127.0.0.12".to_string()),
    ];
    story.request(
        "the attack pod also forges x-forwarded-client-cert and x-forwarded-for",
        attack_put(&bank, &forged).send()?,
        403,
    );
    checkpoint()?;
    let balance = bank.etcd.get(BALANCE_KEY)?.unwrap_or_default();
    story.check(
        balance == BALANCE,
        &format!("the balance in etcd is unchanged: {balance}"),
    );
    story.page(&bank, "the browser loads the bank page again", BALANCE)?;

    story.all_running(&bank.exited());
    print_stats(&bank);
    story.result(started);

    if !once {
        print_usage(&bank);
        loop {
            match stop_rx.recv_timeout(Duration::from_secs(1)) {
                Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let gone = bank.exited();
                    if !gone.is_empty() && !INTERRUPTED.load(Ordering::SeqCst) {
                        bail!(
                            "stopped unexpectedly: {} (logs in {})",
                            gone.join(", "),
                            dir.path().display()
                        );
                    }
                }
            }
        }
        println!("\nstopping etcd, the services and the Envoys");
    }
    drop(bank);
    Ok(story.ok)
}

#[derive(Default)]
struct Story {
    ok: bool,
    steps: usize,
    failed: usize,
}

impl Story {
    /// Marks a step; `None` once Ctrl-C was pressed (the processes are going away, so what
    /// the step saw is not the tutorial's outcome and is not printed).
    fn record(&mut self, ok: bool) -> Option<&'static str> {
        if INTERRUPTED.load(Ordering::SeqCst) {
            return None;
        }
        self.steps += 1;
        if !ok {
            self.failed += 1;
        }
        self.ok = self.failed == 0;
        Some(if ok { "✓" } else { "x" })
    }

    /// A request and the status the tutorial says it gets.
    fn request(&mut self, title: &str, resp: Response, expect: u16) {
        let Some(mark) = self.record(resp.status == expect) else {
            return;
        };
        let detail = match (&resp.error, resp.status) {
            (Some(e), _) => format!(" ({})", e.message),
            (None, 200) => balance_of(&resp.body)
                .map(|b| format!(": balance {b}"))
                .unwrap_or_default(),
            (None, 403) => String::new(),
            (None, _) => format!(" ({})", resp.body.lines().next().unwrap_or("").trim()),
        };
        println!(
            "  {mark} {} {:<3}  {title}{detail}",
            verdict(resp.status),
            resp.status
        );
    }

    /// The bank page through the ingress must show `balance`.
    fn page(&mut self, bank: &LiveBank, title: &str, balance: &str) -> Result<()> {
        let resp = bank.browser("GET").send()?;
        let shown = balance_in_page(&resp.body).map(str::to_string);
        let Some(mark) = self.record(resp.status == 200 && shown.as_deref() == Some(balance))
        else {
            return Ok(());
        };
        let detail = match (&resp.error, &shown) {
            (Some(e), _) => format!(" ({})", e.message),
            (None, Some(b)) => format!(": balance {b}"),
            (None, None) => format!(": no balance shown ({})", page_problem(&resp.body)),
        };
        println!(
            "  {mark} {} {:<3}  {title}{detail}",
            verdict(resp.status),
            resp.status
        );
        Ok(())
    }

    /// A step with a verdict word (`allowed`, `DENIED `, `CLOSED `, ...) and what answered
    /// (a status, or `tcp`).
    fn verdict(&mut self, ok: bool, verdict: &str, code: &str, title: &str, detail: &str) {
        let Some(mark) = self.record(ok) else {
            return;
        };
        println!("  {mark} {verdict} {code:<3}  {title}{detail}");
    }

    /// The last check of either mode: no process of the bank has exited.
    fn all_running(&mut self, gone: &[String]) {
        let exited = if gone.is_empty() { String::new() } else { format!(" (exited: {})", gone.join(", ")) };
        self.check(gone.is_empty(), &format!("every process is still running{exited}"));
    }

    /// The closing line of either mode.
    fn result(&self, started: Instant) {
        let verdict = if self.ok { "every step as the tutorial says" } else { "SOME STEPS DIFFER (marked x)" };
        println!("\nRESULT: {verdict} ({} steps, {:.1} s)", self.steps, started.elapsed().as_secs_f64());
    }

    fn check(&mut self, ok: bool, what: &str) {
        let Some(mark) = self.record(ok) else {
            return;
        };
        println!("  {mark} {what}");
    }
}

/// What a page without a balance says instead (customer's error page puts it in `<pre>`).
fn page_problem(body: &str) -> &str {
    let pre = body
        .split_once("<pre>")
        .and_then(|(_, rest)| rest.split_once("</pre>"))
        .map(|(p, _)| p);
    pre.unwrap_or_else(|| body.lines().next().unwrap_or(""))
        .trim()
}

fn verdict(status: u16) -> &'static str {
    match status {
        0 => "NO REPLY",
        403 => "DENIED ",
        s if s < 400 => "allowed",
        _ => "failed ",
    }
}

/// The balance in an etcd v2 answer or a customer page.
fn balance_of(body: &str) -> Option<String> {
    krites_testbed::etcd::node_value(body).or_else(|| balance_in_page(body).map(str::to_string))
}

/// The tutorial's `kubectl exec customer -- curl http://database:2379/v2/keys/...`: from the
/// customer pod, with the customer workload's certificate.
fn customer_reads(bank: &LiveBank) -> krites_testbed::Request {
    bank.mtls(CUSTOMER_IP, bank.customer_cert(), &bank.database)
        .path(BALANCE_KEY)
}

/// The attack pod (no sidecar, its own address) with summary's certificate and key.
fn attack_put(bank: &LiveBank, headers: &[(&str, String)]) -> krites_testbed::Request {
    let mut r = bank
        .mtls(ATTACK_IP, bank.summary_cert(), &bank.database)
        .method("PUT")
        .path(BALANCE_KEY)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(krites_testbed::etcd::form_value(STOLEN));
    for (k, v) in headers {
        r = r.header(k, v);
    }
    r
}

/// The tutorial's policies and the cluster's pods through `control`, as `control compile`
/// would turn them into the WasmPlugin's config.
fn compile_policies(bank: &LiveBank) -> Result<String> {
    let mut docs = Vec::new();
    manifests::parse_text(POLICY_FILE, POLICY_YAML, &mut docs)?;
    manifests::parse_text(CLUSTER_FILE, CLUSTER_YAML, &mut docs)?;
    let inv = Inventory::from_manifests(&docs);
    ensure!(inv.errors.is_empty(), "invalid objects: {:?}", inv.errors);
    // The cluster dump must describe the pods that actually run here.
    let running: Vec<(&str, Ipv4Addr, &str)> =
        std::iter::once(("customer", CUSTOMER_IP, "customer"))
            .chain(bank.summary.iter().map(|s| ("summary", s.ip(), "summary")))
            .chain([
                ("database", bank.database.ip(), "database"),
                ("attack", ATTACK_IP, "default"),
            ])
            .collect();
    for (what, ip, sa) in &running {
        let known = inv
            .pods
            .iter()
            .any(|p| p.service_account == *sa && p.ips.contains(&(*ip).into()));
        ensure!(
            known,
            "{CLUSTER_FILE} has no running pod {ip} with service account {sa} (the {what} pod)"
        );
    }
    let compiled = compile(&inv, &Options::default())?;
    let config = serde_json::to_string(&compiled.config)?;
    let names: Vec<&str> = inv.policies.iter().map(|p| p.name.as_str()).collect();
    println!(
        "  control compiled {POLICY_FILE} ({}) and {CLUSTER_FILE} ({} running pods) into {} bytes, revision {}",
        names.join(", "),
        inv.pods.len(),
        config.len(),
        compiled.revision
    );
    Ok(config)
}

fn ecds_version(s: &Sidecar) -> String {
    let c = s.ecds_counts().unwrap_or_default();
    format!("v{}", c.success)
}

fn print_topology(bank: &LiveBank) {
    println!(
        "\n  {:<10} {:<11} {:<24} {:<22} pids",
        "workload", "pod IP", "app listens on", "sidecar mTLS in"
    );
    let db = &bank.database;
    println!(
        "  {:<10} {:<11} {:<24} {:<22} etcd {}, envoy {}",
        "database",
        db.ip(),
        format!("etcd {}", bank.etcd.client_addr()),
        db.mtls_addr().to_string(),
        bank.etcd.pid(),
        db.pid()
    );
    for (s, app) in bank.summary.iter().zip(&bank.summary_apps) {
        println!(
            "  {:<10} {:<11} {:<24} {:<22} app {}, envoy {}",
            s.name(),
            s.ip(),
            format!("summary {}", app.listen),
            s.mtls_addr().to_string(),
            app.pid(),
            s.pid()
        );
    }
    let c = &bank.customer;
    println!(
        "  {:<10} {:<11} {:<24} {:<22} app {}, envoy {}",
        "customer",
        c.ip(),
        format!("customer {}", bank.customer_app.listen),
        c.mtls_addr().to_string(),
        bank.customer_app.pid(),
        c.pid()
    );
    let i = &bank.ingress;
    println!(
        "  {:<10} {:<11} {:<24} {:<22} envoy {}",
        "ingress",
        i.addr().ip(),
        format!("browser {}", i.addr()),
        "-",
        i.pid()
    );
    println!(
        "  {:<10} {:<11} {:<24} {:<22} (curl, with summary's stolen certificate)",
        "attack", ATTACK_IP, "-", "-"
    );
}

fn print_stats(bank: &LiveBank) {
    println!("\nKrites' counters (Envoy /stats, wasmcustom.*):");
    for s in bank.sidecars() {
        let stats = s.stats().unwrap_or_default();
        let stat = |n: &str| stats.get(&format!("wasmcustom.{n}")).copied().unwrap_or(0);
        let reasons: Vec<String> = stats
            .iter()
            .filter_map(|(k, v)| {
                let reason = k
                    .strip_prefix("wasmcustom.krites_reason_")?
                    .strip_suffix("_total")?;
                (*v > 0).then(|| format!("{reason} {v}"))
            })
            .collect();
        println!(
            "  {:<10} requests {:>2}  allowed {:>2}  denied {:>2}  ({})",
            s.name(),
            stat("krites_requests_total"),
            stat("krites_allowed_total"),
            stat("krites_denied_total"),
            reasons.join(", ")
        );
    }
    let db = &bank.database;
    let log = db
        .wait_for_log("certificate says", Duration::from_secs(3))
        .unwrap_or_default();
    if let Some(line) = log
        .lines()
        .rev()
        .find(|l| l.contains("DENY") && l.contains("certificate says"))
    {
        let line = line
            .find("wasm log")
            .and_then(|i| line.get(i..))
            .unwrap_or(line);
        println!(
            "Why the database sidecar denied the stolen keys (its log):\n  {}",
            line.trim()
        );
    }
    if let Ok(access) = db.access_log() {
        let attack = format!(" {ATTACK_IP}:");
        if let Some(line) = access
            .lines()
            .rev()
            .find(|l| l.contains("krites_access_denied") && l.contains(&attack))
        {
            println!("and its access log:\n  {}", line.trim());
        }
    }
}

fn print_usage(bank: &LiveBank) {
    let pki = bank.dir.join("pki");
    let db = &bank.database;
    let (db_name, db_port) = (db.server_name(), db.mtls_addr().port());
    let tls = |from: Ipv4Addr, cert: &PathBuf, key: &PathBuf| {
        format!(
            "curl --interface {from} --cacert {} --cert {} --key {} \\\n       --resolve {db_name}:{db_port}:{}",
            pki.join("ca.crt").display(),
            cert.display(),
            key.display(),
            db.ip()
        )
    };
    let (c, s) = (bank.customer_cert(), bank.summary_cert());
    println!(
        "\nYAO Bank keeps running, with the policies in force. Open {} in a browser, or:",
        bank.ingress.url()
    );
    println!(
        "  curl {}                      # the page (GET is allowed)",
        bank.ingress.url()
    );
    println!(
        "  curl -X POST {}              # 403: customer takes GET only",
        bank.ingress.url()
    );
    println!("  # the compromised customer pod reads the database (403):");
    println!(
        "  {} https://{db_name}:{db_port}{BALANCE_KEY}",
        tls(CUSTOMER_IP, &c.cert, &c.key)
    );
    println!("  # the attack pod changes the balance with summary's stolen keys (403):");
    println!(
        "  {} -X PUT -d value={STOLEN} https://{db_name}:{db_port}{BALANCE_KEY}",
        tls(ATTACK_IP, &s.cert, &s.key)
    );
    println!(
        "  curl -s http://{}/stats | grep krites      # the database sidecar's counters",
        db.admin_addr()
    );
    println!(
        "  grep 'krites: DENY' {}                     # and why it denied",
        db.log_path().display()
    );
    println!("Ctrl-C stops everything.");
}
