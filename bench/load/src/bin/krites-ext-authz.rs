//! `krites-ext-authz`: the Krites engine behind Envoy's ext_authz gRPC API, for
//! one workload (the Dikastes architecture; see `krites_loadbench::ext_authz`).
//!
//! ```sh
//! krites-ext-authz --config plugin-config.json --namespace default --service-account database \
//!     --label app=database --listen 127.0.0.1:9191
//! ```
//!
//! Prints `krites-ext-authz: listening on ADDR (N policies select the workload, R rules)`
//! once bound, serves h2c gRPC until SIGTERM or SIGINT, then exits 0. On an error it prints
//! one line `krites-ext-authz: <what failed>` to stderr and exits 1.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use krites_loadbench::ext_authz::{bind, check_loopback, serve_on, shutdown_signal, Authorizer};
use krites_policy::Workload;

#[derive(Debug, Parser)]
#[command(name = "krites-ext-authz", about = "The Krites engine as an Envoy ext_authz gRPC server, for one workload")]
struct Args {
    /// Plugin config JSON, the format the Krites filter takes.
    #[arg(long)]
    config: PathBuf,
    /// The protected workload's namespace.
    #[arg(long)]
    namespace: String,
    /// The protected workload's service account.
    #[arg(long)]
    service_account: String,
    /// A label of the workload's pods, `key=value`; repeat for more.
    #[arg(long = "label", value_parser = key_value)]
    labels: Vec<(String, String)>,
    /// A named container port, `name=number`, for rules that name ports; repeat for more.
    #[arg(long = "port", value_parser = named_port)]
    ports: Vec<(String, u16)>,
    /// Where to serve (127.0.0.0/8 or ::1 only).
    #[arg(long)]
    listen: SocketAddr,
    /// Worker threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,
}

fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{text:?} is not key=value")),
    }
}

fn named_port(text: &str) -> Result<(String, u16), String> {
    let (name, number) = key_value(text)?;
    match number.parse::<u16>() {
        Ok(n) if n > 0 => Ok((name, n)),
        _ => Err(format!("{number:?} is not a port number (1-65535)")),
    }
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever RUST_BACKTRACE says: the bench shows it as the reason.
            eprintln!("krites-ext-authz: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    check_loopback(args.listen)?;
    let config = std::fs::read(&args.config).with_context(|| format!("reading {}", args.config.display()))?;
    let workload = Workload {
        namespace: args.namespace.clone(),
        service_account: args.service_account.clone(),
        labels: args.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
        ports: args.ports.iter().cloned().collect::<BTreeMap<_, _>>(),
    };
    if workload.namespace.is_empty() || workload.service_account.is_empty() {
        bail!("--namespace and --service-account must not be empty");
    }
    let authorizer =
        Authorizer::new(&config, &workload).with_context(|| format!("compiling {}", args.config.display()))?;
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(usize::from(args.threads)).enable_all().build()
    }
    .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let listener = bind(args.listen).await?;
        let addr = listener.local_addr().context("listener address")?;
        let policy = authorizer.policy();
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "krites-ext-authz: listening on {addr} ({} policies select the workload, {} rules)",
            policy.policies_selecting(),
            policy.rule_count()
        )?;
        out.flush()?;
        drop(out);
        eprintln!(
            "krites-ext-authz: {}/{} config revision {}, {} threads",
            workload.namespace,
            workload.service_account,
            policy.policy_set().revision(),
            args.threads
        );
        serve_on(authorizer, listener, shutdown_signal()).await
    })
}
