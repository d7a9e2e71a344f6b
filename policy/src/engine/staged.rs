//! Staged policies (Calico's StagedGlobalNetworkPolicy, StagedNetworkPolicy
//! and StagedKubernetesNetworkPolicy): what the policies would decide with
//! the staged changes applied, next to what they do decide. The staged
//! verdict never changes what happens to a request; a proxy reports where the
//! two differ, and which staged policy would make the difference.

use std::sync::Arc;

use super::{EgressPolicy, Verdict, Workload, WorkloadPolicy};
use crate::model::universe::pod_labels;
use crate::model::{Policy, PolicySet, StagedChange};

/// The staged view of one workload, both directions.
#[derive(Debug)]
pub struct StagedWorkload {
    pub ingress: WorkloadPolicy,
    pub egress: EgressPolicy,
    /// Indexes into the view's [`PolicySet::staged_changes`] of the changes
    /// that touch this workload, in config order.
    touching: Vec<u32>,
}

/// A request the staged view decides otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StagedDifference<'p> {
    /// The staged verdict (the enforced one is the other).
    pub would: Verdict,
    /// The staged policy the difference is counted against.
    pub change: Option<&'p StagedChange>,
}

impl StagedWorkload {
    /// The staged view for `workload`, or `None` when nothing staged touches
    /// it: then no policy that selects it changes, and neither does any
    /// verdict, so a proxy need not walk twice.
    pub fn new(enforced: &PolicySet, workload: &Workload) -> Option<StagedWorkload> {
        let view = enforced.staged_view()?;
        let labels = pod_labels(&workload.namespace, &workload.service_account, &workload.labels);
        let selects = |p: &Policy, universe| p.selects_workload(&workload.namespace, &workload.service_account, &labels, universe);
        let touches = |change: &StagedChange| {
            let named = |p: &&Policy| p.name == change.name && p.namespace == change.namespace;
            // The policy it replaces or deletes, or its own staged version.
            enforced.policies().iter().filter(named).any(|p| selects(p, enforced.universe()))
                || view.policies().iter().filter(named).any(|p| p.staged.is_some() && selects(p, view.universe()))
        };
        let touching: Vec<u32> =
            (0u32..).zip(view.staged_changes()).filter(|(_, c)| touches(c)).map(|(i, _)| i).collect();
        if touching.is_empty() {
            return None;
        }
        Some(StagedWorkload {
            ingress: WorkloadPolicy::new(Arc::clone(view), workload),
            egress: EgressPolicy::new(Arc::clone(view), workload),
            touching,
        })
    }

    /// The staged changes that touch this workload.
    pub fn changes(&self) -> impl Iterator<Item = &StagedChange> + '_ {
        let all = self.ingress.policy_set().staged_changes();
        self.touching.iter().filter_map(move |&i| all.get(i as usize))
    }

    /// `None` if both verdicts agree. Otherwise the difference, counted
    /// against the staged policy that decides in the view, else the one that
    /// sets or deletes the policy that decides now, else the first staged
    /// change touching this workload (a deletion that leaves no policy to decide).
    pub fn compare<'p>(
        &'p self,
        enforced: (Verdict, Option<&Policy>),
        staged: (Verdict, Option<&'p Policy>),
    ) -> Option<StagedDifference<'p>> {
        if enforced.0 == staged.0 {
            return None;
        }
        let by_name = |p: &Policy| self.changes().find(|c| c.name == p.name && c.namespace == p.namespace);
        let change = staged
            .1
            .filter(|p| p.staged.is_some())
            .and_then(by_name)
            .or_else(|| enforced.1.and_then(by_name))
            .or_else(|| self.changes().next());
        Some(StagedDifference { would: staged.0, change })
    }
}
