//! Writing the WasmPlugins, and keeping them as written.
//!
//! What decides a write is the whole content control sends (the spec,
//! `pluginConfig` included, and the labels and annotations it sets), compared
//! with what it last applied or, after a start, a resync or a foreign edit
//! seen by the WasmPlugin watch, with what the cluster holds (one LIST).
//!
//! How it writes:
//! - an object control knows is current except for its own change: server-side
//!   apply (field manager `krites-control`, forced); cheap, no read first;
//! - an object that is missing: server-side apply too, which creates it
//!   (RBAC: `create` as well as `patch`);
//! - an object the cluster holds with other content (a foreign edit, or a
//!   change made while control was down): a replace (PUT) of the object read
//!   in the same pass, with its `resourceVersion`. Server-side apply would
//!   keep every field another manager set (a foreign `scope: [nobody]` inside
//!   `pluginConfig` would survive and turn enforcement off); a replace leaves
//!   exactly the spec control sends, and the `resourceVersion` makes a
//!   concurrent write fail (409) instead of being overwritten unseen. Labels
//!   and annotations others set are kept: only control's own are enforced.
//!
//! WasmPlugins this controller made that are no longer wanted are deleted,
//! after the new ones are in place so enforcement never lapses.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::Value;
use tracing::{debug, info, warn};

use super::lease::Leadership;
use super::sources::PluginEvent;

/// Kubernetes' field manager for everything this controller writes.
pub const FIELD_MANAGER: &str = "krites-control";
/// The label every WasmPlugin the controller writes carries (set by
/// [`crate::wasmplugin::manifests`]).
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=krites-control";
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "krites-control");
pub const REVISION_ANNOTATION: &str = "krites.io/config-revision";
/// Annotations only control sets: present exactly when control sends them.
const OWNED_ANNOTATIONS: [&str; 1] = [REVISION_ANNOTATION];

/// Istio's `WasmPlugin` CRD.
pub fn wasmplugin_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("extensions.istio.io", "v1alpha1", "WasmPlugin"), "wasmplugins")
}

/// JSON equality that reads numbers by value: the API server may return a
/// float such as `100.0` as `100`, which is the same config.
pub fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
            (Some(i), Some(j), _, _) => i == j,
            (_, _, Some(i), Some(j)) => i == j,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_json(a, b)),
        (Value::Object(x), Value::Object(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w))),
        _ => a == b,
    }
}

/// Everything control sends in a WasmPlugin: what must hold in the cluster.
#[derive(Debug, Clone, PartialEq)]
struct Fingerprint {
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    spec: Value,
}

impl Fingerprint {
    fn of(obj: &DynamicObject) -> Fingerprint {
        Fingerprint {
            labels: obj.labels().clone(),
            annotations: obj.annotations().clone(),
            spec: obj.data.get("spec").cloned().unwrap_or(Value::Null),
        }
    }

    /// True when the live object holds exactly this content: the same spec
    /// (no key more, none less), control's labels and annotations with their
    /// values (others' may be there too), and none of control's own
    /// annotations that it no longer sends.
    fn matches_live(&self, live: &DynamicObject) -> bool {
        let spec = live.data.get("spec").unwrap_or(&Value::Null);
        same_json(&self.spec, spec)
            && self.labels.iter().all(|(k, v)| live.labels().get(k) == Some(v))
            && self.annotations.iter().all(|(k, v)| live.annotations().get(k) == Some(v))
            && OWNED_ANNOTATIONS.iter().all(|k| self.annotations.contains_key(*k) || !live.annotations().contains_key(*k))
    }
}

type Key = (String, String);

fn key(obj: &DynamicObject) -> Key {
    (obj.namespace().unwrap_or_default(), obj.name_any())
}

fn managed(obj: &DynamicObject) -> bool {
    obj.labels().get(MANAGED_BY.0).map(String::as_str) == Some(MANAGED_BY.1)
}

/// `live` with `want`'s spec and control's labels and annotations: what a
/// repair writes (others' labels and annotations, finalizers, owner
/// references stay; `resourceVersion` guards against a concurrent write).
fn repaired(live: &DynamicObject, want: &DynamicObject) -> DynamicObject {
    let mut out = live.clone();
    out.metadata.managed_fields = None;
    let labels = out.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.extend(want.labels().clone());
    let annotations = out.metadata.annotations.get_or_insert_with(BTreeMap::new);
    for k in OWNED_ANNOTATIONS {
        annotations.remove(k);
    }
    annotations.extend(want.annotations().clone());
    out.data = want.data.clone();
    out
}

