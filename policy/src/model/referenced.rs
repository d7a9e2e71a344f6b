//! Which endpoints a config must carry. An endpoint whose absence changes no
//! decision can be left out (as Felix sends Dikastes only the IP sets active
//! rules use), which keeps a WasmPlugin small.

use fixedbitset::FixedBitSet;

use super::identity::{IdentityMatch, SourceView};
use super::universe::Universe;
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
            for rule in self.rules.range(policy.rules.clone()) {
                let clause = &rule.source.identity;
                if clause.is_empty() {
                    continue;
                }
                referenced.union_with(&differs_from_unknown(clause, universe));
                // A source Service matches by address: its endpoints' owners
                // must be known for the two-factor rule to compare them.
                if let Some(m) = &rule.source.service {
                    for g in m.endpoints.iter().filter_map(|e| universe.owner_of(e.ip)) {
                        referenced.insert(g as usize);
                    }
                }
                if matches!(rule.action, Action::Deny | Action::Log) {
                    for (g, group) in universe.groups() {
                        let certified = SourceView::Certified { namespace: group.namespace(), service_account: group.service_account() };
                        if clause.matches(certified, universe) != clause.matches(group.as_source(), universe) {
                            referenced.insert(g as usize);
                        }
                    }
                }
            }
            // Egress rules read the destination by its owner alone (no
            // certificate is involved on the way out).
            for rule in self.rules.range(policy.egress_rules.clone()) {
                let clause = &rule.destination.identity;
                if !clause.is_empty() {
                    referenced.union_with(&differs_from_unknown(clause, universe));
                }
            }
        }
        referenced
    }
}

/// The groups whose pods `clause` reads differently from an address no pod owns.
fn differs_from_unknown(clause: &IdentityMatch, universe: &Universe) -> FixedBitSet {
    let mut differs = clause.matching_groups(universe);
    if clause.matches_unknown() {
        differs.toggle_range(..);
    }
    // In a network set the clauses match, a pod differs from an unknown
    // address only where its own labels meet notSelector.
    if let (Some(_), Some(not)) = (&clause.set_nets, &clause.not_selector) {
        differs.union_with(&universe.groups_matching(not));
    }
    differs
}

impl PolicySet {
    /// Indexes of the network sets (into `Universe::network_sets`) that some
    /// rule of the policies `keep` accepts matches, in its source or
    /// destination clauses, positively or by notSelector. A set no rule
    /// matches changes no decision and can be left out of a config.
    pub fn referenced_network_sets(&self, keep: impl Fn(&Policy) -> bool) -> Vec<usize> {
        let universe = &*self.universe;
        let sets = universe.network_sets();
        let mut referenced = vec![false; sets.len()];
        for policy in self.policies.iter().filter(|p| keep(p)) {
            let ingress = self.rules.range(policy.rules.clone());
            let egress = self.rules.range(policy.egress_rules.clone());
            for rule in ingress.iter().chain(egress) {
                for clause in [&rule.source.identity, &rule.destination.identity] {
                    if !clause.depends_on_sets() {
                        continue;
                    }
                    for (i, set) in sets.iter().enumerate() {
                        if clause.positive_matches_set(set, universe) || clause.negative_matches_set(set) {
                            if let Some(r) = referenced.get_mut(i) {
                                *r = true;
                            }
                        }
                    }
                }
            }
        }
        (0..sets.len()).filter(|&i| referenced.get(i).copied().unwrap_or(false)).collect()
    }
}
