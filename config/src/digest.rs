//! A content digest of a [`PluginConfig`]: SHA-256 over a canonical encoding
//! of the typed config, so the revision depends on what the config says, not
//! on how it was written (key order, whitespace, `8080` vs `8080.0` after
//! Istio's protobuf `Struct` round trip, a field given as its default).
//!
//! Each value is written with its length or a tag, so two different configs
//! cannot encode alike.

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};

use super::*;
use crate::json::sorted_members;

pub struct Digest(Sha256);

impl Digest {
    /// First 16 hex digits of the digest of `config`.
    pub fn revision(config: &PluginConfig) -> String {
        let mut d = Digest::of_config_with(config, config.policies.len());
        config.policies.iter().for_each(|p| d.policy(p));
        d.finish(config)
    }

    /// The revision of `config` with its policies fed one at a time (as a
    /// reader that compiles them in turn has them): this, then
    /// [`Digest::policy`] for each of the `policies`, then [`Digest::finish`]
    /// with the same config, equals [`Digest::revision`] of the config
    /// holding those policies. `config`'s own `policies` are not read.
    pub fn of_config_with(config: &PluginConfig, policies: usize) -> Digest {
        let mut d = Digest(Sha256::new());
        config.head(&mut d);
        // A Vec's encoding: its length, then its items.
        d.number(policies as u64);
        d
    }

    pub fn policy(&mut self, spec: &PolicySpec) {
        spec.feed(self);
    }

    /// First 16 hex digits of the digest.
    pub fn finish(mut self, config: &PluginConfig) -> String {
        config.tail(&mut self);
        self.0.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    fn tag(&mut self, tag: u8) {
        self.0.update([tag]);
    }

    fn number(&mut self, n: u64) {
        self.0.update(n.to_le_bytes());
    }

    fn text(&mut self, s: &str) {
        self.number(s.len() as u64);
        self.0.update(s.as_bytes());
    }
}

trait Canonical {
    fn feed(&self, d: &mut Digest);
}

impl Canonical for String {
    fn feed(&self, d: &mut Digest) {
        d.text(self);
    }
}

impl Canonical for f64 {
    fn feed(&self, d: &mut Digest) {
        // -0 equals 0, and is written as `0`.
        d.number(if *self == 0.0 { 0 } else { self.to_bits() });
    }
}

impl Canonical for u8 {
    fn feed(&self, d: &mut Digest) {
        d.number(u64::from(*self));
    }
}

impl Canonical for u16 {
    fn feed(&self, d: &mut Digest) {
        d.number(u64::from(*self));
    }
}

impl<T: Canonical> Canonical for Option<T> {
    fn feed(&self, d: &mut Digest) {
        match self {
            None => d.tag(0),
            Some(v) => {
                d.tag(1);
                v.feed(d);
            }
        }
    }
}

impl<T: Canonical> Canonical for Vec<T> {
    fn feed(&self, d: &mut Digest) {
        d.number(self.len() as u64);
        for item in self {
            item.feed(d);
        }
    }
}

impl Canonical for BTreeMap<String, String> {
    fn feed(&self, d: &mut Digest) {
        d.number(self.len() as u64);
        for (k, v) in self {
            d.text(k);
            d.text(v);
        }
    }
}

impl Canonical for Json {
    fn feed(&self, d: &mut Digest) {
        match self {
            Json::Null => d.tag(0),
            Json::Bool(b) => d.tag(if *b { 2 } else { 1 }),
            Json::Number(n) => {
                d.tag(3);
                n.feed(d);
            }
            Json::String(s) => {
                d.tag(4);
                d.text(s);
            }
            Json::Array(items) => {
                d.tag(5);
                d.number(items.len() as u64);
                for item in items {
                    item.feed(d);
                }
            }
            Json::Object(members) => {
                // Member order does not change what an object says.
                d.tag(6);
                d.number(members.len() as u64);
                for (k, v) in sorted_members(members) {
                    d.text(k);
                    v.feed(d);
                }
            }
        }
    }
}

/// Unit-variant enums by their position.
macro_rules! canonical_enum {
    ($($t:ty),*) => {$(
        impl Canonical for $t {
            fn feed(&self, d: &mut Digest) {
                d.tag(*self as u8);
            }
        }
    )*};
}
canonical_enum!(TierDefaultAction, PolicyType, Action, StagedAction);

impl Canonical for ProtocolSpec {
    fn feed(&self, d: &mut Digest) {
        match self {
            ProtocolSpec::Number(n) => {
                d.tag(0);
                n.feed(d);
            }
            ProtocolSpec::Name(s) => {
                d.tag(1);
                d.text(s);
            }
        }
    }
}

impl Canonical for PortSpec {
    fn feed(&self, d: &mut Digest) {
        match self {
            PortSpec::Number(n) => {
                d.tag(0);
                n.feed(d);
            }
            PortSpec::Text(s) => {
                d.tag(1);
                d.text(s);
            }
        }
    }
}

/// Structs field by field, in declaration order; destructured so a new field
/// cannot be left out. The config's in two parts around its policies, which
/// a reader may have one at a time.
impl PluginConfig {
    fn head(&self, d: &mut Digest) {
        let PluginConfig { version, revision, scope, tiers, .. } = self;
        d.number(u64::from(*version));
        revision.feed(d);
        scope.feed(d);
        tiers.feed(d);
    }

