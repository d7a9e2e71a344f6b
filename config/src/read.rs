//! Plugin config JSON -> [`PluginConfig`], with the shape rules serde's
//! derives would apply: unknown and duplicate fields are errors, required
//! fields must be present, `null` reads as absent for optional fields only.
//! Semantic checks (CIDRs, selectors, ...) come after, in `crate::model`.
//!
//! Each `match` on a field name ends with its list's last name as `_`: the
//! reader passes only names from the list.

use std::collections::BTreeMap;

use super::*;
use crate::json::{one_of, ReadError, Reader, Result, Unknown};

impl PluginConfig {
    /// Reads config JSON text, plain or compressed (see [`crate::compressed`]).
    /// The top level must be an object.
    pub fn from_json(bytes: &[u8]) -> Result<PluginConfig> {
        document(bytes, true, None)
    }

    /// [`PluginConfig::from_json`] with `policies` left as their text, each
    /// read in turn later ([`DeferredPolicies`]); the config's `policies` is
    /// empty. Reading them all, in order, gives what `from_json` gives: the
    /// same policies, or the same first error at the same place.
    pub fn from_json_deferring_policies(bytes: Vec<u8>) -> Result<(PluginConfig, DeferredPolicies)> {
        let mut deferred = Deferred::default();
        let config = match document(&bytes, true, Some(&mut deferred)) {
            Ok(config) => config,
            // A skipped policy may hold an error the document's reader would
            // have met first: read it all again, as `from_json` does, for that one.
            Err(e) => return Err(document(&bytes, true, None).err().unwrap_or(e)),
        };
        let mut policies = deferred.policies;
        policies.text = match deferred.payload {
            Some(payload) => payload.into_json(),
            None => bytes,
        };
        Ok((config, policies))
    }
}

/// A config's policies as their JSON text: at Calico's scale ~3 MB of text
/// against ~25 MB read into [`PolicySpec`]s, so a reader that compiles one
/// at a time (the filter) never holds them all, and reads each once.
#[derive(Debug, Default)]
pub struct DeferredPolicies {
    /// The document the policies are in (a compressed config's inner one).
    text: Vec<u8>,
    /// Each policy's bytes in `text`, in order.
    items: Vec<std::ops::Range<usize>>,
    /// A compressed config's: the error its `compressed` field reports for
    /// an error in the inner document (its problem to be filled in).
    envelope: Option<ReadError>,
}

impl DeferredPolicies {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Each policy read, in order. Only their ends were found when the
    /// document was read, so a policy of the wrong shape fails here, with
    /// the error `from_json` reports for it: every other part of the
    /// document was read without error, so it is the document's first.
    pub fn iter(&self) -> impl Iterator<Item = Result<PolicySpec>> + '_ {
        self.items.iter().enumerate().map(|(i, range)| {
            let mut r = Reader::at(&self.text, range.start);
            let read = policy(&mut r).and_then(|p| r.ends_at(range.end).map(|()| p));
            read.map_err(|e| {
                let e = e.in_item("policies", i);
                match &self.envelope {
                    Some(envelope) => in_compressed_document(envelope.clone(), e),
                    None => e,
                }
            })
        })
    }
}

/// Where a deferring read keeps the policies (their text is the whole
/// document's, or the payload's).
#[derive(Default)]
struct Deferred {
    policies: DeferredPolicies,
    /// A compressed config's payload, whose document the policies are in.
    payload: Option<crate::compressed::Payload>,
}

/// An error in a compressed config's inner document `e`, as the envelope
/// reports it: `at` the end of its `compressed` string.
fn in_compressed_document(mut at: ReadError, e: ReadError) -> ReadError {
    at.problem = format!("in the compressed document: {e}");
    at
}

/// A whole document; `envelope`: it may be the compressed form (whose
/// payload may not be compressed again); `deferred`: keep the policies as text.
fn document(bytes: &[u8], envelope: bool, deferred: Option<&mut Deferred>) -> Result<PluginConfig> {
    let mut r = Reader::new(bytes);
    if !r.at_object() {
        return Err(r.invalid("must be a JSON object"));
    }
    let config = plugin_config(&mut r, envelope, deferred)?;
    r.finish()?;
    Ok(config)
}

