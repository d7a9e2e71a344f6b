//! What a run measured, the table it prints, the targets of issue #5 checked
//! against it, and the JSON written for plots and for comparing runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::h2load::Load;

/// One configuration at one scale, over all rounds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Measurement {
    pub config: String,
    /// Median over rounds.
    pub rps: f64,
    /// Every round's requests/s, in run order.
    pub rps_rounds: Vec<f64>,
    /// Client-observed latency at a fixed request rate every configuration
    /// sustains, over all rounds (through the callers' sidecar).
    pub p50_us: u32,
    pub p99_us: u32,
    pub p999_us: u32,
    /// p99 at full throughput, where it is mostly queueing.
    pub saturated_p99_us: u32,
    pub requests: u64,
    pub status_2xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub errors: u64,
    /// CPU time the server Envoy spent per request it served (plus the
    /// authorizer's, for ext_authz): what authorization costs the node.
    pub cpu_us_per_request: f64,
    pub envoy_rss_kib: u64,
    pub envoy_peak_rss_kib: u64,
    /// The out-of-process authorizer's memory (ext_authz only).
    pub authorizer_rss_kib: Option<u64>,
    /// The server Envoy's memory by part, at the end of the run.
    pub memory: Option<MemoryBreakdown>,
}

/// One Wasm VM's linear memory.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WasmMemory {
    /// Its current size: Wasm memory grows and never shrinks, so this is the VM's peak.
    pub size_kib: u64,
    /// Of it, resident.
    pub resident_kib: u64,
}

/// Where a server Envoy's memory is, besides its binary.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MemoryBreakdown {
    /// Resident in file mappings: Envoy's binary and libraries.
    pub file_backed_kib: u64,
    /// Resident anonymous memory: the rest, of which the parts below.
    pub anonymous_kib: u64,
    /// One per Wasm VM that instantiated the module.
    pub wasm_memories: Vec<WasmMemory>,
    /// Envoy's heap in use (V8's compiled module and its bookkeeping live here).
    pub heap_allocated_kib: u64,
    /// Freed but kept by tcmalloc (page heap and thread caches), which Envoy
    /// does not return without `memory_allocator_manager`: V8's compile of
    /// the module peaks here.
    pub heap_free_kib: u64,
}

impl MemoryBreakdown {
    pub fn wasm_resident_kib(&self) -> u64 {
        self.wasm_memories.iter().map(|m| m.resident_kib).sum()
    }

    /// Anonymous memory neither Wasm memory nor Envoy's heap: V8's isolates
    /// (one per VM), its compiled code, thread stacks.
    pub fn other_anonymous_kib(&self) -> u64 {
        self.anonymous_kib.saturating_sub(self.wasm_resident_kib() + self.heap_allocated_kib + self.heap_free_kib)
    }
}

impl Measurement {
    /// What the workload's authorization costs in memory: its sidecar
    /// Envoy, plus the authorizer beside it for ext_authz.
    pub fn sidecar_rss_kib(&self) -> u64 {
        self.envoy_rss_kib + self.authorizer_rss_kib.unwrap_or(0)
    }
}

/// The engine measured in this process (native, release build).
#[derive(Debug, Clone, Default, Serialize)]
pub struct EngineFigures {
    /// `WorkloadPolicy::decide`, median over batches of the bench crate's request mix.
    pub decide_ns: f64,
    /// `PolicySet::from_json` + `WorkloadPolicy::new` on the config bytes.
    pub compile_ms: f64,
    /// Heap the compiled policy keeps.
    pub compiled_bytes: u64,
}

