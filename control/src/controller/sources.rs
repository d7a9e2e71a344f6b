//! The controller's inputs: one reflector store per watched kind, fed by a
//! `watcher` task, and a [`Snapshot`] of all of them as JSON objects, the form
//! [`Inventory::add`](crate::inventory::Inventory::add) reads.
//!
//! Watched: Pods, ServiceAccounts, Namespaces, `networking.k8s.io`
//! NetworkPolicies (all required), and Calico's GlobalNetworkPolicy,
//! NetworkPolicy and Tier (optional: a cluster without the Calico CRDs is
//! told once in the log and runs on Kubernetes NetworkPolicies only).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::Store;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::metrics::Metrics;

/// The watchers' retry delays: 250 ms doubling up to 2 s, reset after a
/// success. kube-runtime's default goes up to 30 s, so a change made just
/// after an outage could wait that long; 2 s costs one cheap request per
/// watch every 2 s while the API server is down.
#[derive(Debug, Clone)]
pub struct CappedBackoff {
    next: Duration,
}

/// First retry delay.
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);

impl Default for CappedBackoff {
    fn default() -> Self {
        CappedBackoff { next: BACKOFF_MIN }
    }
}

impl Iterator for CappedBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let d = self.next;
        self.next = (d * 2).min(BACKOFF_MAX);
        Some(d)
    }
}

impl kube::runtime::utils::Backoff for CappedBackoff {
    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

/// Which API serves Calico's policies (resolved: see [`super::discover`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CalicoApi {
    /// `crd.projectcalico.org/v1`: the CRDs Calico stores its objects in
    /// (no Calico API server needed).
    Crd,
    /// `projectcalico.org/v3`: the Calico API server's aggregated API, or
    /// Calico's v3 CRDs.
    V3,
}

impl CalicoApi {
    pub fn group_version(self) -> (&'static str, &'static str) {
        match self {
            CalicoApi::Crd => ("crd.projectcalico.org", "v1"),
            CalicoApi::V3 => ("projectcalico.org", "v3"),
        }
    }

    /// GlobalNetworkPolicy, NetworkPolicy and Tier in that API.
    pub fn resources(self) -> Vec<ApiResource> {
        let (group, version) = self.group_version();
        [("GlobalNetworkPolicy", "globalnetworkpolicies"), ("NetworkPolicy", "networkpolicies"), ("Tier", "tiers")]
            .iter()
            .map(|(kind, plural)| ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural))
            .collect()
    }
}

/// Where a source stands: the controller compiles only once every source
/// has listed its objects (or is known to be absent), so a half-read cluster
/// never produces a config that lacks policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceState {
    /// Initial list not done yet.
    Pending,
    /// Listed; watching.
    Synced,
    /// The API server does not serve this kind (Calico not installed).
    Absent,
}

#[derive(Debug)]
pub struct Source {
    /// `Pod`, `crd.projectcalico.org/GlobalNetworkPolicy`, ...
    pub name: String,
    /// Absent is allowed (Calico kinds).
    pub optional: bool,
    state: AtomicU8,
}

impl Source {
    fn new(name: String, optional: bool) -> Arc<Source> {
        Arc::new(Source { name, optional, state: AtomicU8::new(0) })
    }

    pub fn state(&self) -> SourceState {
        match self.state.load(Ordering::SeqCst) {
            1 => SourceState::Synced,
            2 => SourceState::Absent,
            _ => SourceState::Pending,
        }
    }

    pub fn set(&self, state: SourceState) {
        let v = match state {
            SourceState::Pending => 0,
            SourceState::Synced => 1,
            SourceState::Absent => 2,
        };
        self.state.store(v, Ordering::SeqCst);
    }
}

/// Everything the cluster holds that the compiler reads, as JSON objects
/// with `apiVersion` and `kind` set, in a stable order.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub objects: Vec<Value>,
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

