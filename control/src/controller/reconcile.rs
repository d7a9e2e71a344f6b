//! One reconcile: snapshot -> inventory -> compiled config -> the WasmPlugins
//! wanted ([`Reconciler::desired`], no I/O) -> the cluster
//! ([`Reconciler::reconcile`]: server-side apply, Events about bad objects).
//!
//! Never loosen enforcement because of a bad input:
//! - an invalid object is left out (as `control compile --skip-invalid` does)
//!   and reported once per object version: a warning in the log and a
//!   Kubernetes Event (reason `InvalidPolicy`) on the object;
//! - a policy or tier that was valid and turns invalid keeps its last valid
//!   version in force until it is fixed or deleted, across restarts too: the
//!   first reconcile after a start reads the version in force back from the
//!   live `krites` WasmPlugins ([`super::recover`]);
//! - a compile that fails leaves the WasmPlugins applied before untouched.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::DynamicObject;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;
use serde_json::Value;
use tracing::{debug, error, info, warn};

use krites_policy::config::{NetworkSetSpec, PolicySpec, TierSpec};
use krites_policy::ConfigError;

use super::apply::{Applied, Applier, ApplyError};
use super::lease::Leadership;
use super::metrics::Metrics;
use super::recover::{Compiled, Recovered};
use super::sources::{PluginEvent, Snapshot};
use crate::compile::{self, CompileError, PlanError, PlanOptions, MAX_CONFIG_BYTES};
use crate::inventory::Inventory;
use crate::wasmplugin::{self, Module};

/// Event reason for an object left out of the config.
pub const INVALID_REASON: &str = "InvalidPolicy";

/// What the WasmPlugins should carry and where they go.
#[derive(Debug, Clone)]
pub struct Settings {
    pub module: Module,
    /// Istio's root namespace: a WasmPlugin there applies to the whole mesh.
    pub mesh_namespace: String,
    /// One WasmPlugin pair per namespace even when the whole config fits in one.
    pub per_namespace: bool,
    /// Events' reporting instance: the controller's pod (`POD_NAME`).
    pub reporting_instance: Option<String>,
    /// Accept `http` in Calico egress rules (`--allow-egress-http`).
    pub allow_egress_http: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            module: Module { url: "oci://ghcr.io/krites-project/krites:0.1.0".into(), sha256: None },
            mesh_namespace: wasmplugin::MESH_NAMESPACE.into(),
            per_namespace: false,
            reporting_instance: None,
            allow_egress_http: false,
        }
    }
}

/// An object left out of the config, with what is wrong with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    /// `group/kind/namespace/name`.
    pub key: String,
    pub reference: ObjectReference,
    pub errors: Vec<ConfigError>,
    /// A previous valid version of it stays in force.
    pub kept_previous: bool,
    /// That version was read back from the live WasmPlugin (after a start).
    pub recovered: bool,
}

