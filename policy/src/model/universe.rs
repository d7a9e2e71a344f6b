//! The endpoint table: who owns each source IP, and the labels of pods,
//! namespaces and service accounts, with an inverted label index so that a
//! selector can be turned into a set of endpoint groups without evaluating it
//! once per group.

use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use fixedbitset::FixedBitSet;

use super::addresses::AddressIndex;
use crate::ranges::NetSet;
use crate::selector::{Labels, Selector};

/// Labels Calico adds to every workload endpoint, namespace and service account.
pub mod special {
    pub const NAMESPACE: &str = "projectcalico.org/namespace";
    pub const SERVICE_ACCOUNT: &str = "projectcalico.org/serviceaccount";
    pub const ORCHESTRATOR: &str = "projectcalico.org/orchestrator";
    /// On namespaces and service accounts: their own name.
    pub const NAME: &str = "projectcalico.org/name";
    pub const K8S: &str = "k8s";
}

/// Pods that share namespace, service account and labels. Pod labels include
/// Calico's special labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Group {
    pub namespace: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
}

impl Group {
    pub fn new(namespace: &str, service_account: &str, labels: &BTreeMap<String, String>) -> Group {
        Group {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
            labels: pod_labels(namespace, service_account, labels),
        }
    }
}

/// A pod's labels as Calico's selectors see them.
pub fn pod_labels(namespace: &str, service_account: &str, labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut all = labels.clone();
    all.insert(special::NAMESPACE.to_string(), namespace.to_string());
    all.insert(special::SERVICE_ACCOUNT.to_string(), service_account.to_string());
    all.entry(special::ORCHESTRATOR.to_string()).or_insert_with(|| special::K8S.to_string());
    all
}

/// A Calico GlobalNetworkSet (no namespace) or NetworkSet: addresses that
/// rule selectors match by these labels. Not a pod: no service account, and
/// no certificate ever names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSet {
    pub name: String,
    pub namespace: Option<String>,
    /// The set's labels as selectors see them: a NetworkSet's carry
    /// `projectcalico.org/namespace`, as a pod's do.
    pub labels: BTreeMap<String, String>,
    /// As configured (validated), for unions with other sets.
    pub cidrs: Vec<String>,
    pub nets: NetSet,
}

impl NetworkSet {
    /// `GlobalNetworkSet/name` or `NetworkSet/namespace/name`.
    pub fn object(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("NetworkSet/{ns}/{}", self.name),
            None => format!("GlobalNetworkSet/{}", self.name),
        }
    }
}

/// A network set's labels as Calico's selectors see them.
pub fn network_set_labels(namespace: Option<&str>, labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut all = labels.clone();
    if let Some(ns) = namespace {
        all.insert(special::NAMESPACE.to_string(), ns.to_string());
    }
    all
}

/// Labels of a namespace or service account, plus `projectcalico.org/name`.
pub struct NamedLabels<'a> {
    pub name: &'a str,
    pub labels: Option<&'a BTreeMap<String, String>>,
}

impl Labels for NamedLabels<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        if key == special::NAME {
            return Some(self.name);
        }
        self.labels.and_then(|l| l.get(key)).map(String::as_str)
    }
}

/// What a certificate alone proves about a pod: its namespace and service
/// account, nothing about its other labels.
pub struct CertifiedLabels<'a> {
    pub namespace: &'a str,
    pub service_account: &'a str,
}

impl Labels for CertifiedLabels<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        match key {
            special::NAMESPACE => Some(self.namespace),
            special::SERVICE_ACCOUNT => Some(self.service_account),
            special::ORCHESTRATOR => Some(special::K8S),
            _ => None,
        }
    }
}

/// Namespace -> labels.
pub(crate) type NamespaceLabels = HashMap<String, BTreeMap<String, String>>;
/// Namespace -> service account -> labels.
pub(crate) type ServiceAccountLabels = HashMap<String, HashMap<String, BTreeMap<String, String>>>;

#[derive(Debug, Default)]
pub struct Universe {
    pub(crate) groups: Vec<Group>,
    addresses: AddressIndex,
    /// Shared with the certified universe, which reads the same labels.
    namespaces: Arc<NamespaceLabels>,
    service_accounts: Arc<ServiceAccountLabels>,
    index: LabelIndex,
    groups_by_namespace: BTreeMap<String, Vec<u32>>,
    groups_by_service_account: BTreeMap<(String, String), Vec<u32>>,
    /// Every group, ordered by its service account's name (in any
    /// namespace): a `serviceAccounts.names` clause reads only the groups
    /// of those names, found by bisection.
    groups_by_service_account_name: Vec<u32>,
    /// What certificates can say: one pseudo-group per known (namespace,
    /// service account), labelled only as a certificate vouches for
    /// ([`CertifiedLabels`]), so that the label index answers "which rules
    /// does this certificate satisfy" as it does for pods. `None` inside the
    /// certified universe itself.
    certified: Option<Box<Universe>>,
    /// namespace -> service account -> pseudo-group in `certified`.
    certified_ids: HashMap<String, HashMap<String, u32>>,
    /// GlobalNetworkSets and NetworkSets, in config order.
    network_sets: Vec<NetworkSet>,
}

