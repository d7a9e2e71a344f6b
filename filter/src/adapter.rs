//! Turns what Envoy exposes into engine facts. Host-independent behind the
//! small [`Host`] trait, so the parsing is unit-tested natively; the real
//! host is `crate::host` (wasm32 only).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use krites_policy::json::{Reader, Unknown};
use krites_policy::{Destination, EgressFacts, Needs, Peer, RequestFacts, Workload};

/// The two kinds of lookups a request needs. Errors read as "absent": every
/// absent fact makes rules that test it not match, which fails closed.
pub trait Host {
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;
    /// Every request header, serialised as a proxy-wasm pair map: one host
    /// call (each call that returns data re-enters the VM to allocate, which
    /// costs more than the lookup itself).
    fn request_headers(&self) -> Option<Vec<u8>>;
}

/// Where the NETWORK role of the module leaves the connection's real peer
/// address, and the HTTP role reads it (Envoy filter state `wasm.<key>`).
pub const PEER_ADDRESS_KEY: &str = "krites_peer_address";
/// The `root_id` (Istio `WasmPlugin.pluginName`) that selects the NETWORK role.
pub const PEER_ADDRESS_ROOT_ID: &str = "krites_peer_address";

/// The largest plugin config the filter accepts: 32 MiB. `control` shards its output per
/// namespace at 900 KiB (1,000 policies and 10,000 pods compile to about 660 KB); Calico's
/// production-sized set with all its 256k endpoint addresses is 13 MB (the benchmark loads
/// it); a config larger still is a mistake or an attack on the proxy's memory. It is refused
/// before it is read, like any invalid config, and the previous config keeps enforcing.
pub const MAX_CONFIG_BYTES: usize = 32 * 1024 * 1024;

/// Refuses a plugin config over [`MAX_CONFIG_BYTES`], naming both sizes, in the
/// `<object>: <field>: <problem>` form of every config error.
pub fn check_config_size(size: usize) -> Result<(), String> {
    if size <= MAX_CONFIG_BYTES {
        return Ok(());
    }
    Err(format!(
        "plugin config: size: {size} bytes is over the limit of {MAX_CONFIG_BYTES} bytes ({} MiB); control shards configs at 900 KiB",
        MAX_CONFIG_BYTES / (1024 * 1024)
    ))
}

/// The direction of the listener a stream or connection arrived on
/// (`envoy.config.core.v3.TrafficDirection`): which role decides it.
///
/// Istio gives a WasmPlugin whose `match` names no mode (CLIENT_AND_SERVER)
/// to both sides of a sidecar: its `virtualInbound` listener (INBOUND) and
/// its outbound listeners (OUTBOUND); a gateway's listeners are OUTBOUND
/// (gateways count as CLIENT). So one module, in the same two plugins,
/// decides the workload's ingress on inbound listeners and its egress on
/// outbound ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ListenerDirection {
    Inbound,
    Outbound,
    #[default]
    /// Envoy gave no direction (a listener istiod did not build): see [`ListenerDirection::roles`].
    Unspecified,
}

/// Which roles decide traffic on a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub ingress: bool,
    pub egress: bool,
}

impl ListenerDirection {
    /// The wasm property names that carry it, in the order asked. Envoy 1.40 serves the CEL
    /// attribute `xds.listener_direction` (the listener's, per stream and connection, also for
    /// a filter config delivered by ECDS and shared by the inbound and outbound listeners);
    /// it does not serve the top-level `listener_direction` of older Wasm hosts (verified
    /// end to end: a module asking only that one sees no direction). The older name is asked
    /// only when the first is absent.
    pub const PROPERTIES: [&'static [&'static str]; 2] = [&["xds", "listener_direction"], &["listener_direction"]];

    /// From the property's value: an int64 (8 bytes little-endian), 1 INBOUND, 2 OUTBOUND.
    pub fn from_property(bytes: Option<&[u8]>) -> ListenerDirection {
        match bytes.and_then(parse_u64) {
            Some(1) => ListenerDirection::Inbound,
            Some(2) => ListenerDirection::Outbound,
            _ => ListenerDirection::Unspecified,
        }
    }

    /// Reads the direction of the current stream's or connection's listener.
    pub fn read(host: &impl Host) -> ListenerDirection {
        for path in Self::PROPERTIES {
            if let Some(bytes) = host.property(path) {
                return ListenerDirection::from_property(Some(&bytes));
            }
        }
        ListenerDirection::Unspecified
    }

    /// Inbound: the workload's ingress rules; outbound: its egress rules.
    /// Unspecified: both, and either one denying denies. Istio marks every
    /// listener it builds, so this is a listener nobody meant for Krites;
    /// whichever way its traffic goes, neither role's rules may be skipped
    /// (picking one would let the other's Deny rules be bypassed), and
    /// denying outright would be no safer than applying both.
    pub fn roles(self) -> Roles {
        match self {
            ListenerDirection::Inbound => Roles { ingress: true, egress: false },
            ListenerDirection::Outbound => Roles { ingress: false, egress: true },
            ListenerDirection::Unspecified => Roles { ingress: true, egress: true },
        }
    }
}