/// The result of [`Reconciler::desired`].
#[derive(Debug, Clone)]
pub struct Plan {
    /// The WasmPlugins wanted, in apply order.
    pub objects: Vec<DynamicObject>,
    /// The config revision of each `namespace` the plan covers.
    pub revisions: BTreeMap<String, String>,
    /// Size of the largest config.
    pub bytes: usize,
    /// Sharded per namespace (by flag, or because the whole did not fit).
    pub sharded: bool,
    pub invalid: Vec<Invalid>,
    /// Problems no single object explains (two objects clash, ...).
    pub other_errors: Vec<ConfigError>,
    pub counts: BTreeMap<(String, String), usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("a generated WasmPlugin does not parse: {0}")]
    Manifest(#[from] serde_json::Error),
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// What one [`Reconciler::reconcile`] did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub applied: Applied,
    pub revisions: BTreeMap<String, String>,
    pub invalid: usize,
    pub events: usize,
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn group_kind(v: &Value) -> (&str, &str) {
    let group = str_at(v, "/apiVersion").rsplit_once('/').map_or("", |(g, _)| g);
    (group, str_at(v, "/kind"))
}

fn is_calico(group: &str) -> bool {
    group == "projectcalico.org" || group == "crd.projectcalico.org"
}

fn is_tier(v: &Value) -> bool {
    let (g, k) = group_kind(v);
    is_calico(g) && k == "Tier"
}

/// Kinds whose removal would loosen enforcement: their last valid version
/// stays in force while the current one is invalid. A network set is one: a
/// Deny rule matching it would match fewer addresses. Staged policies change
/// no verdict, but their last valid version is kept alike, so that a typo
/// does not silence the report of what they would do.
fn is_policy_kind(v: &Value) -> bool {
    match group_kind(v) {
        (g, "GlobalNetworkPolicy" | "NetworkPolicy" | "Tier" | "GlobalNetworkSet" | "NetworkSet") if is_calico(g) => true,
        (g, "StagedGlobalNetworkPolicy" | "StagedNetworkPolicy" | "StagedKubernetesNetworkPolicy") if is_calico(g) => true,
        ("networking.k8s.io", "NetworkPolicy") => true,
        _ => false,
    }
}

fn object_key(v: &Value) -> String {
    let (g, k) = group_kind(v);
    format!("{g}/{k}/{}/{}", str_at(v, "/metadata/namespace"), str_at(v, "/metadata/name"))
}

fn reference(v: &Value) -> ObjectReference {
    let opt = |p: &str| Some(str_at(v, p).to_string()).filter(|s| !s.is_empty());
    ObjectReference {
        api_version: opt("/apiVersion"),
        kind: opt("/kind"),
        name: opt("/metadata/name"),
        namespace: opt("/metadata/namespace"),
        uid: opt("/metadata/uid"),
        resource_version: opt("/metadata/resourceVersion"),
        field_path: None,
    }
}

fn inventory<'a>(objects: impl IntoIterator<Item = &'a Value>, allow_egress_http: bool) -> Inventory {
    inventory_with(objects, &[], &[], &[], &[], allow_egress_http)
}

/// Objects plus versions read back from the live config, validated together.
fn inventory_with<'a>(
    objects: impl IntoIterator<Item = &'a Value>,
    tiers: &[TierSpec],
    policies: &[PolicySpec],
    network_sets: &[NetworkSetSpec],
    staged_policies: &[PolicySpec],
    allow_egress_http: bool,
) -> Inventory {
    let mut inv = Inventory { allow_egress_http, ..Inventory::default() };
    for o in objects {
        inv.add(o);
    }
    inv.tiers.extend(tiers.iter().cloned());
    inv.policies.extend(policies.iter().cloned());
    inv.network_sets.extend(network_sets.iter().cloned());
    inv.staged_policies.extend(staged_policies.iter().cloned());
    inv.validate();
    inv
}

/// Each object's part of the inventory (converted, not yet validated), kept
/// while the same object, i.e. the same `Arc` and so the same version, is in
/// the snapshots: at 10k pods, converting every Pod again on each change was
/// most of a compile. An entry holds its `Arc`, so no other object can reuse
/// the address it is keyed by.
#[derive(Default)]
struct Converted {
    by_object: HashMap<usize, (Arc<Value>, Inventory)>,
    allow_egress_http: bool,
}

impl Converted {
    /// The same as `inventory(objects)`, converting only objects not seen in
    /// the previous call.
    fn inventory(&mut self, objects: &[Arc<Value>]) -> Inventory {
        let mut kept = HashMap::with_capacity(objects.len());
        let allow_egress_http = self.allow_egress_http;
        let mut inv = Inventory { allow_egress_http, ..Inventory::default() };
        for object in objects {
            let id = Arc::as_ptr(object) as usize;
            let entry = self.by_object.remove(&id).unwrap_or_else(|| {
                let mut one = Inventory { allow_egress_http, ..Inventory::default() };
                one.add(object);
                (object.clone(), one)
            });
            inv.merge(&entry.1);
            kept.insert(id, entry);
        }
        self.by_object = kept;
        inv.validate();
        inv
    }
}

/// Chosen version of an object: itself, or a previous version.
enum Version {
    Object(Arc<Value>),
    Compiled(Box<Compiled>),
}

