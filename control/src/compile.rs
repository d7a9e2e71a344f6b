//! Inventory -> plugin config: the policies, and only the endpoint, namespace,
//! service-account and network-set entries some rule can tell apart (as Felix sends only
//! the IP sets active rules use), so a WasmPlugin stays small.

use std::collections::{BTreeMap, HashMap};

use krites_policy::config::{
    EndpointSpec, NamespaceSpec, NetworkSetSpec, PluginConfig, ServiceAccountSpec, ServiceEndpointsSpec, ServicePortSpec, ServiceSpec,
    CONFIG_VERSION,
};
use krites_policy::model::universe::pod_labels;
use krites_policy::model::Group;
use krites_policy::{ConfigErrors, PolicySet};

use crate::inventory::{Inventory, Labels};

mod projection;
#[cfg(test)]
mod delivery_tests;

/// Kubernetes stores objects up to ~1.5 MiB, etcd's default request limit;
/// keep a WasmPlugin's config well under 1 MiB.
pub const MAX_CONFIG_BYTES: usize = 900 * 1024;

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only what workloads of this namespace need.
    pub namespace: Option<String>,
    pub endpoint_table: EndpointTableUse,
}

/// When the config lists its endpoint groups in the compact table
/// (`endpointTable`) rather than as JSON `endpoints`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EndpointTableUse {
    /// From [`TABLE_FROM_ADDRESSES`] addresses: below that, JSON is small
    /// and a reader can see who owns which address.
    #[default]
    Auto,
    Always,
    Never,
}

pub use krites_policy::config::TABLE_FROM_ADDRESSES;

impl EndpointTableUse {
    fn wanted(self, addresses: usize) -> bool {
        match self {
            EndpointTableUse::Auto => addresses >= TABLE_FROM_ADDRESSES,
            EndpointTableUse::Always => true,
            EndpointTableUse::Never => false,
        }
    }
}

