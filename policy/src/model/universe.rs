//! The endpoint table: who owns each source IP, and the labels of pods,
//! namespaces and service accounts, with an inverted label index so that a
//! selector can be turned into a set of endpoint groups without evaluating it
//! once per group. Strings are interned ([`Strings`]): a group is three ids
//! and a list of id pairs.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use fixedbitset::FixedBitSet;

use super::addresses::AddressIndex;
use super::identity::SourceView;
use super::names::{halves, hash_of_pair, label_in, label_set, set_label, sorted, LabelPairs, Strings, StringsBuilder, Sym};
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
    /// Prefixes of the labels an endpoint inherits from its namespace's and
    /// its service account's profiles (Calico's `kns.`/`ksa.` profiles'
    /// `labelsToApply`): `pcns.env`, `pcsa.projectcalico.org/name`.
    pub const NAMESPACE_PREFIX: &str = "pcns.";
    pub const SERVICE_ACCOUNT_PREFIX: &str = "pcsa.";
}

/// The ids of the strings Calico's special labels use.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SpecialSyms {
    namespace: Sym,
    service_account: Sym,
    orchestrator: Sym,
    k8s: Sym,
}

impl SpecialSyms {
    pub(crate) fn new(strings: &mut StringsBuilder) -> SpecialSyms {
        SpecialSyms {
            namespace: strings.intern(special::NAMESPACE),
            service_account: strings.intern(special::SERVICE_ACCOUNT),
            orchestrator: strings.intern(special::ORCHESTRATOR),
            k8s: strings.intern(special::K8S),
        }
    }
}

/// Pods that share namespace, service account and labels, as string ids.
/// The labels include Calico's special labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct GroupEntry {
    namespace: Sym,
    service_account: Sym,
    labels: LabelPairs,
}

impl GroupEntry {
    /// A group from its pods' own labels (interned pairs), with Calico's
    /// special labels set as [`pod_labels`] sets them.
    pub(crate) fn new(namespace: Sym, service_account: Sym, own: Vec<(Sym, Sym)>, specials: SpecialSyms) -> GroupEntry {
        let mut labels = label_set(own).into_vec();
        set_label(&mut labels, specials.namespace, namespace, true);
        set_label(&mut labels, specials.service_account, service_account, true);
        set_label(&mut labels, specials.orchestrator, specials.k8s, false);
        GroupEntry { namespace, service_account, labels: labels.into_boxed_slice() }
    }
}

/// One endpoint group as callers see it: its strings resolved.
#[derive(Debug, Clone, Copy)]
pub struct Group<'u> {
    entry: &'u GroupEntry,
    strings: &'u Strings,
}

impl<'u> Group<'u> {
    pub fn namespace(&self) -> &'u str {
        self.strings.get(self.entry.namespace)
    }

    pub fn service_account(&self) -> &'u str {
        self.strings.get(self.entry.service_account)
    }

    /// All labels, Calico's special ones included, as [`pod_labels`] gives them.
    pub fn labels(&self) -> impl Iterator<Item = (&'u str, &'u str)> + 'u {
        let strings = self.strings;
        self.entry.labels.iter().map(move |&(k, v)| (strings.get(k), strings.get(v)))
    }

    pub fn label_map(&self) -> BTreeMap<String, String> {
        let mut map = BTreeMap::new();
        for (k, v) in self.labels() {
            map.insert(k.to_string(), v.to_string());
        }
        map
    }

    /// This group as a source (or destination) the identity clauses read.
    pub fn as_source(&self) -> SourceView<'_> {
        SourceView::Pod { namespace: self.namespace(), service_account: self.service_account(), labels: self }
    }
}

/// The same group of the same universe.
impl PartialEq for Group<'_> {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.entry, other.entry)
    }
}

impl Eq for Group<'_> {}

impl Labels for Group<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        label_in(self.strings, &self.entry.labels, key)
    }
}

/// A pod's labels with those Calico's endpoints inherit from their
/// namespace's and service account's profiles: `pcns.<key>` is the
/// namespace's label `<key>` and `pcsa.<key>` the service account's (each
/// with `projectcalico.org/name`, its name). An endpoint's own label of the
/// same key comes first, as Felix lets an endpoint's labels override its
/// profiles'. Selectors may name them directly; Calico's own rewriting of
/// namespace and service account selectors uses them.
/// The namespace's and account's labels are looked up only when a key asks
/// for them: most selectors never do, and this is read on request paths.
pub struct Inherited<'a> {
    pod: &'a dyn Labels,
    namespace: &'a str,
    service_account: &'a str,
    universe: &'a Universe,
}