impl Snapshot {
    pub fn new(mut objects: Vec<Value>) -> Snapshot {
        objects.sort_by(|a, b| {
            let key = |v: &Value| {
                (
                    str_at(v, "/apiVersion").to_string(),
                    str_at(v, "/kind").to_string(),
                    str_at(v, "/metadata/namespace").to_string(),
                    str_at(v, "/metadata/name").to_string(),
                )
            };
            key(a).cmp(&key(b))
        });
        Snapshot { objects }
    }

    /// Objects per (API group, kind), for the `krites_control_objects` gauge.
    pub fn counts(&self) -> BTreeMap<(String, String), usize> {
        let mut counts = BTreeMap::new();
        for o in &self.objects {
            let group = str_at(o, "/apiVersion").rsplit_once('/').map_or("", |(g, _)| g).to_string();
            *counts.entry((group, str_at(o, "/kind").to_string())).or_default() += 1;
        }
        counts
    }
}

/// Serializes a stored object for the inventory, setting `apiVersion` and
/// `kind` when the object does not carry them.
pub fn to_value<K: Resource + Serialize>(obj: &K, dt: &K::DynamicType) -> Option<Value> {
    let mut value = match serde_json::to_value(obj) {
        Ok(v) => v,
        Err(e) => {
            warn!(kind = %K::kind(dt), name = %obj.name_any(), error = %e, "cannot serialize a stored object; left out");
            return None;
        }
    };
    let map = value.as_object_mut()?;
    if map.get("apiVersion").and_then(Value::as_str).is_none_or(str::is_empty) {
        map.insert("apiVersion".into(), Value::String(K::api_version(dt).into_owned()));
    }
    if map.get("kind").and_then(Value::as_str).is_none_or(str::is_empty) {
        map.insert("kind".into(), Value::String(K::kind(dt).into_owned()));
    }
    Some(value)
}

/// Read handles on every store.
#[derive(Clone)]
pub struct Stores {
    pods: Store<Pod>,
    service_accounts: Store<ServiceAccount>,
    namespaces: Store<Namespace>,
    network_policies: Store<NetworkPolicy>,
    calico: Vec<(ApiResource, Store<DynamicObject>)>,
    sources: Vec<Arc<Source>>,
}

/// Write handles on every store: the watchers' (see [`watch`]), or a test's.
pub struct Writers {
    pods: Writer<Pod>,
    service_accounts: Writer<ServiceAccount>,
    namespaces: Writer<Namespace>,
    network_policies: Writer<NetworkPolicy>,
    calico: Vec<(ApiResource, Writer<DynamicObject>)>,
    sources: Vec<Arc<Source>>,
}

/// Empty stores for every watched kind; `calico: None` when the cluster
/// serves no Calico policy API (Kubernetes NetworkPolicies only).
pub fn stores(calico: Option<CalicoApi>) -> (Stores, Writers) {
    let pods = Writer::default();
    let service_accounts = Writer::default();
    let namespaces = Writer::default();
    let network_policies = Writer::default();
    let calico: Vec<(ApiResource, Writer<DynamicObject>)> =
        calico.map(CalicoApi::resources).unwrap_or_default().into_iter().map(|ar| (ar.clone(), Writer::new(ar))).collect();
    let mut sources = vec![
        Source::new("Pod".into(), false),
        Source::new("ServiceAccount".into(), false),
        Source::new("Namespace".into(), false),
        Source::new("networking.k8s.io/NetworkPolicy".into(), false),
    ];
    // Discovery said the group serves the policy kinds: a policy kind that
    // cannot be listed keeps the controller waiting (never a config without
    // those policies). Tier stays optional: some installs lack its CRD, and a
    // policy in an undeclared tier is reported as invalid anyway.
    sources.extend(calico.iter().map(|(ar, _)| Source::new(format!("{}/{}", ar.group, ar.kind), ar.kind == "Tier")));
    let stores = Stores {
        pods: pods.as_reader(),
        service_accounts: service_accounts.as_reader(),
        namespaces: namespaces.as_reader(),
        network_policies: network_policies.as_reader(),
        calico: calico.iter().map(|(ar, w)| (ar.clone(), w.as_reader())).collect(),
        sources: sources.clone(),
    };
    (stores, Writers { pods, service_accounts, namespaces, network_policies, calico, sources })
}