#[derive(Debug)]
pub struct Compiled {
    pub config: PluginConfig,
    /// `config` as a WasmPlugin carries it: plain JSON, or compressed when
    /// large (see [`krites_policy::config::compressed`]).
    pub delivered: serde_json::Value,
    pub revision: String,
    /// Bytes of `delivered` as JSON: what counts against the WasmPlugin's limit.
    pub bytes: usize,
    /// Pod addresses in the cluster, and how many the config carries.
    pub addresses_known: usize,
    pub addresses_emitted: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("the compiled config is invalid (a bug: control validated every object): {0}")]
    Invalid(#[from] ConfigErrors),
    #[error("the endpoint table could not be written (a bug: control parsed every address): {0}")]
    Table(#[from] krites_policy::config::TableError),
    #[error("the config could not be written as JSON (a bug): {0}")]
    Json(#[from] serde_json::Error),
    #[error("two running pods claim {ip}: {first} and {second}")]
    AddressClash { ip: String, first: String, second: String },
}

/// The inventory's network sets, sorted as policies are (namespace, name),
/// each set's nets as written. `Universe::network_sets` keeps this order,
/// so indexes into it are indexes into this list.
fn network_sets(inv: &Inventory) -> Vec<NetworkSetSpec> {
    let mut sets = inv.network_sets.clone();
    sets.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    sets
}

/// The inventory's Services joined with their EndpointSlices, sorted by
/// (namespace, name): per TCP port, the endpoint addresses grouped by the
/// port they serve it on (an EndpointSlice port serves the Service port of
/// the same name). A Service with a slice that did not convert is left out:
/// its endpoints are not all known.
pub fn services(inv: &Inventory) -> Vec<ServiceSpec> {
    let mut out: Vec<ServiceSpec> = Vec::new();
    for svc in &inv.services {
        if inv.broken_services.contains(&(svc.namespace.clone(), svc.name.clone())) {
            continue;
        }
        let slices: Vec<_> = inv.endpoint_slices.iter().filter(|s| s.namespace == svc.namespace && s.service == svc.name).collect();
        let mut ports = Vec::new();
        for (port_name, port) in &svc.ports {
            let mut by_port: BTreeMap<u16, Vec<std::net::IpAddr>> = BTreeMap::new();
            for slice in &slices {
                for (_, target) in slice.ports.iter().filter(|(name, _)| name == port_name) {
                    let ips = by_port.entry(*target).or_default();
                    ips.extend(slice.ready.iter().copied());
                    if svc.publish_not_ready {
                        ips.extend(slice.not_ready.iter().copied());
                    }
                }
            }
            let endpoints = by_port
                .into_iter()
                .filter_map(|(port, mut ips)| {
                    ips.sort();
                    ips.dedup();
                    (!ips.is_empty()).then(|| ServiceEndpointsSpec { port, ips: ips.iter().map(ToString::to_string).collect() })
                })
                .collect();
            ports.push(ServicePortSpec { port: *port, endpoints });
        }
        ports.sort_by_key(|p| p.port);
        ports.dedup_by_key(|p| p.port);
        let mut cluster_ips: Vec<String> = svc.cluster_ips.iter().map(ToString::to_string).collect();
        cluster_ips.dedup();
        out.push(ServiceSpec { namespace: svc.namespace.clone(), name: svc.name.clone(), cluster_ips, ports });
    }
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

/// Compiles everything the inventory holds (already validated object by object).
pub fn compile(inv: &Inventory, opts: &Options) -> Result<Compiled, CompileError> {
    let in_scope = |ns: Option<&str>| match (&opts.namespace, ns) {
        (Some(want), Some(ns)) => want == ns,
        _ => true,
    };
    let mut policies: Vec<_> = inv.policies.iter().filter(|p| in_scope(p.namespace.as_deref())).cloned().collect();
    policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut staged_policies: Vec<_> = inv.staged_policies.iter().filter(|p| in_scope(p.namespace.as_deref())).cloned().collect();
    staged_policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

    // Pods grouped by what selectors can see: namespace, service account, labels.
    let mut groups: BTreeMap<(String, String, Labels), Vec<String>> = BTreeMap::new();
    let mut owner: HashMap<std::net::IpAddr, String> = HashMap::new();
    for pod in &inv.pods {
        for ip in &pod.ips {
            let who = format!("{}/{}", pod.namespace, pod.name);
            if let Some(first) = owner.insert(*ip, who.clone()) {
                return Err(CompileError::AddressClash { ip: ip.to_string(), first, second: who });
            }
            groups.entry((pod.namespace.clone(), pod.service_account.clone(), pod.labels.clone())).or_default().push(ip.to_string());
        }
    }
    let endpoints: Vec<EndpointSpec> = groups
        .into_iter()
        .map(|((namespace, service_account, labels), mut ips)| {
            ips.sort();
            EndpointSpec { namespace, service_account, labels, ips }
        })
        .collect();
    let namespaces: Vec<NamespaceSpec> = inv
        .namespaces
        .iter()
        .filter(|(_, l)| !l.is_empty())
        .map(|(name, labels)| NamespaceSpec { name: name.clone(), labels: labels.clone() })
        .collect();
    let service_accounts: Vec<ServiceAccountSpec> = inv
        .service_accounts
        .iter()
        .filter(|(_, l)| !l.is_empty())
        .map(|((namespace, name), labels)| ServiceAccountSpec { namespace: namespace.clone(), name: name.clone(), labels: labels.clone() })
        .collect();
    let mut tiers = inv.tiers.clone();
    tiers.sort_by(|a, b| a.name.cmp(&b.name));

    let scope = opts.namespace.as_ref().map(|ns| vec![ns.clone()]);
    let mut full = PluginConfig {
        version: CONFIG_VERSION,
        revision: None,
        scope,
        tiers,
        policies,
        endpoints,
        endpoint_table: None,
        namespaces,
        service_accounts,
        network_sets: network_sets(inv),
        services: services(inv),
        staged_policies,
    };
    let addresses_known = full.endpoints.iter().map(|e| e.ips.len()).sum();
    let mut set = PolicySet::from_config(&full)?;
    if let Some(ns) = &opts.namespace {
        // A namespace's shard needs only the global policies that select one
        // of its pods, for ingress or for egress.
        let universe = set.universe();
        let local: Vec<Group<'_>> = universe.groups().map(|(_, g)| g).filter(|g| g.namespace() == ns).collect();
        let wanted: std::collections::HashSet<(Option<String>, String)> = set
            .policies()
            .iter()
            .filter(|p| p.namespace.is_some() || local.iter().any(|g| p.selects_workload(g.namespace(), g.service_account(), g, universe)))
            .map(|p| (p.namespace.clone(), p.name.clone()))
            .collect();
        full.policies.retain(|p| wanted.contains(&(p.namespace.clone(), p.name.clone())));
        // Staged global policies likewise: a staged Set that would select a
        // local pod, and any staged change to a policy the shard keeps (a
        // Delete has no selector of its own to go by).
        let staged_wanted: std::collections::HashSet<(Option<String>, String)> = set
            .staged_view()
            .map(|view| {
                view.policies()
                    .iter()
                    .filter(|p| p.staged.is_some())
                    .filter(|p| p.namespace.is_some() || local.iter().any(|g| p.selects_workload(g.namespace(), g.service_account(), g, universe)))
                    .map(|p| (p.namespace.clone(), p.name.clone()))
                    .collect()
            })
            .unwrap_or_default();
        full.staged_policies.retain(|p| {
            let id = (p.namespace.clone(), p.name.clone());
            p.namespace.is_some() || staged_wanted.contains(&id) || wanted.contains(&id)
        });
        set = PolicySet::from_config(&full)?;
    }
    // The staged view's rules count too: it shares the endpoint table, so
    // its group and network-set indexes are the enforced set's.
    let mut referenced = set.referenced_groups(|_| true);
    if let Some(view) = set.staged_view() {
        referenced.union_with(&view.referenced_groups(|_| true));
    }
    let universe = set.universe();
    // A group is its namespace, service account and labels (Calico's
    // special labels included, as `pod_labels` adds them).
    let keep: std::collections::HashSet<(String, String, BTreeMap<String, String>)> = universe
        .groups()
        .filter(|&(g, _)| referenced.contains(g as usize))
        .map(|(_, g)| (g.namespace().to_string(), g.service_account().to_string(), g.label_map()))
        .collect();
    // A network set no kept rule's selector matches changes no decision.
    let mut referenced_sets = set.referenced_network_sets(|_| true);
    if let Some(view) = set.staged_view() {
        referenced_sets.extend(view.referenced_network_sets(|_| true));
        referenced_sets.sort_unstable();
        referenced_sets.dedup();
    }
    let mut config = full;
    config.endpoints.retain(|e| {
        keep.contains(&(e.namespace.clone(), e.service_account.clone(), pod_labels(&e.namespace, &e.service_account, &e.labels)))
    });
    config.network_sets = referenced_sets.into_iter().filter_map(|i| config.network_sets.get(i).cloned()).collect();
    // Services matter only to egress rules and to `services` matches (a
    // source Service on ingress): without either, no decision reads them.
    let names_a_service = |p: &krites_policy::config::PolicySpec| {
        p.ingress.iter().any(|r| r.source.as_ref().is_some_and(|e| e.services.is_some()))
    };
    if config.policies.iter().chain(&config.staged_policies).all(|p| p.egress.is_empty() && !names_a_service(p)) {
        config.services.clear();
    }
    if let Some(keys) = projection::keys_read(&config) {
        projection::project(&mut config, &keys);
    }
    let addresses_emitted = config.endpoints.iter().map(|e| e.ips.len()).sum();
    if opts.endpoint_table.wanted(addresses_emitted) {
        config = config.with_endpoint_table()?;
    }

    let set = PolicySet::from_config(&config)?;
    let delivered = config.to_delivered_json()?;
    let bytes = serde_json::to_vec(&delivered)?.len();
    Ok(Compiled { revision: set.revision().to_string(), config, delivered, bytes, addresses_known, addresses_emitted })
}

/// Policies whose selectors name `pod-template-hash`, which neither Istio's sidecar metadata
/// nor the endpoint table carries (see `cluster::workload_labels`): such a selector does not
/// select pods the way Calico would. One line per place, `kind/namespace/name: field: ...`.
pub fn selector_warnings(inv: &Inventory) -> Vec<String> {
    fn walk(value: &serde_json::Value, path: &mut String, found: &mut Vec<String>) {
        match value {
            serde_json::Value::String(s) if s.contains(crate::cluster::POD_TEMPLATE_HASH) => found.push(path.clone()),
            serde_json::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    walk(item, path, found);
                    path.truncate(len);
                }
            }
            serde_json::Value::Object(map) => {
                for (key, item) in map {
                    let len = path.len();
                    path.push('.');
                    path.push_str(key);
                    walk(item, path, found);
                    path.truncate(len);
                }
            }
            _ => {}
        }
    }
    let mut warnings = Vec::new();
    for p in inv.policies.iter().chain(&inv.staged_policies) {
        let Ok(value) = serde_json::to_value(p) else { continue };
        let mut found = Vec::new();
        walk(&value, &mut String::from("spec"), &mut found);
        let kind = p.kind.as_deref().unwrap_or(if p.namespace.is_some() { "NetworkPolicy" } else { "GlobalNetworkPolicy" });
        let object = match &p.namespace {
            Some(ns) => format!("{kind}/{ns}/{}", p.name),
            None => format!("{kind}/{}", p.name),
        };
        for field in found.into_iter().filter(|f| f.contains("elector")) {
            warnings.push(format!(
                "{object}: {field}: names {}, which Istio leaves out of a sidecar's pod labels (and so does control): it never matches as Calico would",
                crate::cluster::POD_TEMPLATE_HASH
            ));
        }
    }
    warnings
}

/// Namespaces that have pods or namespaced policies: the shards of a
/// per-namespace compile.
pub fn namespaces(inv: &Inventory) -> Vec<String> {
    let mut all: Vec<String> = inv
        .pods
        .iter()
        .map(|p| p.namespace.clone())
        .chain(inv.policies.iter().chain(&inv.staged_policies).filter_map(|p| p.namespace.clone()))
        .collect();
    all.sort();
    all.dedup();
    all
}

/// The WasmPlugins to deliver a compile, and how they were cut.
#[derive(Debug)]
pub struct Plan {
    pub objects: Vec<serde_json::Value>,
    /// Per-namespace shards (each config scoped to its namespace).
    pub sharded: bool,
    /// The largest config among the objects.
    pub max_bytes: usize,
    /// Config revision per WasmPlugin namespace.
    pub revisions: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct PlanOptions<'a> {
    /// Only this namespace's workloads (its WasmPlugins go in that namespace).
    pub namespace: Option<&'a str>,
    /// Istio's root namespace: a WasmPlugin there reaches every workload.
    pub mesh_namespace: &'a str,
    /// One pair per namespace even when the whole config fits.
    pub per_namespace: bool,
    /// Config size limit per WasmPlugin, normally [`MAX_CONFIG_BYTES`].
    pub limit: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("namespace {namespace} alone needs {bytes} bytes of config, over the {limit} a WasmPlugin can carry: its policies reference too many pods")]
    TooBig { namespace: String, bytes: usize, limit: usize },
}

