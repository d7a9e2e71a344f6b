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
//! Which Calico API to read is asked of the API server's discovery
//! ([`discover`]); a flag naming an API it does not serve keeps the
//! controller not ready (log, Event) and writing nothing.
//!
//! RBAC it needs (a ClusterRole; `istio-manifests/control/rbac.yaml`):
//! ```yaml
//! rules:
//! - apiGroups: [""]
//!   resources: [pods, serviceaccounts, namespaces, services]
//!   verbs: [list, watch]
//! - apiGroups: [discovery.k8s.io]
//!   resources: [endpointslices]
//!   verbs: [list, watch]
//! - apiGroups: [networking.k8s.io]
//!   resources: [networkpolicies]
//!   verbs: [list, watch]
//! - apiGroups: [crd.projectcalico.org, projectcalico.org]
//!   resources: [globalnetworkpolicies, networkpolicies, tiers, globalnetworksets, networksets, stagedglobalnetworkpolicies, stagednetworkpolicies, stagedkubernetesnetworkpolicies]
//!   verbs: [list, watch]
//! - apiGroups: [extensions.istio.io]
//!   resources: [wasmplugins]
//!   # list+watch: drift; create: server-side apply of a missing object is a
//!   # create; update: the replace that removes foreign fields; delete: stale shards
//!   verbs: [list, watch, create, patch, update, delete]
//! - apiGroups: [events.k8s.io]
//!   resources: [events]
//!   verbs: [create, patch]
//! ```
//! and, for leader election ([`lease`]), a Role in the Lease's namespace:
//! `coordination.k8s.io` `leases`: `get`, `create`, `update`.
//! (Discovery, `/apis/<group>/<version>`, is open to every authenticated
//! user through Kubernetes' default `system:discovery` role.)

pub mod apply;
pub mod debounce;
pub mod discover;
pub mod lease;
pub mod metrics;
pub mod reconcile;
pub mod recover;
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
pub use discover::CalicoApiFlag;
pub use sources::{CalicoApi, PluginEvent, Snapshot, Stores, Writers};

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
    /// Which API serves Calico's policies: `auto` asks the API server; `crd`
    /// or `v3` must be served, or control stays not ready.
    #[arg(long, value_enum, default_value = "auto")]
    pub calico_api: CalicoApiFlag,
    /// How often to re-read the WasmPlugins from the cluster and repair drift.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub resync: Duration,
    /// Leader election with a Lease (`krites-control`), so that several
    /// replicas can run: only the leader writes; the others watch and compile.
    /// `--leader-elect=false`: this process always writes (one replica only).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Namespace of the Lease (default: POD_NAMESPACE, else krites-system).
    #[arg(long)]
    pub leader_election_namespace: Option<String>,
    /// How long an unrenewed Lease stays another replica's.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub leader_election_lease_duration: Duration,
    /// The leader stops writing when it could not renew for this long (< the lease duration).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub leader_election_renew_deadline: Duration,
    /// Between renewals (leader) or tries to acquire (others).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub leader_election_retry_period: Duration,
    /// Accept `http` matches in Calico egress rules and enforce them on the
    /// client's sidecar (a Krites extension: Calico accepts them on ingress
    /// only). Without it such a policy is invalid (an Event says so).
    #[arg(long)]
    pub allow_egress_http: bool,
}

/// How the control loop runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub settings: Settings,
    pub calico_api: CalicoApiFlag,
    pub debounce: Duration,
    pub resync: Duration,
    /// Leader election (None: always write).
    pub leader: Option<lease::Config>,
}

impl From<&RunArgs> for Options {
    fn from(a: &RunArgs) -> Options {
        Options {
            settings: Settings {
                module: Module { url: a.module_url.clone(), sha256: a.sha256.clone() },
                mesh_namespace: a.mesh_namespace.clone(),
                per_namespace: a.per_namespace,
                // The Deployment passes the pod's name (downward API).
                reporting_instance: std::env::var("POD_NAME").ok().filter(|s| !s.is_empty()),
                allow_egress_http: a.allow_egress_http,
            },
            calico_api: a.calico_api,
            debounce: a.debounce,
            resync: a.resync,
            leader: a.leader_elect.then(|| {
                let namespace = a.leader_election_namespace.clone().filter(|s| !s.is_empty()).unwrap_or_else(lease::default_namespace);
                let mut c = lease::Config::new(namespace, lease::default_identity());
                c.lease_duration = a.leader_election_lease_duration;
                // client-go's rule: the leader stops before another may take over.
                c.renew_deadline = a.leader_election_renew_deadline.min(a.leader_election_lease_duration.mul_f64(0.9));
                c.retry_period = a.leader_election_retry_period.min(c.renew_deadline / 2);
                c
            }),
        }
    }
}