/// What one [`Applier::apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// `namespace/name` of each WasmPlugin written (repairs included).
    pub written: Vec<String>,
    /// Those of `written` that replaced content someone else wrote (or an
    /// older config found after a start).
    pub repaired: Vec<String>,
    pub unchanged: usize,
    /// `namespace/name` of each WasmPlugin deleted.
    pub deleted: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("listing WasmPlugins: {0}")]
    List(#[source] kube::Error),
    #[error("applying WasmPlugin {0}: {1}")]
    Patch(String, #[source] kube::Error),
    #[error("replacing WasmPlugin {0} (repairing a foreign edit): {1}")]
    Replace(String, #[source] kube::Error),
    #[error("deleting WasmPlugin {0}: {1}")]
    Delete(String, #[source] kube::Error),
    #[error("a desired WasmPlugin has no namespace or name")]
    Unnamed,
    #[error("not the leader (any more): writing nothing")]
    NotLeader,
}

/// Remembers what it applied, so unchanged inputs cost no API request.
#[derive(Debug)]
pub struct Applier {
    resource: ApiResource,
    applied: BTreeMap<Key, Fingerprint>,
    /// Every WasmPlugin the cluster held at the last LIST, until one apply used it.
    live: Option<BTreeMap<Key, DynamicObject>>,
    /// The set of WasmPlugins wanted when stale ones were last removed.
    pruned_for: Option<BTreeSet<Key>>,
    /// With leader election: asked before every write.
    leadership: Option<Arc<Leadership>>,
}

impl Default for Applier {
    fn default() -> Self {
        Applier { resource: wasmplugin_resource(), applied: BTreeMap::new(), live: None, pruned_for: None, leadership: None }
    }
}

impl Applier {
    /// Writes only while `leadership` says this replica leads.
    pub fn set_leadership(&mut self, leadership: Arc<Leadership>) {
        self.leadership = Some(leadership);
    }

    /// Checked right before each write: a lease lost mid-pass stops it.
    fn may_write(&self) -> Result<(), ApplyError> {
        if self.leadership.as_ref().is_none_or(|l| l.is_leader()) {
            Ok(())
        } else {
            Err(ApplyError::NotLeader)
        }
    }

    /// Forgets what was applied: the next [`Applier::apply`] reads the
    /// WasmPlugins from the cluster again (repairing drift) and looks for stale ones.
    pub fn forget(&mut self) {
        self.applied.clear();
        self.live = None;
        self.pruned_for = None;
    }

    /// True until [`Applier::refresh`] has read the cluster since the last forget.
    pub fn needs_refresh(&self) -> bool {
        self.live.is_none() && self.applied.is_empty()
    }

    /// Reads every WasmPlugin of the cluster (one LIST; unfiltered, so an
    /// object stripped of control's label is still found and repaired).
    pub async fn refresh(&mut self, client: &Client) -> Result<&BTreeMap<Key, DynamicObject>, ApplyError> {
        let all = Api::<DynamicObject>::all_with(client.clone(), &self.resource);
        let list = all.list(&ListParams::default()).await.map_err(ApplyError::List)?;
        Ok(self.live.insert(list.items.into_iter().map(|o| (key(&o), o)).collect()))
    }

    /// Does what the WasmPlugin watch saw differ from what control applied?
    /// (Its own writes come back as events too; they match.)
    pub fn drifted(&self, event: &PluginEvent) -> bool {
        if self.applied.is_empty() {
            return false; // nothing applied yet: the first apply reads the cluster anyway
        }
        match event {
            PluginEvent::Seen(o) => match self.applied.get(&key(o)) {
                Some(fp) => !fp.matches_live(o),
                // A managed WasmPlugin control does not want (a foreign one, or
                // a stale shard): removed at the repair.
                None => managed(o) && o.metadata.deletion_timestamp.is_none(),
            },
            PluginEvent::Gone(o) => self.applied.contains_key(&key(o)),
            PluginEvent::Listed(keys) => self.applied.keys().any(|k| !keys.contains(k)),
        }
    }

    /// Makes the cluster hold `desired`: writes what changed, then deletes
    /// the managed WasmPlugins no longer wanted. After an error, the next
    /// call reads the cluster again.
    pub async fn apply(&mut self, client: &Client, desired: &[DynamicObject]) -> Result<Applied, ApplyError> {
        let result = self.apply_inner(client, desired).await;
        if result.is_err() {
            self.forget();
        }
        result
    }

    async fn apply_inner(&mut self, client: &Client, desired: &[DynamicObject]) -> Result<Applied, ApplyError> {
        let wanted: BTreeSet<Key> = desired.iter().map(key).collect();
        if wanted.iter().any(|(ns, name)| ns.is_empty() || name.is_empty()) {
            return Err(ApplyError::Unnamed);
        }
        let unknown = wanted.iter().any(|k| !self.applied.contains_key(k));
        if self.live.is_none() && (unknown || self.pruned_for.as_ref() != Some(&wanted)) {
            self.refresh(client).await?;
        }
        // Used by this pass only: later passes compare with what was applied.
        let live = self.live.take();
        let mut done = Applied::default();
        for obj in desired {
            let k = key(obj);
            let id = format!("{}/{}", k.0, k.1);
            let want = Fingerprint::of(obj);
            let api = Api::<DynamicObject>::namespaced_with(client.clone(), &k.0, &self.resource);
            let found = live.as_ref().map(|l| l.get(&k));
            match found {
                Some(Some(l)) if want.matches_live(l) => {
                    debug!(wasmplugin = %id, "already current in the cluster");
                    done.unchanged += 1;
                }
                Some(Some(l)) => {
                    let body = repaired(l, obj);
                    self.may_write()?;
                    api.replace(&k.1, &PostParams { dry_run: false, field_manager: Some(FIELD_MANAGER.into()) }, &body)
                        .await
                        .map_err(|e| ApplyError::Replace(id.clone(), e))?;
                    warn!(wasmplugin = %id, "the cluster held other content (a foreign edit, or a config from before a restart); replaced with control's");
                    done.written.push(id.clone());
                    done.repaired.push(id);
                }
                None if self.applied.get(&k) == Some(&want) => {
                    done.unchanged += 1;
                }
                // Missing, or changed by control since it last wrote it.
                Some(None) | None => {
                    let params = PatchParams::apply(FIELD_MANAGER).force();
                    self.may_write()?;
                    api.patch(&k.1, &params, &Patch::Apply(obj)).await.map_err(|e| ApplyError::Patch(id.clone(), e))?;
                    info!(wasmplugin = %id, revision = obj.annotations().get(REVISION_ANNOTATION).map_or("", String::as_str), "applied");
                    done.written.push(id);
                }
            }
            self.applied.insert(k, want);
        }

        if self.pruned_for.as_ref() != Some(&wanted) {
            let listed = match live {
                Some(l) => l,
                None => {
                    self.refresh(client).await?;
                    self.live.take().unwrap_or_default()
                }
            };
            for (k, obj) in listed {
                if wanted.contains(&k) || k.0.is_empty() || !managed(&obj) {
                    continue;
                }
                let id = format!("{}/{}", k.0, k.1);
                let api = Api::<DynamicObject>::namespaced_with(client.clone(), &k.0, &self.resource);
                self.may_write()?;
                match api.delete(&k.1, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.is_not_found() || s.code == 404 => {}
                    Err(e) => return Err(ApplyError::Delete(id, e)),
                }
                info!(wasmplugin = %id, "deleted: no longer wanted");
                self.applied.remove(&k);
                done.deleted.push(id);
            }
            self.pruned_for = Some(wanted);
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plugin(revision: &str, url: &str, extra_label: bool, config: Value) -> DynamicObject {
        let mut labels = json!({"app.kubernetes.io/managed-by": "krites-control"});
        if extra_label {
            labels["other"] = json!("x");
        }
        serde_json::from_value(json!({
            "apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
            "metadata": {"name": "krites", "namespace": "istio-system", "labels": labels,
                         "annotations": {REVISION_ANNOTATION: revision}},
            "spec": {"url": url, "pluginConfig": config}
        }))
        .unwrap()
    }

    #[test]
    fn fingerprint_compares_the_whole_content() {
        let config = json!({"version": 1, "policies": [{"name": "p", "order": 100.0}]});
        let want = Fingerprint::of(&plugin("r1", "oci://a", false, config.clone()));
        assert!(want.matches_live(&plugin("r1", "oci://a", true, config.clone())), "others' labels are fine");
        let as_stored = json!({"version": 1, "policies": [{"name": "p", "order": 100}]});
        assert!(want.matches_live(&plugin("r1", "oci://a", false, as_stored)), "100 is 100.0");
        assert!(!want.matches_live(&plugin("r2", "oci://a", false, config.clone())));
        assert!(!want.matches_live(&plugin("r1", "oci://b", false, config.clone())));
        // The annotation is right but pluginConfig is not (a foreign edit).
        assert!(!want.matches_live(&plugin("r1", "oci://a", false, json!({"version": 1, "policies": []}))));
        let mut scoped = config.clone();
        scoped["scope"] = json!(["nobody"]);
        assert!(!want.matches_live(&plugin("r1", "oci://a", false, scoped)), "a foreign key");
    }

    #[test]
    fn a_repair_keeps_others_metadata_and_only_controls_spec() {
        let mut live = plugin("r0", "oci://a", true, json!({"version": 1, "scope": ["nobody"]}));
        live.metadata.resource_version = Some("12".into());
        live.metadata.finalizers = Some(vec!["f".into()]);
        live.data["spec"]["priority"] = json!(5);
        let want = plugin("r1", "oci://a", false, json!({"version": 1}));
        let out = repaired(&live, &want);
        assert_eq!(out.data["spec"], json!({"url": "oci://a", "pluginConfig": {"version": 1}}));
        assert_eq!(out.metadata.resource_version.as_deref(), Some("12"));
        assert_eq!(out.labels().get("other").map(String::as_str), Some("x"));
        assert_eq!(out.annotations().get(REVISION_ANNOTATION).map(String::as_str), Some("r1"));
        assert_eq!(out.metadata.finalizers, Some(vec!["f".to_string()]));
        assert!(Fingerprint::of(&want).matches_live(&out));
    }
}