impl Labels for Inherited<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        if let Some(own) = self.pod.label(key) {
            return Some(own);
        }
        if let Some(key) = key.strip_prefix(special::NAMESPACE_PREFIX) {
            return self.universe.namespace_labels(self.namespace).value(key);
        }
        let key = key.strip_prefix(special::SERVICE_ACCOUNT_PREFIX)?;
        self.universe.service_account_labels(self.namespace, self.service_account).value(key)
    }
}

/// Does `selector` name a label endpoints inherit ([`Inherited`])?
fn names_inherited(selector: &Selector) -> bool {
    let mut inherited = false;
    selector.each_key(&mut |key| inherited |= key.starts_with(special::NAMESPACE_PREFIX) || key.starts_with(special::SERVICE_ACCOUNT_PREFIX));
    inherited
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
    name: &'a str,
    labels: OwnLabels<'a>,
}

enum OwnLabels<'a> {
    None,
    Map(&'a BTreeMap<String, String>),
    Interned(&'a Strings, &'a [(Sym, Sym)]),
}

impl Labels for NamedLabels<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        self.value(key)
    }
}

impl<'a> NamedLabels<'a> {
    /// [`Labels::label`], borrowed from what these labels borrow.
    fn value(&self, key: &str) -> Option<&'a str> {
        if key == special::NAME {
            return Some(self.name);
        }
        match self.labels {
            OwnLabels::None => None,
            OwnLabels::Map(map) => map.get(key).map(String::as_str),
            OwnLabels::Interned(strings, pairs) => label_in(strings, pairs, key),
        }
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

/// Namespace -> labels: few, kept as maps.
pub(crate) type NamespaceLabels = HashMap<String, BTreeMap<String, String>>;
/// (namespace, service account) -> labels, interned: Calico's shape has
/// 20k accounts.
pub(crate) type ServiceAccountLabels = HashMap<(Sym, Sym), LabelPairs>;

/// What the pod universe and its certified universe share.
#[derive(Debug, Default)]
pub(crate) struct Names {
    pub(crate) strings: Strings,
    pub(crate) namespaces: NamespaceLabels,
    pub(crate) service_accounts: ServiceAccountLabels,
}

#[derive(Debug, Default)]
pub struct Universe {
    groups: Vec<GroupEntry>,
    addresses: AddressIndex,
    names: Arc<Names>,
    index: LabelIndex,
    /// Every group, ascending by (namespace, service account): namespace
    /// and account clauses walk runs of it.
    by_identity: Vec<u32>,
    /// Every group, ascending by its service account's name, then its
    /// namespace: a `serviceAccounts.names` clause reads only the groups of
    /// those names, found by bisection, and judges each account once.
    by_service_account_name: Vec<u32>,
    /// What certificates can say: one pseudo-group per known (namespace,
    /// service account), labelled only as a certificate vouches for
    /// ([`CertifiedLabels`]), so that the label index answers "which rules
    /// does this certificate satisfy" as it does for pods. `None` inside the
    /// certified universe itself.
    certified: Option<Box<Universe>>,
    /// The (namespace, service account) of each pseudo-group in
    /// `certified`, ascending: its position is its id.
    identities: Vec<(Sym, Sym)>,
    /// (hash of the identity's text, position in `identities`), ascending:
    /// a certificate finds its pseudo-group with one hash and a bisection
    /// over 12-byte entries, on every mTLS request.
    identity_index: Vec<(u32, u32, u32)>,
    /// GlobalNetworkSets and NetworkSets, in config order.
    network_sets: Vec<NetworkSet>,
}

impl Universe {
    pub(crate) fn new(
        names: Names,
        specials: SpecialSyms,
        groups: Vec<GroupEntry>,
        addresses: AddressIndex,
        network_sets: Vec<NetworkSet>,
    ) -> Universe {
        // Every (namespace, service account) a pod runs as or the config names.
        let mut identities: Vec<(u32, u32, u32)> = groups.iter().map(|g| (g.namespace, g.service_account, 0)).collect();
        identities.extend(names.service_accounts.keys().map(|&(ns, sa)| (ns, sa, 0)));
        let mut identities: Vec<(Sym, Sym)> = sorted(identities).into_iter().map(|(ns, sa, _)| (ns, sa)).collect();
        identities.dedup();
        let pseudo = identities.iter().map(|&(ns, sa)| GroupEntry::new(ns, sa, Vec::new(), specials)).collect();
        let names = Arc::new(names);
        let certified = Universe::without_certified(pseudo, AddressIndex::default(), Arc::clone(&names));
        let mut universe = Universe::without_certified(groups, addresses, names);
        universe.certified = Some(Box::new(certified));
        let strings = &universe.names.strings;
        let hashed = (0u32..).zip(&identities).map(|(i, &(ns, sa))| {
            let (hi, lo) = halves(hash_of_pair(strings.get(ns), strings.get(sa)));
            (hi, lo, i)
        });
        universe.identity_index = sorted(hashed.collect());
        universe.identities = identities;
        universe.network_sets = network_sets;
        universe
    }

