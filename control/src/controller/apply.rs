//! Writing the WasmPlugins: server-side apply (field manager
//! `krites-control`, forced), only when the wanted object differs from the
//! one last applied or, right after a start, from what the cluster holds; and
//! removal of the WasmPlugins this controller made that are no longer wanted.

use std::collections::{BTreeMap, BTreeSet};

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::Value;
use tracing::{debug, info};

/// Kubernetes' field manager for everything this controller writes.
pub const FIELD_MANAGER: &str = "krites-control";
/// The label every WasmPlugin the controller writes carries (set by
/// [`crate::wasmplugin::manifests`]).
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=krites-control";
pub const REVISION_ANNOTATION: &str = "krites.io/config-revision";

/// Istio's `WasmPlugin` CRD.
pub fn wasmplugin_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("extensions.istio.io", "v1alpha1", "WasmPlugin"), "wasmplugins")
}

/// What decides whether a WasmPlugin must be written again: the config
/// revision (a content hash of `pluginConfig`), the rest of the spec (module
/// URL and digest, phase, type...) and our labels.
#[derive(Debug, Clone, PartialEq)]
struct Fingerprint {
    revision: Option<String>,
    labels: BTreeMap<String, String>,
    spec: Value,
}

impl Fingerprint {
    fn of(obj: &DynamicObject) -> Fingerprint {
        let mut spec = obj.data.get("spec").cloned().unwrap_or(Value::Null);
        if let Some(map) = spec.as_object_mut() {
            map.remove("pluginConfig");
        }
        Fingerprint { revision: obj.annotations().get(REVISION_ANNOTATION).cloned(), labels: obj.labels().clone(), spec }
    }

    /// True when the live object already is what this fingerprint wants
    /// (the live one may carry more labels).
    fn matches_live(&self, live: &DynamicObject) -> bool {
        let other = Fingerprint::of(live);
        other.revision == self.revision
            && other.spec == self.spec
            && self.labels.iter().all(|(k, v)| other.labels.get(k) == Some(v))
    }
}

type Key = (String, String);

fn key(obj: &DynamicObject) -> Key {
    (obj.namespace().unwrap_or_default(), obj.name_any())
}

/// What one [`Applier::apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// `namespace/name` of each WasmPlugin written.
    pub written: Vec<String>,
    pub unchanged: usize,
    /// `namespace/name` of each WasmPlugin deleted.
    pub deleted: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("reading WasmPlugin {0}: {1}")]
    Get(String, #[source] kube::Error),
    #[error("applying WasmPlugin {0}: {1}")]
    Patch(String, #[source] kube::Error),
    #[error("listing the WasmPlugins krites-control manages: {0}")]
    List(#[source] kube::Error),
    #[error("deleting WasmPlugin {0}: {1}")]
    Delete(String, #[source] kube::Error),
    #[error("a desired WasmPlugin has no namespace or name")]
    Unnamed,
}

/// Remembers what it applied, so unchanged inputs cost no API request.
#[derive(Debug)]
pub struct Applier {
    resource: ApiResource,
    applied: BTreeMap<Key, Fingerprint>,
    /// The set of WasmPlugins wanted when stale ones were last removed.
    pruned_for: Option<BTreeSet<Key>>,
}

impl Default for Applier {
    fn default() -> Self {
        Applier { resource: wasmplugin_resource(), applied: BTreeMap::new(), pruned_for: None }
    }
}

impl Applier {
    /// Forgets what was applied: the next [`Applier::apply`] reads each
    /// WasmPlugin from the cluster again (repairing drift) and looks for stale ones.
    pub fn forget(&mut self) {
        self.applied.clear();
        self.pruned_for = None;
    }

    /// Makes the cluster hold `desired`: writes what changed, then deletes
    /// the managed WasmPlugins no longer wanted (after the new ones are in
    /// place, so enforcement never lapses).
    pub async fn apply(&mut self, client: &Client, desired: &[DynamicObject]) -> Result<Applied, ApplyError> {
        let mut done = Applied::default();
        let params = PatchParams::apply(FIELD_MANAGER).force();
        for obj in desired {
            let (ns, name) = key(obj);
            if ns.is_empty() || name.is_empty() {
                return Err(ApplyError::Unnamed);
            }
            let id = format!("{ns}/{name}");
            let want = Fingerprint::of(obj);
            match self.applied.get(&(ns.clone(), name.clone())) {
                Some(had) if *had == want => {
                    done.unchanged += 1;
                    continue;
                }
                Some(_) => {}
                None => {
                    // First time since the start (or a resync): what does the cluster hold?
                    let api = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &self.resource);
                    let live = api.get_opt(&name).await.map_err(|e| ApplyError::Get(id.clone(), e))?;
                    if live.as_ref().is_some_and(|live| want.matches_live(live)) {
                        debug!(wasmplugin = %id, "already current in the cluster");
                        self.applied.insert((ns, name), want);
                        done.unchanged += 1;
                        continue;
                    }
                }
            }
            let api = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &self.resource);
            api.patch(&name, &params, &Patch::Apply(obj)).await.map_err(|e| ApplyError::Patch(id.clone(), e))?;
            info!(wasmplugin = %id, revision = want.revision.as_deref().unwrap_or(""), "applied");
            self.applied.insert((ns, name), want);
            done.written.push(id);
        }

        let wanted: BTreeSet<Key> = desired.iter().map(key).collect();
        if self.pruned_for.as_ref() != Some(&wanted) {
            let all = Api::<DynamicObject>::all_with(client.clone(), &self.resource);
            let list = all.list(&ListParams::default().labels(MANAGED_BY_SELECTOR)).await.map_err(ApplyError::List)?;
            for live in list.items {
                let k = key(&live);
                if wanted.contains(&k) || k.0.is_empty() {
                    continue;
                }
                let id = format!("{}/{}", k.0, k.1);
                let api = Api::<DynamicObject>::namespaced_with(client.clone(), &k.0, &self.resource);
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

    fn plugin(revision: &str, url: &str, extra_label: bool) -> DynamicObject {
        let mut labels = json!({"app.kubernetes.io/managed-by": "krites-control"});
        if extra_label {
            labels["other"] = json!("x");
        }
        serde_json::from_value(json!({
            "apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
            "metadata": {"name": "krites", "namespace": "istio-system", "labels": labels,
                         "annotations": {REVISION_ANNOTATION: revision}},
            "spec": {"url": url, "pluginConfig": {"version": 1, "n": revision}}
        }))
        .unwrap()
    }

    #[test]
    fn fingerprint_ignores_plugin_config_body_and_extra_labels() {
        let want = Fingerprint::of(&plugin("r1", "oci://a", false));
        assert!(want.matches_live(&plugin("r1", "oci://a", true)));
        assert!(!want.matches_live(&plugin("r2", "oci://a", false)));
        assert!(!want.matches_live(&plugin("r1", "oci://b", false)));
        assert_ne!(want, Fingerprint::of(&plugin("r2", "oci://a", false)));
    }
}
