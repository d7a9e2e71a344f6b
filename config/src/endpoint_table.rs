//! The compact endpoint table: the content of [`PluginConfig::endpoints`]
//! (pods grouped by namespace, service account and labels, with their
//! addresses) and of [`PluginConfig::service_accounts`] (their labels) as one
//! base64 string, for clusters whose lists would not fit a WasmPlugin as JSON. `control` chooses it when a config carries
//! many addresses; the filter and `control check` read both forms alike.
//!
//! As JSON, each address costs ~16 bytes and a parse; here, a run of
//! consecutive IPv4 addresses in a group costs two varints, and every string
//! (namespace, service account, label key or value) is written once. Loading
//! it is a walk over bytes: no per-address text to parse.
//!
//! Layout (every number an unsigned LEB128 varint):
//! ```text
//! format (= 1)
//! string count, then per string: byte length, UTF-8 bytes
//! group count, then per group:
//!   namespace string, service account string,
//!   label count, then per label: key string, value string (keys ascending, unique)
//!   IPv4 run count, then per run: gap, length - 1
//!   IPv6 address count, then per address: 16 bytes, network order
//! service account count, then per account:
//!   namespace string, name string, labels as for a group
//! ```
//! A run's gap is counted from the address after the group's previous run
//! (from 0.0.0.0 for its first), so runs ascend and never overlap within a
//! group. Addresses of different groups must not overlap either; that is
//! checked where the table is indexed (`krites_policy::model`), as it is for
//! JSON endpoints.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{EndpointSpec, ServiceAccountSpec};

/// The only table format this build writes and reads.
const FORMAT: u64 = 1;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointTable {
    strings: Vec<String>,
    groups: Vec<TableGroup>,
    service_accounts: Vec<TableServiceAccount>,
}

/// A service account's labels, as a `serviceAccounts` entry gives them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableServiceAccount {
    namespace: u32,
    name: u32,
    /// (key, value), keys ascending and unique.
    labels: Vec<(u32, u32)>,
}

impl TableServiceAccount {
    pub fn namespace(&self) -> u32 {
        self.namespace
    }

    pub fn name(&self) -> u32 {
        self.name
    }

    /// (key, value) string ids, keys ascending and unique.
    pub fn label_ids(&self) -> &[(u32, u32)] {
        &self.labels
    }
}

/// One group of pods; strings are indexes into the table's string list.
/// Built only by [`EndpointTable::new`] and decoding, which keep
/// its invariants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableGroup {
    namespace: u32,
    service_account: u32,
    /// (key, value), keys ascending and unique.
    labels: Vec<(u32, u32)>,
    /// Ascending, disjoint runs of consecutive addresses.
    v4_runs: Vec<Ipv4Run>,
    /// Ascending, unique.
    v6: Vec<Ipv6Addr>,
}

impl TableGroup {
    pub fn namespace(&self) -> u32 {
        self.namespace
    }

    pub fn service_account(&self) -> u32 {
        self.service_account
    }

    /// (key, value) string ids, keys ascending and unique.
    pub fn label_ids(&self) -> &[(u32, u32)] {
        &self.labels
    }

    pub fn v4_runs(&self) -> &[Ipv4Run] {
        &self.v4_runs
    }

    pub fn v6(&self) -> &[Ipv6Addr] {
        &self.v6
    }
}

/// `count` consecutive IPv4 addresses from `first` (count ≥ 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Run {
    pub first: u32,
    pub count: u32,
}

impl Ipv4Run {
    pub fn last(&self) -> u32 {
        // `count` ≥ 1 and the run fits the address space: checked on decode
        // and by construction.
        self.first.saturating_add(self.count.saturating_sub(1))
    }
}

/// Why a table did not decode; the position is a byte offset into the
/// decoded (not base64) bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("not base64: {0}")]
    Base64(String),
    #[error("format {0} is not the table format this build reads ({FORMAT})")]
    Format(u64),
    #[error("at byte {at}: {problem}")]
    Malformed { at: usize, problem: String },
    #[error("group {group}: {problem}")]
    Group { group: usize, problem: String },
    #[error("service account {account}: {problem}")]
    ServiceAccount { account: usize, problem: String },
    #[error("address {0:?} is not an IP address")]
    Address(String),
}