impl Universe {
    pub(crate) fn new(
        groups: Vec<Group>,
        addresses: AddressIndex,
        namespaces: HashMap<String, BTreeMap<String, String>>,
        service_accounts: HashMap<String, HashMap<String, BTreeMap<String, String>>>,
        network_sets: Vec<NetworkSet>,
    ) -> Universe {
        // Every (namespace, service account) a pod runs as or the config names.
        let mut identities: Vec<(String, String)> =
            groups.iter().map(|g| (g.namespace.clone(), g.service_account.clone())).collect();
        for (ns, accounts) in &service_accounts {
            identities.extend(accounts.keys().map(|sa| (ns.clone(), sa.clone())));
        }
        // Heapsort: configure time only, and far less Wasm than sort_unstable's.
        let mut identities = BinaryHeap::from(identities).into_sorted_vec();
        identities.dedup();
        let mut certified_ids: HashMap<String, HashMap<String, u32>> = HashMap::new();
        for (i, (ns, sa)) in (0u32..).zip(&identities) {
            certified_ids.entry(ns.clone()).or_default().insert(sa.clone(), i);
        }
        let none = BTreeMap::new();
        let pseudo = identities.iter().map(|(ns, sa)| Group::new(ns, sa, &none)).collect();
        let (namespaces, service_accounts) = (Arc::new(namespaces), Arc::new(service_accounts));
        let certified =
            Universe::without_certified(pseudo, AddressIndex::default(), Arc::clone(&namespaces), Arc::clone(&service_accounts));
        let mut universe = Universe::without_certified(groups, addresses, namespaces, service_accounts);
        universe.certified = Some(Box::new(certified));
        universe.certified_ids = certified_ids;
        universe.network_sets = network_sets;
        universe
    }

    fn without_certified(
        groups: Vec<Group>,
        addresses: AddressIndex,
        namespaces: Arc<NamespaceLabels>,
        service_accounts: Arc<ServiceAccountLabels>,
    ) -> Universe {
        let index = LabelIndex::build(&groups);
        let mut groups_by_namespace: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        let mut groups_by_service_account: BTreeMap<(String, String), Vec<u32>> = BTreeMap::new();
        for (i, g) in (0u32..).zip(&groups) {
            groups_by_namespace.entry(g.namespace.clone()).or_default().push(i);
            groups_by_service_account.entry((g.namespace.clone(), g.service_account.clone())).or_default().push(i);
        }
        // Heapsort, as for the identities above.
        let by_name: Vec<(&str, u32)> = (0u32..).zip(&groups).map(|(i, g)| (g.service_account.as_str(), i)).collect();
        let groups_by_service_account_name = BinaryHeap::from(by_name).into_sorted_vec().into_iter().map(|(_, i)| i).collect();
        Universe {
            groups,
            addresses,
            namespaces,
            service_accounts,
            index,
            groups_by_namespace,
            groups_by_service_account,
            groups_by_service_account_name,
            certified: None,
            certified_ids: HashMap::new(),
            network_sets: Vec::new(),
        }
    }

    /// The universe of certificate identities (see the field), if built.
    pub(crate) fn certified(&self) -> Option<&Universe> {
        self.certified.as_deref()
    }

    /// The pseudo-group of `certified()` for what a certificate says.
    pub(crate) fn certified_id(&self, namespace: &str, service_account: &str) -> Option<u32> {
        self.certified_ids.get(namespace).and_then(|m| m.get(service_account)).copied()
    }

    pub fn group(&self, id: u32) -> Option<&Group> {
        self.groups.get(id as usize)
    }

    pub fn network_sets(&self) -> &[NetworkSet] {
        &self.network_sets
    }

    /// The network sets whose nets hold `ip`.
    pub fn network_sets_holding(&self, ip: IpAddr) -> impl Iterator<Item = &NetworkSet> {
        self.network_sets.iter().filter(move |s| s.nets.contains(ip))
    }

    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    pub fn ip_count(&self) -> usize {
        self.addresses.len()
    }

    /// The group owning `ip`; IPv4-mapped IPv6 is folded to IPv4.
    pub fn owner_of(&self, ip: IpAddr) -> Option<u32> {
        self.addresses.owner_of(ip)
    }

    pub fn namespace_labels<'a>(&'a self, namespace: &'a str) -> NamedLabels<'a> {
        NamedLabels { name: namespace, labels: self.namespaces.get(namespace) }
    }