/// One mesh-wide WasmPlugin pair in the root namespace (or one for
/// `namespace`); when the config would not fit, one pair per namespace, each
/// config scoped to its namespace so that the root namespace's shard, which
/// Istio spreads mesh-wide, decides only for its own workloads.
pub fn plan(inv: &Inventory, opts: &PlanOptions<'_>, module: &crate::wasmplugin::Module) -> Result<Plan, PlanError> {
    let whole = compile(inv, &Options { namespace: opts.namespace.map(str::to_string), ..Options::default() })?;
    if opts.namespace.is_some() || (!opts.per_namespace && whole.bytes <= opts.limit) {
        let ns = opts.namespace.unwrap_or(opts.mesh_namespace);
        if whole.bytes > opts.limit {
            return Err(PlanError::TooBig { namespace: ns.to_string(), bytes: whole.bytes, limit: opts.limit });
        }
        let objects = crate::wasmplugin::manifests(&whole.delivered, &whole.revision, ns, module);
        return Ok(Plan { objects, sharded: false, max_bytes: whole.bytes, revisions: BTreeMap::from([(ns.to_string(), whole.revision)]) });
    }
    let mut plan = Plan { objects: Vec::new(), sharded: true, max_bytes: 0, revisions: BTreeMap::new() };
    for ns in namespaces(inv) {
        let shard = compile(inv, &Options { namespace: Some(ns.clone()), ..Options::default() })?;
        if shard.bytes > opts.limit {
            return Err(PlanError::TooBig { namespace: ns, bytes: shard.bytes, limit: opts.limit });
        }
        plan.max_bytes = plan.max_bytes.max(shard.bytes);
        plan.objects.extend(crate::wasmplugin::manifests(&shard.delivered, &shard.revision, &ns, module));
        plan.revisions.insert(ns, shard.revision);
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests;
    use crate::wasmplugin::Module;

    fn kubernetes_fixture() -> Inventory {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/kubernetes");
        Inventory::from_manifests(&manifests::load(&[dir]).unwrap())
    }

    #[test]
    fn a_config_too_big_for_one_wasmplugin_is_sharded_per_namespace() {
        let inv = kubernetes_fixture();
        let module = Module { url: "oci://registry.local/krites:test".into(), sha256: None };
        let whole = compile(&inv, &Options::default()).unwrap();
        let opts = |limit| PlanOptions { namespace: None, mesh_namespace: "istio-system", per_namespace: false, limit };
        let one = plan(&inv, &opts(whole.bytes), &module).unwrap();
        assert!(!one.sharded);
        assert_eq!(one.objects.len(), 2);
        assert_eq!(one.objects[0].pointer("/metadata/namespace").and_then(|v| v.as_str()), Some("istio-system"));

        // Just under what the whole config needs: one pair per namespace, each smaller.
        let sharded = plan(&inv, &opts(whole.bytes - 1), &module).unwrap();
        assert!(sharded.sharded && sharded.max_bytes < whole.bytes);
        let namespaces: Vec<&str> = sharded.objects.iter().step_by(2).filter_map(|o| o.pointer("/metadata/namespace")?.as_str()).collect();
        assert_eq!(namespaces, ["bookinfo", "istio-system", "shop", "team-a", "team-b"]);
        // team-b has no policy of its own and no global policy selects it: its shard is empty.
        let team_b = &sharded.objects[8];
        assert_eq!(team_b.pointer("/spec/pluginConfig/policies"), None);
        // Each shard is scoped to its namespace: the root namespace's one decides for its own workloads only.
        let root = &sharded.objects[2];
        assert_eq!(root.pointer("/spec/pluginConfig/scope"), Some(&serde_json::json!(["istio-system"])));

        // A limit no namespace fits: a clear error, not a silent truncation.
        let err = plan(&inv, &opts(100), &module).unwrap_err();
        assert!(err.to_string().contains("alone needs"), "{err}");
    }
}

#[cfg(test)]
mod pod_template_hash {
    #![allow(clippy::unwrap_used)] // test code

    use super::*;
    use crate::manifests;

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web-6d4b9f8c5b-x1, namespace: default, labels: {app: web, pod-template-hash: 6d4b9f8c5b}}
spec: {serviceAccountName: web, containers: [{name: web, image: web}]}
status: {phase: Running, podIP: 10.0.0.7}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: pinned}
spec:
  selector: app == 'db'
  ingress:
  - action: Allow
    source: {selector: "pod-template-hash == '6d4b9f8c5b'"}
