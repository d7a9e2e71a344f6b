//! `control run`: the in-cluster controller. It watches the policies and the
//! cluster ([`sources`]), and after each burst of changes ([`debounce`])
//! compiles everything into the filter's config and keeps the Istio
//! `WasmPlugin`s that carry it current ([`reconcile`], [`apply`]). It reports
//! through the log (`tracing`, `RUST_LOG`), Kubernetes Events on invalid
//! objects, and `/healthz`, `/readyz`, `/metrics` ([`serve`], [`metrics`]).
//!
//! The code that talks to the API server is the same in tests: only the
//! [`kube::Client`] differs (a mock service there).
//!
//! RBAC it needs (a ClusterRole):
//! ```yaml
//! rules:
//! - apiGroups: [""]
//!   resources: [pods, serviceaccounts, namespaces]
//!   verbs: [list, watch]
//! - apiGroups: [networking.k8s.io]
//!   resources: [networkpolicies]
//!   verbs: [list, watch]
//! - apiGroups: [crd.projectcalico.org]        # projectcalico.org with --calico-api v3
//!   resources: [globalnetworkpolicies, networkpolicies, tiers]
//!   verbs: [list, watch]
//! - apiGroups: [extensions.istio.io]
//!   resources: [wasmplugins]
//!   verbs: [get, list, patch, delete]          # patch: server-side apply creates too
//! - apiGroups: [events.k8s.io]
//!   resources: [events]
//!   verbs: [create, patch]
//! ```

pub mod apply;
pub mod debounce;
pub mod metrics;
pub mod reconcile;
pub mod serve;
pub mod sources;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use kube::Client;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tracing::{debug, error, info, warn};

pub use debounce::{parse_duration, Debouncer};
pub use metrics::Metrics;
pub use reconcile::{Outcome, Plan, ReconcileError, Reconciler, Settings};
pub use sources::{CalicoApi, Snapshot, Stores, Writers};

use crate::wasmplugin::{Module, MESH_NAMESPACE};

/// `control run`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Module URL the WasmPlugins point at.
    #[arg(long, default_value = "oci://ghcr.io/krites-project/krites:0.1.0")]
    pub module_url: String,
    /// WasmPlugin `sha256`: the image manifest digest for oci:// URLs.
    #[arg(long)]
    pub sha256: Option<String>,
    /// Istio's root namespace, where the mesh-wide WasmPlugins go.
    #[arg(long, default_value = MESH_NAMESPACE)]
    pub mesh_namespace: String,
    /// One WasmPlugin pair per namespace, even when the whole config fits in one
    /// (it is sharded anyway when it does not).
    #[arg(long)]
    pub per_namespace: bool,
    /// Quiet time that ends a burst of changes before a recompile (e.g. 1s, 500ms).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub debounce: Duration,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:9090")]
    pub listen: SocketAddr,
    /// Which API serves Calico's policies.
    #[arg(long, value_enum, default_value = "crd")]
    pub calico_api: CalicoApi,
    /// How often to re-read the WasmPlugins from the cluster and repair drift.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub resync: Duration,
}

/// How the control loop runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub settings: Settings,
    pub calico_api: CalicoApi,
    pub debounce: Duration,
    pub resync: Duration,
}

impl From<&RunArgs> for Options {
    fn from(a: &RunArgs) -> Options {
        Options {
            settings: Settings {
                module: Module { url: a.module_url.clone(), sha256: a.sha256.clone() },
                mesh_namespace: a.mesh_namespace.clone(),
                per_namespace: a.per_namespace,
            },
            calico_api: a.calico_api,
            debounce: a.debounce,
            resync: a.resync,
        }
    }
}

/// `control run` from a synchronous `main`: logging, a Tokio runtime, the controller.
pub fn run_blocking(args: &RunArgs) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube_client=off,tower=warn,hyper=warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the Tokio runtime")?;
    runtime.block_on(run(args))
}

