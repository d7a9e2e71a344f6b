//! `make demo`: Calico's YAO Bank tutorial, played in real Envoys running Krites.
//!
//! Act 1 runs the workloads with no policy: the compromised customer pod and
//! the attack pod with summary's stolen keys reach the database. Act 2 applies
//! the tutorial's three policies hot (ECDS, no Envoy restart) and replays the
//! same requests: the attacks are denied and the app keeps working.
//! `--once` exits after the story; otherwise the sidecars keep running until Ctrl-C.

use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use krites_testbed::yaobank::{tutorial_steps, Bank, Step, OPEN_CONFIG, POLICY_CONFIG};
use krites_testbed::module_path;

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<bool> {
    let once = std::env::args().any(|a| a == "--once");
    let started = Instant::now();
    let module = module_path();
    anyhow::ensure!(module.exists(), "{} is missing: run `make build`", module.display());
    let dir = tempfile::Builder::new().prefix("krites-demo-").tempdir()?;

    println!("== Krites demo: Calico's YAO Bank tutorial, enforced inside Envoy ==\n");
    println!("Starting a sidecar Envoy per workload (module {}):", module.display());
    let bank = Bank::start(dir.path(), &module, OPEN_CONFIG).context("starting the sidecars")?;
    for s in bank.sidecars() {
        println!("  {:<10} pod IP {:<11} mTLS {}  plaintext {}  (envoy pid {})", s.name(), s.ip(), s.mtls_addr(), s.plain_addr(), s.pid());
    }

    println!("\n-- Act 1: no policy. Every request goes through, attacks included. --");
    let steps = tutorial_steps();
    for step in &steps {
        let status = bank.send(step)?.status;
        println!("  {} {:<3} {}", mark(status == 200), status, describe(step));
    }

    println!("\n-- Act 2: apply the tutorial's policies (customer: GET only; summary: from SA customer; database: from SA summary) --");
    let pids: Vec<u32> = bank.sidecars().map(|s| s.pid()).collect();
    bank.apply(POLICY_CONFIG)?;
    let same = bank.sidecars().map(|s| s.pid()).eq(pids.iter().copied());
    println!("  pushed through ECDS to {} sidecars; Envoy restarted: {}", pids.len(), if same { "no" } else { "yes" });

    let mut all_as_expected = true;
    for step in &steps {
        let status = bank.send(step)?.status;
        let ok = status == step.with_policy;
        all_as_expected &= ok;
        let verdict = if status == 403 { "DENIED " } else { "allowed" };
        println!("  {} {verdict} {:<3} {}", mark(ok), status, describe(step));
    }

    let db = &bank.database;
    let stat = |n: &str| db.stat(&format!("wasmcustom.{n}")).unwrap_or(0);
    println!(
        "\nDatabase sidecar stats: allowed {}, denied {}, stolen-certificate attempts {}",
        stat("krites_allowed_total"),
        stat("krites_denied_total"),
        stat("krites_identity_mismatch_total") + stat("krites_identity_unknown_address_total")
    );
    if let Ok(line) = db.wait_for_log("certificate says", Duration::from_secs(3)) {
        println!("Its log says why:\n  {}", line.trim());
    }
    println!("\nStory played in {:.1} s: {}", started.elapsed().as_secs_f64(), if all_as_expected { "every step as the tutorial says" } else { "SOME STEPS DIFFER (marked x)" });

    if !once {
        let c = &bank.customer;
        println!("\nThe sidecars keep running. Try:");
        println!("  curl http://{}/            # customer page, GET is allowed", c.plain_addr());
        println!("  curl -X POST http://{}/    # denied: 403", c.plain_addr());
        println!("  curl http://{}/stats/prometheus | grep krites   # the database's counters", db.admin_addr());
        println!("Ctrl-C stops everything.");
        let (tx, rx) = mpsc::channel();
        ctrlc::set_handler(move || {
            let _ = tx.send(());
        })?;
        let _ = rx.recv();
        println!("\nstopping the sidecars");
    }
    Ok(all_as_expected)
}

fn mark(ok: bool) -> &'static str {
    if ok {
        "✓"
    } else {
        "x"
    }
}

fn describe(step: &Step) -> String {
    format!("{} [{} {}]", step.title, step.method, step.path)
}
