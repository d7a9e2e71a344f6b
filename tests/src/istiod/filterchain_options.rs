//! `filterchain_options.go`: which filter chains a port gets per mTLS mode and protocol.

use super::{MtlsMode, Protocol};

/// `mtlsHTTPALPNs`: a client sidecar that detected HTTP.
pub const MTLS_HTTP_ALPNS: &[&str] = &["istio-http/1.0", "istio-http/1.1", "istio-h2"];
/// `plaintextHTTPALPNs`: what `http_inspector` reports for plaintext HTTP.
pub const PLAINTEXT_HTTP_ALPNS: &[&str] = &["http/1.0", "http/1.1", "h2c"];
/// `mtlsTCPWithMxcALPNs` (`listener.go:94`): a client sidecar's TCP.
pub const MTLS_TCP_ALPNS: &[&str] = &["istio-peer-exchange", "istio"];

/// A listener protocol after `ModelProtocolToListenerProtocol` and option splitting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListenerProtocol {
    Http,
    Tcp,
}

pub(crate) const TLS: &str = "tls";
pub(crate) const RAW: &str = "raw_buffer";
const NONE: &[&str] = &[];

/// `FilterChainMatchOptions`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FilterChainMatchOptions {
    pub application_protocols: &'static [&'static str],
    /// `tls`, `raw_buffer`, or empty: any transport.
    pub transport_protocol: &'static str,
    pub protocol: ListenerProtocol,
    /// Terminate mTLS on this chain.
    pub tls: bool,
}

const fn opt(
    alpn: &'static [&'static str],
    transport: &'static str,
    protocol: ListenerProtocol,
    tls: bool,
) -> FilterChainMatchOptions {
    FilterChainMatchOptions {
        application_protocols: alpn,
        transport_protocol: transport,
        protocol,
        tls,
    }
}

/// `getFilterChainMatchOptions(mtls, protocol)`.
pub(crate) fn filter_chain_match_options(
    mode: MtlsMode,
    protocol: Protocol,
) -> &'static [FilterChainMatchOptions] {
    use ListenerProtocol::{Http, Tcp};
    const STRICT_AUTO: &[FilterChainMatchOptions] = &[
        // inboundStrictFilterChainMatchOptions
        opt(MTLS_HTTP_ALPNS, TLS, Http, true),
        opt(NONE, TLS, Tcp, true),
    ];
    const STRICT_HTTP: &[FilterChainMatchOptions] = &[opt(NONE, TLS, Http, true)];
    const STRICT_TCP: &[FilterChainMatchOptions] = &[opt(NONE, TLS, Tcp, true)];
    const PERMISSIVE_AUTO: &[FilterChainMatchOptions] = &[
        // inboundPermissiveFilterChainMatchWithMxcOptions
        opt(MTLS_HTTP_ALPNS, TLS, Http, true),
        opt(PLAINTEXT_HTTP_ALPNS, RAW, Http, false),
        opt(MTLS_TCP_ALPNS, TLS, Tcp, true),
        opt(NONE, RAW, Tcp, false),
        // One-way TLS from a client without a sidecar: passed through, not terminated.
        opt(NONE, TLS, Tcp, false),
    ];
    const PERMISSIVE_HTTP: &[FilterChainMatchOptions] = &[
        opt(MTLS_HTTP_ALPNS, TLS, Http, true),
        opt(NONE, RAW, Http, false),
    ];
    const PERMISSIVE_TCP: &[FilterChainMatchOptions] = &[
        opt(MTLS_TCP_ALPNS, TLS, Tcp, true),
        opt(NONE, TLS, Tcp, false),
        opt(NONE, RAW, Tcp, false),
    ];
    // inboundPlainText{,HTTP,TCP}FilterChainMatchOptions
    const PLAINTEXT_AUTO: &[FilterChainMatchOptions] = &[
        opt(PLAINTEXT_HTTP_ALPNS, RAW, Http, false),
        opt(NONE, "", Tcp, false),
    ];
    const PLAINTEXT_HTTP: &[FilterChainMatchOptions] = &[opt(NONE, "", Http, false)];
    const PLAINTEXT_TCP: &[FilterChainMatchOptions] = &[opt(NONE, "", Tcp, false)];
    match (mode, protocol) {
        (MtlsMode::Strict, Protocol::Auto) => STRICT_AUTO,
        (MtlsMode::Strict, Protocol::Http) => STRICT_HTTP,
        (MtlsMode::Strict, Protocol::Tcp) => STRICT_TCP,
        (MtlsMode::Permissive, Protocol::Auto) => PERMISSIVE_AUTO,
        (MtlsMode::Permissive, Protocol::Http) => PERMISSIVE_HTTP,
        (MtlsMode::Permissive, Protocol::Tcp) => PERMISSIVE_TCP,
        (MtlsMode::Disable, Protocol::Auto) => PLAINTEXT_AUTO,
        (MtlsMode::Disable, Protocol::Http) => PLAINTEXT_HTTP,
        (MtlsMode::Disable, Protocol::Tcp) => PLAINTEXT_TCP,
    }
}
