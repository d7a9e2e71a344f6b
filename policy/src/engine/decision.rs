//! What the engine answers, with enough provenance to explain it.

use std::fmt;
use std::net::IpAddr;

use crate::model::{Group, Policy, Rule};
use crate::spiffe::SpiffeId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Allow => "ALLOW",
            Verdict::Deny => "DENY",
        })
    }
}

/// Why, as a fixed code for stats and a sentence for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// An Allow rule matched.
    AllowRule,
    /// A Deny rule matched.
    DenyRule,
    /// Policies of a tier select the workload, none decided, the tier's default is Deny.
    TierDefaultDeny,
    /// No policy selects the workload: Calico's namespace profile allows.
    NoPolicySelects,
    /// Every tier that selects the workload passed: the profile allows.
    AllTiersPassed,
}

impl Reason {
    pub const ALL: [Reason; 5] =
        [Reason::AllowRule, Reason::DenyRule, Reason::TierDefaultDeny, Reason::NoPolicySelects, Reason::AllTiersPassed];

    /// Stable snake_case code, used in stat names and logs.
    pub fn code(self) -> &'static str {
        match self {
            Reason::AllowRule => "allow_rule",
            Reason::DenyRule => "deny_rule",
            Reason::TierDefaultDeny => "tier_default_deny",
            Reason::NoPolicySelects => "no_policy_selects",
            Reason::AllTiersPassed => "all_tiers_passed",
        }
    }

    pub fn verdict(self) -> Verdict {
        match self {
            Reason::AllowRule | Reason::NoPolicySelects | Reason::AllTiersPassed => Verdict::Allow,
            Reason::DenyRule | Reason::TierDefaultDeny => Verdict::Deny,
        }
    }
}

/// How the two identity factors (certificate, source address) compared.
#[derive(Debug, Clone, Copy)]
pub enum IdentityCheck<'p, 'r> {
    /// Plaintext: the address owner is the only factor.
    Address { owner: Option<Group<'p>> },
    /// The certificate's namespace/service account is the address owner's.
    Verified { owner: Group<'p> },
    /// A valid certificate from an address no known pod owns.
    UnknownAddress { certified: SpiffeId<'r> },
    /// The certificate and the address owner disagree (stolen credentials, or
    /// a stale endpoint table): identity rules that allow do not match.
    Mismatch { certified: SpiffeId<'r>, owner: Group<'p> },
    /// mTLS, but the certificate carries no SPIFFE identity.
    NoSpiffeId { uri_san: Option<&'r str>, owner: Option<Group<'p>> },
}

impl IdentityCheck<'_, '_> {
    /// The factors disagree or the certificate is unusable.
    pub fn is_conflict(&self) -> bool {
        matches!(self, IdentityCheck::Mismatch { .. } | IdentityCheck::NoSpiffeId { .. })
    }

    pub fn code(&self) -> &'static str {
        match self {
            IdentityCheck::Address { .. } => "plaintext",
            IdentityCheck::Verified { .. } => "verified",
            IdentityCheck::UnknownAddress { .. } => "unknown_address",
            IdentityCheck::Mismatch { .. } => "mismatch",
            IdentityCheck::NoSpiffeId { .. } => "no_spiffe_id",
        }
    }
}

/// The answer for one request.
#[derive(Debug, Clone, Copy)]
pub struct Decision<'p, 'r> {
    pub verdict: Verdict,
    pub reason: Reason,
    /// The rule that decided (Allow/Deny rule reasons).
    pub rule: Option<&'p Rule>,
    pub policy: Option<&'p Policy>,
    /// The tier whose default decided (TierDefaultDeny).
    pub tier: Option<&'p str>,
    pub identity: IdentityCheck<'p, 'r>,
    pub source_ip: Option<IpAddr>,
}

impl Decision<'_, '_> {
    pub fn allowed(&self) -> bool {
        self.verdict == Verdict::Allow
    }

    /// Where the decision came from: a rule id, `tier/<name>`, or `profile`.
    pub fn decided_by(&self) -> DecidedBy<'_> {
        DecidedBy(self)
    }
}

pub struct DecidedBy<'a>(&'a Decision<'a, 'a>);

impl fmt::Display for DecidedBy<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        match (d.rule, d.tier) {
            (Some(rule), _) => f.write_str(&rule.id),
            (None, Some(tier)) => write!(f, "tier/{tier}"),
            (None, None) => f.write_str("profile"),
        }
    }
}

/// `ALLOW default/customer/ingress[0]: Allow rule matched; plaintext from 10.0.0.1 (yaobank/customer)`
impl fmt::Display for Decision<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: ", self.verdict, self.decided_by())?;
        match self.reason {
            Reason::AllowRule => f.write_str("Allow rule matched")?,
            Reason::DenyRule => f.write_str("Deny rule matched")?,
            Reason::TierDefaultDeny => {
                write!(f, "no rule matched and tier {} denies by default", self.tier.unwrap_or("?"))?
            }
            Reason::NoPolicySelects => f.write_str("no policy selects this workload (namespace profile allows)")?,
            Reason::AllTiersPassed => f.write_str("every tier passed (namespace profile allows)")?,
        }
        let ip = Ip(self.source_ip);
        match self.identity {
            IdentityCheck::Address { owner: Some(g) } => {
                write!(f, "; plaintext from {ip}, a pod of {}/{}", g.namespace(), g.service_account())
            }
            IdentityCheck::Address { owner: None } => write!(f, "; plaintext from {ip}, which no known pod owns"),
            IdentityCheck::Verified { owner } => {
                write!(f, "; certificate {}/{} matches the owner of {ip}", owner.namespace(), owner.service_account())
            }
            IdentityCheck::UnknownAddress { certified } => write!(
                f,
                "; certificate says {}/{} but no known pod owns {ip}",
                certified.namespace, certified.service_account
            ),
            IdentityCheck::Mismatch { certified, owner } => write!(
                f,
                "; certificate says {}/{} but {ip} belongs to {}/{}",
                certified.namespace, certified.service_account, owner.namespace(), owner.service_account()
            ),
            IdentityCheck::NoSpiffeId { uri_san, .. } => {
                write!(f, "; client certificate has no SPIFFE identity (URI SAN {:?})", uri_san.unwrap_or(""))
            }
        }
    }
}

struct Ip(Option<IpAddr>);

impl fmt::Display for Ip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(ip) => write!(f, "{ip}"),
            None => f.write_str("an unverified address"),
        }
    }
}
