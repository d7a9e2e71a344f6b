//! `make bench`: Krites against no filter, Envoy's RBAC filter and an
//! out-of-process authorizer (ext_authz, the Dikastes architecture), at the
//! tutorial's scale up to Calico's production policy set, in real Envoys on
//! 127.0.0.0/8, driven by h2load. Prints a table with ratios and the issue's
//! targets, writes `target/krites-bench/latest.{json,svg,txt}`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use krites_loadbench::h2load::{self, quantile, Load, Run};
use krites_loadbench::report::{EngineFigures, Machine, Measurement, Report, ScaleReport};
use krites_loadbench::scenario::{BenchScale, Scenario};
use krites_loadbench::topology::{Authz, Topology};
use krites_policy::{PolicySet, RequestFacts, WorkloadPolicy};
use krites_testbed::Request;

/// Counts live heap bytes, to measure what a compiled policy keeps.
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[derive(Parser, Debug)]
#[command(about = "Krites load benchmark: baseline, Envoy RBAC, ext_authz and the Krites filter in real Envoys")]
struct Args {
    /// A short smoke run: tutorial and p100-e1k, one round of 2 s.
    #[arg(long)]
    quick: bool,
    /// Scales to run (tutorial, p100-e1k, p1000-e10k, calico-20k).
    #[arg(long, value_delimiter = ',')]
    scales: Option<Vec<String>>,
    /// Configurations to run (baseline, rbac, ext_authz, krites, wasm-floor, wasm-min).
    #[arg(long, value_delimiter = ',')]
    configs: Option<Vec<String>>,
    /// Rounds; each runs every configuration once, in a rotated order.
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds of measured load per run.
    #[arg(long)]
    duration: Option<u64>,
    /// Milliseconds of unmeasured load before each run.
    #[arg(long)]
    warm_up_ms: Option<u64>,
    /// Server Envoys' worker threads, one series each (Istio's sidecars run 2).
    /// Default: 2 and 1; with --quick, 2.
    #[arg(long, value_delimiter = ',')]
    concurrency: Option<Vec<u32>>,
    /// h2load connections (keep-alive, one request in flight each).
    #[arg(long, default_value_t = 16)]
    connections: u32,
    /// Requests/s in all for the latency runs (well under every configuration's throughput).
    #[arg(long, default_value_t = 1000)]
    latency_rate: u32,
    /// Where the JSON, the chart and the table go.
    #[arg(long, default_value = "target/krites-bench")]
    out: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("krites-loadbench: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<bool> {
    h2load::binary()?;
    let scales: Vec<BenchScale> = match &args.scales {
        Some(names) => names.iter().map(|n| BenchScale::by_name(n).with_context(|| format!("unknown scale {n}"))).collect::<Result<_>>()?,
        None if args.quick => ["tutorial", "p100-e1k"].iter().filter_map(|n| BenchScale::by_name(n)).collect(),
        None => BenchScale::all(),
    };
    let configs: Vec<Authz> = match &args.configs {
        Some(names) => names.iter().map(|n| Authz::parse(n).with_context(|| format!("unknown configuration {n}"))).collect::<Result<_>>()?,
        None => Authz::ALL.to_vec(),
    };
    let load = Load {
        connections: args.connections,
        duration: Duration::from_secs(args.duration.unwrap_or(if args.quick { 2 } else { 5 })),
        warm_up: Duration::from_millis(args.warm_up_ms.unwrap_or(if args.quick { 500 } else { 1000 })),
        rate: None,
    };
    let latency = Load { connections: 4, rate: Some(args.latency_rate), ..load };
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 3 }).max(1);
    let ext_authz_bin = std::env::current_exe()?.with_file_name("krites-ext-authz");
    if configs.contains(&Authz::ExtAuthz) && !ext_authz_bin.is_file() {
        bail!("{} is missing: build with `cargo build --release -p krites-loadbench --bins`", ext_authz_bin.display());
    }
    std::fs::create_dir_all(&args.out)?;
    let work = tempdir_in(&args.out)?;

    let mut report = Report {
        machine: machine(),
        load,
        latency,
        rounds,
        mix: Vec::new(),
        module_bytes: std::fs::metadata(krites_testbed::module_path()).map(|m| m.len()).unwrap_or(0),
        scales: Vec::new(),
        targets: Vec::new(),
    };
    let series = match &args.concurrency {
        Some(c) if c.iter().all(|&n| n >= 1) => c.clone(),
        Some(_) => bail!("--concurrency: worker counts are 1 or more"),
        None if args.quick => vec![2],
        None => vec![2, 1],
    };
    let mut ok = true;
    for bench in scales {
        eprintln!("[bench] {}: generating and compiling", bench.name);
        let scenario = Scenario::new(bench)?;
        if report.mix.is_empty() {
            report.mix = scenario.mix.iter().map(|r| format!("{} GET {}", scenario.sources[r.source].name, r.path)).collect();
        }
        let engine = engine_figures(&scenario)?;
        eprintln!("[bench] {}: decide {:.0} ns, compile {:.1} ms", bench.name, engine.decide_ns, engine.compile_ms);
        for &concurrency in &series {
            eprintln!("[bench] {}: starting Envoys at --concurrency {concurrency}", bench.name);
            let dir = work.join(format!("{}-c{concurrency}", bench.name));
            let topo = Topology::start(&scenario, &configs, &dir, &ext_authz_bin, concurrency)?;
            let mut sr = ScaleReport {
                name: bench.name.to_string(),
                concurrency,
                shape: scenario.shape().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                allowed_share: scenario.allowed_share(),
                engine: engine.clone(),
                ..ScaleReport::default()
            };
            for (a, why) in &topo.skipped {
                eprintln!("[bench] {}: {a} not run: {why}", bench.name);
                sr.skipped.insert(a.to_string(), why.clone());
            }
            if let Some(k) = topo.server(Authz::Krites) {
                sr.on_configure_ms = k.stats()?.get("wasmcustom.krites_config_compile_micros").map(|&us| us as f64 / 1000.0);
            }
            // Every configuration decides the mix as the engine does (rbac: where it can).
            for (a, _) in &topo.servers {
                let bad = verify(&scenario, &topo, *a)?;
                let exact = matches!(a, Authz::Krites | Authz::ExtAuthz) || (*a == Authz::Rbac && bench.name == "tutorial");
                if !bad.is_empty() && exact {
                    eprintln!("[bench] {}: {a} decided {} request(s) unlike the engine: {}", bench.name, bad.len(), bad.join(", "));
                    ok = false;
                }
                sr.verdict_mismatches.insert(a.to_string(), bad);
            }
            sr.measurements = measure(&scenario, &topo, rounds, (load, latency), &dir)?;
            report.scales.push(sr);
        }
    }
    report.evaluate_targets();
    let table = report.table();
    println!("{table}");
    std::fs::write(args.out.join("latest.txt"), &table)?;
    std::fs::write(args.out.join("latest.json"), serde_json::to_vec_pretty(&report)?)?;
    krites_loadbench::plot::write_svg(&report, &args.out.join("latest.svg"))?;
    println!("wrote {0}/latest.json, {0}/latest.svg, {0}/latest.txt", args.out.display());
    if let Err(e) = std::fs::remove_dir_all(&work) {
        eprintln!("[bench] could not remove {}: {e}", work.display());
    }
    Ok(ok)
}