fn plugin_config(r: &mut Reader, envelope: bool, mut deferred: Option<&mut Deferred>) -> Result<PluginConfig> {
    const FIELDS: &[&str] = &[
        "version", "revision", "scope", "tiers", "policies", "endpoints", "endpointTable", "namespaces", "serviceAccounts", "networkSets", "services",
        "stagedPolicies", "compressed",
    ];
    let mut c = PluginConfig::default();
    let mut compressed = None;
    // The first field besides `version`: a compressed document may have none.
    let mut beside = None;
    r.object(FIELDS, 1, Unknown::Reject, &mut |r, field| {
        if !matches!(field, "version" | "compressed") {
            beside.get_or_insert(field);
        }
        match field {
            "version" => c.version = r.unsigned(u32::MAX.into(), "u32")? as u32,
            "revision" => c.revision = r.optional(Reader::string)?,
            "scope" => c.scope = r.optional(strings)?,
            "tiers" => c.tiers = r.list(tier)?,
            "policies" => match deferred.as_deref_mut() {
                Some(d) => d.policies.items = policy_ranges(r)?,
                None => c.policies = r.list(policy)?,
            },
            "endpoints" => c.endpoints = r.list(endpoint)?,
            "endpointTable" => c.endpoint_table = r.optional(endpoint_table)?,
            "namespaces" => c.namespaces = r.list(namespace)?,
            "serviceAccounts" => c.service_accounts = r.list(service_account)?,
            "networkSets" => c.network_sets = r.list(network_set)?,
            "services" => c.services = r.list(service)?,
            "stagedPolicies" => c.staged_policies = r.list(policy)?,
            _ if !envelope => return Err(r.invalid("a compressed config's document may not be compressed again")),
            _ => compressed = Some(compressed_document(r, deferred.as_deref_mut())?),
        }
        Ok(())
    })?;
    let Some(inner) = compressed else { return Ok(c) };
    if let Some(field) = beside {
        let problem = format!("`{field}` beside `compressed`: a compressed config carries only `version` outside");
        return Err(r.invalid(problem).in_field("compressed"));
    }
    if inner.version != c.version {
        let problem = format!("the compressed document's version {} differs from the envelope's {}", inner.version, c.version);
        return Err(r.invalid(problem).in_field("compressed"));
    }
    Ok(inner)
}

/// Where each policy is: skipped, not read (see [`Reader::skip_value`]).
fn policy_ranges(r: &mut Reader) -> Result<Vec<std::ops::Range<usize>>> {
    let mut items = Vec::new();
    r.array(&mut |r| {
        let start = r.value_start();
        r.skip_value()?;
        items.push(start..r.offset());
        Ok(())
    })?;
    Ok(items)
}

/// The document a `compressed` field holds, with its endpoint table's bytes;
/// `deferred`: its policies are kept as text, and so the payload.
fn compressed_document(r: &mut Reader, mut deferred: Option<&mut Deferred>) -> Result<PluginConfig> {
    let text = r.string()?;
    let payload = crate::compressed::unpack(text.as_bytes()).map_err(|e| r.invalid(e.to_string()))?;
    drop(text);
    let mut config =
        document(payload.json(), false, deferred.as_deref_mut()).map_err(|e| in_compressed_document(r.invalid(String::new()), e))?;
    if !payload.table().is_empty() {
        if config.endpoint_table.is_some() {
            return Err(r.invalid("the compressed document has an `endpointTable` and table bytes after it; give one"));
        }
        let table = EndpointTable::from_bytes(payload.table()).map_err(|e| r.invalid(format!("the endpoint table after the document: {e}")))?;
        config.endpoint_table = Some(table);
    }
    if let Some(d) = deferred {
        d.payload = Some(payload);
        // As `plugin_config`'s object reports an error in this field.
        d.policies.envelope = Some(r.invalid(String::new()).in_field("compressed"));
    }
    Ok(config)
}

fn strings(r: &mut Reader) -> Result<Vec<String>> {
    r.list(Reader::string)
}

/// An optional string field.
fn text(r: &mut Reader) -> Result<Option<String>> {
    r.optional(Reader::string)
}

fn order(r: &mut Reader) -> Result<Option<f64>> {
    r.optional(Reader::float)
}