/// Where a request or connection from the workload goes, as its sidecar
/// knows it before load balancing: the cluster the route (HTTP) or
/// `tcp_proxy` (TCP) picked, with the connection's original destination
/// (`destination.address` on an outbound listener with `use_original_dst`).
/// Without a cluster (no route matched), only the original destination.
pub fn egress_destination(cluster: Option<&str>, ip: Option<IpAddr>, port: Option<u16>) -> Destination<'_> {
    match cluster.filter(|c| !c.is_empty()) {
        Some(name) => Destination::Cluster { name, ip, port },
        None => Destination::Address { ip, port },
    }
}

/// What the roles of a listener need read: the union of each role's needs.
pub fn needs_for(roles: Roles, ingress: Needs, egress: Needs) -> Needs {
    let none = Needs { source_port: false, destination_ip: false, destination_port: false, http: false };
    let (i, e) = (if roles.ingress { ingress } else { none }, if roles.egress { egress } else { none });
    Needs {
        source_port: i.source_port || e.source_port,
        destination_ip: i.destination_ip || e.destination_ip,
        destination_port: i.destination_port || e.destination_port,
        http: i.http || e.http,
    }
}

/// Everything an egress decision reads: the source address, the
/// destination, and (unless [`Needs::http`] was off) method and path.
pub const EGRESS_NEEDS: Needs = Needs { source_port: true, destination_ip: true, destination_port: true, http: true };

/// One request's facts, owned (the host hands out fresh buffers anyway).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestData {
    pub source_ip: Option<IpAddr>,
    pub source_port: Option<u16>,
    pub destination_ip: Option<IpAddr>,
    pub destination_port: Option<u16>,
    /// `source.address` was not the TCP peer (see [`RequestData::gather`]); kept for logs only.
    pub unverified_source: Option<IpAddr>,
    pub mtls: bool,
    /// Shared with the connection cache: a hit costs no copy.
    pub uri_san: Option<Rc<str>>,
    pub method: Option<String>,
    pub path: Option<String>,
}

impl RequestData {
    /// Reads only what some rule needs; the source address always (it is one
    /// of the two identity factors), and identity only from the connection,
    /// never from headers such as `x-forwarded-client-cert`.
    ///
    /// The source address is the connection's peer. Istio's inbound
    /// connection manager does not use the remote address, so Envoy replaces
    /// `source.address` in HTTP filters with the address named in
    /// `x-forwarded-for`, which any client can write. Krites' NETWORK role
    /// records the real peer per connection (read here first). Without it, an
    /// XFF-derived address is recognised by its port 0, which no TCP peer
    /// has: it is then not an identity factor, and the engine treats the
    /// source address as unknown (fail closed).
    pub fn gather(host: &impl Host, needs: Needs) -> RequestData {
        let (conn, _) = ConnectionData::read(host, needs);
        RequestData::with_connection(&conn, host, needs)
    }

    /// [`RequestData::gather`], with the connection's facts from `cache` when
    /// an earlier request on the same connection read them.
    pub fn gather_cached(host: &impl Host, needs: Needs, cache: &mut ConnectionCache) -> RequestData {
        let conn = cache.get_or_read(host, needs);
        RequestData::with_connection(&conn, host, needs)
    }

    /// [`RequestData::gather`] for a stream whose listener direction decides
    /// which roles run (`needs_of`: what they need): reads the direction too.
    pub fn gather_directed(host: &impl Host, needs_of: impl Fn(ListenerDirection) -> Needs) -> (RequestData, ListenerDirection) {
        let (conn, _) = ConnectionData::read_directed(host, None, &needs_of);
        (RequestData::with_connection(&conn, host, needs_of(conn.direction)), conn.direction)
    }

    /// [`RequestData::gather_directed`], with the connection's facts (and
    /// direction) from `cache` when an earlier request on it read them.
    pub fn gather_cached_directed(
        host: &impl Host,
        needs_of: impl Fn(ListenerDirection) -> Needs,
        cache: &mut ConnectionCache,
    ) -> (RequestData, ListenerDirection) {
        let conn = cache.get_or_read_directed(host, &needs_of);
        (RequestData::with_connection(&conn, host, needs_of(conn.direction)), conn.direction)
    }

    fn with_connection(conn: &ConnectionData, host: &impl Host, needs: Needs) -> RequestData {
        let mut data = RequestData {
            source_ip: conn.source.map(|(ip, _)| ip),
            source_port: conn.source.and_then(|(_, port)| port),
            destination_ip: conn.destination_ip,
            destination_port: conn.destination_port,
            unverified_source: conn.unverified_source,
            mtls: conn.mtls,
            uri_san: conn.uri_san.clone(),
            ..RequestData::default()
        };
        if needs.http {
            data.read_http(host);
        }
        data
    }

    /// Method and path; also read lazily to log a denial. A malformed header
    /// map reads as absent, so HTTP rules fail closed.
    pub fn read_http(&mut self, host: &impl Host) {
        if self.method.is_some() && self.path.is_some() {
            return;
        }
        let Some(headers) = host.request_headers() else { return };
        let (mut method, mut path) = (None, None);
        let decoded = for_each_pair(&headers, |name, value| {
            // Envoy keeps one of each pseudo-header; the first is the one it routes on.
            match name {
                b":method" if method.is_none() => method = Some(value),
                b":path" if path.is_none() => path = Some(value),
                _ => {}
            }
            Ok(())
        });
        if decoded.is_err() {
            return;
        }
        if self.method.is_none() {
            self.method = method.and_then(|m| std::str::from_utf8(m).ok()).map(str::to_string);
        }
        if self.path.is_none() {
            self.path = path.and_then(|p| std::str::from_utf8(p).ok()).map(str::to_string);
        }
    }

