//! Everything read from manifests or the API server, converted and validated
//! object by object: a bad object is reported (`kind/namespace/name: field:
//! problem`) and left out, and never hides the others.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::de::DeserializeOwned;
use serde_json::Value;

use krites_policy::config::{NetworkSetSpec, PluginConfig, PolicySpec, StagedAction, TierSpec, CONFIG_VERSION};
use krites_policy::{ConfigError, PolicySet};

use crate::calico::{self, Api, CalicoNetworkSetSpec, CalicoPolicySpec, CalicoTierSpec};
use crate::cluster::{self, EndpointSliceInfo, PodInfo, ServiceInfo};
use crate::knp;
use crate::manifests::Manifest;

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Default, Clone)]
pub struct Inventory {
    /// Valid policies, in input order.
    pub policies: Vec<PolicySpec>,
    /// Valid staged policies (each with its `staged_action`), in input order.
    pub staged_policies: Vec<PolicySpec>,
    pub tiers: Vec<TierSpec>,
    pub pods: Vec<PodInfo>,
    pub namespaces: BTreeMap<String, Labels>,
    pub service_accounts: BTreeMap<(String, String), Labels>,
    /// Valid GlobalNetworkSets and NetworkSets, in input order.
    pub network_sets: Vec<NetworkSetSpec>,
    /// Services (not ExternalName ones), in input order.
    pub services: Vec<ServiceInfo>,
    pub endpoint_slices: Vec<EndpointSliceInfo>,
    /// Services (namespace, name) with an EndpointSlice that did not
    /// convert: their endpoints are not all known, so they are left out of
    /// the config (a connection to them then reads as one to an address not
    /// known here, which no grant by identity matches).
    pub broken_services: std::collections::BTreeSet<(String, String)>,
    /// Accept `http` in Calico egress rules (a Krites extension: Calico
    /// validates it on ingress only). Set before adding objects.
    pub allow_egress_http: bool,
    /// Objects rejected, one entry per problem.
    pub errors: Vec<ConfigError>,
    /// Things left out on purpose (pods not running, ...).
    pub notes: Vec<String>,
    /// Kinds that carry no policy, identity or Service data (Deployments, ...).
    pub ignored: BTreeMap<String, usize>,
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

impl Inventory {
    pub fn from_manifests(manifests: &[Manifest]) -> Inventory {
        Inventory::from_manifests_with(manifests, false)
    }

