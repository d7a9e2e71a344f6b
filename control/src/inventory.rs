//! Everything read from manifests or the API server, converted and validated
//! object by object: a bad object is reported (`kind/namespace/name: field:
//! problem`) and left out, and never hides the others.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::de::DeserializeOwned;
use serde_json::Value;

use krites_policy::config::{PluginConfig, PolicySpec, TierSpec, CONFIG_VERSION};
use krites_policy::{ConfigError, PolicySet};

use crate::calico::{self, Api, CalicoPolicySpec, CalicoTierSpec};
use crate::cluster::{self, PodInfo};
use crate::knp;
use crate::manifests::Manifest;

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Default, Clone)]
pub struct Inventory {
    /// Valid policies, in input order.
    pub policies: Vec<PolicySpec>,
    pub tiers: Vec<TierSpec>,
    pub pods: Vec<PodInfo>,
    pub namespaces: BTreeMap<String, Labels>,
    pub service_accounts: BTreeMap<(String, String), Labels>,
    /// Objects rejected, one entry per problem.
    pub errors: Vec<ConfigError>,
    /// Things left out on purpose (pods not running, staged policies, ...).
    pub notes: Vec<String>,
    /// Kinds that carry no policy or identity data (Deployments, Services, ...).
    pub ignored: BTreeMap<String, usize>,
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

impl Inventory {
    pub fn from_manifests(manifests: &[Manifest]) -> Inventory {
        let mut inv = Inventory::default();
        for m in manifests {
            inv.add(&m.value);
        }
        inv.validate();
        inv
    }

    /// Adds one object; call [`Inventory::validate`] once all are in.
    pub fn add(&mut self, value: &Value) {
        let api_version = str_at(value, "/apiVersion");
        let kind = str_at(value, "/kind");
        let name = str_at(value, "/metadata/name").to_string();
        let namespace = value.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_string);
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        match (group, kind) {
            ("projectcalico.org" | "crd.projectcalico.org", "GlobalNetworkPolicy" | "NetworkPolicy") => {
                let api = if group == "projectcalico.org" { Api::V3 } else { Api::CrdV1 };
                let namespaced = kind == "NetworkPolicy";
                let ns = namespaced.then(|| namespace.clone().unwrap_or_else(|| "default".to_string()));
                let object = match &ns {
                    Some(ns) => format!("{kind}/{ns}/{name}"),
                    None => format!("{kind}/{name}"),
                };
                if let Some(spec) = self.spec::<CalicoPolicySpec>(value, &object) {
                    if namespaced && spec.namespace_selector.is_some() {
                        self.error(&object, "spec.namespaceSelector", "a NetworkPolicy selects workloads of its own namespace only");
                        return;
                    }
                    self.policies.push(calico::policy(api, &name, ns.as_deref(), spec));
                }
            }
            ("projectcalico.org" | "crd.projectcalico.org", "Tier") => {
                if let Some(spec) = self.spec::<CalicoTierSpec>(value, &format!("Tier/{name}")) {
                    self.tiers.push(calico::tier(&name, spec));
                }
            }
            ("projectcalico.org" | "crd.projectcalico.org", k) if k.starts_with("Staged") => {
                self.notes.push(format!("{k}/{name}: staged policies are not enforced; left out"));
            }
            ("networking.k8s.io", "NetworkPolicy") => {
                if let Some(np) = self.typed::<NetworkPolicy>(value, &format!("{}/{}/{name}", knp::KIND, namespace.as_deref().unwrap_or("default"))) {
                    match knp::convert(&np) {
                        Ok(p) => self.policies.push(p),
                        Err(errors) => self.errors.extend(errors),
                    }
                }
            }
            ("", "Pod") => {
                let object = format!("Pod/{}/{name}", namespace.as_deref().unwrap_or("default"));
                if let Some(pod) = self.typed::<Pod>(value, &object) {
                    match cluster::pod(&pod) {
                        Ok(info) => self.pods.push(info),
                        Err(why) => self.notes.push(format!("{object}: {why}; left out")),
                    }
                }
            }
            ("", "ServiceAccount") => {
                if let Some(sa) = self.typed::<ServiceAccount>(value, &format!("ServiceAccount/{name}")) {
                    let (ns, name, labels) = cluster::service_account(&sa);
                    self.service_accounts.insert((ns, name), labels);
                }
            }
            ("", "Namespace") => {
                if let Some(n) = self.typed::<Namespace>(value, &format!("Namespace/{name}")) {
                    let (name, labels) = cluster::namespace(&n);
                    self.namespaces.insert(name, labels);
                }
            }
            _ => *self.ignored.entry(if kind.is_empty() { "(no kind)".to_string() } else { kind.to_string() }).or_default() += 1,
        }
    }

    fn error(&mut self, object: &str, field: &str, problem: impl Into<String>) {
        self.errors.push(ConfigError { object: object.to_string(), field: field.to_string(), problem: problem.into() });
    }

    /// Deserializes `spec`, naming the field that failed.
    fn spec<T: DeserializeOwned + Default>(&mut self, value: &Value, object: &str) -> Option<T> {
        let Some(spec) = value.get("spec") else { return Some(T::default()) };
        match serde_path_to_error::deserialize::<_, T>(spec) {
            Ok(s) => Some(s),
            Err(e) => {
                let path = e.path().to_string();
                let field = if path == "." { "spec".to_string() } else { format!("spec.{path}") };
                self.error(object, &field, e.into_inner().to_string());
                None
            }
        }
    }

    fn typed<T: DeserializeOwned>(&mut self, value: &Value, object: &str) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(t) => Some(t),
            Err(e) => {
                let path = e.path().to_string();
                self.error(object, &path, e.into_inner().to_string());
                None
            }
        }
    }

    /// Validates each policy on its own with the engine's validator (so
    /// control and the filter agree on what is valid) and drops the bad ones.
    pub fn validate(&mut self) {
        let mut seen = std::collections::BTreeSet::new();
        let mut tiers = Vec::new();
        for tier in std::mem::take(&mut self.tiers) {
            let config = PluginConfig { version: CONFIG_VERSION, tiers: vec![tier.clone()], ..Default::default() };
            match PolicySet::from_config(&config) {
                Ok(_) if seen.insert(tier.name.clone()) => tiers.push(tier),
                Ok(_) => self.error(&format!("Tier/{}", tier.name), "metadata.name", "duplicate tier"),
                Err(e) => self.errors.extend(e.0),
            }
        }
        self.tiers = tiers;
        let mut seen = std::collections::BTreeSet::new();
        let mut policies = Vec::new();
        for policy in std::mem::take(&mut self.policies) {
            let config = PluginConfig { version: CONFIG_VERSION, tiers: self.tiers.clone(), policies: vec![policy.clone()], ..Default::default() };
            match PolicySet::from_config(&config) {
                Ok(_) if seen.insert((policy.namespace.clone(), policy.name.clone())) => policies.push(policy),
                Ok(_) => {
                    let object = match &policy.namespace {
                        Some(ns) => format!("{}/{ns}/{}", policy.kind.as_deref().unwrap_or("NetworkPolicy"), policy.name),
                        None => format!("{}/{}", policy.kind.as_deref().unwrap_or("GlobalNetworkPolicy"), policy.name),
                    };
                    self.error(&object, "metadata.name", "duplicate policy");
                }
                Err(e) => self.errors.extend(e.0),
            }
        }
        self.policies = policies;
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&PodInfo> {
        self.pods.iter().find(|p| p.namespace == namespace && p.name == name)
    }
}
