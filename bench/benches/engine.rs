//! Engine benchmarks on generated configs.
//!
//! - `decide`: per-request time over a mixed request set (every peer kind,
//!   allowed and denied) at 10, 1,000 and 10,000 rules and at the Calico
//!   production preset (294 policies × 68 rules, 256k endpoint IPs); the
//!   `decide_by_kind` group splits the Calico mix by peer kind, indexed and
//!   unindexed, to show which requests take the slow path.
//! - `compile`: `PolicySet::from_config` + `WorkloadPolicy::new`.
//! - `parse`: `PolicySet::from_json` from the serialized bytes (and serde alone).
//!
//! `KRITES_BENCH_QUICK=1` shortens warm-up and measurement for a smoke run.

use std::hint::black_box;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode, Throughput};
use criterion::measurement::WallTime;
use krites_bench::{generate, request_mix, target_workload, to_json, RequestKind, Scale};
use krites_policy::{PluginConfig, PolicySet, RequestFacts, Verdict, WorkloadPolicy};

/// Requests per measured iteration of the decide benchmarks.
const MIX: usize = 1024;

fn quick() -> bool {
    std::env::var("KRITES_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Warm-up and measurement time for cheap (per-request) and expensive (compile) benchmarks.
fn times(expensive: bool) -> (Duration, Duration) {
    match (quick(), expensive) {
        (true, false) => (Duration::from_millis(300), Duration::from_secs(1)),
        (true, true) => (Duration::from_millis(200), Duration::from_secs(2)),
        (false, false) => (Duration::from_secs(1), Duration::from_secs(4)),
        (false, true) => (Duration::from_secs(1), Duration::from_secs(8)),
    }
}

fn configure(group: &mut BenchmarkGroup<'_, WallTime>, expensive: bool) {
    let (warm_up, measure) = times(expensive);
    group.warm_up_time(warm_up).measurement_time(measure);
    // Every iteration is long (a batch of requests, or a whole compile): flat sampling.
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(if expensive || quick() { 10 } else { 30 });
}

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("krites-bench: {what}: {e}");
    std::process::exit(1)
}

fn calico_config() -> &'static PluginConfig {
    static CONFIG: OnceLock<PluginConfig> = OnceLock::new();
    CONFIG.get_or_init(|| generate(&Scale::calico_production()))
}

fn config_for(scale: &Scale) -> PluginConfig {
    if *scale == Scale::calico_production() {
        calico_config().clone()
    } else {
        generate(scale)
    }
}

fn compile(config: &PluginConfig) -> Arc<PolicySet> {
    match PolicySet::from_config(config) {
        Ok(set) => Arc::new(set),
        Err(e) => fail("generated config does not compile", e),
    }
}