/// A fresh scratch directory under `parent`.
fn tempdir_in(parent: &std::path::Path) -> Result<PathBuf> {
    let dir = parent.join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Sends each request of the mix once through configuration `a` and returns
/// those whose status is not what the engine decided.
fn verify(scenario: &Scenario, topo: &Topology, a: Authz) -> Result<Vec<String>> {
    let mut bad = Vec::new();
    for r in &scenario.mix {
        let source = &scenario.sources[r.source];
        let resp = Request::new().to(topo.client_listener).path(&Topology::target(a, source, r.path)).send()?;
        let expected = if matches!(a, Authz::Baseline | Authz::WasmFloor | Authz::WasmMin) || r.allowed { 200 } else { 403 };
        if resp.status != expected {
            bad.push(format!("{} GET {} -> {} (engine: {} by {})", source.name, r.path, resp.status, expected, r.decided_by));
        }
    }
    Ok(bad)
}

/// Requests the server Envoy has served so far.
fn served(topo: &Topology, a: Authz) -> Result<u64> {
    let stats = topo.server(a).context("server")?.stats()?;
    // The port's connection manager, shared by its mTLS and plaintext chains.
    let prefix = krites_testbed::istiod::inbound_http_stat_prefix(krites_bench::TARGET_PORT);
    Ok(stats.get(&format!("http.{prefix}.downstream_rq_total")).copied().unwrap_or(0))
}

/// CPU seconds the configuration's processes used so far.
fn cpu(topo: &Topology, a: Authz) -> Result<f64> {
    let mut s = topo.server(a).context("server")?.cpu_seconds()?;
    if a == Authz::ExtAuthz {
        if let Some(p) = &topo.authorizer {
            s += p.cpu_seconds()?;
        }
    }
    Ok(s)
}

/// Per round and configuration: a throughput run (req/s, CPU per request,
/// saturated p99) and a fixed-rate run (latency).
fn measure(scenario: &Scenario, topo: &Topology, rounds: usize, (load, latency): (Load, Load), dir: &std::path::Path) -> Result<Vec<Measurement>> {
    let live: Vec<Authz> = topo.servers.iter().map(|(a, _)| *a).collect();
    let mut runs: BTreeMap<Authz, Vec<Run>> = BTreeMap::new();
    let mut paced: BTreeMap<Authz, Vec<u32>> = BTreeMap::new();
    let mut cpu_us: BTreeMap<Authz, (f64, u64)> = BTreeMap::new();
    for round in 0..rounds {
        // Rotate the order so that machine noise and warm caches hit every configuration alike.
        let mut order = live.clone();
        order.rotate_left(round % live.len().max(1));
        for a in order {
            let urls: Vec<String> = scenario.mix.iter().map(|r| topo.url(a, &scenario.sources[r.source], r.path)).collect();
            let (cpu0, n0) = (cpu(topo, a)?, served(topo, a)?);
            let run = h2load::run(&urls, load, &dir.join(format!("h2load-{a}-{round}.log")))?;
            let (cpu1, n1) = (cpu(topo, a)?, served(topo, a)?);
            let e = cpu_us.entry(a).or_default();
            e.0 += (cpu1 - cpu0) * 1e6;
            e.1 += n1.saturating_sub(n0);
            let slow = h2load::run(&urls, latency, &dir.join(format!("h2load-{a}-{round}-paced.log")))?;
            eprintln!(
                "[bench] {} round {}: {a:<10} {:>8.0} req/s, {:.1} us CPU/req; at {} req/s p50 {} us p99 {} us; {} errors",
                scenario.bench.name,
                round + 1,
                run.rps,
                (cpu1 - cpu0) * 1e6 / n1.saturating_sub(n0).max(1) as f64,
                latency.rate.unwrap_or(0),
                quantile(&slow.latencies_us, 0.5),
                quantile(&slow.latencies_us, 0.99),
                run.errors + slow.errors
            );
            paced.entry(a).or_default().extend(slow.latencies_us);
            runs.entry(a).or_default().push(run);
        }
    }
    let mut out = Vec::new();
    for a in live {
        let rs = runs.remove(&a).unwrap_or_default();
        let mut saturated: Vec<u32> = rs.iter().flat_map(|r| r.latencies_us.iter().copied()).collect();
        saturated.sort_unstable();
        let mut all = paced.remove(&a).unwrap_or_default();
        all.sort_unstable();
        let mut rps: Vec<f64> = rs.iter().map(|r| r.rps).collect();
        let rps_rounds = rps.clone();
        rps.sort_by(f64::total_cmp);
        let server = topo.server(a).context("server")?;
        let (rss, peak) = server.memory_kib()?;
        let (c, n) = cpu_us.get(&a).copied().unwrap_or_default();
        out.push(Measurement {
            config: a.to_string(),
            rps: rps.get(rps.len() / 2).copied().unwrap_or(0.0),
            rps_rounds,
            p50_us: quantile(&all, 0.50),
            p99_us: quantile(&all, 0.99),
            p999_us: quantile(&all, 0.999),
            saturated_p99_us: quantile(&saturated, 0.99),
            requests: rs.iter().map(|r| r.requests).sum(),
            status_2xx: rs.iter().map(|r| r.status_2xx).sum(),
            status_4xx: rs.iter().map(|r| r.status_4xx).sum(),
            status_5xx: rs.iter().map(|r| r.status_5xx).sum(),
            errors: rs.iter().map(|r| r.errors).sum(),
            cpu_us_per_request: if n > 0 { c / n as f64 } else { 0.0 },
            envoy_rss_kib: rss,
            envoy_peak_rss_kib: peak,
            authorizer_rss_kib: match (a, &topo.authorizer) {
                (Authz::ExtAuthz, Some(p)) => p.memory_kib().ok().map(|m| m.0),
                _ => None,
            },
            memory: server.memory_breakdown().map_err(|e| eprintln!("[bench] {a}: no memory breakdown: {e:#}")).ok(),
        });
    }
    Ok(out)
}

/// decide() time, compile time and compiled size, natively, for the scale.
fn engine_figures(scenario: &Scenario) -> Result<EngineFigures> {
    let mix = krites_bench::request_mix(&scenario.bench.scale, 4096);
    let facts: Vec<RequestFacts<'_>> = mix.iter().map(|r| r.facts()).collect();
    let policy = &scenario.policy;
    let mut batches = Vec::new();
    let deadline = Instant::now() + Duration::from_millis(600);
    while batches.len() < 5 || Instant::now() < deadline {
        let t = Instant::now();
        for f in &facts {
            black_box(policy.decide(black_box(f)));
        }
        batches.push(t.elapsed().as_nanos() as f64 / facts.len() as f64);
    }
    batches.sort_by(f64::total_cmp);
    let decide_ns = batches[batches.len() / 2];

    let bytes = scenario.config_json.as_bytes();
    let mut times = Vec::new();
    let mut compiled_bytes = 0;
    for _ in 0..3 {
        let before = LIVE_BYTES.load(Ordering::Relaxed);
        let t = Instant::now();
        let set = PolicySet::from_json(bytes).map_err(|e| anyhow::anyhow!("compiling the config: {e}"))?;
        let wp = WorkloadPolicy::new(Arc::new(set), &scenario.workload);
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        compiled_bytes = LIVE_BYTES.load(Ordering::Relaxed).saturating_sub(before) as u64;
        drop(black_box(wp));
    }
    times.sort_by(f64::total_cmp);
    Ok(EngineFigures { decide_ns, compile_ms: times[times.len() / 2], compiled_bytes })
}

fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())))
        .unwrap_or_else(|| "unknown CPU".into());
    let cmd = |prog: &str, args: &[&str]| {
        Command::new(prog).args(args).output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
    };
    // "<path>  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
    let envoy = krites_testbed::envoy_binary()
        .ok()
        .map(|e| cmd(&e.to_string_lossy(), &["--version"]))
        .and_then(|v| v.split("version:").nth(1).and_then(|r| r.split('/').nth(1)).map(|n| format!("Envoy {n}")))
        .unwrap_or_else(|| "Envoy".into());
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        kernel: format!("Linux {}", std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()),
        envoy,
        date: cmd("date", &["-u", "+%Y-%m-%d"]),
    }
}