    /// The facts of the egress role: the workload's own address as source
    /// (the recorded peer of its connection to the sidecar, as for ingress),
    /// the destination from `cluster` and the original destination, and the
    /// method and path read as the ingress role reads them (no header trust).
    pub fn egress_facts<'a>(&'a self, cluster: Option<&'a str>) -> EgressFacts<'a> {
        EgressFacts {
            source_ip: self.source_ip,
            source_port: self.source_port,
            destination: egress_destination(cluster, self.destination_ip, self.destination_port),
            method: self.method.as_deref(),
            path: self.path.as_deref(),
        }
    }

    pub fn facts(&self) -> RequestFacts<'_> {
        RequestFacts {
            source_ip: self.source_ip,
            source_port: self.source_port,
            destination_ip: self.destination_ip,
            destination_port: self.destination_port,
            peer: if self.mtls { Peer::Mtls { uri_san: self.uri_san.as_deref() } } else { Peer::Plaintext },
            method: self.method.as_deref(),
            path: self.path.as_deref(),
        }
    }
}

/// What is the same for every request on a connection: the peer (address
/// and certificate) and the local address.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConnectionData {
    source: Option<(IpAddr, Option<u16>)>,
    unverified_source: Option<IpAddr>,
    destination_ip: Option<IpAddr>,
    destination_port: Option<u16>,
    mtls: bool,
    uri_san: Option<Rc<str>>,
    /// Its listener's direction: which role decides its requests.
    pub direction: ListenerDirection,
}

impl ConnectionData {
    /// Reads the connection's facts (see [`RequestData::gather`] for where
    /// the source address comes from). The second value says whether they
    /// may be reused for later requests on the connection: only when the
    /// NETWORK role recorded the peer. Without it, `source.address` follows
    /// each request's `x-forwarded-for` and must be read every time.
    fn read(host: &impl Host, needs: Needs) -> (ConnectionData, bool) {
        // The direction is not read (left Unspecified): the caller knows its role.
        ConnectionData::read_directed(host, Some(ListenerDirection::Unspecified), |_| needs)
    }

    /// [`ConnectionData::read`], with `needs_of` the facts the roles of the
    /// listener's direction need; the direction is read first unless `known`.
    fn read_directed(host: &impl Host, known: Option<ListenerDirection>, needs_of: impl Fn(ListenerDirection) -> Needs) -> (ConnectionData, bool) {
        let direction = known.unwrap_or_else(|| ListenerDirection::read(host));
        let needs = needs_of(direction);
        let recorded = host.property(&[PEER_ADDRESS_KEY]).as_deref().and_then(parse_address);
        let source = recorded.or_else(|| host.property(&["source", "address"]).as_deref().and_then(parse_address));
        let (source, unverified_source) = match source {
            Some((ip, Some(0))) => (None, Some(ip)),
            other => (other, None),
        };
        let uri_san: Option<Rc<str>> = host.property(&["connection", "uri_san_peer_certificate"]).and_then(utf8).map(Rc::from);
        let mtls = uri_san.is_some()
            || host.property(&["connection", "mtls"]).is_some_and(|b| b.first().is_some_and(|&v| v != 0));
        // `destination.address` is the local address with its port: one host
        // call (each costs microseconds) gives both; `destination.port` only
        // when the address came without one.
        let destination = if needs.destination_ip || needs.destination_port {
            host.property(&["destination", "address"]).as_deref().and_then(parse_address)
        } else {
            None
        };
        let destination_port = match destination {
            _ if !needs.destination_port => None,
            Some((_, Some(port))) => Some(port),
            _ => host.property(&["destination", "port"]).as_deref().and_then(parse_port),
        };
        let destination_ip = destination.filter(|_| needs.destination_ip).map(|(ip, _)| ip);
        let conn = ConnectionData { source, unverified_source, destination_ip, destination_port, mtls, uri_san, direction };
        (conn, recorded.is_some())
    }
}

/// The connection facts of recent connections, by Envoy's connection id.
/// Reading them costs several host calls (each a CEL attribute lookup in
/// Envoy) and they cannot change while the connection lives (the peer, the
/// verified certificate, the local address), so a keep-alive or HTTP/2
/// connection pays once. Connection ids are never reused within an Envoy
/// process, so a stale entry can never describe another connection; the
/// oldest entries go when the cache is full, and a connection whose entry
/// went is simply read again.
#[derive(Debug, Default)]
pub struct ConnectionCache {
    entries: HashMap<u64, ConnectionData>,
    order: VecDeque<u64>,
}

impl ConnectionCache {
    pub const CAPACITY: usize = 4096;

    pub fn get_or_read(&mut self, host: &impl Host, needs: Needs) -> ConnectionData {
        self.get_or_read_directed(host, |_| needs)
    }

