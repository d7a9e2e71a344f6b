//! Where a compiled config's memory goes, stage by stage, counted by a global
//! allocator (requested bytes, native 64-bit; the Wasm VM's are smaller per
//! pointer but follow the same shape):
//! `cargo run --release -p krites-bench --example memory_profile -- calico`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::error::Error;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use krites_bench::{generate, target_workload, to_json, Scale};
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
    let json = to_json(&generate(&scale));
    let workload = target_workload(&scale);

    let base = live();
    PEAK.store(base, Ordering::Relaxed);
    let (config, read) = kept(|| PluginConfig::from_json(json.as_bytes()));
    let config = config?;
    let endpoint_ips: usize = config.endpoints.iter().map(|e| e.ips.len()).sum();
    let rules: usize = config.policies.iter().map(|p| p.ingress.len()).sum();
    println!(
        "{name}: {} of JSON; {} policies, {rules} rules, {} endpoint groups, {endpoint_ips} endpoint IPs",
        mb(json.len()),
        config.policies.len(),
        config.endpoints.len()
    );
    println!("  PluginConfig (read)            {}", mb(read));

    // The two halves of a PolicySet, each compiled without the other.
    let identity_only = PluginConfig { policies: Vec::new(), tiers: Vec::new(), ..config.clone() };
    let (set, universe) = kept(|| PolicySet::from_config(&identity_only));
    drop((set?, identity_only));
    let names_only = PluginConfig { policies: Vec::new(), tiers: Vec::new(), endpoints: Vec::new(), ..config.clone() };
    let (set, names) = kept(|| PolicySet::from_config(&names_only));
    drop((set?, names_only));
    let policies_only = PluginConfig { endpoints: Vec::new(), ..config.clone() };
    let (set, policies) = kept(|| PolicySet::from_config(&policies_only));
    drop((set?, policies_only));
    println!("    endpoints/namespaces/SAs only  {}", mb(universe));
    println!("    policies (+ namespaces/SAs)    {}", mb(policies));
    println!(
        "    namespaces/SAs only            {} ({} namespaces, {} service accounts)",
        mb(names),
        config.namespaces.len(),
        config.service_accounts.len()
    );

    PEAK.store(live(), Ordering::Relaxed);
    let (set, whole) = kept(|| PolicySet::from_config(&config));
    let set = Arc::new(set?);
    println!("  PolicySet                      {}", mb(whole));
    drop(config);
    let (policy, specialised) = kept(|| WorkloadPolicy::new(Arc::clone(&set), &workload));
    println!("  WorkloadPolicy (index)         {}", mb(specialised));
    println!("  kept in all                    {}", mb(live().saturating_sub(base)));
    println!("  peak while compiling           {}", mb(PEAK.load(Ordering::Relaxed).saturating_sub(base)));
    std::hint::black_box(policy);
    Ok(())
}