/// The log filter when `RUST_LOG` is unset. `kube_client` is off: its
/// errors repeat what the controller itself logs once per outage (a watch
/// failing, a write retried), one line per retry.
pub const DEFAULT_LOG_FILTER: &str = "info,kube_client=off,tower=warn,hyper=warn,rustls=warn";

/// The default filter with `RUST_LOG`'s directives appended: a later
/// directive for the same target wins, so `RUST_LOG=debug` raises the level
/// and `RUST_LOG=kube_client=warn` brings that crate back, while a plain
/// `RUST_LOG=info` no longer turns the quiet defaults off.
pub fn log_filter(rust_log: Option<&str>) -> String {
    match rust_log.map(str::trim).filter(|s| !s.is_empty()) {
        Some(extra) => format!("{DEFAULT_LOG_FILTER},{extra}"),
        None => DEFAULT_LOG_FILTER.to_string(),
    }
}

/// `control run` from a synchronous `main`: logging, a Tokio runtime, the controller.
pub fn run_blocking(args: &RunArgs) -> Result<()> {
    let wanted = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    let filter = tracing_subscriber::EnvFilter::try_new(&wanted).unwrap_or_else(|e| {
        eprintln!("warning: RUST_LOG: {e}; using the default log filter");
        tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER)
    });
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
    /// The WasmPlugin watch saw content control did not write.
    Drift,
    /// This replica became the leader: read what is in force, write what differs.
    Leading,
}

/// Event reason when the Calico API named by `--calico-api` is not served.
pub const NOT_SERVED_REASON: &str = "CalicoApiNotServed";