impl EndpointTable {
    /// The table holding exactly what `specs` and `accounts` say. An
    /// address that does not parse is an error; repeated addresses within a
    /// group are kept once.
    pub fn new(specs: &[EndpointSpec], accounts: &[ServiceAccountSpec]) -> Result<EndpointTable, TableError> {
        let mut interner = Interner::default();
        let mut groups = Vec::with_capacity(specs.len());
        for spec in specs {
            let mut v4 = Vec::new();
            let mut v6 = Vec::new();
            for text in &spec.ips {
                match text.parse::<IpAddr>().map(|ip| ip.to_canonical()) {
                    Ok(IpAddr::V4(a)) => v4.push(u32::from(a)),
                    Ok(IpAddr::V6(a)) => v6.push(a),
                    Err(_) => return Err(TableError::Address(text.clone())),
                }
            }
            v4.sort_unstable();
            v4.dedup();
            v6.sort_unstable();
            v6.dedup();
            let mut v4_runs: Vec<Ipv4Run> = Vec::new();
            for a in v4 {
                match v4_runs.last_mut() {
                    Some(run) if run.last().checked_add(1) == Some(a) => run.count += 1,
                    _ => v4_runs.push(Ipv4Run { first: a, count: 1 }),
                }
            }
            groups.push(TableGroup {
                namespace: interner.id(&spec.namespace),
                service_account: interner.id(&spec.service_account),
                // BTreeMap: keys ascending and unique.
                labels: spec.labels.iter().map(|(k, v)| (interner.id(k), interner.id(v))).collect(),
                v4_runs,
                v6,
            });
        }
        let service_accounts = accounts
            .iter()
            .map(|a| TableServiceAccount {
                namespace: interner.id(&a.namespace),
                name: interner.id(&a.name),
                labels: a.labels.iter().map(|(k, v)| (interner.id(k), interner.id(v))).collect(),
            })
            .collect();
        Ok(EndpointTable { strings: interner.strings, groups, service_accounts })
    }

    /// The groups as JSON endpoints would list them (addresses as text).
    pub fn endpoint_specs(&self) -> Vec<EndpointSpec> {
        self.groups
            .iter()
            .map(|g| EndpointSpec {
                namespace: self.string(g.namespace).to_string(),
                service_account: self.string(g.service_account).to_string(),
                labels: self.labels(g),
                ips: g
                    .v4_runs
                    .iter()
                    .flat_map(|r| (0..r.count).map(move |i| Ipv4Addr::from(r.first.wrapping_add(i)).to_string()))
                    .chain(g.v6.iter().map(Ipv6Addr::to_string))
                    .collect(),
            })
            .collect()
    }

    pub fn groups(&self) -> &[TableGroup] {
        &self.groups
    }

    pub fn service_accounts(&self) -> &[TableServiceAccount] {
        &self.service_accounts
    }

    /// The service accounts as JSON `serviceAccounts` would list them.
    pub fn service_account_specs(&self) -> Vec<ServiceAccountSpec> {
        self.service_accounts
            .iter()
            .map(|a| ServiceAccountSpec {
                namespace: self.string(a.namespace).to_string(),
                name: self.string(a.name).to_string(),
                labels: self.pairs(&a.labels),
            })
            .collect()
    }

    /// The string list that ids index.
    pub fn strings(&self) -> &[String] {
        &self.strings
    }

    /// String `id`; every id in a decoded or built table is in range.
    pub fn string(&self, id: u32) -> &str {
        self.strings.get(id as usize).map_or("", String::as_str)
    }

    pub fn labels(&self, group: &TableGroup) -> BTreeMap<String, String> {
        self.pairs(&group.labels)
    }

    pub fn service_account_labels(&self, account: &TableServiceAccount) -> BTreeMap<String, String> {
        self.pairs(&account.labels)
    }

    fn pairs(&self, pairs: &[(u32, u32)]) -> BTreeMap<String, String> {
        // Inserted one by one: `collect` into a BTreeMap sorts first, and
        // that sort's code would be in the Wasm module for nothing (keys
        // ascend already).
        let mut labels = BTreeMap::new();
        for &(k, v) in pairs {
            labels.insert(self.string(k).to_string(), self.string(v).to_string());
        }
        labels
    }