"#;

    #[test]
    fn the_label_is_dropped_and_selectors_naming_it_are_warned_about() {
        let mut parsed = Vec::new();
        manifests::parse_text("cluster.yaml", CLUSTER, &mut parsed).unwrap();
        let mut inv = Inventory::from_manifests(&parsed);
        inv.validate();
        let pod = inv.pod("default", "web-6d4b9f8c5b-x1").unwrap();
        assert_eq!(pod.labels.get("app").map(String::as_str), Some("web"));
        assert!(!pod.labels.contains_key("pod-template-hash"), "Istio's LABELS never carry it: {:?}", pod.labels);
        let warnings = selector_warnings(&inv);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("GlobalNetworkPolicy/pinned: spec."), "{}", warnings[0]);
        assert!(warnings[0].contains("source.selector: names pod-template-hash"), "{}", warnings[0]);
    }
}

#[cfg(test)]
mod staged {
    #![allow(clippy::unwrap_used)] // test code

    use super::*;
    use crate::manifests;

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: a, labels: {app: web}}
spec: {serviceAccountName: web, containers: [{name: web, image: web}]}
status: {phase: Running, podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: probe-1, namespace: a, labels: {app: probe}}
spec: {serviceAccountName: probe, containers: [{name: probe, image: probe}]}
status: {phase: Running, podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, namespace: b, labels: {app: db}}
spec: {serviceAccountName: db, containers: [{name: db, image: db}]}
status: {phase: Running, podIP: 10.0.1.1}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: db}
spec:
  selector: app == 'db'
  ingress: [{action: Allow, source: {selector: app == 'web'}}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: old-web}