    /// [`ConnectionCache::get_or_read`] that also reads the listener's
    /// direction (once per connection: a cached connection costs no more host
    /// calls than before), with the needs of that direction's roles.
    pub fn get_or_read_directed(&mut self, host: &impl Host, needs_of: impl Fn(ListenerDirection) -> Needs) -> ConnectionData {
        let id = host.property(&["connection", "id"]).as_deref().and_then(parse_u64);
        if let Some(hit) = id.and_then(|id| self.entries.get(&id)) {
            return hit.clone();
        }
        let (conn, cacheable) = ConnectionData::read_directed(host, None, needs_of);
        if let (Some(id), true) = (id, cacheable) {
            if self.order.len() >= Self::CAPACITY {
                if let Some(oldest) = self.order.pop_front() {
                    self.entries.remove(&oldest);
                }
            }
            self.order.push_back(id);
            self.entries.insert(id, conn.clone());
        }
        conn
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Non-UTF-8 values are treated as absent (rules that need them fail closed).
fn utf8(bytes: Vec<u8>) -> Option<String> {
    String::from_utf8(bytes).ok()
}

/// `"10.0.0.1:4000"`, `"[fd00::1]:4000"`, or a bare IP.
pub fn parse_address(bytes: &[u8]) -> Option<(IpAddr, Option<u16>)> {
    let text = std::str::from_utf8(bytes).ok()?;
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Some((sa.ip().to_canonical(), Some(sa.port())));
    }
    text.parse::<IpAddr>().ok().map(|ip| (ip.to_canonical(), None))
}

/// Envoy serialises integer properties as 8 little-endian bytes.
pub fn parse_u64(bytes: &[u8]) -> Option<u64> {
    let raw: [u8; 8] = bytes.try_into().ok()?;
    Some(u64::from_le_bytes(raw))
}

pub fn parse_port(bytes: &[u8]) -> Option<u16> {
    parse_u64(bytes).and_then(|v| u16::try_from(v).ok())
}

/// Decodes a proxy-wasm serialised string map (how Envoy returns the node
/// metadata `LABELS` struct): u32 count, (u32 key len, u32 value len) per
/// pair, then each key and value followed by a NUL.
pub fn decode_string_map(bytes: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| "map entry is not UTF-8".to_string());
    let mut map = BTreeMap::new();
    for_each_pair(bytes, |k, v| {
        map.insert(text(k)?, text(v)?);
        Ok(())
    })?;
    Ok(map)
}

/// Walks a proxy-wasm serialised pair map (see [`decode_string_map`]) without
/// copying it; stops at the first error `each` returns.
pub fn for_each_pair<'b>(bytes: &'b [u8], mut each: impl FnMut(&'b [u8], &'b [u8]) -> Result<(), String>) -> Result<(), String> {
    // Lengths come from the host: every offset is checked, nothing can overflow.
    let truncated = || "map is truncated".to_string();
    let word = |at: usize| -> Result<usize, String> {
        let end = at.checked_add(4).ok_or_else(truncated)?;
        let raw: [u8; 4] = bytes.get(at..end).and_then(|s| s.try_into().ok()).ok_or_else(truncated)?;
        Ok(u32::from_le_bytes(raw) as usize)
    };
    let count = word(0)?;
    let header = count.checked_mul(8).and_then(|n| n.checked_add(4)).filter(|&n| n <= bytes.len()).ok_or_else(truncated)?;
    let mut at = header;
    let mut take = |len: usize| -> Result<&'b [u8], String> {
        let end = at.checked_add(len).ok_or_else(truncated)?;
        let s = bytes.get(at..end).ok_or_else(truncated)?;
        if bytes.get(end) != Some(&0) {
            return Err("map entry is not NUL-terminated".into());
        }
        at = end + 1;
        Ok(s)
    };
    for i in 0..count {
        let (k, v) = (word(4 + 8 * i)?, word(8 + 8 * i)?);
        let key = take(k)?;
        each(key, take(v)?)?;
    }
    Ok(())
}

/// The workload this proxy fronts, from the node metadata Istio's sidecar
/// bootstrap sets (`xds.node.metadata.NAMESPACE`, `SERVICE_ACCOUNT`, `LABELS`).
pub fn workload_from_node(host: &impl Host) -> Result<Workload, String> {
    let text = |key: &str| {
        host.property(&["xds", "node", "metadata", key])
            .and_then(utf8)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("node metadata {key} is missing; Krites needs the Istio sidecar's node metadata to know which workload it protects"))
    };
    let namespace = text("NAMESPACE")?;
    let service_account = text("SERVICE_ACCOUNT")?;
    let labels = match host.property(&["xds", "node", "metadata", "LABELS"]) {
        None => BTreeMap::new(),
        Some(bytes) => decode_string_map(&bytes).map_err(|e| format!("node metadata LABELS: {e}"))?,
    };
    let ports = match host.property(&["xds", "node", "metadata", "POD_PORTS"]) {
        None => BTreeMap::new(),
        Some(bytes) => parse_pod_ports(&bytes).map_err(|e| format!("node metadata POD_PORTS: {e}"))?,
    };
    Ok(Workload { namespace, service_account, labels, ports })
}

