//! Which endpoints a config must carry. An endpoint whose absence changes no
//! decision can be left out (as Felix sends Dikastes only the IP sets active
//! rules use), which keeps a WasmPlugin small.

use fixedbitset::FixedBitSet;

use super::identity::SourceView;
use super::{Policy, PolicySet};
use crate::config::Action;

impl PolicySet {
    /// Endpoint groups that some rule of the policies `keep` accepts treats
    /// differently from an address no pod owns. A group left out is seen as an
    /// unknown address, which by construction changes no decision: its pods
    /// match exactly the clauses an unknown address matches, and for rules
    /// that restrict (which also consult the certificate) the certificate of
    /// its own service account says nothing that its labels contradict.
    pub fn referenced_groups(&self, keep: impl Fn(&Policy) -> bool) -> FixedBitSet {
        let universe = &*self.universe;
        let mut referenced = universe.empty_set();
        for policy in self.policies.iter().filter(|p| keep(p)) {
            for rule in self.rules.get(policy.rules.clone()).unwrap_or(&[]) {
                let clause = &rule.source.identity;
                if clause.is_empty() {
                    continue;
                }
                let mut differs = clause.matching_groups(universe);
                if clause.matches_unknown() {
                    differs.toggle_range(..);
                }
                referenced.union_with(&differs);
                if matches!(rule.action, Action::Deny | Action::Log) {
                    for (g, group) in universe.groups.iter().enumerate() {
                        let certified = SourceView::Certified { namespace: &group.namespace, service_account: &group.service_account };
                        if clause.matches(certified, universe) != clause.matches(SourceView::Pod(group), universe) {
                            referenced.insert(g);
                        }
                    }
                }
            }
        }
        referenced
    }
}