fn decide_all(policy: &WorkloadPolicy, facts: &[RequestFacts<'_>]) -> usize {
    facts.iter().filter(|f| policy.decide(f).verdict == Verdict::Allow).count()
}

fn decide_all_unindexed(policy: &WorkloadPolicy, facts: &[RequestFacts<'_>]) -> usize {
    facts.iter().filter(|f| policy.decide_unindexed(f).verdict == Verdict::Allow).count()
}

fn bench_decide(c: &mut Criterion) {
    let scales = [
        ("rules-10", Scale::rules(10)),
        ("rules-1000", Scale::rules(1000)),
        ("rules-10000", Scale::rules(10_000)),
        ("calico", Scale::calico_production()),
    ];
    let mut group = c.benchmark_group("decide");
    configure(&mut group, false);
    group.throughput(Throughput::Elements(MIX as u64));
    let mut calico = None;
    for (name, scale) in scales {
        let config = config_for(&scale);
        let set = compile(&config);
        let policy = WorkloadPolicy::new(set, &target_workload(&scale));
        let mix = request_mix(&scale, MIX);
        let facts: Vec<RequestFacts<'_>> = mix.iter().map(|r| r.facts()).collect();
        let allowed = decide_all(&policy, &facts);
        eprintln!(
            "decide/{name}: {} rules in config, {} policies select the target, {} rules apply; mix {} allowed / {} denied",
            scale.total_rules(),
            policy.policies_selecting(),
            policy.rule_count(),
            allowed,
            MIX - allowed
        );
        group.bench_function(name, |b| b.iter(|| decide_all(&policy, black_box(&facts))));
        if name == "calico" {
            group.bench_function("calico-unindexed", |b| b.iter(|| decide_all_unindexed(&policy, black_box(&facts))));
            calico = Some((policy, mix));
        }
    }
    group.finish();

    // Which peer kinds take the slow path at the Calico scale.
    let Some((policy, mix)) = calico else { return };
    let mut group = c.benchmark_group("decide_by_kind");
    configure(&mut group, false);
    for kind in RequestKind::ALL {
        let facts: Vec<RequestFacts<'_>> = mix.iter().filter(|r| r.kind == kind).map(|r| r.facts()).collect();
        if facts.is_empty() {
            continue;
        }
        let allowed = decide_all(&policy, &facts);
        eprintln!("decide_by_kind/calico/{kind}: {} requests, {allowed} allowed", facts.len());
        group.throughput(Throughput::Elements(facts.len() as u64));
        group.bench_function(format!("calico/{kind}"), |b| b.iter(|| decide_all(&policy, black_box(&facts))));
        group.bench_function(format!("calico-unindexed/{kind}"), |b| {
            b.iter(|| decide_all_unindexed(&policy, black_box(&facts)))
        });
    }
    group.finish();
}

/// 1,000 one-rule policies and 10,000 endpoint IPs: the size a single WasmPlugin can carry.
fn p1000_e10000() -> Scale {
    Scale { policies: 1000, rules_per_policy: 1, endpoints: 10_000, namespaces: 20, seed: krites_bench::DEFAULT_SEED }
}

fn bench_compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile");
    configure(&mut group, true);
    for (name, scale) in [("p1000-e10000", p1000_e10000()), ("calico", Scale::calico_production())] {
        let config = config_for(&scale);
        let workload = target_workload(&scale);
        eprintln!("compile/{name}: config JSON {} bytes", to_json(&config).len());
        group.bench_function(format!("{name}/set+workload"), |b| {
            b.iter_with_large_drop(|| {
                let set = compile(black_box(&config));
                WorkloadPolicy::new(set, &workload)
            })
        });
        group.bench_function(format!("{name}/set-only"), |b| b.iter_with_large_drop(|| compile(black_box(&config))));
        let set = compile(&config);
        group.bench_function(format!("{name}/workload-only"), |b| {
            b.iter_with_large_drop(|| WorkloadPolicy::new(Arc::clone(&set), black_box(&workload)))
        });
    }
    group.finish();
}

fn bench_parse(c: &mut Criterion) {
    let scale = p1000_e10000();
    let bytes = to_json(&generate(&scale)).into_bytes();
    let mut group = c.benchmark_group("parse");
    configure(&mut group, true);
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("p1000-e10000/from_json", |b| {
        b.iter_with_large_drop(|| PolicySet::from_json(black_box(&bytes)).map_err(|e| fail("from_json", e)).ok())
    });
    group.bench_function("p1000-e10000/read-only", |b| {
        b.iter_with_large_drop(|| PluginConfig::from_json(black_box(&bytes)).ok())
    });
    group.finish();
}

/// `control compile` from manifests: 1,000 policies and 10,000 pods.
fn bench_control_compile(c: &mut Criterion) {
    let scale = p1000_e10000();
    let manifests: Vec<krites_control::manifests::Manifest> = krites_bench::manifests::to_manifests(&generate(&scale))
        .into_iter()
        .map(|value| krites_control::manifests::Manifest { source: String::new(), value })
        .collect();
    let mut group = c.benchmark_group("control");
    configure(&mut group, true);
    group.bench_function("p1000-pods10000/inventory+compile", |b| {
        b.iter_with_large_drop(|| {
            let inv = krites_control::inventory::Inventory::from_manifests(black_box(&manifests));
            krites_control::compile::compile(&inv, &Default::default()).map(|c| c.bytes).ok()
        })
    });
    group.finish();
}

criterion_group!(benches, bench_decide, bench_compile, bench_parse, bench_control_compile);
criterion_main!(benches);