/// Turns cluster snapshots into WasmPlugins and keeps them applied.
pub struct Reconciler {
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    recorder: Recorder,
    applier: Applier,
    /// The objects of the last snapshot, converted.
    converted: Converted,
    /// Last valid version of each policy and tier, by [`object_key`].
    last_good: BTreeMap<String, Arc<Value>>,
    /// Versions in force when this controller started (read once).
    recovered: Recovered,
    seeded: bool,
    /// (object key, resourceVersion, problem) already reported.
    reported: BTreeSet<(String, String, String)>,
    warned_sharding: bool,
    /// Selector warnings already logged (see `compile::selector_warnings`).
    selector_warnings: BTreeSet<String>,
    /// With leader election: only the leader writes.
    leadership: Option<Arc<Leadership>>,
}

impl Reconciler {
    pub fn new(client: Client, settings: Settings, metrics: Arc<Metrics>) -> Reconciler {
        let reporter = Reporter {
            controller: "krites-control".into(),
            instance: settings.reporting_instance.clone().filter(|s| !s.is_empty()),
        };
        Reconciler {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            applier: Applier::default(),
            converted: Converted { by_object: HashMap::new(), allow_egress_http: settings.allow_egress_http },
            settings,
            last_good: BTreeMap::new(),
            recovered: Recovered::default(),
            seeded: false,
            reported: BTreeSet::new(),
            warned_sharding: false,
            selector_warnings: BTreeSet::new(),
            leadership: None,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Forgets what was applied: the next reconcile re-reads the WasmPlugins
    /// from the cluster (repairs drift, finds stale ones).
    pub fn resync(&mut self) {
        self.applier.forget();
    }

    /// Whether a WasmPlugin watch event shows content control did not write
    /// (then the caller resyncs and reconciles: the repair).
    pub fn drifted(&self, event: &PluginEvent) -> bool {
        self.applier.drifted(event)
    }

    /// Reads the WasmPlugins in force, and the first time, the policy
    /// versions they hold ([`super::recover`]). Before anything is written.
    async fn read_cluster(&mut self) -> Result<(), ApplyError> {
        if !self.applier.needs_refresh() && self.seeded {
            return Ok(());
        }
        let live = self.applier.refresh(&self.client).await?;
        if !self.seeded {
            self.recovered = Recovered::from_live(live.values());
            self.seeded = true;
        }
        Ok(())
    }

    /// The WasmPlugins `snapshot` calls for. No I/O; it updates only the
    /// memory of each policy's last valid version.
    pub fn desired(&mut self, snapshot: &Snapshot) -> Result<Plan, ReconcileError> {
        let started = Instant::now();
        let counts = snapshot.counts();
        self.recovered.retain(snapshot.values());
        let first = self.converted.inventory(&snapshot.objects);
        let (inv, invalid, other_errors) = if first.errors.is_empty() {
            self.last_good = snapshot.objects.iter().filter(|o| is_policy_kind(o)).map(|o| (object_key(o), o.clone())).collect();
            (first, Vec::new(), Vec::new())
        } else {
            self.with_last_good(snapshot, &first)
        };

        let opts = PlanOptions {
            namespace: None,
            mesh_namespace: &self.settings.mesh_namespace,
            per_namespace: self.settings.per_namespace,
            limit: MAX_CONFIG_BYTES,
        };
        let inventory_done = Instant::now();
        let planned = compile::plan(&inv, &opts, &self.settings.module)?;
        let plan_done = Instant::now();
        // Said once per distinct warning, not on every compile.
        let warnings: BTreeSet<String> = compile::selector_warnings(&inv).into_iter().collect();
        for w in warnings.difference(&self.selector_warnings) {
            warn!("{w}");
        }
        self.selector_warnings = warnings;
        if planned.sharded && !self.settings.per_namespace && !self.warned_sharding {
            info!(limit = MAX_CONFIG_BYTES, "the config is too large for one WasmPlugin; one pair per namespace, each scoped to its namespace");
            self.warned_sharding = true;
        }
        let (values, revisions, bytes, sharded) = (planned.objects, planned.revisions, planned.max_bytes, planned.sharded);
        let objects = values.into_iter().map(serde_json::from_value).collect::<Result<Vec<DynamicObject>, _>>()?;
        // Where a compile's time goes, for scale tests and profiling.
        debug!(
            inventory_ms = (inventory_done - started).as_millis(),
            plan_ms = (plan_done - inventory_done).as_millis(),
            rest_ms = plan_done.elapsed().as_millis(),
            "compile stages"
        );
        Ok(Plan { objects, revisions, bytes, sharded, invalid, other_errors, counts })
    }

    /// Builds the inventory again with each invalid policy or tier replaced
    /// by its last valid version, if it had one (in memory, else in the
    /// config in force at the start); says which objects are invalid.
    fn with_last_good(&mut self, snapshot: &Snapshot, first: &Inventory) -> (Inventory, Vec<Invalid>, Vec<ConfigError>) {
        let mut invalid = Vec::new();
        let mut attributed: Vec<ConfigError> = Vec::new();
        let mut inputs: Vec<Arc<Value>> = Vec::with_capacity(snapshot.objects.len());
        let mut good_tiers: Vec<Arc<Value>> = Vec::new();
        let (mut old_tiers, mut old_policies): (Vec<TierSpec>, Vec<PolicySpec>) = (Vec::new(), Vec::new());
        let mut old_sets: Vec<NetworkSetSpec> = Vec::new();
        let mut old_staged: Vec<PolicySpec> = Vec::new();
        let present: BTreeSet<String> = snapshot.values().map(object_key).collect();
        self.last_good.retain(|k, _| present.contains(k));

        // Tiers first: a policy's validity depends on its tier being declared.
        let (tiers, others): (Vec<&Arc<Value>>, Vec<&Arc<Value>>) = snapshot.objects.iter().partition(|o| is_tier(o));
        for pass in [tiers, others] {
            for obj in pass {
                let key = object_key(obj);
                let http = self.settings.allow_egress_http;
                let alone = if is_tier(obj) {
                    inventory([obj.as_ref()], http)
                } else if is_policy_kind(obj) {
                    inventory_with(good_tiers.iter().map(|t| t.as_ref()).chain([obj.as_ref()]), &old_tiers, &[], &[], &[], http)
                } else {
                    inventory([obj.as_ref()], http)
                };
                let chosen = if alone.errors.is_empty() {
                    if is_policy_kind(obj) {
                        self.last_good.insert(key, obj.clone());
                    }
                    Some(Version::Object(obj.clone()))
                } else {
                    let previous = match self.last_good.get(&key) {
                        Some(v) => Some(Version::Object(v.clone())),
                        None if is_policy_kind(obj) => self.recovered.version_of(obj).map(|c| Version::Compiled(Box::new(c))),
                        None => None,
                    };
                    let recovered = matches!(previous, Some(Version::Compiled(_)));
                    attributed.extend(alone.errors.iter().cloned());
                    invalid.push(Invalid { key, reference: reference(obj), errors: alone.errors, kept_previous: previous.is_some(), recovered });
                    previous
                };
                match chosen {
                    Some(Version::Object(v)) => {
                        if is_tier(&v) {
                            good_tiers.push(v.clone());
                        }
                        inputs.push(v);
                    }
                    Some(Version::Compiled(compiled)) => match *compiled {
                        Compiled::Tier(t) => old_tiers.push(t),
                        Compiled::Policy(p) => old_policies.push(p),
                        Compiled::NetworkSet(s) => old_sets.push(s),
                        Compiled::StagedPolicy(p) => old_staged.push(p),
                    },
                    // An EndpointSlice that does not convert stays in: converting
                    // it marks its Service as having endpoints not known, which
                    // leaves the Service out (left out itself, the Service would
                    // look smaller than it is: fewer endpoints to allow).
                    None if group_kind(obj) == ("discovery.k8s.io", "EndpointSlice") => inputs.push(obj.clone()),
                    None => {}
                }
            }
        }
        let other_errors = first.errors.iter().filter(|e| !attributed.contains(e)).cloned().collect();
        let http = self.settings.allow_egress_http;
        (inventory_with(inputs.iter().map(|v| v.as_ref()), &old_tiers, &old_policies, &old_sets, &old_staged, http), invalid, other_errors)
    }

    /// One pass: compile `snapshot` and make the cluster hold the result.
    /// On a compile error nothing is written.
    pub async fn reconcile(&mut self, snapshot: &Snapshot) -> Result<Outcome, ReconcileError> {
        self.reconcile_as(snapshot, true).await
    }

    /// Writes only while `leadership` says this replica leads (WasmPlugins
    /// and Events alike); a follower still reads and compiles.
    pub fn set_leadership(&mut self, leadership: Arc<Leadership>) {
        self.applier.set_leadership(leadership.clone());
        self.leadership = Some(leadership);
    }

    fn leading(&self) -> bool {
        self.leadership.as_ref().is_none_or(|l| l.is_leader())
    }

    /// [`Reconciler::reconcile`], or with `write: false` (a follower) the
    /// same read and compile without any write: nothing applied, no Event.
    pub async fn reconcile_as(&mut self, snapshot: &Snapshot, write: bool) -> Result<Outcome, ReconcileError> {
        let write = write && self.leading();
        // Never compile before knowing what is in force: its versions of
        // invalid policies are part of the config.
        self.read_cluster().await?;
        let started = Instant::now();
        let plan = self.desired(snapshot);
        let took = started.elapsed();
        let plan = match plan {
            Ok(plan) => {
                self.metrics.compiled(true, took, plan.bytes, plan.objects.len());
                plan
            }
            Err(e) => {
                self.metrics.compiled(false, took, 0, 0);
                error!(error = %e, "cannot compile the cluster's policies; the WasmPlugins applied before stay in force");
                return Err(e);
            }
        };
        let invalid_objects = plan.invalid.len() + plan.other_errors.iter().map(|e| &e.object).collect::<BTreeSet<_>>().len();
        self.metrics.objects(plan.counts.clone(), invalid_objects);
        debug!(revisions = ?plan.revisions, bytes = plan.bytes, sharded = plan.sharded, took_ms = took.as_millis(), "compiled");

        if !write {
            // Ready as a standby: it has read the cluster and compiled.
            self.metrics.set_ready();
            return Ok(Outcome { applied: Applied::default(), revisions: plan.revisions, invalid: invalid_objects, events: 0 });
        }
        let applied = self.applier.apply(&self.client, &plan.objects).await;
        let events = if self.leading() { self.report(&plan).await } else { 0 };
        let applied = match applied {
            Ok(a) => a,
            Err(e) => {
                self.metrics.apply_failed();
                return Err(e.into());
            }
        };
        self.metrics.applied(applied.written.len(), applied.deleted.len());
        self.metrics.set_ready();
        Ok(Outcome { applied, revisions: plan.revisions, invalid: invalid_objects, events })
    }

    /// Publishes a Warning Event about the controller itself (it cannot
    /// compile at all), on the mesh's `krites` WasmPlugin: the object whose
    /// enforcement is at stake, and one an operator looks at. True if it went out.
    pub async fn report_blocked(&mut self, reason: &str, note: &str) -> bool {
        if !self.leading() {
            return false; // the leader tells
        }
        let reference = ObjectReference {
            api_version: Some("extensions.istio.io/v1alpha1".into()),
            kind: Some("WasmPlugin".into()),
            name: Some(wasmplugin::NAME.into()),
            namespace: Some(self.settings.mesh_namespace.clone()),
            ..ObjectReference::default()
        };
        let event = Event { type_: EventType::Warning, reason: reason.into(), note: Some(format!("Krites: {note}")), action: "Start".into(), secondary: None };
        match self.recorder.publish(&event, &reference).await {
            Ok(()) => {
                self.metrics.event_published();
                true
            }
            Err(e) => {
                warn!(error = %e, "cannot publish an Event");
                false
            }
        }
    }

    /// Logs each problem and publishes an Event on each invalid object, once
    /// per object version. Returns how many Events went out.
    async fn report(&mut self, plan: &Plan) -> usize {
        let mut still = BTreeSet::new();
        let mut published = 0;
        for bad in &plan.invalid {
            let version = bad.reference.resource_version.clone().unwrap_or_default();
            let problems = bad.errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
            let id = (bad.key.clone(), version, problems.clone());
            still.insert(id.clone());
            if self.reported.contains(&id) {
                continue;
            }
            let consequence = match (bad.kept_previous, bad.recovered) {
                (true, false) => "its last valid version stays in force",
                (true, true) => "its last valid version (read back from the WasmPlugin in force) stays in force",
                (false, _) => "it has no previous valid version: left out of the config",
            };
            warn!(object = %bad.key, problems = %problems, "invalid object: {consequence}");
            let mut note = format!("Krites: {problems}; {consequence}");
            if note.len() > 1000 {
                let mut cut = 997;
                while !note.is_char_boundary(cut) {
                    cut -= 1;
                }
                note.truncate(cut);
                note.push_str("...");
            }
            let event = Event {
                type_: EventType::Warning,
                reason: INVALID_REASON.into(),
                note: Some(note),
                action: "Compile".into(),
                secondary: None,
            };
            match self.recorder.publish(&event, &bad.reference).await {
                Ok(()) => {
                    self.metrics.event_published();
                    published += 1;
                    self.reported.insert(id);
                }
                // Not remembered: tried again on the next reconcile.
                Err(e) => warn!(object = %bad.key, error = %e, "cannot publish an Event"),
            }
        }
        for e in &plan.other_errors {
            let id = (e.object.clone(), String::new(), e.to_string());
            still.insert(id.clone());
            if self.reported.insert(id) {
                warn!(problem = %e, "invalid input; left out");
            }
        }
        self.reported.retain(|id| still.contains(id));
        published
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code

    use super::*;
    use serde_json::json;

    fn pod(name: &str, ip: &str, app: &str) -> Arc<Value> {
        Arc::new(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop", "labels": {"app": app}},
            "spec": {"containers": [{"name": "app"}]}, "status": {"phase": "Running", "podIP": ip}}))
    }

    #[test]
    fn converted_objects_give_the_inventory_of_the_snapshot() {
        let policy = Arc::new(json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy", "metadata": {"name": "p"},
            "spec": {"selector": "app == 'web'", "ingress": [{"action": "Allow"}]}}));
        let bad = Arc::new(json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy", "metadata": {"name": "bad"},
            "spec": {"selector": "app == "}}));
        let namespace = Arc::new(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"team": "a"}}}));
        let deployment = Arc::new(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}));
        let mut converted = Converted::default();
        let first = vec![pod("a", "10.0.0.1", "web"), pod("b", "10.0.0.2", "db"), policy.clone(), bad, namespace.clone(), deployment];
        let check = |converted: &mut Converted, objects: &[Arc<Value>]| {
            let cached = converted.inventory(objects);
            let fresh = inventory(objects.iter().map(|o| o.as_ref()), false);
            assert_eq!(format!("{cached:?}"), format!("{fresh:?}"));
            cached
        };
        let inv = check(&mut converted, &first);
        assert_eq!((inv.pods.len(), inv.policies.len(), inv.errors.len(), inv.ignored.len()), (2, 1, 1, 1));
        // One pod changed (a new version is a new Arc), one deleted, the rest kept.
        let second = vec![pod("a", "10.0.0.9", "web"), policy, namespace];
        let inv = check(&mut converted, &second);
        println!("second snapshot: {} pods, {} policies, {} objects kept converted", inv.pods.len(), inv.policies.len(), converted.by_object.len());
        assert_eq!(inv.pods.len(), 1);
        assert_eq!(inv.pods[0].ips, ["10.0.0.9".parse::<std::net::IpAddr>().unwrap()]);
        assert_eq!(converted.by_object.len(), 3, "only the snapshot's objects are kept");
    }

    /// `--allow-egress-http` reaches every inventory the reconciler builds:
    /// the cached conversion and the per-object one that finds what is invalid.
    #[test]
    fn egress_http_follows_the_flag() {
        let policy = Arc::new(json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy", "metadata": {"name": "reviews"},
            "spec": {"selector": "app == 'reviews'", "egress": [{"action": "Allow", "http": {"methods": ["GET"]}}]}}));
        for allow in [false, true] {
            let mut converted = Converted { by_object: HashMap::new(), allow_egress_http: allow };
            let cached = converted.inventory(std::slice::from_ref(&policy));
            let alone = inventory([policy.as_ref()], allow);
            for inv in [&cached, &alone] {
                assert_eq!(inv.policies.len(), usize::from(allow), "allow {allow}: {:?}", inv.errors);
                assert_eq!(inv.errors.len(), usize::from(!allow));
            }
            if !allow {
                assert_eq!((cached.errors[0].object.as_str(), cached.errors[0].field.as_str()), ("GlobalNetworkPolicy/reviews", "spec.egress[0].http"));
            }
        }
    }
}