spec:
  selector: app == 'web'
  ingress: [{action: Allow}]
---
# Only this staged rule names the probe pods.
apiVersion: projectcalico.org/v3
kind: StagedGlobalNetworkPolicy
metadata: {name: db}
spec:
  selector: app == 'db'
  ingress: [{action: Allow, source: {selector: app == 'probe'}}]
---
apiVersion: projectcalico.org/v3
kind: StagedGlobalNetworkPolicy
metadata: {name: web-lock}
spec:
  selector: app == 'web'
  ingress: [{action: Deny}]
---
apiVersion: projectcalico.org/v3
kind: StagedGlobalNetworkPolicy
metadata: {name: old-web}
spec: {stagedAction: Delete}
"#;

    fn staged_names(c: &Compiled) -> Vec<&str> {
        c.config.staged_policies.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn staged_rules_keep_their_endpoints_and_shards_keep_staged_policies_touching_local_pods() {
        let mut parsed = Vec::new();
        manifests::parse_text("cluster.yaml", CLUSTER, &mut parsed).unwrap();
        let inv = Inventory::from_manifests(&parsed);
        assert!(inv.errors.is_empty(), "{:?}", inv.errors);

        let whole = compile(&inv, &Options::default()).unwrap();
        assert_eq!(staged_names(&whole), ["db", "old-web", "web-lock"]);
        // The probe pods matter to the staged view only: still carried.
        let apps: Vec<&str> = whole.config.endpoints.iter().filter_map(|e| e.labels.get("app").map(String::as_str)).collect();
        assert_eq!(apps, ["probe", "web"], "{:?}", whole.config.endpoints);

        // Namespace a: the staged changes to its own pods' policies.
        let a = compile(&inv, &Options { namespace: Some("a".into()), ..Options::default() }).unwrap();
        assert_eq!(staged_names(&a), ["old-web", "web-lock"]);
        // Namespace b: the staged db policy only (web-lock and the Delete of old-web touch no pod of b).
        let b = compile(&inv, &Options { namespace: Some("b".into()), ..Options::default() }).unwrap();
        assert_eq!(staged_names(&b), ["db"]);
        let apps: Vec<&str> = b.config.endpoints.iter().filter_map(|e| e.labels.get("app").map(String::as_str)).collect();
        assert_eq!(apps, ["probe", "web"]);
    }
}

