//! Leader election with a `coordination.k8s.io/v1` Lease, as client-go's
//! `leaderelection` does it, so that a Deployment can run more than one
//! replica: every replica watches and compiles (a failover needs no cold
//! start), only the leader writes.
//!
//! - A replica takes the Lease when it is free (no holder) or expired: its
//!   record (holder, renewTime) has not changed for `lease_duration`, as
//!   observed on this replica's own clock (no trust in other clocks).
//! - The leader renews every `retry_period`. Every write is a `replace`
//!   carrying the `resourceVersion` just read, so of two replicas racing for
//!   the Lease exactly one wins (the other gets a 409 Conflict).
//! - The leader is the leader only until `renew_deadline` after the start of
//!   its last successful renewal ([`Leadership::is_leader`] reads that
//!   deadline on every call, so losing the Lease stops writing at once, even
//!   while a renewal hangs). `renew_deadline` < `lease_duration`: it stops
//!   writing before another replica may take over.
//! - On a graceful stop the leader releases the Lease (empty holder), so the
//!   next one takes over after one `retry_period`, not a whole lease duration.
//!
//! (`kube-lease-manager` 0.13 fits kube 5, but it keeps reporting
//! leadership while renewals fail, renews at whole seconds before expiry and
//! needs `patch`: this loop is the few lines that do it the client-go way.)
//!
//! RBAC: `get`, `create`, `update` on `coordination.k8s.io` `leases` in the
//! Lease's namespace (a Role; `istio-manifests/control/rbac.yaml`).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout_at, Instant};
use tracing::{debug, info, warn};

/// The Lease's name.
pub const LEASE_NAME: &str = "krites-control";

/// How leader election runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub namespace: String,
    /// This replica (POD_NAME, else hostname + pid).
    pub identity: String,
    /// How long a record that does not change makes the Lease expired (client-go: 15 s).
    pub lease_duration: Duration,
    /// How long the leader goes on after its last successful renewal (client-go: 10 s).
    pub renew_deadline: Duration,
    /// Between two tries (renewals of the leader, acquisitions of the others; client-go: 2 s).
    pub retry_period: Duration,
}

