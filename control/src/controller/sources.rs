//! The controller's inputs: one store per watched kind, fed by a `watcher`
//! task, and a [`Snapshot`] of all of them as JSON objects, the form
//! [`Inventory::add`](crate::inventory::Inventory::add) reads.
//!
//! Each object is stripped to what control reads ([`compact`]) and turned
//! into JSON once, when its version arrives: at 10k pods a full Pod is ~15 KiB
//! and serialising every stored object on every change took seconds, while a
//! snapshot now only clones `Arc`s.
//!
//! Watched: Pods, ServiceAccounts, Namespaces, `networking.k8s.io`
//! NetworkPolicies, Services and `discovery.k8s.io` EndpointSlices (all
//! required: egress rules are read against a Service's endpoints), and Calico's GlobalNetworkPolicy,
//! NetworkPolicy, Tier, GlobalNetworkSet, NetworkSet and the staged kinds
//! (StagedGlobalNetworkPolicy, StagedNetworkPolicy,
//! StagedKubernetesNetworkPolicy) (optional: a cluster without the Calico
//! CRDs is told once in the log and runs on Kubernetes NetworkPolicies only;
//! a kind the API server does not serve has no objects to miss).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
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

    /// GlobalNetworkPolicy, NetworkPolicy, Tier, GlobalNetworkSet,
    /// NetworkSet and the three staged policy kinds in that API.
    pub fn resources(self) -> Vec<ApiResource> {
        let (group, version) = self.group_version();
        [
            ("GlobalNetworkPolicy", "globalnetworkpolicies"),
            ("NetworkPolicy", "networkpolicies"),
            ("Tier", "tiers"),
            ("GlobalNetworkSet", "globalnetworksets"),
            ("NetworkSet", "networksets"),
            ("StagedGlobalNetworkPolicy", "stagedglobalnetworkpolicies"),
            ("StagedNetworkPolicy", "stagednetworkpolicies"),
            ("StagedKubernetesNetworkPolicy", "stagedkubernetesnetworkpolicies"),
        ]
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
/// with `apiVersion` and `kind` set, in a stable order. The objects are
/// shared with the stores (see [`compact`] for what they keep).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub objects: Vec<Arc<Value>>,
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

impl Snapshot {
    pub fn new(mut objects: Vec<Arc<Value>>) -> Snapshot {
        // Each key read once, not once per comparison (`Value::pointer`
        // allocates: ~2 s a snapshot at 10k pods in a debug build).
        objects.sort_by_cached_key(|v| {
            let field = |object: &Value, name: &str| object.get(name).and_then(Value::as_str).unwrap_or("").to_string();
            let metadata = v.get("metadata").unwrap_or(&Value::Null);
            (field(v, "apiVersion"), field(v, "kind"), field(metadata, "namespace"), field(metadata, "name"))
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

    /// The objects as the inventory takes them.
    pub fn values(&self) -> impl Iterator<Item = &Value> {
        self.objects.iter().map(|o| o.as_ref())
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

/// Keeps of an object (JSON, `apiVersion` and `kind` set) what the
/// inventory and the reconciler read, and drops the rest as it arrives.
/// Services keep the `spec` fields [`crate::cluster::service`] reads;
/// EndpointSlices keep each endpoint's addresses and conditions.
/// Generic rules (any kind): `metadata.managedFields`, `annotations` (nothing
/// reads a watched object's annotations; `kubectl apply` keeps a whole copy of
/// the object in one) and `ownerReferences` go, and so does `status`. Pods
/// keep of `spec` and `status` only what [`crate::cluster::pod`] reads;
/// Namespaces and ServiceAccounts keep only their metadata (their labels are
/// what selectors test). Every other kind keeps its whole `spec`.
pub fn compact(value: &mut Value) {
    let Some(object) = value.as_object_mut() else { return };
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in ["managedFields", "annotations", "ownerReferences"] {
            metadata.remove(field);
        }
    }
    let field = |name: &str| object.get(name).and_then(Value::as_str).unwrap_or("").to_string();
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Pod") => {
            keep_only(object.get_mut("spec"), &["serviceAccountName", "hostNetwork", "containers"]);
            if let Some(containers) = object.get_mut("spec").and_then(|s| s.get_mut("containers")).and_then(Value::as_array_mut) {
                for container in containers {
                    keep_only(Some(container), &["name", "ports"]);
                }
            }
            keep_only(object.get_mut("status"), &["phase", "podIP", "podIPs"]);
        }
        ("v1", "Namespace" | "ServiceAccount") => object.retain(|field, _| matches!(field.as_str(), "apiVersion" | "kind" | "metadata")),
        ("v1", "Service") => {
            keep_only(object.get_mut("spec"), &["type", "clusterIP", "clusterIPs", "ports", "publishNotReadyAddresses"]);
            object.remove("status");
        }
        // Changes with every pod that comes and goes: keep it small.
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            if let Some(endpoints) = object.get_mut("endpoints").and_then(Value::as_array_mut) {
                for endpoint in endpoints {
                    keep_only(Some(endpoint), &["addresses", "conditions"]);
                }
            }
        }
        _ => {
            object.remove("status");
        }
    }
}

fn keep_only(value: Option<&mut Value>, fields: &[&str]) {
    if let Some(map) = value.and_then(Value::as_object_mut) {
        map.retain(|field, _| fields.contains(&field.as_str()));
    }
}

/// (namespace, name): what identifies an object within its kind.
type ObjectKey = (String, String);
type Objects = HashMap<ObjectKey, Arc<Value>>;

/// One kind's objects, compacted and as JSON (read side).
#[derive(Debug, Clone, Default)]
pub struct ObjectStore {
    objects: Arc<RwLock<Objects>>,
}

impl ObjectStore {
    /// The objects stored now (clones of `Arc`s).
    pub fn state(&self) -> Vec<Arc<Value>> {
        self.objects.read().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
    }
}

/// The write side of an [`ObjectStore`], applying watch events as
/// kube-runtime's reflector does: a (re-)list replaces the whole store at
/// once when it is done, so a re-list never shows a half-listed kind.
pub struct ObjectWriter<K: Resource> {
    store: ObjectStore,
    dt: K::DynamicType,
    /// The (re-)list under way.
    listing: Objects,
}

impl<K: Resource + Serialize> ObjectWriter<K> {
    fn new(dt: K::DynamicType) -> ObjectWriter<K> {
        ObjectWriter { store: ObjectStore::default(), dt, listing: Objects::new() }
    }

    fn as_reader(&self) -> ObjectStore {
        self.store.clone()
    }

    /// Converts one object once, as every snapshot until its next version
    /// will read it; an object that does not convert is left out (and said
    /// in the log), as before.
    fn insert(objects: &mut Objects, obj: &K, dt: &K::DynamicType) {
        let key = (obj.meta().namespace.clone().unwrap_or_default(), obj.name_any());
        match to_value(obj, dt) {
            Some(mut value) => {
                compact(&mut value);
                objects.insert(key, Arc::new(value));
            }
            None => {
                objects.remove(&key);
            }
        }
    }

    pub fn apply_watcher_event(&mut self, event: &watcher::Event<K>) {
        match event {
            watcher::Event::Init => self.listing = Objects::new(),
            watcher::Event::InitApply(obj) => Self::insert(&mut self.listing, obj, &self.dt),
            watcher::Event::InitDone => {
                let listed = std::mem::take(&mut self.listing);
                *self.store.objects.write().unwrap_or_else(PoisonError::into_inner) = listed;
            }
            watcher::Event::Apply(obj) => {
                Self::insert(&mut self.store.objects.write().unwrap_or_else(PoisonError::into_inner), obj, &self.dt);
            }
            watcher::Event::Delete(obj) => {
                let key = (obj.meta().namespace.clone().unwrap_or_default(), obj.name_any());
                self.store.objects.write().unwrap_or_else(PoisonError::into_inner).remove(&key);
            }
        }
    }
}

/// Read handles on every store.
#[derive(Clone)]
pub struct Stores {
    pods: ObjectStore,
    service_accounts: ObjectStore,
    namespaces: ObjectStore,
    network_policies: ObjectStore,
    services: ObjectStore,
    endpoint_slices: ObjectStore,
    calico: Vec<(ApiResource, ObjectStore)>,
    sources: Vec<Arc<Source>>,
}

/// Write handles on every store: the watchers' (see [`watch`]), or a test's.
pub struct Writers {
    pods: ObjectWriter<Pod>,
    service_accounts: ObjectWriter<ServiceAccount>,
    namespaces: ObjectWriter<Namespace>,
    network_policies: ObjectWriter<NetworkPolicy>,
    services: ObjectWriter<Service>,
    endpoint_slices: ObjectWriter<EndpointSlice>,
    calico: Vec<(ApiResource, ObjectWriter<DynamicObject>)>,
    sources: Vec<Arc<Source>>,
}

/// Empty stores for every watched kind; `calico: None` when the cluster
/// serves no Calico policy API (Kubernetes NetworkPolicies only).
pub fn stores(calico: Option<CalicoApi>) -> (Stores, Writers) {
    let pods = ObjectWriter::new(());
    let service_accounts = ObjectWriter::new(());
    let namespaces = ObjectWriter::new(());
    let network_policies = ObjectWriter::new(());
    let services = ObjectWriter::new(());
    let endpoint_slices = ObjectWriter::new(());
    let calico: Vec<(ApiResource, ObjectWriter<DynamicObject>)> =
        calico.map(CalicoApi::resources).unwrap_or_default().into_iter().map(|ar| (ar.clone(), ObjectWriter::new(ar))).collect();
    let mut sources = vec![
        Source::new("Pod".into(), false),
        Source::new("ServiceAccount".into(), false),
        Source::new("Namespace".into(), false),
        Source::new("networking.k8s.io/NetworkPolicy".into(), false),
        Source::new("Service".into(), false),
        Source::new("discovery.k8s.io/EndpointSlice".into(), false),
    ];
    // Discovery said the group serves the policy kinds: a policy kind that
    // cannot be listed keeps the controller waiting (never a config without
    // those policies). Tier stays optional: some installs lack its CRD, and a
    // policy in an undeclared tier is reported as invalid anyway. So do the
    // network sets: only a kind the API server does not serve (404) is
    // skipped, and then no set of that kind exists to be missed; any other
    // failure keeps the controller waiting.
    // The staged kinds too: they never change a verdict, and an API server
    // that does not serve them holds none.
    let optional = |kind: &str| kind.starts_with("Staged") || matches!(kind, "Tier" | "GlobalNetworkSet" | "NetworkSet");
    sources.extend(calico.iter().map(|(ar, _)| Source::new(format!("{}/{}", ar.group, ar.kind), optional(&ar.kind))));
    let stores = Stores {
        pods: pods.as_reader(),
        service_accounts: service_accounts.as_reader(),
        namespaces: namespaces.as_reader(),
        network_policies: network_policies.as_reader(),
        services: services.as_reader(),
        endpoint_slices: endpoint_slices.as_reader(),
        calico: calico.iter().map(|(ar, w)| (ar.clone(), w.as_reader())).collect(),
        sources: sources.clone(),
    };
    (stores, Writers { pods, service_accounts, namespaces, network_policies, services, endpoint_slices, calico, sources })
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

    /// All stored objects as JSON (shared, not copied).
    pub fn snapshot(&self) -> Snapshot {
        let mut out = Vec::new();
        let kinds = [&self.pods, &self.service_accounts, &self.namespaces, &self.network_policies, &self.services, &self.endpoint_slices];
        for store in kinds.into_iter().chain(self.calico.iter().map(|(_, s)| s)) {
            out.extend(store.state());
        }
        Snapshot::new(out)
    }
}

/// What [`Writers::apply`] did with an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    Stored,
    /// A kind no store holds (Deployments, ConfigMaps, ...).
    Ignored,
}

fn put<K>(writer: &mut ObjectWriter<K>, value: &Value, delete: bool) -> Result<Routed, serde_json::Error>
where
    K: Resource + DeserializeOwned + Serialize,
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
            ("v1", "Service") => put(&mut self.services, value, delete),
            ("discovery.k8s.io/v1", "EndpointSlice") => put(&mut self.endpoint_slices, value, delete),
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
async fn watch_into<K>(api: Api<K>, mut writer: ObjectWriter<K>, source: Arc<Source>, changes: mpsc::Sender<()>, metrics: Arc<Metrics>)
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug + Send + Sync + 'static,
    K::DynamicType: Clone + Send + Sync,
{
    let stream = watcher(api, watcher::Config::default()).backoff(CappedBackoff::default());
    let mut stream = std::pin::pin!(stream);
    let mut told_absent = false;
    let mut told_error = false;
    while let Some(item) = stream.next().await {
        if let Ok(event) = &item {
            writer.apply_watcher_event(event);
        }
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
    let Writers { pods, service_accounts, namespaces, network_policies, services, endpoint_slices, calico, sources } = writers;
    let source = |i: usize| sources.get(i).cloned().unwrap_or_else(|| Source::new(format!("source {i}"), false));
    let mut tasks = vec![
        tokio::spawn(watch_into(Api::<Pod>::all(client.clone()), pods, source(0), changes.clone(), metrics.clone())),
        tokio::spawn(watch_into(Api::<ServiceAccount>::all(client.clone()), service_accounts, source(1), changes.clone(), metrics.clone())),
        tokio::spawn(watch_into(Api::<Namespace>::all(client.clone()), namespaces, source(2), changes.clone(), metrics.clone())),
        tokio::spawn(watch_into(Api::<NetworkPolicy>::all(client.clone()), network_policies, source(3), changes.clone(), metrics.clone())),
        tokio::spawn(watch_into(Api::<Service>::all(client.clone()), services, source(4), changes.clone(), metrics.clone())),
        tokio::spawn(watch_into(Api::<EndpointSlice>::all(client.clone()), endpoint_slices, source(5), changes.clone(), metrics.clone())),
    ];
    for (i, (ar, writer)) in calico.into_iter().enumerate() {
        let api = Api::<DynamicObject>::all_with(client.clone(), &ar);
        tasks.push(tokio::spawn(watch_into(api, writer, source(6 + i), changes.clone(), metrics.clone())));
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
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "a"}, "spec": {"clusterIP": "10.96.0.9"}});
        assert_eq!(writers.apply(&svc).unwrap(), Routed::Stored);
        writers.delete(&svc).unwrap();
        let snap = stores.snapshot();
        let kinds: Vec<(&str, &str)> = snap.objects.iter().map(|o| (str_at(o, "/apiVersion"), str_at(o, "/kind"))).collect();
        assert_eq!(kinds, [("crd.projectcalico.org/v1", "GlobalNetworkPolicy"), ("v1", "Pod")]);
        assert_eq!(snap.counts().get(&(String::new(), "Pod".to_string())), Some(&1));
        writers.delete(&pod).unwrap();
        assert_eq!(stores.snapshot().objects.len(), 1);
    }

    /// A Pod as the API server sends it: what [`compact`] drops must not
    /// change what the inventory makes of it.
    fn full_pod(phase: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "web-7d9f-abcde", "namespace": "shop", "uid": "u-1", "resourceVersion": "42",
                "labels": {"app": "web", "pod-template-hash": "7d9f"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}", "sidecar.istio.io/status": "{}"},
                "managedFields": [{"manager": "kubelet", "operation": "Update", "fieldsV1": {"f:status": {}}}],
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f", "uid": "u-0"}]
            },
            "spec": {
                "serviceAccountName": "web", "nodeName": "node-1",
                "containers": [
                    {"name": "app", "image": "web:1", "env": [{"name": "A", "value": "b"}],
                     "ports": [{"name": "http", "containerPort": 8080}, {"name": "dns", "containerPort": 53, "protocol": "UDP"}]},
                    {"name": "istio-proxy", "image": "proxyv2", "args": ["proxy", "sidecar"],
                     "ports": [{"name": "http-envoy-prom", "containerPort": 15090, "protocol": "TCP"}]}
                ],
                "volumes": [{"name": "token", "projected": {"sources": []}}]
            },
            "status": {
                "phase": phase, "podIP": "10.0.0.7", "podIPs": [{"ip": "10.0.0.7"}, {"ip": "fd00::7"}], "hostIP": "192.0.2.1",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0, "image": "web:1", "imageID": ""}]
            }
        })
    }

    fn inventory_of(objects: &[Value]) -> crate::inventory::Inventory {
        let mut inv = crate::inventory::Inventory::default();
        for o in objects {
            inv.add(o);
        }
        inv.validate();
        inv
    }

    #[test]
    fn compacted_objects_read_the_same() {
        let namespace = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "shop", "labels": {"team": "a"}, "managedFields": [{"manager": "kubectl"}]},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
        let account = json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "web", "namespace": "shop", "labels": {"tier": "front"}}, "secrets": [{"name": "web-token"}]});
        let policy = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "deny", "namespace": "shop", "annotations": {"note": "x"}},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]}, "status": {}});
        let service = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop", "annotations": {"note": "x"}, "managedFields": [{"manager": "kubectl"}]},
            "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.9", "clusterIPs": ["10.96.0.9"], "ipFamilies": ["IPv4"],
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}], "selector": {"app": "web"}, "sessionAffinity": "None"},
            "status": {"loadBalancer": {}}});
        let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-x7k2p", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.0.0.7"], "conditions": {"ready": true, "serving": true, "terminating": false},
                           "nodeName": "node-1", "zone": "a", "hints": {"forZones": [{"name": "a"}]},
                           "targetRef": {"kind": "Pod", "name": "web-7d9f-abcde", "namespace": "shop", "uid": "u-1"}}]});
        let full = vec![full_pod("Running"), full_pod("Pending"), namespace, account, policy, service, slice];
        let compacted: Vec<Value> = full
            .iter()
            .cloned()
            .map(|mut o| {
                compact(&mut o);
                o
            })
            .collect();
        let (before, after) = (inventory_of(&full), inventory_of(&compacted));
        println!("compacted {} bytes of JSON to {}", serde_json::to_vec(&full).unwrap().len(), serde_json::to_vec(&compacted).unwrap().len());
        assert!(before.errors.is_empty() && after.errors.is_empty(), "{:?} {:?}", before.errors, after.errors);
        assert_eq!(before.pods, after.pods);
        assert_eq!(after.pods.len(), 1);
        assert_eq!(after.pods[0].ports.len(), 2, "{:?}", after.pods[0]);
        assert_eq!(before.notes, after.notes);
        assert_eq!(before.namespaces, after.namespaces);
        assert_eq!(before.service_accounts, after.service_accounts);
        assert_eq!(before.policies, after.policies);
        assert_eq!((&before.services, &before.endpoint_slices), (&after.services, &after.endpoint_slices));
        assert_eq!((after.services.len(), after.endpoint_slices.len()), (1, 1));
        assert!(compacted[6].pointer("/endpoints/0/targetRef").is_none() && compacted[5].pointer("/spec/selector").is_none());
        let pod = &compacted[0];
        assert!(pod.pointer("/metadata/managedFields").is_none() && pod.pointer("/metadata/annotations").is_none());
        assert!(pod.pointer("/spec/volumes").is_none() && pod.pointer("/spec/containers/0/env").is_none());
        assert!(pod.pointer("/status/conditions").is_none());
        // What Events about an object name it by stays.
        assert_eq!(pod.pointer("/metadata/uid"), Some(&json!("u-1")));
        assert_eq!(pod.pointer("/metadata/resourceVersion"), Some(&json!("42")));
        assert_eq!(compacted[4].pointer("/spec"), full[4].pointer("/spec"));
    }

    #[test]
    fn a_relist_replaces_the_store_when_done() {
        let pod = |name: &str| -> Pod { serde_json::from_value(json!({"metadata": {"name": name, "namespace": "a"}})).unwrap() };
        let (stores, mut writers) = stores(None);
        writers.pods.apply_watcher_event(&watcher::Event::Apply(pod("old")));
        writers.pods.apply_watcher_event(&watcher::Event::Init);
        writers.pods.apply_watcher_event(&watcher::Event::InitApply(pod("new")));
        let names = |s: &Stores| -> Vec<String> { s.snapshot().values().map(|o| str_at(o, "/metadata/name").to_string()).collect() };
        assert_eq!(names(&stores), ["old"], "a re-list under way shows the objects listed before");
        writers.pods.apply_watcher_event(&watcher::Event::InitDone);
        assert_eq!(names(&stores), ["new"]);
        writers.pods.apply_watcher_event(&watcher::Event::Delete(pod("new")));
        assert!(names(&stores).is_empty());
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
        assert_eq!(stores.pending().len(), 14); // 6 Kubernetes kinds, 8 Calico kinds (3 of them staged)
        for (i, s) in stores.sources().iter().enumerate() {
            s.set(if i < 6 { SourceState::Synced } else { SourceState::Absent });
        }
        assert!(stores.synced());
        writers.mark_synced();
        assert!(stores.sources().iter().all(|s| s.state() == SourceState::Synced));
    }
}