/// One scale.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScaleReport {
    pub name: String,
    /// The server Envoys' `--concurrency` (worker threads; one Wasm VM each, plus the main thread's).
    pub concurrency: u32,
    pub shape: BTreeMap<String, usize>,
    pub allowed_share: f64,
    pub engine: EngineFigures,
    /// `on_configure` in the real Envoy, from the filter's own gauge (every
    /// VM sets it for its own compile: this is one VM's).
    pub on_configure_ms: Option<f64>,
    /// Requests of the mix whose status differed from the engine's verdict, per configuration.
    pub verdict_mismatches: BTreeMap<String, Vec<String>>,
    pub skipped: BTreeMap<String, String>,
    pub measurements: Vec<Measurement>,
}

impl ScaleReport {
    pub fn get(&self, config: &str) -> Option<&Measurement> {
        self.measurements.iter().find(|m| m.config == config)
    }
}

/// A target of issue #5 and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub target: String,
    pub measured: String,
    /// `None`: not measured in this run.
    pub met: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub envoy: String,
    pub date: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub load: Load,
    /// The fixed-rate runs the latency columns come from.
    pub latency: Load,
    pub rounds: usize,
    pub mix: Vec<String>,
    pub module_bytes: u64,
    pub scales: Vec<ScaleReport>,
    pub targets: Vec<Target>,
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_string(), |r| format!("{r:.2}"))
}