/// Connects to the cluster (in-cluster config or kubeconfig), serves
/// health and metrics, and runs the control loop until SIGTERM or Ctrl-C.
pub async fn run(args: &RunArgs) -> Result<()> {
    let client = Client::try_default().await.context("connecting to the Kubernetes API (in-cluster config or kubeconfig)")?;
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    let metrics = Arc::new(Metrics::default());
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve::serve(listener, metrics.clone(), async {
        let _ = server_stopped.await;
    }));
    info!(listen = %args.listen, module = %args.module_url, calico_api = ?args.calico_api, "krites-control starting");
    let result = run_with_client(client, Options::from(args), metrics, shutdown_signal()).await;
    let _ = stop_server.send(());
    match server.await {
        Ok(Err(e)) => warn!(error = %e, "health/metrics server failed"),
        Err(e) => warn!(error = %e, "health/metrics server task failed"),
        Ok(Ok(())) => {}
    }
    result
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => info!("interrupted; stopping"),
        () = term => info!("terminated; stopping"),
    }
}

/// Marks the loop stopped (`/healthz` 503) however it ends.
struct Alive(Arc<Metrics>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.set_alive(false);
    }
}

/// Why the loop woke up.
#[derive(Debug)]
enum Wake {
    Changes(usize),
    Retry,
    Resync,
}

/// The control loop on a given client: watchers feed the stores; each burst
/// of changes (once every store has listed) leads to one reconcile. Returns
/// when `shutdown` completes.
pub async fn run_with_client(client: Client, opts: Options, metrics: Arc<Metrics>, shutdown: impl Future<Output = ()>) -> Result<()> {
    let _alive = Alive(metrics.clone());
    metrics.set_alive(true);
    let (stores, writers) = sources::stores(opts.calico_api);
    let (tx, mut rx) = mpsc::channel(1024);
    let tasks = sources::watch(&client, writers, tx);
    let mut reconciler = Reconciler::new(client, opts.settings.clone(), metrics.clone());
    let debouncer = Debouncer::new(opts.debounce);
    let mut shutdown = std::pin::pin!(shutdown);
    let resync_every = opts.resync.max(Duration::from_secs(1));
    let mut resync_at = Instant::now() + resync_every;
    let mut retry_at: Option<Instant> = None;
    let mut retry_delay = Duration::from_secs(1);
    let mut told_waiting = false;
    loop {
        let wake = tokio::select! {
            () = &mut shutdown => break,
            n = debouncer.next(&mut rx) => match n {
                Some(n) => Wake::Changes(n),
                None => {
                    error!("every watcher stopped");
                    break;
                }
            },
            () = sleep_until(retry_at.unwrap_or(resync_at)), if retry_at.is_some() => Wake::Retry,
            () = sleep_until(resync_at) => Wake::Resync,
        };
        match wake {
            Wake::Changes(n) => debug!(changes = n, "changes settled"),
            Wake::Retry => debug!("retrying"),
            Wake::Resync => debug!("resync"),
        }
        if matches!(wake, Wake::Resync) {
            resync_at = Instant::now() + resync_every;
            reconciler.resync();
        }
        if !stores.synced() {
            if !told_waiting {
                info!(pending = ?stores.pending(), "waiting for the first list of every watched kind before compiling");
                told_waiting = true;
            }
            continue;
        }
        let snapshot = stores.snapshot();
        match reconciler.reconcile(&snapshot).await {
            Ok(outcome) => {
                retry_at = None;
                retry_delay = Duration::from_secs(1);
                if outcome.applied.written.is_empty() && outcome.applied.deleted.is_empty() {
                    debug!(revisions = ?outcome.revisions, "WasmPlugins already current");
                } else {
                    info!(
                        revisions = ?outcome.revisions,
                        written = ?outcome.applied.written,
                        deleted = ?outcome.applied.deleted,
                        invalid_objects = outcome.invalid,
                        "WasmPlugins updated"
                    );
                }
            }
            // Input that does not compile (logged by the reconciler): wait for the next change.
            Err(ReconcileError::Compile(_) | ReconcileError::Plan(_) | ReconcileError::Manifest(_)) => {
                retry_at = None;
            }
            Err(e) => {
                warn!(error = %e, retry_in = ?retry_delay, "writing to the API server failed; retrying");
                retry_at = Some(Instant::now() + retry_delay);
                retry_delay = (retry_delay * 2).min(Duration::from_secs(60));
            }
        }
    }
    for t in &tasks {
        t.abort();
    }
    Ok(())
}