/// Istio's `POD_PORTS`: the pod's container ports as a JSON string,
/// `[{"name":"http","containerPort":8080,"protocol":"TCP"}]`. Named TCP ports
/// are what named destination ports in rules resolve against.
pub fn parse_pod_ports(bytes: &[u8]) -> Result<BTreeMap<String, u16>, String> {
    let mut r = Reader::new(bytes);
    let mut ports = BTreeMap::new();
    r.array(&mut |r| {
        let (mut name, mut port, mut protocol) = (None, 0, None);
        r.object(&["containerPort", "name", "protocol"], 1, Unknown::Skip, &mut |r, field| {
            match field {
                "containerPort" => port = r.unsigned(u16::MAX.into(), "a port number (0-65535)")? as u16,
                "name" => name = r.optional(Reader::string)?,
                _ => protocol = r.optional(Reader::string)?,
            }
            Ok(())
        })?;
        let tcp = protocol.as_deref().is_none_or(|p| p.eq_ignore_ascii_case("TCP"));
        if let Some(name) = name.filter(|n| tcp && !n.is_empty()) {
            ports.insert(name, port);
        }
        Ok(())
    })
    .and_then(|()| r.finish())
    .map_err(|e| e.to_string())?;
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Canned host answers, for the parsing only; behaviour is tested in Envoy.
    #[derive(Default)]
    struct Canned {
        properties: HashMap<String, Vec<u8>>,
        headers: HashMap<String, Vec<u8>>,
        /// Every property asked for, in order (what a request costs in host calls).
        asked: std::cell::RefCell<Vec<String>>,
    }

    impl Host for Canned {
        fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
            self.asked.borrow_mut().push(path.join("."));
            self.properties.get(&path.join(".")).cloned()
        }
        fn request_headers(&self) -> Option<Vec<u8>> {
            let pairs: Vec<(&[u8], &[u8])> = self.headers.iter().map(|(k, v)| (k.as_bytes(), v.as_slice())).collect();
            Some(encode_bytes(&pairs))
        }
    }

    fn encode_bytes(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (k, v) in pairs {
            out.extend((k.len() as u32).to_le_bytes());
            out.extend((v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            out.extend(*k);
            out.push(0);
            out.extend(*v);
            out.push(0);
        }
        out
    }

    fn encode(pairs: &[(&str, &str)]) -> Vec<u8> {
        let pairs: Vec<(&[u8], &[u8])> = pairs.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())).collect();
        encode_bytes(&pairs)
    }

    #[test]
    fn addresses() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(parse_address(b"127.0.0.66:35608"), Some((ip("127.0.0.66"), Some(35608))));
        assert_eq!(parse_address(b"[fd00::1]:80"), Some((ip("fd00::1"), Some(80))));
        assert_eq!(parse_address(b"[::ffff:10.0.0.1]:80"), Some((ip("10.0.0.1"), Some(80))));
        assert_eq!(parse_address(b"10.0.0.1"), Some((ip("10.0.0.1"), None)));
        assert_eq!(parse_address(b"not an address"), None);
        assert_eq!(parse_address(&[0xff, 0xfe]), None);
        assert_eq!(parse_port(&8080u64.to_le_bytes()), Some(8080));
        assert_eq!(parse_port(&70000u64.to_le_bytes()), None);
        assert_eq!(parse_port(&[1, 2]), None);
    }

    #[test]
    fn config_size_limit() {
        assert!(check_config_size(0).is_ok());
        assert!(check_config_size(900 * 1024).is_ok());
        assert!(check_config_size(MAX_CONFIG_BYTES).is_ok());
        let err = check_config_size(MAX_CONFIG_BYTES + 1).unwrap_err();
        assert!(err.starts_with("plugin config: size: 33554433 bytes is over the limit of 33554432 bytes (32 MiB)"), "{err}");
        assert!(check_config_size(usize::MAX).is_err());
    }

    #[test]
    fn string_maps() {
        let pairs = [("app", "customer"), ("version", "v1"), ("empty", "")];
        let map = decode_string_map(&encode(&pairs)).unwrap();
        assert_eq!(map.len(), 3);
        assert_eq!(map.get("app").map(String::as_str), Some("customer"));
        assert_eq!(decode_string_map(&encode(&[])).unwrap().len(), 0);
        let good = encode(&pairs);
        for cut in 0..good.len() {
            assert!(decode_string_map(&good[..cut]).is_err(), "truncated at {cut}");
        }
        let mut no_nul = good.clone();
        let last = no_nul.len() - 1;
        no_nul[last] = b'x';
        assert!(decode_string_map(&no_nul).is_err());
        // A huge count must not allocate or panic.
        assert!(decode_string_map(&u32::MAX.to_le_bytes()).is_err());
    }

    #[test]
    fn connection_facts_are_read_once_per_connection_and_only_when_the_peer_was_recorded() {
        let all = Needs { source_port: true, destination_ip: false, destination_port: true, http: true };
        let mut host = Canned::default();
        host.properties.insert("connection.id".into(), 7u64.to_le_bytes().to_vec());
        host.properties.insert("source.address".into(), b"127.0.0.12:0".to_vec());
        host.properties.insert(PEER_ADDRESS_KEY.into(), b"127.0.0.66:4000".to_vec());
        host.properties.insert("connection.uri_san_peer_certificate".into(), b"spiffe://td/ns/default/sa/a".to_vec());
        host.properties.insert("destination.port".into(), 8080u64.to_le_bytes().to_vec());
        host.headers.insert(":method".into(), b"GET".to_vec());
        host.headers.insert(":path".into(), b"/one".to_vec());
        let mut cache = ConnectionCache::default();
        let first = RequestData::gather_cached(&host, all, &mut cache);
        assert_eq!(first, RequestData::gather(&host, all), "same facts as an uncached read");
        assert_eq!(cache.len(), 1);
        // Same connection: the connection's facts come from the cache (the host's changed
        // answers are not even asked for), the request's own facts are read again.
        host.properties.insert(PEER_ADDRESS_KEY.into(), b"127.0.0.99:1".to_vec());
        host.headers.insert(":path".into(), b"/two".to_vec());
        let second = RequestData::gather_cached(&host, all, &mut cache);
        assert_eq!((second.source_ip, second.uri_san.as_deref()), (first.source_ip, Some("spiffe://td/ns/default/sa/a")));
        assert_eq!(second.path.as_deref(), Some("/two"));
        // Another connection is read afresh.
        host.properties.insert("connection.id".into(), 8u64.to_le_bytes().to_vec());
        assert_eq!(RequestData::gather_cached(&host, all, &mut cache).source_ip, Some("127.0.0.99".parse().unwrap()));
        // Without the NETWORK role's record, source.address follows each request's
        // x-forwarded-for: never cached.
        host.properties.remove(PEER_ADDRESS_KEY);
        host.properties.insert("connection.id".into(), 9u64.to_le_bytes().to_vec());
        let unverified = RequestData::gather_cached(&host, all, &mut cache);
        assert_eq!(unverified.unverified_source, Some("127.0.0.12".parse().unwrap()));
        host.properties.insert("source.address".into(), b"127.0.0.13:0".to_vec());
        assert_eq!(RequestData::gather_cached(&host, all, &mut cache).unverified_source, Some("127.0.0.13".parse().unwrap()));
        assert_eq!(cache.len(), 2);
        // Bounded: the oldest connections go first.
        host.properties.insert(PEER_ADDRESS_KEY.into(), b"127.0.0.66:4000".to_vec());
        for id in 100..100 + ConnectionCache::CAPACITY as u64 {
            host.properties.insert("connection.id".into(), id.to_le_bytes().to_vec());
            RequestData::gather_cached(&host, all, &mut cache);
        }
        assert_eq!(cache.len(), ConnectionCache::CAPACITY);
        assert!(!cache.entries.contains_key(&7) && cache.entries.contains_key(&(99 + ConnectionCache::CAPACITY as u64)));
    }

    #[test]
    fn gather_reads_the_connection_not_headers() {
        let mut host = Canned::default();
        host.properties.insert("source.address".into(), b"127.0.0.66:4000".to_vec());
        host.properties.insert("connection.mtls".into(), vec![1]);
        host.properties.insert("connection.uri_san_peer_certificate".into(), b"spiffe://td/ns/default/sa/attack".to_vec());
        host.properties.insert("destination.port".into(), 8443u64.to_le_bytes().to_vec());
        host.headers.insert(":method".into(), b"GET".to_vec());
        host.headers.insert(":path".into(), b"/x".to_vec());
        host.headers.insert("x-forwarded-client-cert".into(), b"URI=spiffe://td/ns/default/sa/summary".to_vec());
        host.headers.insert("x-forwarded-for".into(), b"127.0.0.12".to_vec());
        let all = Needs { source_port: true, destination_ip: true, destination_port: true, http: true };
        let data = RequestData::gather(&host, all);
        assert_eq!(data.source_ip, Some("127.0.0.66".parse().unwrap()));
        assert_eq!(data.uri_san.as_deref(), Some("spiffe://td/ns/default/sa/attack"));
        assert_eq!(data.destination_port, Some(8443));
        assert_eq!(data.method.as_deref(), Some("GET"));
        assert!(matches!(data.facts().peer, Peer::Mtls { uri_san: Some(_) }));

        // Plaintext: no certificate, mtls false.
        host.properties.remove("connection.uri_san_peer_certificate");
        host.properties.insert("connection.mtls".into(), vec![0]);
        assert_eq!(RequestData::gather(&host, all).facts().peer, Peer::Plaintext);
        // mTLS with a certificate that has no URI SAN.
        host.properties.insert("connection.mtls".into(), vec![1]);
        assert_eq!(RequestData::gather(&host, all).facts().peer, Peer::Mtls { uri_san: None });
        // An address derived from x-forwarded-for (port 0) is not a factor.
        host.properties.insert("source.address".into(), b"127.0.0.12:0".to_vec());
        let spoofed = RequestData::gather(&host, all);
        assert_eq!((spoofed.source_ip, spoofed.unverified_source), (None, Some("127.0.0.12".parse().unwrap())));
        host.properties.insert("source.address".into(), b"127.0.0.66:4000".to_vec());
        // The peer address recorded by the NETWORK role wins over source.address.
        host.properties.insert("source.address".into(), b"127.0.0.12:0".to_vec());
        host.properties.insert(PEER_ADDRESS_KEY.into(), b"127.0.0.66:4000".to_vec());
        assert_eq!(RequestData::gather(&host, all).source_ip, Some("127.0.0.66".parse().unwrap()));
        // An IPv4-mapped IPv6 peer (a dual-stack listener that does not fold it) is the IPv4
        // address, so endpoint ownership and IPv4 nets apply to it; forged through XFF it
        // stays unverified.
        host.properties.insert(PEER_ADDRESS_KEY.into(), b"[::ffff:127.0.0.66]:4000".to_vec());
        let mapped = RequestData::gather(&host, all);
        assert_eq!((mapped.source_ip, mapped.source_port), (Some("127.0.0.66".parse().unwrap()), Some(4000)));
        host.properties.remove(PEER_ADDRESS_KEY);
        host.properties.insert("source.address".into(), b"[::ffff:127.0.0.12]:0".to_vec());
        let spoofed = RequestData::gather(&host, all);
        assert_eq!((spoofed.source_ip, spoofed.unverified_source), (None, Some("127.0.0.12".parse().unwrap())));
        host.properties.insert("source.address".into(), b"127.0.0.66:4000".to_vec());
        // Non-UTF-8 path: absent, never a panic.
        host.headers.insert(":path".into(), vec![b'/', 0xff]);
        assert_eq!(RequestData::gather(&host, all).path, None);
        // Nothing needed beyond identity: no HTTP reads.
        assert_eq!(RequestData::gather(&host, Needs::default()).method, None);
    }

    /// Serves a fixed, possibly malformed, header map.
    struct RawHeaders(Vec<u8>);

    impl Host for RawHeaders {
        fn property(&self, _: &[&str]) -> Option<Vec<u8>> {
            None
        }
        fn request_headers(&self) -> Option<Vec<u8>> {
            Some(self.0.clone())
        }
    }

    #[test]
    fn method_and_path_come_from_one_header_map() {
        let read = |bytes: Vec<u8>| {
            let mut data = RequestData::default();
            data.read_http(&RawHeaders(bytes));
            (data.method, data.path)
        };
        let map: &[(&[u8], &[u8])] = &[(b"x-a", b"1"), (b":method", b"GET"), (b":path", b"/first"), (b":path", b"/second")];
        assert_eq!(read(encode_bytes(map)), (Some("GET".into()), Some("/first".into())));
        // Non-UTF-8 values are absent; so is everything in a malformed map.
        let odd: &[(&[u8], &[u8])] = &[(b":method", b"GET"), (b":path", &[b'/', 0xff])];
        assert_eq!(read(encode_bytes(odd)), (Some("GET".into()), None));
        let good = encode_bytes(map);
        for cut in 0..good.len() {
            assert_eq!(read(good[..cut].to_vec()), (None, None), "truncated at {cut}");
        }
    }

    #[test]
    fn workload_identity_from_node_metadata() {
        let mut host = Canned::default();
        host.properties.insert("xds.node.metadata.NAMESPACE".into(), b"yaobank".to_vec());
        host.properties.insert("xds.node.metadata.SERVICE_ACCOUNT".into(), b"database".to_vec());
        host.properties.insert("xds.node.metadata.LABELS".into(), encode(&[("app", "database")]));
        let w = workload_from_node(&host).unwrap();
        assert_eq!((w.namespace.as_str(), w.service_account.as_str()), ("yaobank", "database"));
        assert_eq!(w.labels.get("app").map(String::as_str), Some("database"));
        assert!(w.ports.is_empty());
        host.properties.insert(
            "xds.node.metadata.POD_PORTS".into(),
            br#"[{"name":"http","containerPort":8080,"protocol":"TCP"},{"name":"dns","containerPort":53,"protocol":"UDP"},{"containerPort":9090}]"#.to_vec(),
        );
        let w = workload_from_node(&host).unwrap();
        assert_eq!(w.ports, BTreeMap::from([("http".to_string(), 8080)]));
        host.properties.insert("xds.node.metadata.POD_PORTS".into(), b"not json".to_vec());
        assert!(workload_from_node(&host).unwrap_err().contains("POD_PORTS"));
        host.properties.remove("xds.node.metadata.POD_PORTS");
        host.properties.remove("xds.node.metadata.SERVICE_ACCOUNT");
        assert!(workload_from_node(&host).unwrap_err().contains("SERVICE_ACCOUNT"));
    }

    fn direction_bytes(value: u64) -> Vec<u8> {
        value.to_le_bytes().to_vec()
    }

    #[test]
    fn listener_direction_picks_the_roles() {
        use ListenerDirection::*;
        assert_eq!(ListenerDirection::from_property(Some(&direction_bytes(1))), Inbound);
        assert_eq!(ListenerDirection::from_property(Some(&direction_bytes(2))), Outbound);
        // UNSPECIFIED (0), a value a later Envoy may add, a malformed or absent property.
        assert_eq!(ListenerDirection::from_property(Some(&direction_bytes(0))), Unspecified);
        assert_eq!(ListenerDirection::from_property(Some(&direction_bytes(7))), Unspecified);
        assert_eq!(ListenerDirection::from_property(Some(b"OUTBOUND")), Unspecified);
        assert_eq!(ListenerDirection::from_property(None), Unspecified);
        assert_eq!(Inbound.roles(), Roles { ingress: true, egress: false });
        assert_eq!(Outbound.roles(), Roles { ingress: false, egress: true });
        // No direction loosens nothing: both sides' rules apply.
        assert_eq!(Unspecified.roles(), Roles { ingress: true, egress: true });

        // The xDS attribute first, the older top-level property if the host lacks it.
        let mut host = Canned::default();
        assert_eq!(ListenerDirection::read(&host), Unspecified);
        host.properties.insert("listener_direction".into(), direction_bytes(1));
        assert_eq!(ListenerDirection::read(&host), Inbound);
        host.properties.insert("xds.listener_direction".into(), direction_bytes(2));
        assert_eq!(ListenerDirection::read(&host), Outbound);
    }

    #[test]
    fn needs_are_the_union_of_the_roles_that_run() {
        let ingress = Needs { source_port: false, destination_ip: false, destination_port: true, http: true };
        let egress = Needs { source_port: true, destination_ip: true, destination_port: true, http: false };
        assert_eq!(needs_for(ListenerDirection::Inbound.roles(), ingress, egress), ingress);
        assert_eq!(needs_for(ListenerDirection::Outbound.roles(), ingress, egress), egress);
        assert_eq!(
            needs_for(ListenerDirection::Unspecified.roles(), ingress, egress),
            Needs { source_port: true, destination_ip: true, destination_port: true, http: true }
        );
    }

    #[test]
    fn egress_destination_is_the_chosen_cluster_with_the_original_destination() {
        let vip: IpAddr = "10.96.0.12".parse().unwrap();
        assert_eq!(
            egress_destination(Some("outbound|9080||ratings.bookinfo.svc.cluster.local"), Some(vip), Some(9080)),
            Destination::Cluster { name: "outbound|9080||ratings.bookinfo.svc.cluster.local", ip: Some(vip), port: Some(9080) }
        );
        assert_eq!(
            egress_destination(Some("PassthroughCluster"), Some(vip), Some(443)),
            Destination::Cluster { name: "PassthroughCluster", ip: Some(vip), port: Some(443) }
        );
        // No route matched: the original destination only.
        assert_eq!(egress_destination(None, Some(vip), Some(80)), Destination::Address { ip: Some(vip), port: Some(80) });
        assert_eq!(egress_destination(Some(""), None, None), Destination::Address { ip: None, port: None });
    }

    #[test]
    fn egress_facts_come_from_the_connection_and_the_request_line() {
        let mut host = Canned::default();
        host.properties.insert("xds.listener_direction".into(), direction_bytes(2));
        host.properties.insert(PEER_ADDRESS_KEY.into(), b"10.44.0.3:41000".to_vec());
        host.properties.insert("source.address".into(), b"10.44.0.9:0".to_vec());
        host.properties.insert("destination.address".into(), b"10.96.0.12:9080".to_vec());
        host.properties.insert("destination.port".into(), 9080u64.to_le_bytes().to_vec());
        host.properties.insert("connection.id".into(), 7u64.to_le_bytes().to_vec());
        host.headers.insert(":method".into(), b"GET".to_vec());
        host.headers.insert(":path".into(), b"/ratings/0".to_vec());
        // A Host header or XFF says nothing here: only the route's cluster and the connection do.
        host.headers.insert(":authority".into(), b"details".to_vec());
        let egress = Needs { http: true, ..EGRESS_NEEDS };
        let ingress = Needs { source_port: false, destination_ip: false, destination_port: false, http: false };
        let mut cache = ConnectionCache::default();
        let (data, direction) = RequestData::gather_cached_directed(&host, |d| needs_for(d.roles(), ingress, egress), &mut cache);
        assert_eq!(direction, ListenerDirection::Outbound);
        let facts = data.egress_facts(Some("outbound|9080||ratings.bookinfo.svc.cluster.local"));
        println!("{facts:?}");
        assert_eq!(facts.source_ip, Some("10.44.0.3".parse().unwrap()));
        assert_eq!(facts.source_port, Some(41000));
        assert_eq!(
            facts.destination,
            Destination::Cluster {
                name: "outbound|9080||ratings.bookinfo.svc.cluster.local",
                ip: Some("10.96.0.12".parse().unwrap()),
                port: Some(9080)
            }
        );
        assert_eq!((facts.method, facts.path), (Some("GET"), Some("/ratings/0")));

        // The next request on the connection: its direction and facts come from the cache;
        // only the connection id is asked again (and the request line).
        host.asked.borrow_mut().clear();
        let (again, direction) = RequestData::gather_cached_directed(&host, |d| needs_for(d.roles(), ingress, egress), &mut cache);
        assert_eq!(direction, ListenerDirection::Outbound);
        assert_eq!(again.destination_ip, data.destination_ip);
        assert_eq!(*host.asked.borrow(), vec!["connection.id".to_string()]);
    }

    #[test]
    fn an_inbound_connection_reads_its_direction_once() {
        let mut host = Canned::default();
        host.properties.insert("xds.listener_direction".into(), direction_bytes(1));
        host.properties.insert(PEER_ADDRESS_KEY.into(), b"10.44.0.3:41000".to_vec());
        host.properties.insert("connection.id".into(), 9u64.to_le_bytes().to_vec());
        let none = Needs::default();
        let mut cache = ConnectionCache::default();
        let (_, direction) = RequestData::gather_cached_directed(&host, |d| needs_for(d.roles(), none, EGRESS_NEEDS), &mut cache);
        assert_eq!(direction, ListenerDirection::Inbound);
        // Inbound: the egress needs (destination address) are not read.
        assert!(!host.asked.borrow().iter().any(|p| p == "destination.address"), "{:?}", host.asked.borrow());
        assert_eq!(host.asked.borrow().iter().filter(|p| p.contains("listener_direction")).count(), 1);
        host.asked.borrow_mut().clear();
        RequestData::gather_cached_directed(&host, |d| needs_for(d.roles(), none, EGRESS_NEEDS), &mut cache);
        assert_eq!(*host.asked.borrow(), vec!["connection.id".to_string()], "a cached connection costs one call, as before");
    }
}