impl Report {
    /// Checks the targets against the measurements.
    pub fn evaluate_targets(&mut self) {
        let mut t = Vec::new();
        // Targets read the series Istio runs (concurrency 2), else the only one.
        let primary = if self.scales.iter().any(|s| s.concurrency == 2) { 2 } else { 1 };
        let scale = |name: &str| self.scales.iter().find(|s| s.name == name && s.concurrency == primary);
        let rps = |s: &str, c: &str| scale(s).and_then(|s| s.get(c)).map(|m| m.rps);
        let p99 = |s: &str, c: &str| scale(s).and_then(|s| s.get(c)).map(|m| f64::from(m.p99_us));
        let mut ratio_target = |what: &str, a: Option<f64>, b: Option<f64>, min: f64| {
            let r = a.zip(b).and_then(|(a, b)| ratio(a, b));
            t.push(Target {
                target: format!("{what} >= {min:.2}"),
                measured: fmt_ratio(r),
                met: r.map(|r| r >= min),
            });
        };
        ratio_target("tutorial: krites/rbac RPS", rps("tutorial", "krites"), rps("tutorial", "rbac"), 0.95);
        ratio_target("tutorial: krites/baseline RPS", rps("tutorial", "krites"), rps("tutorial", "baseline"), 0.90);
        ratio_target("krites RPS calico-20k/tutorial", rps("calico-20k", "krites"), rps("tutorial", "krites"), 0.90);
        for s in self.scales.iter().filter(|s| s.concurrency == primary) {
            ratio_target(&format!("{}: krites/ext_authz RPS", s.name), rps(&s.name, "krites"), rps(&s.name, "ext_authz"), 3.0);
        }
        let added = |c: &str| p99("tutorial", c).zip(p99("tutorial", "baseline")).map(|(x, b)| x - b);
        let (k, r) = (added("krites"), added("rbac"));
        t.push(Target {
            target: "tutorial: krites added p99 <= rbac added p99 + 10 us".into(),
            measured: match (k, r) {
                (Some(k), Some(r)) => format!("{k:+.0} us vs {r:+.0} us"),
                _ => "-".into(),
            },
            met: k.zip(r).map(|(k, r)| k <= r + 10.0),
        });
        // Issue #15: memory and CPU against what any Wasm filter costs.
        let measured = |s: &str, c: &str| scale(s).and_then(|s| s.get(c));
        let over_baseline = |s: &str, c: &str, f: &dyn Fn(&Measurement) -> f64| {
            measured(s, c).zip(measured(s, "baseline")).map(|(x, b)| f(x) - f(b))
        };
        let rss = |m: &Measurement| m.sidecar_rss_kib() as f64 / 1024.0;
        let cpu = |m: &Measurement| m.cpu_us_per_request;
        let mut over_target = |what: String, a: Option<f64>, b: Option<f64>, max: f64, unit: &str| {
            let r = a.zip(b).and_then(|(a, b)| ratio(a, b));
            t.push(Target {
                target: format!("{what} <= {max:.2}x"),
                measured: match (a, b) {
                    (Some(a), Some(b)) => format!("{a:+.1} {unit} vs {b:+.1} {unit}: {}", fmt_ratio(r)),
                    _ => "-".into(),
                },
                met: r.map(|r| r <= max),
            });
        };
        over_target(
            format!("c{primary} tutorial: krites RSS over baseline / wasm-min's"),
            over_baseline("tutorial", "krites", &rss),
            over_baseline("tutorial", "wasm-min", &rss),
            1.5,
            "MiB",
        );
        over_target(
            format!("c{primary} tutorial: krites CPU/req over baseline / rbac's"),
            over_baseline("tutorial", "krites", &cpu),
            over_baseline("tutorial", "rbac", &cpu),
            2.0,
            "us",
        );
        let side = |c: &str| measured("calico-20k", c).map(rss);
        over_target(
            format!("c{primary} calico-20k: krites sidecar RSS / ext_authz's (Envoy + authorizer)"),
            side("krites"),
            side("ext_authz"),
            1.0,
            "MiB",
        );
        let delivered = scale("calico-20k").and_then(|s| s.shape.get("delivered_config_bytes").copied());
        t.push(Target {
            target: "calico-20k: config as istiod delivers it <= 1 MiB".into(),
            measured: delivered.map_or("-".into(), |b| format!("{:.2} MiB", b as f64 / 1048576.0)),
            met: delivered.map(|b| b <= 1 << 20),
        });
        for (s, max) in [("calico-20k", 200.0), ("p1000-e10k", 20.0)] {
            let conf = scale(s).and_then(|s| s.on_configure_ms);
            t.push(Target {
                target: format!("{s}: on_configure per VM (in Envoy) <= {max:.0} ms"),
                measured: conf.map_or("-".into(), |c| format!("{c:.1} ms")),
                met: conf.map(|c| c <= max),
            });
        }
        let decide = scale("calico-20k").map(|s| s.engine.decide_ns);
        t.push(Target {
            target: "engine decide() at calico-20k <= 2 us".into(),
            measured: decide.map_or("-".into(), |d| format!("{:.3} us", d / 1000.0)),
            met: decide.map(|d| d <= 2000.0),
        });
        t.push(Target {
            target: "module <= 250 KB".into(),
            measured: format!("{:.1} KB", self.module_bytes as f64 / 1000.0),
            met: Some(self.module_bytes <= 250_000),
        });
        self.targets = t;
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(out, "Krites load benchmark, {} ({} cores, {}), {}, {}", m.cpu, m.cores, m.kernel, m.envoy, m.date);
        let _ = writeln!(
            out,
            "h2load: {} connections, {} s per run after {} ms warm-up, {} round(s) alternating configurations; latency at {} req/s over {} connections; module {} bytes",
            self.load.connections,
            self.load.duration.as_secs(),
            self.load.warm_up.as_millis(),
            self.rounds,
            self.latency.rate.unwrap_or(0),
            self.latency.connections,
            self.module_bytes
        );
        let _ = writeln!(out, "mix: {}", self.mix.join("; "));
        for s in &self.scales {
            let shape = |k: &str| s.shape.get(k).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "\n== {}, server Envoy --concurrency {}: {} policies, {} rules, {} endpoint IPs, {} KB config ({} KB as istiod delivers it); {} policies / {} rules apply to the target; {:.0}% of the mix allowed",
                s.name,
                s.concurrency,
                shape("policies"),
                shape("rules"),
                shape("endpoint_ips"),
                shape("config_bytes") / 1000,
                shape("delivered_config_bytes") / 1000,
                shape("policies_selecting"),
                shape("rules_applying"),
                s.allowed_share * 100.0
            );
            let _ = writeln!(
                out,
                "   engine (native): decide {:.0} ns, compile {:.1} ms, {} KB kept; on_configure in Envoy, per VM: {}",
                s.engine.decide_ns,
                s.engine.compile_ms,
                s.engine.compiled_bytes / 1000,
                s.on_configure_ms.map_or("-".into(), |c| format!("{c:.1} ms"))
            );
            let _ = writeln!(
                out,
                "   {:<10} {:>9} {:>10} {:>10} {:>8} {:>8} {:>8} {:>9} {:>11} {:>7} {:>7} {:>7} {:>6}",
                "config", "req/s", "cpu us/req", "sat p99 us", "p50 us", "p99 us", "p99.9 us", "RSS MiB", "sidecar MiB", "2xx", "4xx", "errors", "5xx"
            );
            for x in &s.measurements {
                let _ = writeln!(
                    out,
                    "   {:<10} {:>9.0} {:>10.1} {:>10} {:>8} {:>8} {:>8} {:>9.1} {:>11.1} {:>7} {:>7} {:>7} {:>6}{}",
                    x.config,
                    x.rps,
                    x.cpu_us_per_request,
                    x.saturated_p99_us,
                    x.p50_us,
                    x.p99_us,
                    x.p999_us,
                    x.envoy_rss_kib as f64 / 1024.0,
                    x.sidecar_rss_kib() as f64 / 1024.0,
                    x.status_2xx,
                    x.status_4xx,
                    x.errors,
                    x.status_5xx,
                    x.authorizer_rss_kib.map_or(String::new(), |k| format!("  (authorizer {:.1} MiB)", k as f64 / 1024.0))
                );
            }
            for (c, why) in &s.skipped {
                let _ = writeln!(out, "   {c:<10} not run: {why}");
            }
            let mib = |kib: u64| kib as f64 / 1024.0;
            for x in &s.measurements {
                let Some(m) = &x.memory else { continue };
                let each: Vec<String> = m.wasm_memories.iter().map(|w| format!("{:.1}/{:.1}", mib(w.resident_kib), mib(w.size_kib))).collect();
                let _ = writeln!(
                    out,
                    "   memory {:<10} files {:.1} MiB; Envoy heap {:.1} MiB in use + {:.1} MiB freed and kept; other anonymous {:.1} MiB; {} Wasm memories {:.1} MiB resident{}",
                    x.config,
                    mib(m.file_backed_kib),
                    mib(m.heap_allocated_kib),
                    mib(m.heap_free_kib),
                    mib(m.other_anonymous_kib()),
                    m.wasm_memories.len(),
                    mib(m.wasm_resident_kib()),
                    if each.is_empty() { String::new() } else { format!(" (resident/size MiB: {})", each.join(", ")) }
                );
            }
            if let Some(k) = s.get("krites") {
                let r = |c: &str| s.get(c).map(|m| (ratio(k.rps, m.rps), ratio(k.cpu_us_per_request, m.cpu_us_per_request)));
                let mut parts = Vec::new();
                for c in ["baseline", "rbac", "ext_authz", "wasm-floor", "wasm-min"] {
                    if let Some((rps, cpu)) = r(c) {
                        parts.push(format!("krites/{c}: RPS {} cpu/req {}", fmt_ratio(rps), fmt_ratio(cpu)));
                    }
                }
                let _ = writeln!(out, "   ratios: {}", parts.join("; "));
            }
            for (c, bad) in &s.verdict_mismatches {
                if !bad.is_empty() {
                    let _ = writeln!(out, "   {c}: {} request(s) of the mix decided unlike the engine: {}", bad.len(), bad.join(", "));
                }
            }
        }
        let _ = writeln!(out, "\nTargets (issues #5 and #15):");
        for t in &self.targets {
            let mark = match t.met {
                Some(true) => "met   ",
                Some(false) => "MISSED",
                None => "n/a   ",
            };
            let _ = writeln!(out, "  {mark} {:<62} {}", t.target, t.measured);
        }
        out
    }
}