    fn without_certified(groups: Vec<GroupEntry>, addresses: AddressIndex, names: Arc<Names>) -> Universe {
        let index = LabelIndex::build(&groups);
        let ids = || (0u32..).zip(&groups);
        let by_identity = sorted(ids().map(|(i, g)| (g.namespace, g.service_account, i)).collect());
        let by_name = sorted(ids().map(|(i, g)| (g.service_account, g.namespace, i)).collect());
        Universe {
            index,
            by_identity: by_identity.into_iter().map(|t| t.2).collect(),
            by_service_account_name: by_name.into_iter().map(|t| t.2).collect(),
            groups,
            addresses,
            names,
            certified: None,
            identities: Vec::new(),
            identity_index: Vec::new(),
            network_sets: Vec::new(),
        }
    }

    /// The universe of certificate identities (see the field), if built.
    pub(crate) fn certified(&self) -> Option<&Universe> {
        self.certified.as_deref()
    }

    /// The pseudo-group of `certified()` for what a certificate says.
    pub(crate) fn certified_id(&self, namespace: &str, service_account: &str) -> Option<u32> {
        let strings = &self.names.strings;
        let hash = halves(hash_of_pair(namespace, service_account));
        let at = self.identity_index.partition_point(|e| (e.0, e.1) < hash);
        let same = self.identity_index.get(at..)?.iter().take_while(|e| (e.0, e.1) == hash).map(|e| e.2);
        same.into_iter().find(|&i| {
            self.identities.get(i as usize).is_some_and(|&(ns, sa)| strings.get(ns) == namespace && strings.get(sa) == service_account)
        })
    }

    fn entry(&self, id: u32) -> Option<&GroupEntry> {
        self.groups.get(id as usize)
    }

    pub fn group(&self, id: u32) -> Option<Group<'_>> {
        self.entry(id).map(|entry| Group { entry, strings: &self.names.strings })
    }

    /// Every group with its id.
    pub fn groups(&self) -> impl Iterator<Item = (u32, Group<'_>)> {
        (0u32..).zip(self.groups.iter().map(|entry| Group { entry, strings: &self.names.strings }))
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
        let labels = self.names.namespaces.get(namespace).map_or(OwnLabels::None, OwnLabels::Map);
        NamedLabels { name: namespace, labels }
    }