fn dump<K>(store: &Store<K>, dt: &K::DynamicType, out: &mut Vec<Value>)
where
    K: Resource + Serialize + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    out.extend(store.state().iter().filter_map(|o| to_value(o.as_ref(), dt)));
}

impl Stores {
    /// Every source, with its state.
    pub fn sources(&self) -> &[Arc<Source>] {
        &self.sources
    }

    /// True once every source has listed its objects or is absent.
    pub fn synced(&self) -> bool {
        self.sources.iter().all(|s| s.state() != SourceState::Pending)
    }

    /// Names of the sources still waiting for their first list.
    pub fn pending(&self) -> Vec<&str> {
        self.sources.iter().filter(|s| s.state() == SourceState::Pending).map(|s| s.name.as_str()).collect()
    }

    /// All stored objects as JSON.
    pub fn snapshot(&self) -> Snapshot {
        let mut out = Vec::new();
        dump(&self.pods, &(), &mut out);
        dump(&self.service_accounts, &(), &mut out);
        dump(&self.namespaces, &(), &mut out);
        dump(&self.network_policies, &(), &mut out);
        for (ar, store) in &self.calico {
            dump(store, ar, &mut out);
        }
        Snapshot::new(out)
    }
}

/// What [`Writers::apply`] did with an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    Stored,
    /// A kind no store holds (Deployments, Services, ...).
    Ignored,
}

fn put<K>(writer: &mut Writer<K>, value: &Value, delete: bool) -> Result<Routed, serde_json::Error>
where
    K: Resource + DeserializeOwned + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    let obj: K = serde_json::from_value(value.clone())?;
    writer.apply_watcher_event(&if delete { watcher::Event::Delete(obj) } else { watcher::Event::Apply(obj) });
    Ok(Routed::Stored)
}

impl Writers {
    /// Stores one object given as JSON (a manifest), as a watch event would.
    pub fn apply(&mut self, value: &Value) -> Result<Routed, serde_json::Error> {
        self.route(value, false)
    }

    /// Removes one object, as a watch `Delete` event would.
    pub fn delete(&mut self, value: &Value) -> Result<Routed, serde_json::Error> {
        self.route(value, true)
    }

    /// Marks every source listed (what a watcher's first `InitDone` does).
    pub fn mark_synced(&self) {
        for s in &self.sources {
            s.set(SourceState::Synced);
        }
    }

    fn route(&mut self, value: &Value, delete: bool) -> Result<Routed, serde_json::Error> {
        match (str_at(value, "/apiVersion"), str_at(value, "/kind")) {
            ("v1", "Pod") => put(&mut self.pods, value, delete),
            ("v1", "ServiceAccount") => put(&mut self.service_accounts, value, delete),
            ("v1", "Namespace") => put(&mut self.namespaces, value, delete),
            ("networking.k8s.io/v1", "NetworkPolicy") => put(&mut self.network_policies, value, delete),
            (api_version, kind) => {
                match self.calico.iter_mut().find(|(ar, _)| ar.api_version == api_version && ar.kind == kind) {
                    Some((_, writer)) => put(writer, value, delete),
                    None => Ok(Routed::Ignored),
                }
            }
        }
    }
}

fn not_found(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s)) | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => {
            s.is_not_found() || s.code == 404
        }
        _ => false,
    }
}

