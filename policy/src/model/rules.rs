//! A set's rules, kept in one block per policy.
//!
//! One flat list would be built by joining the blocks the policies compile
//! into, holding every rule twice at that moment: at Calico's scale 15.6 MB
//! natively on top of the rest, and the peak is what a Wasm VM keeps.

use std::ops::Range;

use super::Rule;

/// Bits of a rule id that give its place in its policy: Calico allows
/// [`MAX_RULES`](super::build::MAX_RULES) per direction, so a policy holds
/// at most twice that.
const PLACE_BITS: u32 = 12;
const _: () = assert!(2 * super::build::MAX_RULES <= 1 << PLACE_BITS);

/// The most policies one set holds: a rule id must fit in 32 bits, as the
/// engine's indexes keep it (`u32`) and as a `usize` is in the module, where
/// release builds do not check a shift's overflow. Past it, ids would alias
/// another policy's rules: a wrong decision, not an error. A set is refused
/// instead, on every target, so `control check` and the filter agree.
pub(crate) const MAX_POLICIES: usize = 1 << (32 - PLACE_BITS);

/// Rules by id: `policy << PLACE_BITS | place`, where `policy` is the
/// policy's position in evaluation order and `place` the rule's in the
/// policy (ingress rules first). Ids ascend in evaluation order, and each
/// policy's ingress and egress rules are ranges of ids.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    blocks: Vec<Vec<Rule>>,
}

impl Rules {
    /// `blocks`: each policy's rules, in evaluation order.
    pub(crate) fn new(blocks: Vec<Vec<Rule>>) -> Rules {
        Rules { blocks }
    }

    /// The id of the rule at `place` in the policy at `policy`.
    pub(crate) fn id(policy: usize, place: usize) -> usize {
        policy << PLACE_BITS | place
    }

    pub fn get(&self, id: usize) -> Option<&Rule> {
        self.blocks.get(id >> PLACE_BITS)?.get(id & ((1 << PLACE_BITS) - 1))
    }

    /// The rules of a range of ids within one policy (a policy's `rules` or
    /// `egress_rules`).
    pub fn range(&self, ids: Range<usize>) -> &[Rule] {
        let mask = (1 << PLACE_BITS) - 1;
        match self.blocks.get(ids.start >> PLACE_BITS) {
            Some(block) if ids.start <= ids.end && ids.end - ids.start <= block.len() => {
                let start = ids.start & mask;
                block.get(start..start + (ids.end - ids.start)).unwrap_or(&[])
            }
            _ => &[],
        }
    }

    /// Every rule, in evaluation order.
    pub fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.blocks.iter().flatten()
    }

    pub fn len(&self) -> usize {
        self.blocks.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.iter().all(Vec::is_empty)
    }

    /// The id of a rule held here (found in its policy's block).
    pub fn id_of(&self, rule: &Rule) -> Option<usize> {
        let block = self.blocks.get(rule.policy)?;
        let place = block.iter().position(|r| std::ptr::eq(r, rule))?;
        Some(Rules::id(rule.policy, place))
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use std::sync::Arc;

    use super::{Rules, MAX_POLICIES, PLACE_BITS};
    use crate::model::build::{too_many_policies, MAX_RULES};
    use crate::PolicySet;

    /// The last rule of the last policy a set may hold has the largest id
    /// that fits in 32 bits; one policy more, staged or enforced, is refused.
    #[test]
    fn rule_ids_fit_in_32_bits_up_to_the_policy_limit() {
        let last = Rules::id(MAX_POLICIES - 1, 2 * MAX_RULES - 1);
        assert!(u32::try_from(last).is_ok() && last >> PLACE_BITS == MAX_POLICIES - 1);
        assert_eq!((MAX_POLICIES as u64) << PLACE_BITS, 1 << 32);
        for (policies, staged) in [(MAX_POLICIES, 0), (MAX_POLICIES - 1, 1), (0, MAX_POLICIES), (0, 0)] {
            assert_eq!(too_many_policies(policies, staged), None, "{policies} + {staged}");
        }
        for (policies, staged) in [(MAX_POLICIES + 1, 0), (MAX_POLICIES, 1), (1, MAX_POLICIES), (usize::MAX, usize::MAX)] {
            let problem = too_many_policies(policies, staged).expect("refused");
            assert!(problem.contains(&MAX_POLICIES.to_string()), "{problem}");
        }
    }

    /// Three policies in two tiers, given out of order: ids ascend in
    /// evaluation order, each policy's ingress and egress rules are ranges,
    /// and no id or range, however wrong, panics.
    #[test]
    fn rules_are_found_by_id_and_by_policy() {
        let config = serde_json::json!({"version": 1, "tiers": [{"name": "first", "order": 1}], "policies": [
            {"name": "late", "order": 20, "ingress": [{"action": "Allow"}, {"action": "Deny"}]},
            {"name": "early", "order": 10, "types": ["Ingress", "Egress"],
             "ingress": [{"action": "Pass"}], "egress": [{"action": "Allow"}, {"action": "Log"}]},
            {"name": "tiered", "tier": "first", "ingress": [{"action": "Deny"}]}]});
        let set = Arc::new(PolicySet::from_json(config.to_string().as_bytes()).expect("compiles"));
        let rules = set.rules();
        let ids: Vec<&str> = rules.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, [
            "first/tiered/ingress[0]",
            "default/early/ingress[0]", "default/early/egress[0]", "default/early/egress[1]",
            "default/late/ingress[0]", "default/late/ingress[1]",
        ]);
        assert_eq!((rules.len(), rules.is_empty()), (6, false));
        let mut every = Vec::new();
        for (index, policy) in set.policies().iter().enumerate() {
            let ingress: Vec<&str> = rules.range(policy.rules.clone()).iter().map(|r| r.id.as_str()).collect();
            let by_id: Vec<&str> = policy.rules.clone().filter_map(|id| rules.get(id)).map(|r| r.id.as_str()).collect();
            assert_eq!(ingress, by_id);
            assert!(ingress.iter().all(|id| id.contains("/ingress[")));
            assert!(rules.range(policy.egress_rules.clone()).iter().all(|r| r.id.contains("/egress[") && r.policy == index));
            for id in policy.rules.clone().chain(policy.egress_rules.clone()) {
                let rule = rules.get(id).expect("an id of the policy");
                assert_eq!(rules.id_of(rule), Some(id));
                every.push(id);
            }
        }
        assert!(every.windows(2).all(|w| w[0] < w[1]), "ids ascend in evaluation order: {every:?}");
        assert_eq!(every.len(), rules.len());
        // Wrong ids and ranges find nothing.
        assert!(rules.get(usize::MAX).is_none() && rules.get(every[0] + 100).is_none());
        assert!(rules.range(every[5]..every[0]).is_empty() && rules.range(usize::MAX - 1..usize::MAX).is_empty());
        assert!(rules.range(every[0]..every[0] + 4096).is_empty());
    }
}