/// Resolves `--calico-api` against the API server's discovery, retrying
/// until it can (or `shutdown`: `None`). While it cannot, control is not
/// ready, says why in the log, `/readyz` and an Event, and compiles nothing:
/// a config without the policies of the API named would loosen enforcement.
async fn resolve_calico(
    client: &Client,
    flag: CalicoApiFlag,
    reconciler: &mut Reconciler,
    metrics: &Metrics,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Option<Option<CalicoApi>> {
    let mut delay = Duration::from_secs(1);
    let mut told: Option<String> = None;
    let mut logged: Option<String> = None;
    loop {
        match discover::resolve(client, flag).await {
            Ok(api) => {
                metrics.set_blocked(None);
                match api {
                    Some(api) => info!(calico_api = %discover_label(api), "reading Calico policies from this API"),
                    None => warn!("the API server serves no Calico policy API; enforcing Kubernetes NetworkPolicies only"),
                }
                return Some(api);
            }
            Err(e) => {
                let message = e.to_string();
                metrics.set_blocked(Some(message.clone()));
                if logged.as_deref() != Some(message.as_str()) {
                    error!(problem = %message, retry_in = ?delay, "cannot read Calico policies; compiling and writing nothing until this is fixed");
                    logged = Some(message.clone());
                }
                if told.as_deref() != Some(message.as_str()) {
                    let not_served = matches!(e, discover::DiscoverError::NotServed { .. });
                    // An Event for a wrong flag (an operator must act); not for a
                    // passing outage. Unpublished, it is tried again next time.
                    if !not_served || reconciler.report_blocked(NOT_SERVED_REASON, &message).await {
                        told = Some(message);
                    }
                }
            }
        }
        tokio::select! {
            () = &mut *shutdown => return None,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

fn discover_label(api: CalicoApi) -> String {
    let (g, v) = api.group_version();
    format!("{g}/{v}")
}

/// The control loop on a given client: watchers feed the stores; each burst
/// of changes (once every store has listed) leads to one reconcile. Returns
/// when `shutdown` completes.
pub async fn run_with_client(client: Client, opts: Options, metrics: Arc<Metrics>, shutdown: impl Future<Output = ()>) -> Result<()> {
    let _alive = Alive(metrics.clone());
    metrics.set_alive(true);
    let mut reconciler = Reconciler::new(client.clone(), opts.settings.clone(), metrics.clone());
    let election = opts.leader.clone().map(|c| lease::Election::start(client.clone(), c));
    let mut leader_changes = match &election {
        Some(e) => {
            metrics.set_leadership(e.leadership.clone());
            reconciler.set_leadership(e.leadership.clone());
            e.leadership.subscribe()
        }
        // Never changes: always the writer.
        None => tokio::sync::watch::channel(true).1,
    };
    let leading = |e: &Option<lease::Election>| e.as_ref().is_none_or(|e| e.leadership.is_leader());
    let mut shutdown = std::pin::pin!(shutdown);
    let Some(calico) = resolve_calico(&client, opts.calico_api, &mut reconciler, &metrics, &mut shutdown).await else {
        if let Some(e) = election {
            e.stop().await;
        }
        return Ok(());
    };
    let (stores, writers) = sources::stores(calico);
    let (tx, mut rx) = mpsc::channel(1024);
    let mut tasks = sources::watch(&client, writers, tx, &metrics);
    let (plugin_tx, mut plugin_rx) = mpsc::channel(256);
    tasks.push(sources::watch_plugins(&client, plugin_tx, metrics.clone()));
    let debouncer = Debouncer::new(opts.debounce);
    // The burst in progress: (its first change, its last, how many). Kept out
    // of any future so that a WasmPlugin event waking the loop mid-burst
    // loses no change (a cancelled `Debouncer::next` would).
    let mut burst: Option<(Instant, Instant, usize)> = None;
    let resync_every = opts.resync.max(Duration::from_secs(1));
    let mut resync_at = Instant::now() + resync_every;
    let mut retry_at: Option<Instant> = None;
    let mut retry_delay = Duration::from_secs(1);
    let mut told_waiting = false;
    loop {
        let settled = burst.map_or(resync_at, |(first, last, _)| (last + debouncer.quiet).min(first + debouncer.max_delay));
        let wake = tokio::select! {
            () = &mut shutdown => break,
            change = rx.recv() => match change {
                Some(()) => {
                    let now = Instant::now();
                    burst = Some(match burst {
                        Some((first, _, n)) => (first, now, n + 1),
                        None => (now, now, 1),
                    });
                    continue;
                }
                None => {
                    error!("every watcher stopped");
                    break;
                }
            },
            () = sleep_until(settled), if burst.is_some() => {
                let n = burst.take().map_or(0, |(_, _, n)| n);
                Wake::Changes(n)
            }
            () = sleep_until(retry_at.unwrap_or(resync_at)), if retry_at.is_some() => Wake::Retry,
            () = sleep_until(resync_at) => Wake::Resync,
            Some(event) = plugin_rx.recv() => {
                if !leading(&election) || !reconciler.drifted(&event) {
                    continue;
                }
                Wake::Drift
            }
            Ok(()) = leader_changes.changed() => {
                if *leader_changes.borrow_and_update() {
                    Wake::Leading
                } else {
                    // Writes stop by themselves (each is checked); forget what
                    // was applied so that leading again starts from the cluster.
                    reconciler.resync();
                    retry_at = None;
                    continue;
                }
            }
        };
        match wake {
            Wake::Changes(n) => debug!(changes = n, "changes settled"),
            Wake::Retry => debug!("retrying"),
            Wake::Resync => debug!("resync"),
            Wake::Drift => warn!("a WasmPlugin control manages was changed or deleted by someone else; repairing"),
            Wake::Leading => info!("leading: comparing the WasmPlugins in force with the compiled config"),
        }
        if matches!(wake, Wake::Resync | Wake::Drift | Wake::Leading) {
            if matches!(wake, Wake::Resync) {
                resync_at = Instant::now() + resync_every;
            }
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
        let write = leading(&election);
        match reconciler.reconcile_as(&snapshot, write).await {
            Ok(outcome) if !write => {
                retry_at = None;
                debug!(revisions = ?outcome.revisions, "compiled (follower: the leader writes)");
            }
            Ok(outcome) => {
                retry_at = None;
                retry_delay = Duration::from_secs(1);
                if !outcome.applied.repaired.is_empty() {
                    warn!(repaired = ?outcome.applied.repaired, "replaced WasmPlugin content control did not write");
                }
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
            Err(ReconcileError::Apply(apply::ApplyError::NotLeader)) => {
                info!("leadership lost during a write: stopped writing");
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
    if let Some(e) = election {
        e.stop().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled(filter: &str, target_is_kube_client: bool, level: tracing::Level) -> bool {
        let subscriber = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(filter)).with_writer(std::io::sink).finish();
        tracing::subscriber::with_default(subscriber, || match (target_is_kube_client, level) {
            (true, tracing::Level::ERROR) => tracing::enabled!(target: "kube_client::client", tracing::Level::ERROR),
            (true, _) => tracing::enabled!(target: "kube_client::client", tracing::Level::WARN),
            (false, tracing::Level::DEBUG) => tracing::enabled!(target: "krites_control", tracing::Level::DEBUG),
            (false, _) => tracing::enabled!(target: "krites_control", tracing::Level::INFO),
        })
    }

    #[test]
    fn rust_log_extends_the_default_filter() {
        assert_eq!(log_filter(None), DEFAULT_LOG_FILTER);
        assert_eq!(log_filter(Some(" ")), DEFAULT_LOG_FILTER);
        // RUST_LOG=info (the Deployment's) keeps kube_client quiet.
        let info = log_filter(Some("info"));
        assert!(enabled(&info, false, tracing::Level::INFO));
        assert!(!enabled(&info, true, tracing::Level::ERROR), "{info}");
        // A later directive wins: more detail, or a crate brought back.
        assert!(enabled(&log_filter(Some("debug")), false, tracing::Level::DEBUG));
        assert!(!enabled(&log_filter(Some("debug")), true, tracing::Level::ERROR));
        assert!(enabled(&log_filter(Some("kube_client=warn")), true, tracing::Level::WARN));
    }
}
