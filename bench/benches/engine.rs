//! Engine benchmarks on generated configs.
//!
//! - `decide`: per-request time over a mixed request set (every peer kind,
//!   allowed and denied) at 10, 1,000 and 10,000 rules and at the Calico
//!   production preset (294 policies × 68 rules, 256k endpoint IPs); the
//!   `decide_by_kind` group splits the Calico mix by peer kind, indexed and
//!   unindexed, to show which requests take the slow path.
//! - `compile`: `PolicySet::from_config` + `WorkloadPolicy::new`.
//! - `parse`: `PolicySet::from_json` from the serialized bytes (and serde alone).
//! - `egress`: the egress role on BookInfo's shape (reviews may call ratings):
//!   to a pod, to a Service of 3 and of 100 endpoints, outside; with nothing
//!   staged, and with a staged policy touching the workload (the staged walk
//!   and the comparison added).
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

/// BookInfo: reviews may call ratings (whose Service has `ratings` endpoints)
/// and nothing else, behind a security tier that denies an outside range;
/// `staged`: a staged Set of the reviews policy that would also allow details.
fn bookinfo_egress(ratings: usize, staged: bool) -> Arc<PolicySet> {
    let ratings_ips: Vec<String> = (0..ratings).map(|i| format!("10.1.{}.{}", 1 + i / 200, 10 + i % 200)).collect();
    let rule = |selector: &str| serde_json::json!({"action": "Allow", "protocol": "TCP", "destination": {"selector": selector, "ports": [9080]}});
    let reviews = |rules: serde_json::Value| serde_json::json!({"name": "reviews", "namespace": "bookinfo", "selector": "app == 'reviews'", "types": ["Egress"], "egress": rules});
    let mut staged_policies = Vec::new();
    if staged {
        let mut p = reviews(serde_json::json!([rule("app == 'ratings'"), rule("app == 'details'")]));
        p["stagedAction"] = "Set".into();
        staged_policies.push(p);
    }
    let config = serde_json::json!({
        "version": 1,
        "tiers": [{"name": "security", "order": 100, "defaultAction": "Pass"}],
        "policies": [
            {"name": "no-exfil", "tier": "security", "selector": "all()", "types": ["Egress"],
             "egress": [{"action": "Deny", "destination": {"nets": ["203.0.113.0/24"]}}, {"action": "Pass"}]},
            reviews(serde_json::json!([rule("app == 'ratings'")]))
        ],
        "stagedPolicies": staged_policies,
        "endpoints": [
            {"namespace": "bookinfo", "serviceAccount": "bookinfo-reviews", "labels": {"app": "reviews"}, "ips": ["10.1.0.20"]},
            {"namespace": "bookinfo", "serviceAccount": "bookinfo-ratings", "labels": {"app": "ratings"}, "ips": ratings_ips},
            {"namespace": "bookinfo", "serviceAccount": "bookinfo-details", "labels": {"app": "details"}, "ips": ["10.1.0.40"]}
        ],
        "services": [
            {"namespace": "bookinfo", "name": "ratings", "clusterIPs": ["10.96.0.30"],
             "ports": [{"port": 9080, "endpoints": [{"port": 9080, "ips": ratings_ips}]}]},
            {"namespace": "bookinfo", "name": "details", "clusterIPs": ["10.96.0.40"],
             "ports": [{"port": 9080, "endpoints": [{"port": 9080, "ips": ["10.1.0.40"]}]}]}
        ]
    });
    let config = PluginConfig::from_json(config.to_string().as_bytes()).unwrap_or_else(|e| fail("bookinfo config", e));
    compile(&config)
}

fn bench_egress(c: &mut Criterion) {
    use krites_policy::engine::{Destination, EgressFacts, EgressPolicy, StagedWorkload};
    let workload = krites_policy::Workload {
        namespace: "bookinfo".into(),
        service_account: "bookinfo-reviews".into(),
        labels: [("app".to_string(), "reviews".to_string())].into(),
        ports: Default::default(),
    };
    let to = |ip: &str, port: u16| EgressFacts {
        source_ip: "10.1.0.20".parse().ok(),
        source_port: Some(40000),
        destination: Destination::Address { ip: ip.parse().ok(), port: Some(port) },
        method: None,
        path: None,
    };
    let cases = [
        ("pod", to("10.1.1.10", 9080), true),
        ("service", to("10.96.0.30", 9080), true),
        ("denied-service", to("10.96.0.40", 9080), false),
        ("outside", to("203.0.113.9", 443), false),
    ];
    let mut group = c.benchmark_group("egress");
    configure(&mut group, false);
    for (ratings, staged) in [(3, false), (100, false), (3, true)] {
        let set = bookinfo_egress(ratings, staged);
        let policy = EgressPolicy::new(Arc::clone(&set), &workload);
        let view = StagedWorkload::new(&set, &workload);
        if staged && view.is_none() {
            fail("bookinfo egress", "the staged policy does not touch reviews");
        }
        for (name, facts, allowed) in &cases {
            if policy.decide(facts).allowed() != *allowed {
                fail("bookinfo egress", format!("{name}: unexpected verdict"));
            }
            let id = format!("{name}/endpoints-{ratings}{}", if staged { "/staged" } else { "" });
            group.bench_function(id, |b| {
                b.iter(|| {
                    let now = policy.decide(black_box(facts));
                    match &view {
                        Some(v) => {
                            let would = v.egress.decide(facts);
                            v.compare((now.verdict, now.policy), (would.verdict, would.policy)).is_some()
                        }
                        None => now.allowed(),
                    }
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_decide, bench_compile, bench_parse, bench_control_compile, bench_egress);
criterion_main!(benches);
