//! Inventory -> plugin config: the policies, and only the endpoint, namespace
//! and service-account entries some rule can tell apart (as Felix sends only
//! the IP sets active rules use), so a WasmPlugin stays small.

use std::collections::{BTreeMap, HashMap};

use krites_policy::config::{EndpointSpec, NamespaceSpec, PluginConfig, ServiceAccountSpec, CONFIG_VERSION};
use krites_policy::model::Group;
use krites_policy::{ConfigErrors, PolicySet};

use crate::inventory::{Inventory, Labels};

/// Kubernetes stores objects up to ~1.5 MiB, etcd's default request limit;
/// keep a WasmPlugin's config well under 1 MiB.
pub const MAX_CONFIG_BYTES: usize = 900 * 1024;

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only what workloads of this namespace need.
    pub namespace: Option<String>,
}

#[derive(Debug)]
pub struct Compiled {
    pub config: PluginConfig,
    pub revision: String,
    pub bytes: usize,
    /// Pod addresses in the cluster, and how many the config carries.
    pub addresses_known: usize,
    pub addresses_emitted: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("the compiled config is invalid (a bug: control validated every object): {0}")]
    Invalid(#[from] ConfigErrors),
    #[error("two running pods claim {ip}: {first} and {second}")]
    AddressClash { ip: String, first: String, second: String },
}

/// Compiles everything the inventory holds (already validated object by object).
pub fn compile(inv: &Inventory, opts: &Options) -> Result<Compiled, CompileError> {
    let in_scope = |ns: Option<&str>| match (&opts.namespace, ns) {
        (Some(want), Some(ns)) => want == ns,
        _ => true,
    };
    let mut policies: Vec<_> = inv.policies.iter().filter(|p| in_scope(p.namespace.as_deref())).cloned().collect();
    policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

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

    let full = PluginConfig { version: CONFIG_VERSION, revision: None, tiers, policies, endpoints, namespaces, service_accounts };
    let addresses_known = full.endpoints.iter().map(|e| e.ips.len()).sum();
    let set = PolicySet::from_config(&full)?;
    let referenced = set.referenced_groups(|_| true);
    let universe = set.universe();
    let keep: std::collections::HashSet<Group> = (0..universe.group_count())
        .filter(|&g| referenced.contains(g))
        .filter_map(|g| universe.group(u32::try_from(g).ok()?).cloned())
        .collect();
    let mut config = full;
    config.endpoints.retain(|e| keep.contains(&Group::new(&e.namespace, &e.service_account, &e.labels)));
    let addresses_emitted = config.endpoints.iter().map(|e| e.ips.len()).sum();

    let set = PolicySet::from_config(&config)?;
    let bytes = serde_json::to_vec(&config).map(|v| v.len()).unwrap_or(0);
    Ok(Compiled { revision: set.revision().to_string(), config, bytes, addresses_known, addresses_emitted })
}

/// Namespaces that have pods or namespaced policies: the shards of a
/// per-namespace compile.
pub fn namespaces(inv: &Inventory) -> Vec<String> {
    let mut all: Vec<String> = inv
        .pods
        .iter()
        .map(|p| p.namespace.clone())
        .chain(inv.policies.iter().filter_map(|p| p.namespace.clone()))
        .collect();
    all.sort();
    all.dedup();
    all
}