    /// Addresses in the table (a group's repeated address counted once).
    pub fn address_count(&self) -> usize {
        self.groups.iter().map(|g| g.v4_runs.iter().map(|r| r.count as usize).sum::<usize>() + g.v6.len()).sum()
    }

    /// The encoded bytes (before base64): deterministic for a table.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put(&mut out, FORMAT);
        put(&mut out, self.strings.len() as u64);
        for s in &self.strings {
            put(&mut out, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
        put(&mut out, self.groups.len() as u64);
        for g in &self.groups {
            put(&mut out, g.namespace.into());
            put(&mut out, g.service_account.into());
            put_labels(&mut out, &g.labels);
            put(&mut out, g.v4_runs.len() as u64);
            let mut next = 0u64;
            for r in &g.v4_runs {
                put(&mut out, u64::from(r.first) - next);
                put(&mut out, u64::from(r.count) - 1);
                next = u64::from(r.last()) + 1;
            }
            put(&mut out, g.v6.len() as u64);
            for a in &g.v6 {
                out.extend_from_slice(&a.octets());
            }
        }
        put(&mut out, self.service_accounts.len() as u64);
        for a in &self.service_accounts {
            put(&mut out, a.namespace.into());
            put(&mut out, a.name.into());
            put_labels(&mut out, &a.labels);
        }
        out
    }

    /// Standard base64 (with padding) of [`Self::to_bytes`].
    pub fn encode(&self) -> String {
        crate::base64::encode(&self.to_bytes())
    }

    pub fn decode(text: &str) -> Result<EndpointTable, TableError> {
        let bytes = crate::base64::decode(text.as_bytes()).map_err(TableError::Base64)?;
        EndpointTable::from_bytes(&bytes)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<EndpointTable, TableError> {
        let mut r = Bytes { bytes, at: 0 };
        let format = r.varint()?;
        if format != FORMAT {
            return Err(TableError::Format(format));
        }
        let n = r.count()?;
        let mut strings = Vec::with_capacity(n);
        for _ in 0..n {
            let len = r.count()?;
            let at = r.at;
            let text = std::str::from_utf8(r.take(len)?)
                .map_err(|_| TableError::Malformed { at, problem: "a string is not UTF-8".to_string() })?;
            strings.push(text.to_string());
        }
        let n = r.count()?;
        let mut groups = Vec::with_capacity(n);
        for group in 0..n {
            let bad = |problem: String| TableError::Group { group, problem };
            let namespace = r.string(&strings, "the namespace").map_err(|e| e.or(bad))?;
            let service_account = r.string(&strings, "the service account").map_err(|e| e.or(bad))?;
            let labels = r.labels(&strings).map_err(|e| e.or(bad))?;
            let runs = r.count()?;
            let mut v4_runs = Vec::with_capacity(runs);
            let mut next = 0u64;
            for _ in 0..runs {
                let first = next.saturating_add(r.varint()?);
                let last = first.saturating_add(r.varint()?);
                if last > u64::from(u32::MAX) {
                    return Err(bad("an IPv4 run goes past 255.255.255.255".to_string()));
                }
                // Its length must fit a u32: a run of every address would
                // otherwise read as a run of one (fewer owned addresses).
                if last - first >= u64::from(u32::MAX) {
                    return Err(bad("an IPv4 run of all 2^32 addresses; split it in two".to_string()));
                }
                // In range: `first` ≤ `last` ≤ u32::MAX.
                v4_runs.push(Ipv4Run { first: first as u32, count: (last - first + 1) as u32 });
                next = last + 1;
            }
            let v6_len = r.count()?;
            let mut v6 = Vec::with_capacity(v6_len.min(r.remaining() / 16));
            for _ in 0..v6_len {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(r.take(16)?);
                let address = Ipv6Addr::from(octets);
                if v6.last().is_some_and(|&prev| prev >= address) {
                    return Err(bad(format!("IPv6 addresses must ascend and be unique: {address} after {}", v6.last().copied().unwrap_or(address))));
                }
                v6.push(address);
            }
            groups.push(TableGroup { namespace, service_account, labels, v4_runs, v6 });
        }
        let n = r.count()?;
        let mut service_accounts = Vec::with_capacity(n);
        for account in 0..n {
            let bad = |problem: String| TableError::ServiceAccount { account, problem };
            let namespace = r.string(&strings, "the namespace").map_err(|e| e.or(bad))?;
            let name = r.string(&strings, "the name").map_err(|e| e.or(bad))?;
            let labels = r.labels(&strings).map_err(|e| e.or(bad))?;
            service_accounts.push(TableServiceAccount { namespace, name, labels });
        }
        if r.at != bytes.len() {
            return Err(r.malformed(r.at, "bytes follow the last group"));
        }
        Ok(EndpointTable { strings, groups, service_accounts })
    }
}

/// A problem inside one group or account: the table's own errors (cut
/// short, ...) as they are, the entry's (an index out of range) named by it.
enum EntryError {
    Table(TableError),
    Entry(String),
}

impl EntryError {
    fn or(self, name: impl FnOnce(String) -> TableError) -> TableError {
        match self {
            EntryError::Table(e) => e,
            EntryError::Entry(problem) => name(problem),
        }
    }
}

impl From<TableError> for EntryError {
    fn from(e: TableError) -> Self {
        EntryError::Table(e)
    }
}

fn put_labels(out: &mut Vec<u8>, labels: &[(u32, u32)]) {
    put(out, labels.len() as u64);
    for &(k, v) in labels {
        put(out, k.into());
        put(out, v.into());
    }
}

/// `PluginConfig::endpoint_table`'s serde form: the base64 string.
pub(crate) fn serialize<S: serde::Serializer>(table: &Option<EndpointTable>, s: S) -> Result<S::Ok, S::Error> {
    match table {
        Some(t) => s.serialize_str(&t.encode()),
        None => s.serialize_none(),
    }
}

/// Strings to ids, in first-seen order.
#[derive(Default)]
struct Interner {
    strings: Vec<String>,
    ids: HashMap<String, u32>,
}

impl Interner {
    fn id(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.strings.len() as u32;
        self.strings.push(s.to_string());
        self.ids.insert(s.to_string(), id);
        id
    }
}

fn put(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

struct Bytes<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Bytes<'_> {
    fn malformed(&self, at: usize, problem: &str) -> TableError {
        TableError::Malformed { at, problem: problem.to_string() }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn varint(&mut self) -> Result<u64, TableError> {
        let start = self.at;
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.bytes.get(self.at) else {
                return Err(self.malformed(start, "the table ends inside a number"));
            };
            self.at += 1;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                break;
            }
            n |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(self.malformed(start, "a number does not fit 64 bits"))
    }

    /// A count of items that follow, each at least one byte: never more
    /// than the bytes left, so a forged count cannot make a large allocation.
    fn count(&mut self) -> Result<usize, TableError> {
        let start = self.at;
        let n = self.varint()?;
        if n > self.remaining() as u64 {
            return Err(self.malformed(start, &format!("a count of {n} with {} bytes left", self.remaining())));
        }
        Ok(n as usize)
    }

    /// A string index, in range of `strings`.
    fn string(&mut self, strings: &[String], what: &str) -> Result<u32, EntryError> {
        let id = self.varint()?;
        if id >= strings.len() as u64 {
            return Err(EntryError::Entry(format!("{what} is string {id}; the table has {}", strings.len())));
        }
        Ok(id as u32)
    }

    /// Label pairs, keys ascending and unique.
    fn labels(&mut self, strings: &[String]) -> Result<Vec<(u32, u32)>, EntryError> {
        let len = self.count()?;
        let mut labels: Vec<(u32, u32)> = Vec::with_capacity(len);
        for _ in 0..len {
            let key = self.string(strings, "a label key")?;
            let value = self.string(strings, "a label value")?;
            if let Some(&(prev, _)) = labels.last() {
                let (prev, key) = (strings[prev as usize].as_str(), strings[key as usize].as_str());
                if prev >= key {
                    return Err(EntryError::Entry(format!("label keys must ascend and be unique: {key:?} after {prev:?}")));
                }
            }
            labels.push((key, value));
        }
        Ok(labels)
    }

    fn take(&mut self, len: usize) -> Result<&[u8], TableError> {
        let start = self.at;
        let end = start.checked_add(len).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(self.malformed(start, "the table ends inside a string or address"));
        };
        self.at = end;
        Ok(&self.bytes[start..end])
    }
}

#[cfg(test)]
mod tests;
