//! The identity part of an entity rule: selector, notSelector,
//! namespaceSelector and serviceAccounts, and who it is evaluated against.

use std::collections::BTreeSet;

use fixedbitset::FixedBitSet;

use super::universe::{CertifiedLabels, Group, Universe};
use crate::selector::{Labels, Selector};

/// Which namespaces an entity rule admits.
#[derive(Debug, Clone, PartialEq)]
pub enum NamespaceClause {
    /// GlobalNetworkPolicy without namespaceSelector: any namespace.
    Any,
    /// An explicit namespaceSelector over namespace labels. `global()` inside it
    /// was rewritten to "never": it names non-namespaced entities, and every
    /// entity Krites knows is a pod.
    Selector(Selector),
    /// NetworkPolicy without namespaceSelector: the policy's own namespace.
    Equals(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceAccountClause {
    /// Empty: any name.
    pub names: BTreeSet<String>,
    pub selector: Option<Selector>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IdentityMatch {
    pub selector: Option<Selector>,
    pub not_selector: Option<Selector>,
    pub namespace: NamespaceClause,
    pub service_accounts: Option<ServiceAccountClause>,
}

/// Who the source is, as one factor sees it.
#[derive(Clone, Copy)]
pub enum SourceView<'a> {
    /// An address no pod in the table owns.
    Unknown,
    /// A pod from the endpoint table (labels known).
    Pod(&'a Group),
    /// What a certificate vouches for: namespace and service account only.
    Certified { namespace: &'a str, service_account: &'a str },
}

impl IdentityMatch {
    pub fn any() -> IdentityMatch {
        IdentityMatch { selector: None, not_selector: None, namespace: NamespaceClause::Any, service_accounts: None }
    }

    /// No identity constraint at all: the rule matches any source identity.
    pub fn is_empty(&self) -> bool {
        self.selector.is_none()
            && self.not_selector.is_none()
            && self.namespace == NamespaceClause::Any
            && self.service_accounts.is_none()
    }

    /// Calico's selectors compile to IP sets of known endpoints, so an unknown
    /// address satisfies no positive clause and every negative one.
    pub fn matches_unknown(&self) -> bool {
        self.selector.is_none() && self.namespace == NamespaceClause::Any && self.service_accounts.is_none()
    }

    pub fn matches(&self, view: SourceView<'_>, universe: &Universe) -> bool {
        let (namespace, service_account, pod): (&str, &str, &dyn Labels) = match view {
            SourceView::Unknown => return self.matches_unknown(),
            SourceView::Pod(g) => (&g.namespace, &g.service_account, &g.labels),
            SourceView::Certified { namespace, service_account } => {
                let certified = CertifiedLabels { namespace, service_account };
                return self.matches_parts(namespace, service_account, &certified, universe);
            }
        };
        self.matches_parts(namespace, service_account, pod, universe)
    }

    fn matches_parts(&self, namespace: &str, service_account: &str, pod: &dyn Labels, universe: &Universe) -> bool {
        self.selector.as_ref().is_none_or(|s| s.matches(pod))
            && self.not_selector.as_ref().is_none_or(|s| !s.matches(pod))
            && self.namespace_matches(namespace, universe)
            && self.service_account_matches(namespace, service_account, universe)
    }

    fn namespace_matches(&self, namespace: &str, universe: &Universe) -> bool {
        match &self.namespace {
            NamespaceClause::Any => true,
            NamespaceClause::Equals(ns) => ns == namespace,
            NamespaceClause::Selector(s) => s.matches(&universe.namespace_labels(namespace)),
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
        if self.service_accounts.is_some() {
            set.intersect_with(
                &universe.groups_with_service_accounts(|ns, sa| self.service_account_matches(ns, sa, universe)),
            );
        }
        set
    }
}