    pub fn service_account_labels<'a>(&'a self, namespace: &'a str, name: &'a str) -> NamedLabels<'a> {
        NamedLabels { name, labels: self.service_accounts.get(namespace).and_then(|m| m.get(name)) }
    }

    pub(crate) fn empty_set(&self) -> FixedBitSet {
        FixedBitSet::with_capacity(self.groups.len())
    }

    pub(crate) fn full_set(&self) -> FixedBitSet {
        let mut set = self.empty_set();
        set.insert_range(..);
        set
    }

    /// Groups whose pod labels match `selector`.
    pub(crate) fn groups_matching(&self, selector: &Selector) -> FixedBitSet {
        self.index.eval(selector, self.groups.len())
    }

    /// Groups in namespaces that satisfy `accept`.
    pub(crate) fn groups_in_namespaces(&self, mut accept: impl FnMut(&str) -> bool) -> FixedBitSet {
        let mut set = self.empty_set();
        for (ns, members) in &self.groups_by_namespace {
            if accept(ns) {
                set.extend(members.iter().map(|&g| g as usize));
            }
        }
        set
    }

    /// Groups running as a service account named in `names` whose
    /// (namespace, service account) satisfy `accept`: work in proportion to
    /// those groups, not to every account of the cluster.
    pub(crate) fn groups_with_service_account_names<'a>(
        &self,
        names: impl IntoIterator<Item = &'a String>,
        mut accept: impl FnMut(&str, &str) -> bool,
    ) -> FixedBitSet {
        let mut set = self.empty_set();
        let by_name = &self.groups_by_service_account_name;
        let name_of = |g: u32| self.group(g).map(|g| g.service_account.as_str());
        for name in names {
            let start = by_name.partition_point(|&g| name_of(g) < Some(name.as_str()));
            for &g in by_name.get(start..).into_iter().flatten().take_while(|&&g| name_of(g) == Some(name.as_str())) {
                if self.group(g).is_some_and(|group| accept(&group.namespace, &group.service_account)) {
                    set.insert(g as usize);
                }
            }
        }
        set
    }

    /// Groups whose (namespace, service account) satisfy `accept`.
    pub(crate) fn groups_with_service_accounts(&self, mut accept: impl FnMut(&str, &str) -> bool) -> FixedBitSet {
        let mut set = self.empty_set();
        for ((ns, sa), members) in &self.groups_by_service_account {
            if accept(ns, sa) {
                set.extend(members.iter().map(|&g| g as usize));
            }
        }
        set
    }
}

/// label key -> (groups having the key, value -> groups having key=value).
#[derive(Debug, Default)]
struct LabelIndex {
    keys: HashMap<String, KeyPostings>,
}

#[derive(Debug, Default)]
struct KeyPostings {
    present: Vec<u32>,
    by_value: HashMap<String, Vec<u32>>,
}

impl LabelIndex {
    fn build(groups: &[Group]) -> LabelIndex {
        let mut keys: HashMap<String, KeyPostings> = HashMap::new();
        for (i, g) in (0u32..).zip(groups) {
            for (k, v) in &g.labels {
                let postings = keys.entry(k.clone()).or_default();
                postings.present.push(i);
                postings.by_value.entry(v.clone()).or_default().push(i);
            }
        }
        LabelIndex { keys }
    }

    fn from_postings<'a>(n: usize, lists: impl IntoIterator<Item = &'a Vec<u32>>) -> FixedBitSet {
        let mut set = FixedBitSet::with_capacity(n);
        for list in lists {
            set.extend(list.iter().map(|&g| g as usize));
        }
        set
    }

    fn values_where(&self, n: usize, key: &str, keep: impl Fn(&str) -> bool) -> FixedBitSet {
        let lists = self.keys.get(key).into_iter().flat_map(|p| p.by_value.iter()).filter(|(v, _)| keep(v)).map(|(_, l)| l);
        Self::from_postings(n, lists)
    }

    fn eval(&self, selector: &Selector, n: usize) -> FixedBitSet {
        let complement = |mut set: FixedBitSet| {
            set.toggle_range(..);
            set
        };
        match selector {
            Selector::All | Selector::Global => {
                let mut set = FixedBitSet::with_capacity(n);
                set.insert_range(..);
                set
            }
            Selector::Has(k) => Self::from_postings(n, self.keys.get(k).map(|p| &p.present)),
            Selector::Eq(k, v) => Self::from_postings(n, self.keys.get(k).and_then(|p| p.by_value.get(v))),
            Selector::Ne(k, v) => complement(Self::from_postings(n, self.keys.get(k).and_then(|p| p.by_value.get(v)))),
            Selector::In(k, values) => {
                let lists = self.keys.get(k).into_iter().flat_map(|p| values.iter().filter_map(|v| p.by_value.get(v)));
                Self::from_postings(n, lists)
            }
            Selector::NotIn(k, values) => complement(self.eval(&Selector::In(k.clone(), values.clone()), n)),
            Selector::Contains(k, s) => self.values_where(n, k, |v| v.contains(s.as_str())),
            Selector::StartsWith(k, s) => self.values_where(n, k, |v| v.starts_with(s.as_str())),
            Selector::EndsWith(k, s) => self.values_where(n, k, |v| v.ends_with(s.as_str())),
            Selector::Not(inner) => complement(self.eval(inner, n)),
            Selector::And(parts) => {
                let mut acc = self.eval(&Selector::All, n);
                for p in parts {
                    acc.intersect_with(&self.eval(p, n));
                }
                acc
            }
            Selector::Or(parts) => {
                let mut acc = FixedBitSet::with_capacity(n);
                for p in parts {
                    acc.union_with(&self.eval(p, n));
                }
                acc
            }
        }
    }
}