    fn tail(&self, d: &mut Digest) {
        let PluginConfig {
            version: _,
            revision: _,
            scope: _,
            tiers: _,
            policies: _,
            endpoints,
            endpoint_table,
            namespaces,
            service_accounts,
            network_sets,
            services,
            staged_policies,
        } = self;
        endpoints.feed(d);
        namespaces.feed(d);
        service_accounts.feed(d);
        // Last and only when present: a config without network sets keeps
        // the revision it had before they existed (nothing follows, so the
        // encoding stays unambiguous).
        // Services and staged policies likewise, each written when it or
        // a later part is present: every part's encoding is self-delimiting,
        // so no two configs collide.
        let table = endpoint_table.is_some();
        if !network_sets.is_empty() || !services.is_empty() || !staged_policies.is_empty() || table {
            network_sets.feed(d);
        }
        if !services.is_empty() || !staged_policies.is_empty() || table {
            services.feed(d);
        }
        if !staged_policies.is_empty() || table {
            staged_policies.feed(d);
        }
        if let Some(t) = endpoint_table {
            // Its encoding is deterministic and self-delimiting.
            let bytes = t.to_bytes();
            d.number(bytes.len() as u64);
            d.0.update(&bytes);
        }
    }
}

impl Canonical for TierSpec {
    fn feed(&self, d: &mut Digest) {
        let TierSpec { name, order, default_action } = self;
        name.feed(d);
        order.feed(d);
        default_action.feed(d);
    }
}

impl Canonical for PolicySpec {
    fn feed(&self, d: &mut Digest) {
        let PolicySpec {
            name,
            namespace,
            kind,
            tier,
            order,
            selector,
            namespace_selector,
            service_account_selector,
            types,
            ingress,
            egress,
            staged_action,
        } = self;
        name.feed(d);
        namespace.feed(d);
        kind.feed(d);
        tier.feed(d);
        order.feed(d);
        selector.feed(d);
        namespace_selector.feed(d);
        service_account_selector.feed(d);
        types.feed(d);
        ingress.feed(d);
        egress.feed(d);
        staged_action.feed(d);
    }
}

impl Canonical for RuleSpec {
    fn feed(&self, d: &mut Digest) {
        let RuleSpec { action, ip_version, protocol, not_protocol, icmp, not_icmp, source, destination, http, metadata } =
            self;
        action.feed(d);
        ip_version.feed(d);
        protocol.feed(d);
        not_protocol.feed(d);
        icmp.feed(d);
        not_icmp.feed(d);
        source.feed(d);
        destination.feed(d);
        http.feed(d);
        metadata.feed(d);
    }
}

impl Canonical for EntityRuleSpec {
    fn feed(&self, d: &mut Digest) {
        let EntityRuleSpec {
            nets,
            not_nets,
            selector,
            not_selector,
            namespace_selector,
            ports,
            not_ports,
            service_accounts,
            services,
        } = self;
        nets.feed(d);
        not_nets.feed(d);
        selector.feed(d);
        not_selector.feed(d);
        namespace_selector.feed(d);
        ports.feed(d);
        not_ports.feed(d);
        service_accounts.feed(d);
        services.feed(d);
    }
}

impl Canonical for ServiceAccountMatchSpec {
    fn feed(&self, d: &mut Digest) {
        let ServiceAccountMatchSpec { names, selector } = self;
        names.feed(d);
        selector.feed(d);
    }
}

impl Canonical for HttpMatchSpec {
    fn feed(&self, d: &mut Digest) {
        let HttpMatchSpec { methods, paths } = self;
        methods.feed(d);
        paths.feed(d);
    }
}

impl Canonical for HttpPathSpec {
    fn feed(&self, d: &mut Digest) {
        let HttpPathSpec { exact, prefix } = self;
        exact.feed(d);
        prefix.feed(d);
    }
}

impl Canonical for EndpointSpec {
    fn feed(&self, d: &mut Digest) {
        let EndpointSpec { namespace, service_account, labels, ips } = self;
        namespace.feed(d);
        service_account.feed(d);
        labels.feed(d);
        ips.feed(d);
    }
}

impl Canonical for NamespaceSpec {
    fn feed(&self, d: &mut Digest) {
        let NamespaceSpec { name, labels } = self;
        name.feed(d);
        labels.feed(d);
    }
}

impl Canonical for ServiceAccountSpec {
    fn feed(&self, d: &mut Digest) {
        let ServiceAccountSpec { namespace, name, labels } = self;
        namespace.feed(d);
        name.feed(d);
        labels.feed(d);
    }
}

impl Canonical for NetworkSetSpec {
    fn feed(&self, d: &mut Digest) {
        let NetworkSetSpec { name, namespace, labels, nets } = self;
        name.feed(d);
        namespace.feed(d);
        labels.feed(d);
        nets.feed(d);
    }
}

impl Canonical for ServiceSpec {
    fn feed(&self, d: &mut Digest) {
        let ServiceSpec { namespace, name, cluster_ips, ports } = self;
        namespace.feed(d);
        name.feed(d);
        cluster_ips.feed(d);
        ports.feed(d);
    }
}

impl Canonical for ServicePortSpec {
    fn feed(&self, d: &mut Digest) {
        let ServicePortSpec { port, endpoints } = self;
        port.feed(d);
        endpoints.feed(d);
    }
}

impl Canonical for ServiceEndpointsSpec {
    fn feed(&self, d: &mut Digest) {
        let ServiceEndpointsSpec { port, ips } = self;
        port.feed(d);
        ips.feed(d);
    }
}
