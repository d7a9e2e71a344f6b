//! The identity part of an entity rule: selector, notSelector,
//! namespaceSelector and serviceAccounts, and who it is evaluated against.

use std::collections::BTreeSet;
use std::net::IpAddr;

use fixedbitset::FixedBitSet;

use super::universe::{CertifiedLabels, NetworkSet, Universe};
use crate::ranges::NetSet;
use crate::selector::{Labels, Selector};

/// Which namespaces an entity rule admits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NamespaceClause {
    /// GlobalNetworkPolicy without namespaceSelector: any namespace.
    Any,
    /// An explicit namespaceSelector over namespace labels.
    Selector(Selector),
    /// `namespaceSelector: global()`: non-namespaced entities only, which
    /// among those Krites knows are the GlobalNetworkSets (never a pod).
    Global,
    /// NetworkPolicy without namespaceSelector: the policy's own namespace.
    Equals(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceAccountClause {
    /// Empty: any name.
    pub names: BTreeSet<String>,
    pub selector: Option<Selector>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdentityMatch {
    pub selector: Option<Selector>,
    pub not_selector: Option<Box<Selector>>,
    pub namespace: NamespaceClause,
    /// Boxed, as the other rare parts of a rule: absent, it costs a pointer.
    pub service_accounts: Option<Box<ServiceAccountClause>>,
    /// The nets of the network sets the positive clauses (selector,
    /// namespace) match: Calico compiles a selector to the IP set of the
    /// matching pods *and* network sets, so an address in here satisfies
    /// them whoever owns it. `None`: no network set matches (or the clauses
    /// are absent). Filled when the policy set is built.
    pub set_nets: Option<NetSet>,
    /// The nets of the network sets `notSelector` matches: an address in
    /// here fails the clause, whoever owns it.
    pub not_set_nets: Option<NetSet>,
    /// A source `services` match: the addresses of the Service's endpoints
    /// (Calico's IP set of them). The clause's selector then matches no
    /// labels, so only the address satisfies it, and a certificate alone
    /// never does. Filled when the policy set is built.
    pub service_nets: Option<NetSet>,
}

/// Who the source is, as one factor sees it.
#[derive(Clone, Copy)]
pub enum SourceView<'a> {
    /// An address no pod in the table owns.
    Unknown,
    /// A pod whose labels are known: a group of the endpoint table
    /// ([`Group::as_source`](super::Group::as_source)), or the workload itself.
    Pod { namespace: &'a str, service_account: &'a str, labels: &'a dyn Labels },
    /// What a certificate vouches for: namespace and service account only.
    Certified { namespace: &'a str, service_account: &'a str },
}

impl IdentityMatch {
    pub fn any() -> IdentityMatch {
        IdentityMatch {
            selector: None,
            not_selector: None,
            namespace: NamespaceClause::Any,
            service_accounts: None,
            set_nets: None,
            not_set_nets: None,
            service_nets: None,
        }
    }

    /// Some network set's nets take part: whether the clauses hold depends on
    /// the address itself, not only on who owns it.
    pub fn depends_on_sets(&self) -> bool {
        self.set_nets.is_some() || self.not_set_nets.is_some() || self.service_nets.is_some()
    }

    /// Are there positive clauses (which an address must satisfy by its owner
    /// or by a network set)? Without them only `notSelector` constrains.
    pub fn has_positive_clauses(&self) -> bool {
        self.selector.is_some() || self.namespace != NamespaceClause::Any || self.service_accounts.is_some()
    }

    /// Do the positive clauses match `set`? As in Calico: the selector sees the
    /// set's labels (a NetworkSet's include `projectcalico.org/namespace`), the
    /// namespace clause its namespace (`global()` only a GlobalNetworkSet), and
    /// `serviceAccounts` never matches a set, which has no service account.
    pub fn positive_matches_set(&self, set: &NetworkSet, universe: &Universe) -> bool {
        self.has_positive_clauses()
            && self.service_accounts.is_none()
            && self.selector.as_ref().is_none_or(|s| s.matches(&set.labels))
            && match (&self.namespace, set.namespace.as_deref()) {
                (NamespaceClause::Any, _) => true,
                (NamespaceClause::Global, ns) => ns.is_none(),
                (NamespaceClause::Equals(want), ns) => ns == Some(want.as_str()),
                (NamespaceClause::Selector(s), Some(ns)) => s.matches(&universe.namespace_labels(ns)),
                (NamespaceClause::Selector(_), None) => false,
            }
    }

    /// Does `notSelector` match `set`? Calico does not namespace it.
    pub fn negative_matches_set(&self, set: &NetworkSet) -> bool {
        self.not_selector.as_ref().is_some_and(|s| s.matches(&set.labels))
    }

    /// Fills [`Self::set_nets`] and [`Self::not_set_nets`] from the universe's network sets.
    pub(crate) fn resolve_sets(&mut self, universe: &Universe) {
        let sets = universe.network_sets();
        if sets.is_empty() {
            return;
        }
        let union = |keep: &dyn Fn(&NetworkSet) -> bool| {
            let matching: Vec<&NetworkSet> = sets.iter().filter(|s| keep(s)).collect();
            if matching.is_empty() {
                return None;
            }
            // Validated when the universe was built.
            NetSet::parse(matching.iter().flat_map(|s| s.cidrs.iter().map(String::as_str))).ok()
        };
        self.set_nets = union(&|s| self.positive_matches_set(s, universe));
        self.not_set_nets = union(&|s| self.negative_matches_set(s));
    }

    /// [`Self::matches`] for the reading of a source *address* `ip` (owned
    /// by the pod of `view`, or by no pod): the clauses hold if the owner
    /// satisfies them or a matching network set holds the address, and fail
    /// if a set `notSelector` matches holds it (Calico's IP sets are the
    /// union of both). A certificate's reading has no address: pass `None`.
    pub fn matches_at(&self, view: SourceView<'_>, ip: Option<IpAddr>, universe: &Universe) -> bool {
        if !self.depends_on_sets() {
            return self.matches(view, universe);
        }
        let holds = |nets: &Option<NetSet>| ip.is_some_and(|ip| nets.as_ref().is_some_and(|n| n.contains(ip)));
        if holds(&self.not_set_nets) {
            return false;
        }
        if !holds(&self.set_nets) && !holds(&self.service_nets) {
            return self.matches(view, universe);
        }
        // In a matching set: only the owner's own labels can still exclude it.
        let excluded = |namespace, service_account, labels: &dyn Labels| {
            self.not_selector.as_ref().is_some_and(|s| s.matches(&universe.inherited(namespace, service_account, labels)))
        };
        match view {
            SourceView::Unknown => true,
            SourceView::Pod { namespace, service_account, labels } => !excluded(namespace, service_account, labels),
            SourceView::Certified { namespace, service_account } => {
                !excluded(namespace, service_account, &CertifiedLabels { namespace, service_account })
            }
        }
    }

    /// No identity constraint at all: the rule matches any source identity.
    pub fn is_empty(&self) -> bool {
        self.selector.is_none()
            && self.not_selector.is_none()
            && self.namespace == NamespaceClause::Any
            && self.service_accounts.is_none()
    }

    /// Calico's selectors compile to IP sets of known endpoints, so an unknown
    /// address satisfies no positive clause and every negative one (network
    /// sets aside: [`Self::matches_at`] reads the address itself).
    pub fn matches_unknown(&self) -> bool {
        self.selector.is_none() && self.namespace == NamespaceClause::Any && self.service_accounts.is_none()
    }

    pub fn matches(&self, view: SourceView<'_>, universe: &Universe) -> bool {
        let (namespace, service_account, pod): (&str, &str, &dyn Labels) = match view {
            SourceView::Unknown => return self.matches_unknown(),
            SourceView::Pod { namespace, service_account, labels } => (namespace, service_account, labels),
            SourceView::Certified { namespace, service_account } => {
                let certified = CertifiedLabels { namespace, service_account };
                return self.matches_parts(namespace, service_account, &certified, universe);
            }
        };
        self.matches_parts(namespace, service_account, pod, universe)
    }

    fn matches_parts(&self, namespace: &str, service_account: &str, pod: &dyn Labels, universe: &Universe) -> bool {
        let pod = universe.inherited(namespace, service_account, pod);
        self.selector.as_ref().is_none_or(|s| s.matches(&pod))
            && self.not_selector.as_ref().is_none_or(|s| !s.matches(&pod))
            && self.namespace_matches(namespace, universe)
            && self.service_account_matches(namespace, service_account, universe)
    }

    fn namespace_matches(&self, namespace: &str, universe: &Universe) -> bool {
        match &self.namespace {
            NamespaceClause::Any => true,
            NamespaceClause::Equals(ns) => ns == namespace,
            NamespaceClause::Selector(s) => s.matches(&universe.namespace_labels(namespace)),
            NamespaceClause::Global => false,
        }
    }

    fn service_account_matches(&self, namespace: &str, service_account: &str, universe: &Universe) -> bool {
        self.service_accounts.as_ref().is_none_or(|sa| {
            (sa.names.is_empty() || sa.names.contains(service_account))
                && sa.selector.as_ref().is_none_or(|s| s.matches(&universe.service_account_labels(namespace, service_account)))
        })
    }

    /// The endpoint groups this clause admits, computed with the label index
    /// (set algebra) instead of one evaluation per group.
    pub(crate) fn matching_groups(&self, universe: &Universe) -> FixedBitSet {
        let mut set = match &self.selector {
            Some(s) => universe.groups_matching(s),
            None => universe.full_set(),
        };
        if let Some(s) = &self.not_selector {
            let mut excluded = universe.groups_matching(s);
            excluded.toggle_range(..);
            set.intersect_with(&excluded);
        }
        if self.namespace != NamespaceClause::Any {
            set.intersect_with(&universe.groups_in_namespaces(|ns| self.namespace_matches(ns, universe)));
        }
        if let Some(clause) = &self.service_accounts {
            let accept = |ns: &str, sa: &str| self.service_account_matches(ns, sa, universe);
            set.intersect_with(&match clause.names.is_empty() {
                false => universe.groups_with_service_account_names(&clause.names, accept),
                true => universe.groups_with_service_accounts(accept),
            });
        }
        set
    }
}