    pub fn service_account_labels<'a>(&'a self, namespace: &'a str, name: &'a str) -> NamedLabels<'a> {
        let strings = &self.names.strings;
        let pairs = strings
            .id(namespace)
            .zip(strings.id(name))
            .and_then(|key| self.names.service_accounts.get(&key))
            .map_or(OwnLabels::None, |pairs| OwnLabels::Interned(strings, pairs));
        NamedLabels { name, labels: pairs }
    }

    pub(crate) fn empty_set(&self) -> FixedBitSet {
        FixedBitSet::with_capacity(self.groups.len())
    }

    pub(crate) fn full_set(&self) -> FixedBitSet {
        let mut set = self.empty_set();
        set.insert_range(..);
        set
    }

    /// Groups whose pod labels, with those they inherit, match `selector`.
    pub(crate) fn groups_matching(&self, selector: &Selector) -> FixedBitSet {
        if !names_inherited(selector) {
            return self.index.eval(selector, self.groups.len(), &self.names.strings);
        }
        // Rare: evaluated per group (the index holds the groups' own labels only).
        let mut set = self.empty_set();
        for (g, entry) in self.groups.iter().enumerate() {
            let group = Group { entry, strings: &self.names.strings };
            if selector.matches(&self.inherited(group.namespace(), group.service_account(), &group)) {
                set.insert(g);
            }
        }
        set
    }

    /// `pod`'s labels with those a pod of `namespace` running as
    /// `service_account` inherits.
    pub fn inherited<'a>(&'a self, namespace: &'a str, service_account: &'a str, pod: &'a dyn Labels) -> Inherited<'a> {
        Inherited { pod, namespace, service_account, universe: self }
    }

    /// The runs of `ids` (a sorted list of group ids) whose groups share
    /// `key`, each with that key.
    fn runs<'a, K: PartialEq + 'a>(&'a self, ids: &'a [u32], key: impl Fn(&GroupEntry) -> K + 'a) -> impl Iterator<Item = (K, &'a [u32])> + 'a {
        let mut rest = ids;
        std::iter::from_fn(move || {
            let k = key(self.entry(*rest.first()?)?);
            let len = rest.partition_point(|&g| self.entry(g).is_some_and(|e| key(e) == k));
            let (run, tail) = rest.split_at(len.max(1).min(rest.len()));
            rest = tail;
            Some((k, run))
        })
    }

    /// Groups in namespaces that satisfy `accept`.
    pub(crate) fn groups_in_namespaces(&self, mut accept: impl FnMut(&str) -> bool) -> FixedBitSet {
        let mut set = self.empty_set();
        for (ns, members) in self.runs(&self.by_identity, |g| g.namespace) {
            if accept(self.names.strings.get(ns)) {
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
        let by_name = &self.by_service_account_name;
        let name_of = |g: u32| self.entry(g).map(|g| g.service_account);
        for name in names {
            let Some(sym) = self.names.strings.id(name) else { continue };
            let start = by_name.partition_point(|&g| name_of(g) < Some(sym));
            let rest = by_name.get(start..).unwrap_or(&[]);
            let named = rest.get(..rest.partition_point(|&g| name_of(g) == Some(sym))).unwrap_or(&[]);
            for (ns, members) in self.runs(named, |g| g.namespace) {
                if accept(self.names.strings.get(ns), name) {
                    set.extend(members.iter().map(|&g| g as usize));
                }
            }
        }
        set
    }

    /// Groups whose (namespace, service account) satisfy `accept`.
    pub(crate) fn groups_with_service_accounts(&self, mut accept: impl FnMut(&str, &str) -> bool) -> FixedBitSet {
        let mut set = self.empty_set();
        let strings = &self.names.strings;
        for ((ns, sa), members) in self.runs(&self.by_identity, |g| (g.namespace, g.service_account)) {
            if accept(strings.get(ns), strings.get(sa)) {
                set.extend(members.iter().map(|&g| g as usize));
            }
        }
        set
    }
}

/// Every (label key, value, group), ascending: the groups with a key, or
/// with a key and value, are one contiguous range, found by bisection.
/// 12 bytes per label of each group, and no map.
#[derive(Debug, Default)]
struct LabelIndex {
    postings: Vec<(Sym, Sym, u32)>,
}

impl LabelIndex {
    fn build(groups: &[GroupEntry]) -> LabelIndex {
        // Sized up front: grown by doubling (3 MB at Calico's scale), it
        // grew the VM's Wasm memory by 1 MiB more (measured: 32.5 -> 31.5
        // MiB; the resident part, 28.3 MiB, did not change).
        let mut all = Vec::with_capacity(groups.iter().map(|g| g.labels.len()).sum());
        all.extend((0u32..).zip(groups).flat_map(|(i, g)| g.labels.iter().map(move |&(k, v)| (k, v, i))));
        LabelIndex { postings: sorted(all) }
    }

    fn range(&self, below: impl Fn(&(Sym, Sym, u32)) -> bool, within: impl Fn(&(Sym, Sym, u32)) -> bool) -> &[(Sym, Sym, u32)] {
        let start = self.postings.partition_point(below);
        let rest = self.postings.get(start..).unwrap_or(&[]);
        rest.get(..rest.partition_point(within)).unwrap_or(&[])
    }

    fn with_key(&self, key: Option<Sym>) -> &[(Sym, Sym, u32)] {
        let Some(k) = key else { return &[] };
        self.range(|p| p.0 < k, |p| p.0 == k)
    }

    fn with_pair(&self, key: Option<Sym>, value: Option<Sym>) -> &[(Sym, Sym, u32)] {
        let (Some(k), Some(v)) = (key, value) else { return &[] };
        self.range(|p| (p.0, p.1) < (k, v), |p| (p.0, p.1) == (k, v))
    }

    fn set_of<'a>(n: usize, postings: impl IntoIterator<Item = &'a (Sym, Sym, u32)>) -> FixedBitSet {
        let mut set = FixedBitSet::with_capacity(n);
        set.extend(postings.into_iter().map(|p| p.2 as usize));
        set
    }

    /// Groups whose `key` has a value satisfying `keep`, tested once per
    /// distinct value.
    fn values_where(&self, n: usize, strings: &Strings, key: &str, keep: impl Fn(&str) -> bool) -> FixedBitSet {
        let mut set = FixedBitSet::with_capacity(n);
        let mut verdict: Option<(Sym, bool)> = None;
        for &(_, v, g) in self.with_key(strings.id(key)) {
            let kept = match verdict {
                Some((seen, kept)) if seen == v => kept,
                _ => {
                    let kept = keep(strings.get(v));
                    verdict = Some((v, kept));
                    kept
                }
            };
            if kept {
                set.insert(g as usize);
            }
        }
        set
    }

    fn eval(&self, selector: &Selector, n: usize, strings: &Strings) -> FixedBitSet {
        let complement = |mut set: FixedBitSet| {
            set.toggle_range(..);
            set
        };
        let pair = |k: &str, v: &str| self.with_pair(strings.id(k), strings.id(v));
        match selector {
            Selector::All | Selector::Global => {
                let mut set = FixedBitSet::with_capacity(n);
                set.insert_range(..);
                set
            }
            Selector::Has(k) => Self::set_of(n, self.with_key(strings.id(k))),
            Selector::Eq(k, v) => Self::set_of(n, pair(k, v)),
            Selector::Ne(k, v) => complement(Self::set_of(n, pair(k, v))),
            Selector::In(k, values) => Self::set_of(n, values.iter().flat_map(|v| pair(k, v))),
            Selector::NotIn(k, values) => complement(Self::set_of(n, values.iter().flat_map(|v| pair(k, v)))),
            Selector::Contains(k, s) => self.values_where(n, strings, k, |v| v.contains(s.as_str())),
            Selector::StartsWith(k, s) => self.values_where(n, strings, k, |v| v.starts_with(s.as_str())),
            Selector::EndsWith(k, s) => self.values_where(n, strings, k, |v| v.ends_with(s.as_str())),
            Selector::Not(inner) => complement(self.eval(inner, n, strings)),
            Selector::And(parts) => {
                let mut acc = self.eval(&Selector::All, n, strings);
                for p in parts {
                    acc.intersect_with(&self.eval(p, n, strings));
                }
                acc
            }
            Selector::Or(parts) => {
                let mut acc = FixedBitSet::with_capacity(n);
                for p in parts {
                    acc.union_with(&self.eval(p, n, strings));
                }
                acc
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use crate::config::EndpointTable;
    use crate::selector::Selector;
    use crate::{PluginConfig, PolicySet};

    fn pods() -> serde_json::Value {
        json!([
            {"namespace": "prod", "serviceAccount": "web", "labels": {"app": "web", "tier": "frontend", "version": "v1"}, "ips": ["10.0.0.1"]},
            {"namespace": "prod", "serviceAccount": "web", "labels": {"app": "web", "tier": "frontend", "version": "v2"}, "ips": ["10.0.0.2"]},
            {"namespace": "prod", "serviceAccount": "db", "labels": {"app": "db", "tier": "", "pci": "true"}, "ips": ["10.0.0.3"]},
            {"namespace": "dev", "serviceAccount": "web", "labels": {"app": "web-canary", "projectcalico.org/orchestrator": "other"}, "ips": ["10.0.1.1"]},
            {"namespace": "dev", "serviceAccount": "tools", "labels": {}, "ips": ["10.0.1.2", "fd00::1"]},
            // The same labels as the first group: one group, two addresses.
            {"namespace": "prod", "serviceAccount": "web", "labels": {"app": "web", "tier": "frontend", "version": "v1"}, "ips": ["10.0.0.9"]}
        ])
    }

    fn set(config: serde_json::Value) -> PolicySet {
        let config = PluginConfig::from_json(config.to_string().as_bytes()).expect("config reads");
        PolicySet::from_config(&config).expect("config compiles")
    }

    /// The label index (sorted postings of interned ids) must select exactly
    /// the groups a selector matches when evaluated on each group's labels,
    /// as resolved strings and as a plain map.
    #[test]
    fn the_label_index_agrees_with_evaluating_each_group() {
        let json = json!({"version": 1, "endpoints": pods()});
        let by_json = set(json.clone());
        let mut with_table: PluginConfig = PluginConfig::from_json(json.to_string().as_bytes()).expect("config reads");
        let specs = std::mem::take(&mut with_table.endpoints);
        with_table.endpoint_table = Some(EndpointTable::new(&specs, &[]).expect("table builds"));
        let by_table = PolicySet::from_config(&with_table).expect("table compiles");
        assert_eq!(by_json.universe().group_count(), 5);
        assert_eq!(by_table.universe().group_count(), 5);
        for text in [
            "all()",
            "app == 'web'",
            "app != 'web'",
            "app == 'nothing-has-this'",
            "app != 'nothing-has-this'",
            "has(pci)",
            "!has(version)",
            "has(no-such-key)",
            "tier == ''",
            "app in {'web', 'db', 'absent'}",
            "app not in {'web', 'absent'}",
            "app contains 'can'",
            "app starts with 'we'",
            "app ends with 'ry'",
            "projectcalico.org/namespace == 'prod' && version in {'v2'}",
            "projectcalico.org/serviceaccount == 'web' || pci == 'true'",
            "projectcalico.org/orchestrator == 'k8s'",
            "projectcalico.org/orchestrator == 'other'",
            "!(app == 'web' && tier == 'frontend')",
        ] {
            let selector = Selector::parse(text).expect("selector parses");
            for set in [&by_json, &by_table] {
                let universe = set.universe();
                let indexed = universe.groups_matching(&selector);
                for (id, group) in universe.groups() {
                    let direct = selector.matches(&group);
                    assert_eq!(indexed.contains(id as usize), direct, "{text}: group {:?}", group.label_map());
                    assert_eq!(selector.matches(&group.label_map()), direct, "{text}: group {:?}", group.label_map());
                }
            }
        }
    }

    #[test]
    fn certificates_find_their_pseudo_group_and_accounts_their_labels() {
        let config = json!({
            "version": 1,
            "endpoints": pods(),
            "serviceAccounts": [{"namespace": "prod", "name": "batch", "labels": {"team": "data"}}]
        });
        let set = set(config);
        let universe = set.universe();
        let certified = universe.certified().expect("certified universe");
        let ids: Vec<Option<u32>> =
            [("prod", "web"), ("prod", "db"), ("dev", "web"), ("dev", "tools"), ("prod", "batch")].iter().map(|(ns, sa)| universe.certified_id(ns, sa)).collect();
        assert!(ids.iter().all(Option::is_some), "{ids:?}");
        let mut distinct = ids.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), ids.len());
        assert_eq!(certified.group_count(), 5);
        for (id, (ns, sa)) in ids.iter().flatten().zip([("prod", "web"), ("prod", "db"), ("dev", "web"), ("dev", "tools"), ("prod", "batch")]) {
            let pseudo = certified.group(*id).expect("pseudo-group");
            assert_eq!((pseudo.namespace(), pseudo.service_account()), (ns, sa));
            assert_eq!(pseudo.labels().count(), 3, "only what a certificate vouches for: {:?}", pseudo.label_map());
        }
        assert_eq!(universe.certified_id("prod", "nobody"), None);
        assert_eq!(universe.certified_id("staging", "web"), None);
        use crate::selector::Labels;
        let batch = universe.service_account_labels("prod", "batch");
        assert_eq!(batch.label("team"), Some("data"));
        assert_eq!(batch.label("projectcalico.org/name"), Some("batch"));
        assert_eq!(universe.service_account_labels("prod", "web").label("team"), None);
    }
}