    /// [`Inventory::from_manifests`], accepting `http` on egress rules or not.
    pub fn from_manifests_with(manifests: &[Manifest], allow_egress_http: bool) -> Inventory {
        let mut inv = Inventory { allow_egress_http, ..Inventory::default() };
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
                    let http = calico::egress_http_fields(&spec);
                    if !self.allow_egress_http && !http.is_empty() {
                        for field in http {
                            self.error(
                                &object,
                                &field,
                                "Calico accepts HTTP matches on ingress rules only; pass --allow-egress-http to enforce them on egress as a Krites extension",
                            );
                        }
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
            ("projectcalico.org" | "crd.projectcalico.org", "GlobalNetworkSet" | "NetworkSet") => {
                let ns = (kind == "NetworkSet").then(|| namespace.clone().unwrap_or_else(|| "default".to_string()));
                let object = match &ns {
                    Some(ns) => format!("{kind}/{ns}/{name}"),
                    None => format!("{kind}/{name}"),
                };
                let labels = match value.pointer("/metadata/labels") {
                    None | Some(Value::Null) => Labels::new(),
                    Some(l) => match serde_json::from_value::<Labels>(l.clone()) {
                        Ok(l) => l,
                        Err(e) => {
                            self.error(&object, "metadata.labels", e.to_string());
                            return;
                        }
                    },
                };
                if let Some(spec) = self.spec::<CalicoNetworkSetSpec>(value, &object) {
                    self.network_sets.push(calico::network_set(&name, ns.as_deref(), labels, spec));
                }
            }
            ("projectcalico.org" | "crd.projectcalico.org", "StagedGlobalNetworkPolicy" | "StagedNetworkPolicy") => {
                let api = if group == "projectcalico.org" { Api::V3 } else { Api::CrdV1 };
                let namespaced = kind == "StagedNetworkPolicy";
                let ns = namespaced.then(|| namespace.clone().unwrap_or_else(|| "default".to_string()));
                let object = match &ns {
                    Some(ns) => format!("{kind}/{ns}/{name}"),
                    None => format!("{kind}/{name}"),
                };
                let (action, rest) = match calico::split_staged_action(value.get("spec")) {
                    Ok(split) => split,
                    Err((field, problem)) => return self.error(&object, &field, problem),
                };
                if action == StagedAction::Delete {
                    // Only the name (and the tier it is in) matters.
                    let tier = rest.get("tier").and_then(Value::as_str).map(str::to_string);
                    self.staged_policies.push(calico::staged_delete(api, &name, ns.as_deref(), tier));
                    return;
                }
                let Some(spec) = self.spec::<CalicoPolicySpec>(&serde_json::json!({ "spec": rest }), &object) else { return };
                if namespaced && spec.namespace_selector.is_some() {
                    return self.error(&object, "spec.namespaceSelector", "a NetworkPolicy selects workloads of its own namespace only");
                }
                let http = calico::egress_http_fields(&spec);
                if !self.allow_egress_http && !http.is_empty() {
                    for field in http {
                        self.error(
                            &object,
                            &field,
                            "Calico accepts HTTP matches on ingress rules only; pass --allow-egress-http to enforce them on egress as a Krites extension",
                        );
                    }
                    return;
                }
                self.staged_policies.push(calico::staged(calico::policy(api, &name, ns.as_deref(), spec), action));
            }
            ("projectcalico.org" | "crd.projectcalico.org", "StagedKubernetesNetworkPolicy") => {
                let ns = namespace.clone().unwrap_or_else(|| "default".to_string());
                let object = format!("{kind}/{ns}/{name}");
                let (action, rest) = match calico::split_staged_action(value.get("spec")) {
                    Ok(split) => split,
                    Err((field, problem)) => return self.error(&object, &field, problem),
                };
                let staged_kind = Some(kind.to_string());
                if action == StagedAction::Delete {
                    self.staged_policies.push(PolicySpec {
                        name: format!("knp.default.{name}"),
                        namespace: Some(ns),
                        kind: staged_kind,
                        staged_action: Some(action),
                        ..PolicySpec::default()
                    });
                    return;
                }
                // The spec is a Kubernetes NetworkPolicy's: converted as the
                // enforced one would be, errors naming the staged object.
                let np = serde_json::json!({
                    "apiVersion": "networking.k8s.io/v1",
                    "kind": "NetworkPolicy",
                    "metadata": {"name": name, "namespace": ns},
                    "spec": rest,
                });
                let Some(np) = self.typed::<NetworkPolicy>(&np, &object) else { return };
                match knp::convert(&np) {
                    Ok(p) => self.staged_policies.push(PolicySpec { kind: staged_kind, staged_action: Some(action), ..p }),
                    Err(errors) => self.errors.extend(errors.into_iter().map(|e| ConfigError { object: object.clone(), ..e })),
                }
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
            ("", "Service") => {
                let object = format!("Service/{}/{name}", namespace.as_deref().unwrap_or("default"));
                if let Some(svc) = self.typed::<Service>(value, &object) {
                    match cluster::service(&svc) {
                        Ok(Ok(info)) => self.services.push(info),
                        Ok(Err(why)) => self.notes.push(format!("{object}: {why}; left out")),
                        Err(errors) => {
                            for (field, problem) in errors {
                                self.error(&object, &field, problem);
                            }
                        }
                    }
                }
            }
            ("discovery.k8s.io", "EndpointSlice") => {
                let ns = namespace.clone().unwrap_or_else(|| "default".to_string());
                let object = format!("EndpointSlice/{ns}/{name}");
                let service = str_at(value, &format!("/metadata/labels/{}", cluster::SERVICE_NAME_LABEL.replace('/', "~1"))).to_string();
                let converted = match self.typed::<EndpointSlice>(value, &object) {
                    Some(slice) => cluster::endpoint_slice(&slice),
                    None => Err(Vec::new()),
                };
                match converted {
                    Ok(Ok(info)) => self.endpoint_slices.push(info),
                    Ok(Err(why)) => self.notes.push(format!("{object}: {why}; left out")),
                    Err(errors) => {
                        for (field, problem) in errors {
                            self.error(&object, &field, problem);
                        }
                        if !service.is_empty() {
                            self.broken_services.insert((ns, service));
                        }
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

    /// Adds what `other` holds (one object's part, kept from an earlier
    /// compile), the same as adding its objects here in turn; call
    /// [`Inventory::validate`] once all are in.
    pub fn merge(&mut self, other: &Inventory) {
        // Every field named: one added to Inventory does not compile until merged here too.
        let Inventory {
            policies,
            staged_policies,
            tiers,
            network_sets,
            services,
            endpoint_slices,
            broken_services,
            allow_egress_http: _, // a setting of the inventory merged into, not data
            pods,
            namespaces,
            service_accounts,
            errors,
            notes,
            ignored,
        } = other;
        self.policies.extend(policies.iter().cloned());
        self.staged_policies.extend(staged_policies.iter().cloned());
        self.services.extend(services.iter().cloned());
        self.endpoint_slices.extend(endpoint_slices.iter().cloned());
        self.broken_services.extend(broken_services.iter().cloned());
        self.network_sets.extend(network_sets.iter().cloned());
        self.tiers.extend(tiers.iter().cloned());
        self.pods.extend(pods.iter().cloned());
        self.namespaces.extend(namespaces.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.service_accounts.extend(service_accounts.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.errors.extend(errors.iter().cloned());
        self.notes.extend(notes.iter().cloned());
        for (kind, n) in ignored {
            *self.ignored.entry(kind.clone()).or_default() += n;
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
        // Staged policies, each on its own (the policy it sets or deletes
        // need not exist: a staged Set may create one).
        let mut seen = std::collections::BTreeSet::new();
        let mut staged = Vec::new();
        for policy in std::mem::take(&mut self.staged_policies) {
            let config = PluginConfig { version: CONFIG_VERSION, tiers: self.tiers.clone(), staged_policies: vec![policy.clone()], ..Default::default() };
            match PolicySet::from_config(&config) {
                Ok(_) if seen.insert((policy.namespace.clone(), policy.name.clone())) => staged.push(policy),
                Ok(_) => {
                    let kind = policy.kind.as_deref().unwrap_or(if policy.namespace.is_some() { "StagedNetworkPolicy" } else { "StagedGlobalNetworkPolicy" });
                    let object = match &policy.namespace {
                        Some(ns) => format!("{kind}/{ns}/{}", policy.name),
                        None => format!("{kind}/{}", policy.name),
                    };
                    self.error(&object, "metadata.name", "duplicate staged policy");
                }
                Err(e) => self.errors.extend(e.0),
            }
        }
        self.staged_policies = staged;
        let mut seen = std::collections::BTreeSet::new();
        let mut sets = Vec::new();
        for set in std::mem::take(&mut self.network_sets) {
            let config = PluginConfig { version: CONFIG_VERSION, network_sets: vec![set.clone()], ..Default::default() };
            match PolicySet::from_config(&config) {
                Ok(_) if seen.insert((set.namespace.clone(), set.name.clone())) => sets.push(set),
                Ok(_) => {
                    let object = match &set.namespace {
                        Some(ns) => format!("NetworkSet/{ns}/{}", set.name),
                        None => format!("GlobalNetworkSet/{}", set.name),
                    };
                    self.error(&object, "metadata.name", "duplicate network set");
                }
                Err(e) => self.errors.extend(e.0),
            }
        }
        self.network_sets = sets;
        // Services: one per name, one per ClusterIP (the engine resolves a
        // connection by either, so a clash would make one of them unreachable
        // by policy).
        let mut names = std::collections::BTreeSet::new();
        let mut cluster_ips: BTreeMap<std::net::IpAddr, String> = BTreeMap::new();
        let mut services = Vec::new();
        for svc in std::mem::take(&mut self.services) {
            let object = format!("Service/{}/{}", svc.namespace, svc.name);
            if !names.insert((svc.namespace.clone(), svc.name.clone())) {
                self.error(&object, "metadata.name", "duplicate service");
                continue;
            }
            let clash = svc.cluster_ips.iter().enumerate().find_map(|(i, ip)| cluster_ips.get(&ip.to_canonical()).map(|other| (i, *ip, other.clone())));
            if let Some((i, ip, other)) = clash {
                self.error(&object, &format!("spec.clusterIPs[{i}]"), format!("{ip} is already the ClusterIP of {other}"));
                continue;
            }
            for ip in &svc.cluster_ips {
                cluster_ips.insert(ip.to_canonical(), object.clone());
            }
            services.push(svc);
        }
        self.services = services;
        let mut seen = std::collections::BTreeSet::new();
        let mut slices = Vec::new();
        for slice in std::mem::take(&mut self.endpoint_slices) {
            if seen.insert((slice.namespace.clone(), slice.name.clone())) {
                slices.push(slice);
            } else {
                self.error(&format!("EndpointSlice/{}/{}", slice.namespace, slice.name), "metadata.name", "duplicate EndpointSlice");
            }
        }
        self.endpoint_slices = slices;
    }

    /// A pod of the inventory by one of its addresses.
    pub fn pod_at(&self, ip: std::net::IpAddr) -> Option<&PodInfo> {
        self.pods.iter().find(|p| p.ips.contains(&ip))
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&PodInfo> {
        self.pods.iter().find(|p| p.namespace == namespace && p.name == name)
    }
}

#[cfg(test)]
mod staged_tests {
    #![allow(clippy::unwrap_used)] // test code

    use super::*;
    use krites_policy::config::{Action, PolicyType};

    fn inventory(yaml: &str) -> Inventory {
        let mut parsed = Vec::new();
        crate::manifests::parse_text("staged.yaml", yaml, &mut parsed).unwrap();
        Inventory::from_manifests(&parsed)
    }

    fn errors(inv: &Inventory) -> Vec<(String, String)> {
        inv.errors.iter().map(|e| (e.object.clone(), e.field.clone())).collect()
    }

    #[test]
    fn staged_kinds_convert_as_the_policies_they_would_set() {
        let inv = inventory(
            r#"
apiVersion: crd.projectcalico.org/v1
kind: StagedGlobalNetworkPolicy
metadata: {name: default.lockdown}
spec:
  selector: app == 'db'
  ingress: [{action: Allow, source: {selector: app == 'api'}}]
---
apiVersion: crd.projectcalico.org/v1
kind: Tier
metadata: {name: security}
spec: {order: 100}
---
apiVersion: crd.projectcalico.org/v1
kind: StagedNetworkPolicy
metadata: {name: security.db, namespace: shop}
spec:
  tier: security
  stagedAction: Set
  selector: app == 'db'
  egress: [{action: Deny, destination: {nets: [0.0.0.0/0]}}]
---
apiVersion: projectcalico.org/v3
kind: StagedNetworkPolicy
metadata: {name: old, namespace: shop}
spec: {stagedAction: Delete}
---
apiVersion: projectcalico.org/v3
kind: StagedKubernetesNetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{ports: [{port: 80}]}]
---
apiVersion: projectcalico.org/v3
kind: StagedKubernetesNetworkPolicy
metadata: {name: gone, namespace: shop}
spec: {stagedAction: Delete}
"#,
        );
        assert!(inv.errors.is_empty(), "{:?}", inv.errors);
        assert!(inv.policies.is_empty(), "staged policies are not enforced ones");
        let by_name = |n: &str| inv.staged_policies.iter().find(|p| p.name == n).unwrap();
        // v1 stores default-tier policies as `default.<name>`: named as the enforced one is.
        let gnp = by_name("lockdown");
        assert_eq!((gnp.kind.as_deref(), gnp.staged_action, gnp.namespace.as_deref()), (Some("StagedGlobalNetworkPolicy"), Some(StagedAction::Set), None));
        assert_eq!(gnp.ingress[0].action, Action::Allow);
        // Tier-prefixed names stay as Calico stores them, tier kept.
        let np = by_name("security.db");
        assert_eq!((np.tier.as_deref(), np.namespace.as_deref()), (Some("security"), Some("shop")));
        assert_eq!(np.types, Some(vec![PolicyType::Egress]));
        // A Delete: the name only, no selector needed.
        let old = by_name("old");
        assert_eq!((old.kind.as_deref(), old.staged_action, old.selector.as_deref()), (Some("StagedNetworkPolicy"), Some(StagedAction::Delete), None));
        // Kubernetes' staged kind converts as knp.rs converts the enforced one, Set by default.
        let knp = by_name("knp.default.web");
        assert_eq!((knp.kind.as_deref(), knp.staged_action), (Some("StagedKubernetesNetworkPolicy"), Some(StagedAction::Set)));
        assert_eq!(knp.selector.as_deref(), Some("projectcalico.org/orchestrator == 'k8s' && app == 'web'"));
        assert_eq!(by_name("knp.default.gone").staged_action, Some(StagedAction::Delete));
    }

    #[test]
    fn invalid_staged_objects_are_named_with_their_field() {
        let inv = inventory(
            r#"
apiVersion: projectcalico.org/v3
kind: StagedGlobalNetworkPolicy
metadata: {name: maybe}
spec: {stagedAction: Perhaps, selector: all()}
---
apiVersion: projectcalico.org/v3
kind: StagedNetworkPolicy
metadata: {name: typo, namespace: shop}
spec: {selectr: app == 'x'}
---
apiVersion: projectcalico.org/v3
kind: StagedNetworkPolicy
metadata: {name: global, namespace: shop}
spec: {namespaceSelector: all()}
---
apiVersion: projectcalico.org/v3
kind: StagedGlobalNetworkPolicy
metadata: {name: bad-selector}
spec: {selector: "app =="}
---
apiVersion: projectcalico.org/v3
kind: StagedGlobalNetworkPolicy
metadata: {name: http-out}
spec: {egress: [{action: Allow, http: {methods: [GET]}}]}
---
apiVersion: projectcalico.org/v3
kind: StagedKubernetesNetworkPolicy
metadata: {name: k, namespace: shop}
spec: {policyTypes: [Sideways]}
---
apiVersion: projectcalico.org/v3
kind: StagedGlobalNetworkPolicy
metadata: {name: fine}
spec: {selector: all()}
"#,
        );
        let got = errors(&inv);
        let want = [
            ("StagedGlobalNetworkPolicy/maybe", "spec.stagedAction"),
            ("StagedNetworkPolicy/shop/typo", "spec.selectr"),
            ("StagedNetworkPolicy/shop/global", "spec.namespaceSelector"),
            ("StagedGlobalNetworkPolicy/http-out", "spec.egress[0].http"),
            ("StagedKubernetesNetworkPolicy/shop/k", "spec.policyTypes[0]"),
            ("StagedGlobalNetworkPolicy/bad-selector", "spec.selector"),
        ];
        for (object, field) in want {
            assert!(got.iter().any(|(o, f)| o == object && f.starts_with(field)), "{object}: {field} missing from {got:?}");
        }
        assert_eq!(got.len(), want.len(), "{got:?}");
        // None hides another: the valid one is kept.
        assert_eq!(inv.staged_policies.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["fine"]);
    }
}