/// A string naming one of `variants` (serde's unit-variant enums).
fn variant<T: Copy>(r: &mut Reader, variants: &[(&'static str, T)]) -> Result<T> {
    let name = r.string()?;
    match variants.iter().find(|(n, _)| *n == name) {
        Some((_, v)) => Ok(*v),
        None => {
            let names: Vec<&str> = variants.iter().map(|(n, _)| *n).collect();
            Err(r.invalid(format!("unknown variant `{name}`, expected {}", one_of(&names))))
        }
    }
}

fn labels(r: &mut Reader) -> Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    r.map(&mut |r, key| {
        let value = r.string()?;
        match labels.insert(key.to_string(), value) {
            None => Ok(()),
            Some(_) => Err(r.invalid(format!("duplicate label `{key}`"))),
        }
    })?;
    Ok(labels)
}

fn tier(r: &mut Reader) -> Result<TierSpec> {
    let mut t = TierSpec { name: String::new(), order: None, default_action: None };
    r.object(&["name", "order", "defaultAction"], 1, Unknown::Reject, &mut |r, field| {
        match field {
            "name" => t.name = r.string()?,
            "order" => t.order = order(r)?,
            _ => {
                t.default_action =
                    r.optional(|r| variant(r, &[("Deny", TierDefaultAction::Deny), ("Pass", TierDefaultAction::Pass)]))?
            }
        }
        Ok(())
    })?;
    Ok(t)
}

fn policy(r: &mut Reader) -> Result<PolicySpec> {
    const FIELDS: &[&str] = &[
        "name",
        "namespace",
        "kind",
        "tier",
        "order",
        "selector",
        "namespaceSelector",
        "serviceAccountSelector",
        "types",
        "ingress",
        "egress",
        "stagedAction",
    ];
    let mut p = PolicySpec::default();
    r.object(FIELDS, 1, Unknown::Reject, &mut |r, field| {
        match field {
            "name" => p.name = r.string()?,
            "namespace" => p.namespace = text(r)?,
            "kind" => p.kind = text(r)?,
            "tier" => p.tier = text(r)?,
            "order" => p.order = order(r)?,
            "selector" => p.selector = text(r)?,
            "namespaceSelector" => p.namespace_selector = text(r)?,
            "serviceAccountSelector" => p.service_account_selector = text(r)?,
            "types" => p.types = r.optional(|r| r.list(policy_type))?,
            "ingress" => p.ingress = r.list(rule)?,
            "egress" => p.egress = r.list(rule)?,
            _ => p.staged_action = r.optional(|r| variant(r, &[("Set", StagedAction::Set), ("Delete", StagedAction::Delete)]))?,
        }
        Ok(())
    })?;
    Ok(p)
}

fn policy_type(r: &mut Reader) -> Result<PolicyType> {
    variant(r, &[("Ingress", PolicyType::Ingress), ("Egress", PolicyType::Egress)])
}

fn rule(r: &mut Reader) -> Result<RuleSpec> {
    const FIELDS: &[&str] = &[
        "action",
        "ipVersion",
        "protocol",
        "notProtocol",
        "icmp",
        "notICMP",
        "source",
        "destination",
        "http",
        "metadata",
    ];
    const ACTIONS: &[(&str, Action)] =
        &[("Allow", Action::Allow), ("Deny", Action::Deny), ("Log", Action::Log), ("Pass", Action::Pass)];
    let mut s = RuleSpec::new(Action::Deny);
    r.object(FIELDS, 1, Unknown::Reject, &mut |r, field| {
        match field {
            "action" => s.action = variant(r, ACTIONS)?,
            "ipVersion" => s.ip_version = r.optional(|r| r.unsigned(u8::MAX.into(), "an IP version (4 or 6)").map(|v| v as u8))?,
            "protocol" => s.protocol = r.optional(protocol)?,
            "notProtocol" => s.not_protocol = r.optional(protocol)?,
            "icmp" => s.icmp = r.optional(Reader::value)?,
            "notICMP" => s.not_icmp = r.optional(Reader::value)?,
            "source" => s.source = r.optional(entity)?,
            "destination" => s.destination = r.optional(entity)?,
            "http" => s.http = r.optional(http)?,
            _ => s.metadata = r.optional(Reader::value)?,
        }
        Ok(())
    })?;
    Ok(s)
}

/// A protocol name or number 1-255 (0 passes the shape check; the compiler
/// names the problem).
fn protocol(r: &mut Reader) -> Result<ProtocolSpec> {
    if r.at_number() {
        return r.unsigned(u8::MAX.into(), "a protocol name or a number from 0 to 255").map(|n| ProtocolSpec::Number(n as u8));
    }
    r.string().map(ProtocolSpec::Name)
}

fn port(r: &mut Reader) -> Result<PortSpec> {
    if r.at_number() {
        return r.unsigned(u16::MAX.into(), "a port number from 0 to 65535 or a range \"min:max\"").map(|n| PortSpec::Number(n as u16));
    }
    r.string().map(PortSpec::Text)
}

fn entity(r: &mut Reader) -> Result<EntityRuleSpec> {
    const FIELDS: &[&str] = &[
        "nets",
        "notNets",
        "selector",
        "notSelector",
        "namespaceSelector",
        "ports",
        "notPorts",
        "serviceAccounts",
        "services",
    ];
    let mut e = EntityRuleSpec::default();
    r.object(FIELDS, 0, Unknown::Reject, &mut |r, field| {
        match field {
            "nets" => e.nets = strings(r)?,
            "notNets" => e.not_nets = strings(r)?,
            "selector" => e.selector = text(r)?,
            "notSelector" => e.not_selector = text(r)?,
            "namespaceSelector" => e.namespace_selector = text(r)?,
            "ports" => e.ports = r.list(port)?,
            "notPorts" => e.not_ports = r.list(port)?,
            "serviceAccounts" => e.service_accounts = r.optional(service_account_match)?,
            _ => e.services = r.optional(Reader::value)?,
        }
        Ok(())
    })?;
    Ok(e)
}

fn service_account_match(r: &mut Reader) -> Result<ServiceAccountMatchSpec> {
    let mut m = ServiceAccountMatchSpec::default();
    r.object(&["names", "selector"], 0, Unknown::Reject, &mut |r, field| {
        match field {
            "names" => m.names = strings(r)?,
            _ => m.selector = text(r)?,
        }
        Ok(())
    })?;
    Ok(m)
}

fn http(r: &mut Reader) -> Result<HttpMatchSpec> {
    let mut h = HttpMatchSpec::default();
    r.object(&["methods", "paths"], 0, Unknown::Reject, &mut |r, field| {
        match field {
            "methods" => h.methods = strings(r)?,
            _ => h.paths = r.list(http_path)?,
        }
        Ok(())
    })?;
    Ok(h)
}

fn http_path(r: &mut Reader) -> Result<HttpPathSpec> {
    let mut p = HttpPathSpec::default();
    r.object(&["exact", "prefix"], 0, Unknown::Reject, &mut |r, field| {
        match field {
            "exact" => p.exact = text(r)?,
            _ => p.prefix = text(r)?,
        }
        Ok(())
    })?;
    Ok(p)
}

fn endpoint(r: &mut Reader) -> Result<EndpointSpec> {
    let mut e = EndpointSpec::default();
    r.object(&["namespace", "serviceAccount", "ips", "labels"], 3, Unknown::Reject, &mut |r, field| {
        match field {
            "namespace" => e.namespace = r.string()?,
            "serviceAccount" => e.service_account = r.string()?,
            "ips" => e.ips = strings(r)?,
            _ => e.labels = labels(r)?,
        }
        Ok(())
    })?;
    Ok(e)
}

fn endpoint_table(r: &mut Reader) -> Result<EndpointTable> {
    let text = r.string()?;
    EndpointTable::decode(&text).map_err(|e| r.invalid(e.to_string()))
}

fn namespace(r: &mut Reader) -> Result<NamespaceSpec> {
    let mut n = NamespaceSpec::default();
    r.object(&["name", "labels"], 1, Unknown::Reject, &mut |r, field| {
        match field {
            "name" => n.name = r.string()?,
            _ => n.labels = labels(r)?,
        }
        Ok(())
    })?;
    Ok(n)
}

fn service_account(r: &mut Reader) -> Result<ServiceAccountSpec> {
    let mut s = ServiceAccountSpec::default();
    r.object(&["namespace", "name", "labels"], 2, Unknown::Reject, &mut |r, field| {
        match field {
            "namespace" => s.namespace = r.string()?,
            "name" => s.name = r.string()?,
            _ => s.labels = labels(r)?,
        }
        Ok(())
    })?;
    Ok(s)
}

fn network_set(r: &mut Reader) -> Result<NetworkSetSpec> {
    let mut s = NetworkSetSpec::default();
    r.object(&["name", "namespace", "labels", "nets"], 1, Unknown::Reject, &mut |r, field| {
        match field {
            "name" => s.name = r.string()?,
            "namespace" => s.namespace = text(r)?,
            "labels" => s.labels = labels(r)?,
            _ => s.nets = strings(r)?,
        }
        Ok(())
    })?;
    Ok(s)
}

fn service(r: &mut Reader) -> Result<ServiceSpec> {
    let mut s = ServiceSpec::default();
    r.object(&["namespace", "name", "clusterIPs", "ports"], 2, Unknown::Reject, &mut |r, field| {
        match field {
            "namespace" => s.namespace = r.string()?,
            "name" => s.name = r.string()?,
            "clusterIPs" => s.cluster_ips = strings(r)?,
            _ => s.ports = r.list(service_port)?,
        }
        Ok(())
    })?;
    Ok(s)
}

fn port_number(r: &mut Reader) -> Result<u16> {
    r.unsigned(u16::MAX.into(), "a port number").map(|n| n as u16)
}

fn service_port(r: &mut Reader) -> Result<ServicePortSpec> {
    let mut p = ServicePortSpec::default();
    r.object(&["port", "endpoints"], 1, Unknown::Reject, &mut |r, field| {
        match field {
            "port" => p.port = port_number(r)?,
            _ => p.endpoints = r.list(service_endpoints)?,
        }
        Ok(())
    })?;
    Ok(p)
}

fn service_endpoints(r: &mut Reader) -> Result<ServiceEndpointsSpec> {
    let mut e = ServiceEndpointsSpec::default();
    r.object(&["port", "ips"], 2, Unknown::Reject, &mut |r, field| {
        match field {
            "port" => e.port = port_number(r)?,
            _ => e.ips = strings(r)?,
        }
        Ok(())
    })?;
    Ok(e)
}
