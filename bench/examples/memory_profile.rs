//! Where a compiled config's memory goes, stage by stage, counted by a global
//! allocator (requested bytes, native 64-bit; the Wasm VM's are smaller per
//! pointer but follow the same shape):
//! `cargo run --release -p krites-bench --example memory_profile -- calico [table]`.
//! Times are native wall time, one run each: a rough guide to where
//! configure time goes, not the filter's figure.

use std::alloc::{GlobalAlloc, Layout, System};
use std::error::Error;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use krites_bench::{delivered_json, generate, target_workload, to_json, Scale};
use krites_policy::config::EndpointTable;
use krites_policy::{PluginConfig, PolicySet, WorkloadPolicy};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

fn mb(bytes: usize) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// Live bytes that `build` leaves behind.
fn kept<T>(build: impl FnOnce() -> T) -> (T, usize) {
    let before = live();
    let value = build();
    (value, live().saturating_sub(before))
}

fn main() -> Result<(), Box<dyn Error>> {
    let name = std::env::args().nth(1).unwrap_or_else(|| "calico".into());
    let scale = Scale::preset(&name).ok_or_else(|| format!("unknown scale {name}"))?;
    // `table`: the endpoint groups in the compact table, as control writes
    // a config of that many addresses.
    let table = std::env::args().nth(2).is_some_and(|a| a == "table");
    let generated = generate(&scale);
    let generated = if table { generated.with_endpoint_table()? } else { generated };
    let json = to_json(&generated);
    // What the filter receives: compressed at this size, as control delivers it.
    let delivered = delivered_json(&generated)?;
    drop(generated);
    let workload = target_workload(&scale);

    let base = live();
    PEAK.store(base, Ordering::Relaxed);
    let t = std::time::Instant::now();
    let (config, read) = kept(|| PluginConfig::from_json(json.as_bytes()));
    let read_time = t.elapsed();
    let config = config?;
    let endpoint_ips: usize = config.endpoint_specs().iter().map(|e| e.ips.len()).sum();
    let rules: usize = config.policies.iter().map(|p| p.ingress.len()).sum();
    println!(
        "{name}: {} of JSON{}; {} policies, {rules} rules, {} endpoint groups, {endpoint_ips} endpoint IPs",
        mb(json.len()),
        if table { " (endpoint table)" } else { "" },
        config.policies.len(),
        config.endpoint_group_count()
    );
    println!("  PluginConfig (read)            {} in {:.0} ms", mb(read), read_time.as_secs_f64() * 1e3);

    // The two halves of a PolicySet, each compiled without the other.
    let identity_only = PluginConfig { policies: Vec::new(), tiers: Vec::new(), ..config.clone() };
    // Without pods, keeping the service accounts (in the table's form if it has one).
    let no_endpoints = |c: &PluginConfig| match &c.endpoint_table {
        Some(t) => PluginConfig {
            endpoints: Vec::new(),
            endpoint_table: EndpointTable::new(&[], &t.service_account_specs()).ok(),
            ..c.clone()
        },
        None => PluginConfig { endpoints: Vec::new(), ..c.clone() },
    };
    let (set, universe) = kept(|| PolicySet::from_config(&identity_only));
    drop((set?, identity_only));
    let names_only = PluginConfig { policies: Vec::new(), tiers: Vec::new(), ..no_endpoints(&config) };
    let (set, names) = kept(|| PolicySet::from_config(&names_only));
    drop((set?, names_only));
    let policies_only = no_endpoints(&config);
    let (set, policies) = kept(|| PolicySet::from_config(&policies_only));
    drop((set?, policies_only));
    println!("    endpoints/namespaces/SAs only  {}", mb(universe));
    println!("    policies (+ namespaces/SAs)    {}", mb(policies));
    println!(
        "    namespaces/SAs only            {} ({} namespaces, {} service accounts)",
        mb(names),
        config.namespaces.len(),
        config.service_account_specs().len()
    );

    drop(config);
    let base = live();
    PEAK.store(base, Ordering::Relaxed);
    let t = std::time::Instant::now();
    // As the filter compiles, from the delivered bytes: for its workload
    // (every policy validated, only those selecting it kept), the policies
    // read, compiled and let go one at a time once the endpoints are indexed.
    let (set, whole) = kept(|| PolicySet::for_workload(delivered.clone().into_bytes(), &workload));
    let compile_time = t.elapsed();
    let set = Arc::new(set?);
    println!(
        "  PolicySet                      {} in {:.0} ms (from the {} delivered)",
        mb(whole),
        compile_time.as_secs_f64() * 1e3,
        mb(delivered.len())
    );
    let compile_peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    // The index phase's own peak, from what the PolicySet keeps.
    PEAK.store(live(), Ordering::Relaxed);
    let t = std::time::Instant::now();
    let (policy, specialised) = kept(|| WorkloadPolicy::new(Arc::clone(&set), &workload));
    let index_peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    println!("  WorkloadPolicy (index)         {} in {:.0} ms", mb(specialised), t.elapsed().as_secs_f64() * 1e3);
    println!("  kept in all                    {}", mb(live().saturating_sub(base)));
    println!(
        "  peak while compiling           {} ({} while reading and building the PolicySet, {} while indexing)",
        mb(compile_peak.max(index_peak)),
        mb(compile_peak),
        mb(index_peak)
    );
    std::hint::black_box(policy);
    Ok(())
}
