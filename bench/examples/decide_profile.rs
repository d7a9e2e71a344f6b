//! Decides one peer kind of the request mix in a loop, for a profiler:
//! `cargo build --release -p krites-bench --example decide_profile` then
//! `perf record target/release/examples/decide_profile calico mismatch 20000`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use krites_bench::{generate, request_mix, target_workload, RequestKind, Scale};
use krites_policy::{PolicySet, WorkloadPolicy};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let scale = args.get(1).and_then(|s| Scale::preset(s)).unwrap_or_else(Scale::calico_production);
    let kind = args.get(2).and_then(|k| RequestKind::ALL.into_iter().find(|r| r.name() == k));
    let n: usize = args.get(3).and_then(|n| n.parse().ok()).unwrap_or(10_000);
    let Ok(set) = PolicySet::from_config(&generate(&scale)) else {
        eprintln!("the generated config does not compile");
        std::process::exit(1);
    };
    let policy = WorkloadPolicy::new(Arc::new(set), &target_workload(&scale));
    let mix: Vec<_> = request_mix(&scale, 4096).into_iter().filter(|r| kind.is_none_or(|k| r.kind == k)).collect();
    let facts: Vec<_> = mix.iter().map(|r| r.facts()).collect();
    if facts.is_empty() {
        eprintln!("no request of that kind");
        std::process::exit(1);
    }
    let started = Instant::now();
    for i in 0..n {
        if let Some(f) = facts.get(i % facts.len()) {
            black_box(policy.decide(black_box(f)));
        }
    }
    let per = started.elapsed().as_nanos() as f64 / n as f64;
    println!("{} decisions of {:?}: {per:.0} ns each", n, kind.map(RequestKind::name).unwrap_or("every kind"));
}
