//! What the proxy knows about one request, borrowed from host memory.

use std::net::IpAddr;

/// How the peer authenticated at the transport layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer<'r> {
    /// No client certificate (Istio PERMISSIVE plaintext): the source address
    /// is the only identity factor.
    Plaintext,
    /// A client certificate Envoy verified; `uri_san` is its first URI SAN.
    Mtls { uri_san: Option<&'r str> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestFacts<'r> {
    /// The connection's peer address, never a header.
    pub source_ip: Option<IpAddr>,
    pub source_port: Option<u16>,
    pub destination_ip: Option<IpAddr>,
    pub destination_port: Option<u16>,
    pub peer: Peer<'r>,
    /// `None` for a non-HTTP request: rules with an `http` clause never match it.
    pub method: Option<&'r str>,
    /// The raw request target (`:path`), query included; normalised by the engine.
    pub path: Option<&'r str>,
}

impl<'r> RequestFacts<'r> {
    /// An HTTP request from `source_ip` with nothing else known yet.
    pub fn http(source_ip: IpAddr, peer: Peer<'r>, method: &'r str, path: &'r str) -> Self {
        RequestFacts {
            source_ip: Some(source_ip),
            source_port: None,
            destination_ip: None,
            destination_port: None,
            peer,
            method: Some(method),
            path: Some(path),
        }
    }
}