/// Feeds one store from a watcher, tells `changes` after every change, and
/// keeps `source`'s state current. Runs until `changes` closes.
async fn watch_into<K>(api: Api<K>, writer: Writer<K>, source: Arc<Source>, changes: mpsc::Sender<()>, metrics: Arc<Metrics>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    let stream = watcher(api, watcher::Config::default())
        .backoff(CappedBackoff::default())
        .modify(|o: &mut K| o.managed_fields_mut().clear())
        .reflect(writer);
    let mut stream = std::pin::pin!(stream);
    let mut told_absent = false;
    let mut told_error = false;
    while let Some(item) = stream.next().await {
        match &item {
            // `Init` comes before the list request: it proves nothing.
            Ok(watcher::Event::Init) => {}
            Ok(_) => metrics.watch_ok(&source.name),
            Err(e) if source.optional && not_found(e) => metrics.watch_ok(&source.name),
            Err(e) => metrics.watch_failed(&source.name, &e.to_string()),
        }
        let changed = match item {
            Ok(watcher::Event::InitDone) => {
                if source.state() != SourceState::Synced {
                    info!(source = %source.name, "listed");
                }
                source.set(SourceState::Synced);
                told_absent = false;
                told_error = false;
                true
            }
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => true,
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => false,
            Err(e) if source.optional && not_found(&e) => {
                if !told_absent {
                    warn!(source = %source.name, "the API server does not serve this kind (is Calico installed? see --calico-api); going on without it");
                    told_absent = true;
                }
                let was = source.state();
                if was == SourceState::Pending {
                    source.set(SourceState::Absent);
                }
                was == SourceState::Pending
            }
            Err(e) => {
                if told_error {
                    debug!(source = %source.name, error = %e, "watch failed; retrying");
                } else {
                    warn!(source = %source.name, error = %e, "watch failed; retrying with backoff (the last known objects stay in force)");
                    told_error = true;
                }
                false
            }
        };
        if changed {
            match changes.try_send(()) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(())) => {}
                Err(mpsc::error::TrySendError::Closed(())) => return,
            }
        }
    }
}

/// Starts one watcher task per store (all namespaces).
pub fn watch(client: &Client, writers: Writers, changes: mpsc::Sender<()>, metrics: &Arc<Metrics>) -> Vec<JoinHandle<()>> {
    let Writers { pods, service_accounts, namespaces, network_policies, calico, sources } = writers;
    let source = |i: usize| sources.get(i).cloned().unwrap_or_else(|| Source::new(format!("source {i}"), false));
    let mut tasks = vec![
        tokio::spawn(watch_into(Api::<Pod>::all(client.clone()), pods, source(0), changes.clone(), metrics.clone())),
        tokio::spawn(watch_into(Api::<ServiceAccount>::all(client.clone()), service_accounts, source(1), changes.clone(), metrics.clone())),
        tokio::spawn(watch_into(Api::<Namespace>::all(client.clone()), namespaces, source(2), changes.clone(), metrics.clone())),
        tokio::spawn(watch_into(Api::<NetworkPolicy>::all(client.clone()), network_policies, source(3), changes.clone(), metrics.clone())),
    ];
    for (i, (ar, writer)) in calico.into_iter().enumerate() {
        let api = Api::<DynamicObject>::all_with(client.clone(), &ar);
        tasks.push(tokio::spawn(watch_into(api, writer, source(4 + i), changes.clone(), metrics.clone())));
    }
    tasks
}

/// What the WasmPlugin watch saw (the controller compares it with what it
/// applied: see [`super::apply::Applier::drifted`]).
#[derive(Debug, Clone)]
pub enum PluginEvent {
    /// Created or changed (also each object of a re-list).
    Seen(DynamicObject),
    /// Deleted, or no longer carrying the managed-by label.
    Gone(DynamicObject),
    /// A (re-)list finished: these are all the managed WasmPlugins there are
    /// (a delete missed while the watch was down shows up here).
    Listed(Vec<(String, String)>),
}

fn plugin_key(o: &DynamicObject) -> (String, String) {
    (o.namespace().unwrap_or_default(), o.name_any())
}