impl Config {
    pub fn new(namespace: String, identity: String) -> Config {
        Config {
            name: LEASE_NAME.into(),
            namespace,
            identity,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// This replica's identity: `POD_NAME`, else `<hostname>-<pid>`.
pub fn default_identity() -> String {
    if let Some(name) = std::env::var("POD_NAME").ok().filter(|s| !s.is_empty()) {
        return name;
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "krites-control".into());
    format!("{host}-{}", std::process::id())
}

/// The Lease's namespace by default: `POD_NAMESPACE`, else `krites-system`.
pub fn default_namespace() -> String {
    std::env::var("POD_NAMESPACE").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "krites-system".into())
}

#[derive(Debug, Default)]
struct State {
    /// Leader until then (None: not the leader).
    until: Option<Instant>,
    /// Who holds the Lease, as last read.
    holder: Option<String>,
    /// The last failure to read or write the Lease, if the last try failed.
    error: Option<String>,
    /// Leadership as last told (log, `changes`).
    told: bool,
}

/// Who leads, shared by the election task and the control loop.
#[derive(Debug)]
pub struct Leadership {
    identity: String,
    state: Mutex<State>,
    /// `true` on becoming the leader, `false` on losing it (wakes the loop).
    changes: watch::Sender<bool>,
}

impl Leadership {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Leader now: renewed within the renew deadline. Checked before every write.
    pub fn is_leader(&self) -> bool {
        self.lock().until.is_some_and(|u| Instant::now() < u)
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The holder as last read (possibly this replica).
    pub fn holder(&self) -> Option<String> {
        self.lock().holder.clone()
    }

    pub fn last_error(&self) -> Option<String> {
        self.lock().error.clone()
    }

    /// Wakes on each change of leadership.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.changes.subscribe()
    }

    fn set_leading(&self, until: Option<Instant>) {
        let (was, now) = {
            let mut s = self.lock();
            s.until = until;
            let now = s.until.is_some_and(|u| Instant::now() < u);
            // What was last told, not the deadline: a lapse (is_leader turned
            // false by the clock alone, e.g. after a pause) is told too.
            (std::mem::replace(&mut s.told, now), now)
        };
        if was != now {
            if now {
                info!(identity = %self.identity, "became the leader: this replica writes the WasmPlugins");
            } else {
                warn!(identity = %self.identity, "not the leader any more: this replica writes nothing");
            }
            self.changes.send_replace(now);
        }
    }
}

fn now_micro() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// What one try found.
enum Tried {
    Leading,
    Following,
}

/// The election task. It stops (releasing the Lease if held) when `stop` resolves.
pub struct Election {
    pub leadership: Arc<Leadership>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Election {
    /// Starts electing on `client`.
    pub fn start(client: Client, config: Config) -> Election {
        let (changes, _) = watch::channel(false);
        let leadership = Arc::new(Leadership { identity: config.identity.clone(), state: Mutex::new(State::default()), changes });
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(run(client, config, leadership.clone(), stopped));
        Election { leadership, stop: Some(stop), task }
    }

    /// Stops electing; a leader releases the Lease (bounded: 3 s).
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if tokio::time::timeout(Duration::from_secs(3), &mut self.task).await.is_err() {
            self.task.abort();
        }
        self.leadership.set_leading(None);
    }
}

impl Drop for Election {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Observed {
    /// (holder, renewTime) as last read.
    record: Option<(Option<String>, Option<String>)>,
    /// When `record` was first seen (this replica's clock).
    at: Instant,
}

async fn run(client: Client, config: Config, leadership: Arc<Leadership>, mut stopped: tokio::sync::oneshot::Receiver<()>) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut observed = Observed { record: None, at: Instant::now() };
    info!(lease = %format!("{}/{}", config.namespace, config.name), identity = %config.identity, "leader election: trying to acquire the Lease");
    let mut told_error = false;
    loop {
        let started = Instant::now();
        // A try never outlives the leadership it would renew.
        let limit = leadership.lock().until.filter(|u| *u > started).unwrap_or(started + config.renew_deadline).min(started + config.renew_deadline);
        let tried = tokio::select! {
            _ = &mut stopped => break,
            r = timeout_at(limit, try_once(&api, &config, &mut observed)) => r.unwrap_or_else(|_| Err("timed out".into())),
        };
        match tried {
            Ok(Tried::Leading) => {
                leadership.set_holder(Some(config.identity.clone()));
                leadership.lock().error = None;
                told_error = false;
                leadership.set_leading(Some(started + config.renew_deadline));
            }
            Ok(Tried::Following) => {
                leadership.set_holder(observed.record.as_ref().and_then(|r| r.0.clone()));
                leadership.lock().error = None;
                told_error = false;
                leadership.set_leading(None);
            }
            Err(e) => {
                if told_error {
                    debug!(error = %e, "leader election: cannot read or write the Lease");
                } else {
                    warn!(error = %e, "leader election: cannot read or write the Lease; retrying");
                    told_error = true;
                }
                leadership.lock().error = Some(e);
                // Leadership lapses by itself at its deadline (is_leader); tell the loop.
                if !leadership.is_leader() {
                    leadership.set_leading(None);
                }
            }
        }
        let mut next = started + config.retry_period;
        if let Some(u) = leadership.lock().until {
            if u > Instant::now() {
                next = next.min(u);
            }
        }
        tokio::select! {
            _ = &mut stopped => break,
            () = sleep_until(next) => {}
        }
        if !leadership.is_leader() {
            leadership.set_leading(None);
        }
    }
    // Graceful stop: release, so that the next replica need not wait out the lease.
    if leadership.is_leader() {
        leadership.set_leading(None);
        match tokio::time::timeout(Duration::from_secs(2), release(&api, &config)).await {
            Ok(Ok(())) => info!("leader election: Lease released"),
            Ok(Err(e)) => warn!(error = %e, "leader election: cannot release the Lease"),
            Err(_) => warn!("leader election: releasing the Lease timed out"),
        }
    }
}

async fn try_once(api: &Api<Lease>, config: &Config, observed: &mut Observed) -> Result<Tried, String> {
    let secs = i32::try_from(config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let current = match api.get_opt(&config.name).await {
        Ok(c) => c,
        Err(e) => return Err(format!("reading Lease {}/{}: {e}", config.namespace, config.name)),
    };
    let Some(mut lease) = current else {
        let lease = Lease {
            metadata: ObjectMeta { name: Some(config.name.clone()), namespace: Some(config.namespace.clone()), ..ObjectMeta::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(secs),
                acquire_time: Some(now_micro()),
                renew_time: Some(now_micro()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Tried::Leading),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Tried::Following),
            Err(e) => Err(format!("creating Lease {}/{}: {e}", config.namespace, config.name)),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let record = (holder.clone(), spec.renew_time.as_ref().map(|t| t.0.to_string()));
    if observed.record.as_ref() != Some(&record) {
        observed.record = Some(record);
        observed.at = Instant::now();
    }
    let duration = spec.lease_duration_seconds.map_or(config.lease_duration, |s| Duration::from_secs(u64::try_from(s.max(1)).unwrap_or(1)));
    let mine = holder.as_deref() == Some(config.identity.as_str());
    let expired = holder.is_none() || observed.at + duration <= Instant::now();
    if !mine && !expired {
        return Ok(Tried::Following);
    }
    let mut new = spec.clone();
    new.holder_identity = Some(config.identity.clone());
    new.lease_duration_seconds = Some(secs);
    new.renew_time = Some(now_micro());
    if !mine {
        new.acquire_time = Some(now_micro());
        new.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + i32::from(holder.is_some() || spec.acquire_time.is_some()));
    }
    lease.spec = Some(new);
    // resourceVersion as read: of two replicas racing, one gets a Conflict.
    match api.replace(&config.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(Tried::Leading),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Tried::Following),
        Err(e) => Err(format!("updating Lease {}/{}: {e}", config.namespace, config.name)),
    }
}

/// Gives the Lease up (empty holder) if this replica still holds it.
async fn release(api: &Api<Lease>, config: &Config) -> Result<(), String> {
    let Some(mut lease) = api.get_opt(&config.name).await.map_err(|e| e.to_string())? else { return Ok(()) };
    let Some(spec) = lease.spec.as_mut() else { return Ok(()) };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.renew_time = Some(now_micro());
    // client-go's ReleaseOnCancel also shortens the duration to 1 s.
    spec.lease_duration_seconds = Some(1);
    api.replace(&config.name, &PostParams::default(), &lease).await.map(|_| ()).map_err(|e| e.to_string())
}

impl Leadership {
    /// Records the holder last read (for `/readyz`).
    fn set_holder(&self, holder: Option<String>) {
        self.lock().holder = holder;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn leadership_lapses_at_its_deadline_by_itself() {
        let (changes, _) = watch::channel(false);
        let l = Leadership { identity: "a".into(), state: Mutex::new(State::default()), changes };
        assert!(!l.is_leader());
        l.set_leading(Some(Instant::now() + Duration::from_millis(50)));
        assert!(l.is_leader());
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(!l.is_leader(), "no renewal: no longer the leader, without the task saying so");
    }

    #[test]
    fn identity_and_namespace_defaults() {
        assert!(!default_identity().is_empty());
        assert!(!default_namespace().is_empty());
    }
}
