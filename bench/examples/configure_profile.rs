//! What `on_configure` does, natively and repeatedly, for a profiler:
//! `cargo run --release -p krites-bench --example configure_profile -- calico [runs]`.
//! Each run reads the config as control delivers it, compiles it for the
//! bench's target workload and indexes it, as the filter does; the phases'
//! median wall times are printed. Native times are about a third of a Wasm
//! VM's; the filter's own figure comes from Envoy (the load bench).

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use krites_bench::{delivered_json, generate, target_workload, Scale};
use krites_policy::{PolicySet, WorkloadPolicy};

fn median(mut times: Vec<Duration>) -> f64 {
    times.sort();
    times.get(times.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

fn main() -> Result<(), Box<dyn Error>> {
    let name = std::env::args().nth(1).unwrap_or_else(|| "calico".into());
    let runs: usize = std::env::args().nth(2).and_then(|r| r.parse().ok()).unwrap_or(5);
    let scale = Scale::preset(&name).ok_or_else(|| format!("unknown scale {name}"))?;
    let json = delivered_json(&generate(&scale))?;
    let workload = target_workload(&scale);
    let (mut compile, mut index) = (Vec::new(), Vec::new());
    let mut rules = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let set = Arc::new(PolicySet::for_workload(json.clone().into_bytes(), &workload)?);
        compile.push(t.elapsed());
        let t = Instant::now();
        let policy = WorkloadPolicy::new(set, &workload);
        index.push(t.elapsed());
        rules = policy.rule_count();
    }
    println!(
        "{name}: {} KB delivered, {rules} rules for the target; median of {runs}: PolicySet {:.1} ms, index {:.1} ms",
        json.len() / 1000,
        median(compile),
        median(index)
    );
    Ok(())
}