/// Watches the WasmPlugins this controller manages (all namespaces) and
/// forwards what it sees to `events`. Runs until `events` closes.
pub fn watch_plugins(client: &Client, events: mpsc::Sender<PluginEvent>, metrics: Arc<Metrics>) -> JoinHandle<()> {
    let api = Api::<DynamicObject>::all_with(client.clone(), &super::apply::wasmplugin_resource());
    let config = watcher::Config::default().labels(super::apply::MANAGED_BY_SELECTOR);
    tokio::spawn(async move {
        let stream = watcher(api, config).backoff(CappedBackoff::default());
        let mut stream = std::pin::pin!(stream);
        let mut listing: Vec<(String, String)> = Vec::new();
        let mut told_error = false;
        while let Some(item) = stream.next().await {
            match &item {
                Ok(watcher::Event::Init) => {}
                Ok(_) => metrics.watch_ok("WasmPlugin"),
                Err(e) => metrics.watch_failed("WasmPlugin", &e.to_string()),
            }
            let event = match item {
                Ok(watcher::Event::Init) => {
                    listing.clear();
                    continue;
                }
                Ok(watcher::Event::InitApply(o)) => {
                    listing.push(plugin_key(&o));
                    PluginEvent::Seen(o)
                }
                Ok(watcher::Event::InitDone) => {
                    told_error = false;
                    PluginEvent::Listed(std::mem::take(&mut listing))
                }
                Ok(watcher::Event::Apply(o)) => PluginEvent::Seen(o),
                Ok(watcher::Event::Delete(o)) => PluginEvent::Gone(o),
                Err(e) => {
                    // Drift is still found by the periodic resync meanwhile.
                    if told_error {
                        debug!(error = %e, "WasmPlugin watch failed; retrying");
                    } else {
                        warn!(error = %e, "WasmPlugin watch failed; retrying with backoff (drift is repaired at the next resync meanwhile)");
                        told_error = true;
                    }
                    continue;
                }
            };
            if events.send(event).await.is_err() {
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn typed_objects_get_api_version_and_kind() {
        let (stores, mut writers) = stores(Some(CalicoApi::Crd));
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "a"}});
        assert_eq!(writers.apply(&pod).unwrap(), Routed::Stored);
        let gnp = json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": "default.x"}, "spec": {}});
        assert_eq!(writers.apply(&gnp).unwrap(), Routed::Stored);
        let v3 = json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy", "metadata": {"name": "y"}});
        assert_eq!(writers.apply(&v3).unwrap(), Routed::Ignored);
        assert_eq!(writers.apply(&json!({"apiVersion": "apps/v1", "kind": "Deployment"})).unwrap(), Routed::Ignored);
        let snap = stores.snapshot();
        let kinds: Vec<(&str, &str)> = snap.objects.iter().map(|o| (str_at(o, "/apiVersion"), str_at(o, "/kind"))).collect();
        assert_eq!(kinds, [("crd.projectcalico.org/v1", "GlobalNetworkPolicy"), ("v1", "Pod")]);
        assert_eq!(snap.counts().get(&(String::new(), "Pod".to_string())), Some(&1));
        writers.delete(&pod).unwrap();
        assert_eq!(stores.snapshot().objects.len(), 1);
    }

    #[test]
    fn backoff_is_capped_at_two_seconds() {
        use kube::runtime::utils::Backoff;
        let mut b = CappedBackoff::default();
        let first: Vec<u128> = b.by_ref().take(6).map(|d| d.as_millis()).collect();
        assert_eq!(first, [250, 500, 1000, 2000, 2000, 2000]);
        b.reset();
        assert_eq!(b.next(), Some(BACKOFF_MIN));
    }

    #[test]
    fn synced_waits_for_every_source() {
        let (stores, writers) = stores(Some(CalicoApi::V3));
        assert!(!stores.synced());
        assert_eq!(stores.pending().len(), 7);
        for (i, s) in stores.sources().iter().enumerate() {
            s.set(if i < 4 { SourceState::Synced } else { SourceState::Absent });
        }
        assert!(stores.synced());
        writers.mark_synced();
        assert!(stores.sources().iter().all(|s| s.state() == SourceState::Synced));
    }
}