#[cfg(test)]
mod unread_labels {
    #![allow(clippy::unwrap_used)] // test code

    use std::sync::Arc;

    use krites_policy::{Peer, RequestFacts, Workload, WorkloadPolicy};

    use super::*;
    use crate::manifests;

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: a, owner: alice}}
---
apiVersion: v1
kind: Namespace
metadata: {name: ops, labels: {owner: bob}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: fe, namespace: shop, labels: {cost-center: "42"}}
---
apiVersion: v1
kind: Pod
metadata: {name: fe-1, namespace: shop, labels: {role: fe, version: v1, app.kubernetes.io/managed-by: Helm}}
spec: {serviceAccountName: fe, containers: [{name: fe, image: fe}]}
status: {phase: Running, podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: fe-2, namespace: shop, labels: {role: fe, version: v2, app.kubernetes.io/managed-by: Helm}}
spec: {serviceAccountName: fe, containers: [{name: fe, image: fe}]}
status: {phase: Running, podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: fe-3, namespace: shop, labels: {role: fe, version: v2, quarantine: "yes"}}
spec: {serviceAccountName: fe, containers: [{name: fe, image: fe}]}
status: {phase: Running, podIP: 10.0.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: tool-1, namespace: ops, labels: {role: fe, version: v1}}
spec: {serviceAccountName: tool, containers: [{name: tool, image: tool}]}
status: {phase: Running, podIP: 10.0.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, namespace: shop, labels: {app: db, version: v9}}
spec: {serviceAccountName: db, containers: [{name: db, image: db}]}
status: {phase: Running, podIP: 10.0.2.1}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: db}
spec:
  selector: app == 'db'
  ingress:
  - action: Deny
    source: {selector: has(quarantine)}
  - action: Allow
    source: {selector: role == 'fe', namespaceSelector: team == 'a'}
---
apiVersion: projectcalico.org/v3
kind: StagedGlobalNetworkPolicy
metadata: {name: db-tools}
spec:
  stagedAction: Set
  selector: app == 'db'
  ingress:
  - action: Allow
    source: {serviceAccounts: {selector: "tool-kind == 'ci'"}}
"#;

    fn inventory() -> Inventory {
        let mut parsed = Vec::new();
        manifests::parse_text("cluster.yaml", CLUSTER, &mut parsed).unwrap();
        let mut inv = Inventory::from_manifests(&parsed);
        inv.validate();
        assert!(inv.errors.is_empty(), "{:?}", inv.errors);
        inv
    }

    /// The config as compiled, with every label of the inventory put back.
    fn with_all_labels(compiled: &PluginConfig, inv: &Inventory) -> PluginConfig {
        let mut full = compiled.clone();
        let mut groups: BTreeMap<(String, String, Labels), Vec<String>> = BTreeMap::new();
        for pod in &inv.pods {
            let ips = pod.ips.iter().map(ToString::to_string);
            groups.entry((pod.namespace.clone(), pod.service_account.clone(), pod.labels.clone())).or_default().extend(ips);
        }
        full.endpoints = groups.into_iter().map(|((namespace, service_account, labels), ips)| EndpointSpec { namespace, service_account, labels, ips }).collect();
        full.namespaces = inv.namespaces.iter().map(|(name, labels)| NamespaceSpec { name: name.clone(), labels: labels.clone() }).collect();
        full.service_accounts = inv
            .service_accounts
            .iter()
            .map(|((namespace, name), labels)| ServiceAccountSpec { namespace: namespace.clone(), name: name.clone(), labels: labels.clone() })
            .collect();
        full
    }

    #[test]
    fn only_labels_a_selector_reads_are_emitted_and_groups_they_alone_told_apart_merge() {
        let inv = inventory();
        let compiled = compile(&inv, &Options::default()).unwrap().config;
        let keys: Vec<(&str, &str, Vec<&str>, usize)> = compiled
            .endpoints
            .iter()
            .map(|e| (e.namespace.as_str(), e.service_account.as_str(), e.labels.keys().map(String::as_str).collect(), e.ips.len()))
            .collect();
        // fe-1 and fe-2 differed only in `version` and Helm's label: one group now.
        assert!(keys.contains(&("shop", "fe", vec!["role"], 2)), "{keys:?}");
        assert!(keys.contains(&("shop", "fe", vec!["quarantine", "role"], 1)), "{keys:?}");
        assert!(keys.iter().all(|(_, _, k, _)| !k.contains(&"version") && !k.contains(&"app.kubernetes.io/managed-by")), "{keys:?}");
        // Namespaces keep `team` (read by a namespaceSelector); `owner` goes, and with it ops' entry.
        let namespaces: Vec<(&str, Vec<&str>)> =
            compiled.namespaces.iter().map(|n| (n.name.as_str(), n.labels.keys().map(String::as_str).collect())).collect();
        assert_eq!(namespaces, [("shop", vec!["team"])]);
        // `cost-center` is read by nothing; `tool-kind` (read by the staged policy) is on no account.
        assert!(compiled.service_accounts.is_empty(), "{:?}", compiled.service_accounts);
    }

    #[test]
    fn leaving_unread_labels_out_changes_no_decision() {
        let inv = inventory();
        let compiled = compile(&inv, &Options::default()).unwrap().config;
        let full = with_all_labels(&compiled, &inv);
        assert_ne!(compiled, full);
        let db = Workload {
            namespace: "shop".into(),
            service_account: "db".into(),
            labels: BTreeMap::from([("app".to_string(), "db".to_string())]),
            ports: BTreeMap::new(),
        };
        let projected = WorkloadPolicy::new(Arc::new(PolicySet::from_config(&compiled).unwrap()), &db);
        let everything = WorkloadPolicy::new(Arc::new(PolicySet::from_config(&full).unwrap()), &db);
        let identities = ["shop/fe", "shop/db", "ops/tool", "shop/nobody"].map(|i| {
            let (ns, sa) = i.split_once('/').unwrap();
            format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")
        });
        let mut rows = 0;
        for source in ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.1.1", "10.0.2.1", "10.9.9.9"] {
            let mut peers = vec![Peer::Plaintext, Peer::Mtls { uri_san: None }];
            peers.extend(identities.iter().map(|san| Peer::Mtls { uri_san: Some(san) }));
            for peer in peers {
                let facts = RequestFacts {
                    source_ip: Some(source.parse().unwrap()),
                    source_port: Some(40000),
                    destination_ip: Some("10.0.2.1".parse().unwrap()),
                    destination_port: Some(5432),
                    peer,
                    method: Some("GET"),
                    path: Some("/"),
                };
                let (a, b) = (projected.decide(&facts), everything.decide(&facts));
                assert_eq!((a.verdict, a.reason), (b.verdict, b.reason), "{source} {peer:?}");
                rows += 1;
            }
        }
        assert_eq!(rows, 36);
        // The fixture decides both ways, so the comparison means something.
        let allowed = RequestFacts {
            source_ip: Some("10.0.0.2".parse().unwrap()),
            source_port: Some(40000),
            destination_ip: None,
            destination_port: None,
            peer: Peer::Mtls { uri_san: Some(&identities[0]) },
            method: None,
            path: None,
        };
        assert_eq!(projected.decide(&allowed).verdict, krites_policy::Verdict::Allow);
        let quarantined = RequestFacts { source_ip: Some("10.0.0.3".parse().unwrap()), ..allowed };
        assert_eq!(projected.decide(&quarantined).verdict, krites_policy::Verdict::Deny);
    }
}
