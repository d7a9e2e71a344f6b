//! HTTP client "pods": curl bound to a chosen 127.0.0.x source address.
//!
//! curl rather than a Rust HTTP stack because it sends request targets byte-for-byte
//! (`--request-target`), which path-confusion tests need, and it keeps a TLS stack out of
//! the rig's dependencies.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::pki::Identity;

/// How the request failed below HTTP (no status line was received).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportError {
    /// curl's exit code (e.g. 7 connect refused, 28 timeout, 35 TLS handshake, 56 recv failure).
    pub curl_exit: i32,
    /// curl's own message (stderr).
    pub message: String,
    /// The TCP connection was established (something was listening).
    pub tcp_connected: bool,
    /// The request was HTTPS.
    pub tls: bool,
}

impl TransportError {
    /// The TLS layer refused us (missing/foreign/unacceptable client certificate), as opposed
    /// to nothing listening or a timeout. With TLS 1.3 the server checks the client
    /// certificate after the client considers the handshake done, so the refusal surfaces
    /// as any of curl 35/52/55/56 depending on timing: "connected over TLS, then closed
    /// without a response" is the reliable signature.
    pub fn is_tls(&self) -> bool {
        self.tls && self.tcp_connected && self.curl_exit != 28
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status; 0 when `error` is set.
    pub status: u16,
    pub body: String,
    /// Response headers in order; names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Set when no HTTP response arrived (connect/handshake failure, timeout, reset).
    pub error: Option<TransportError>,
}

impl Response {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The connection or TLS handshake failed: the request never reached HTTP processing.
    pub fn is_transport_failure(&self) -> bool {
        self.error.is_some()
    }

    /// Refused by TLS (bad/missing/foreign client cert, SAN mismatch).
    pub fn is_tls_failure(&self) -> bool {
        self.error.as_ref().is_some_and(TransportError::is_tls)
    }
}

#[derive(Debug, Clone)]
struct Tls {
    ca: PathBuf,
    client: Option<Identity>,
    server_name: String,
}

/// One HTTP/1.1 request; build, then `send()`.
#[derive(Debug, Clone)]
pub struct Request {
    from: Option<IpAddr>,
    to: Option<SocketAddr>,
    tls: Option<Tls>,
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    timeout: Duration,
}

impl Default for Request {
    fn default() -> Self {
        Request {
            from: None,
            to: None,
            tls: None,
            method: "GET".to_string(),
            target: "/".to_string(),
            headers: Vec::new(),
            body: None,
            timeout: Duration::from_secs(10),
        }
    }
}

impl Request {
    pub fn new() -> Request {
        Request::default()
    }

    /// Start a request whose source address is `ip` (the "client pod IP").
    pub fn from(ip: Ipv4Addr) -> Request {
        Request::from_ip(IpAddr::V4(ip))
    }

    /// `from` for any address family, e.g. `::1` to an IPv6 listener.
    pub fn from_ip(ip: IpAddr) -> Request {
        Request {
            from: Some(ip),
            ..Request::default()
        }
    }

    pub fn to(mut self, addr: SocketAddr) -> Request {
        self.to = Some(addr);
        self
    }

    /// Use HTTPS: trust `ca`, present `client` (if any), send SNI/Host `server_name`
    /// while connecting to the `to` address.
    pub fn tls(mut self, ca: &Path, client: Option<&Identity>, server_name: &str) -> Request {
        self.tls = Some(Tls {
            ca: ca.to_path_buf(),
            client: client.cloned(),
            server_name: server_name.to_string(),
        });
        self
    }

    pub fn method(mut self, method: &str) -> Request {
        self.method = method.to_string();
        self
    }

    /// The request target, sent byte-for-byte (`/a%2fb`, `//x/../y`, `/p?q`, even `*`).
    pub fn path(mut self, target: &str) -> Request {
        self.target = target.to_string();
        self
    }

    /// Add a request header. A `Host` header replaces curl's default authority.
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = Some(body.into());
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Request {
        self.timeout = timeout;
        self
    }

    /// Run curl. `Err` only for rig problems (curl missing, bad builder use);
    /// a refused connection or handshake is an `Ok(Response)` with `error` set.
    pub fn send(&self) -> Result<Response> {
        let to = self.to.context("Request::to(addr) was not set")?;
        let scratch = tempfile::tempdir().context("creating curl scratch dir")?;
        let head_file = scratch.path().join("headers");
        let body_file = scratch.path().join("body");
        let mut cmd = Command::new("curl");
        // -q must come first: ignore any ~/.curlrc; never go through a proxy from the env.
        cmd.args(["-q", "-sS", "--http1.1", "--noproxy", "*", "--path-as-is"]);
        cmd.arg("--max-time")
            .arg(format!("{:.3}", self.timeout.as_secs_f64()));
        cmd.arg("-D").arg(&head_file).arg("-o").arg(&body_file);
        cmd.args(["-w", "%{http_code} %{time_connect}"]);
        if let Some(ip) = self.from {
            cmd.arg("--interface").arg(ip.to_string());
        }
        let url = match &self.tls {
            Some(tls) => {
                cmd.arg("--cacert").arg(&tls.ca);
                if let Some(id) = &tls.client {
                    cmd.arg("--cert").arg(&id.cert).arg("--key").arg(&id.key);
                }
                let ip = match to.ip() {
                    IpAddr::V6(v6) => format!("[{v6}]"),
                    v4 => v4.to_string(),
                };
                cmd.arg("--resolve")
                    .arg(format!("{}:{}:{ip}", tls.server_name, to.port()));
                format!("https://{}:{}/", tls.server_name, to.port())
            }
            None => format!("http://{to}/"),
        };
        // HEAD via -X makes curl wait for a body that never comes.
        if self.method.eq_ignore_ascii_case("HEAD") {
            cmd.arg("--head");
        } else {
            cmd.arg("-X").arg(&self.method);
        }
        cmd.arg("--request-target").arg(&self.target);
        for (name, value) in &self.headers {
            // curl drops a header given as "Name:"; "Name;" is its spelling for empty.
            if value.is_empty() {
                cmd.arg("-H").arg(format!("{name};"));
            } else {
                cmd.arg("-H").arg(format!("{name}: {value}"));
            }
        }
        if let Some(body) = &self.body {
            let body_in = scratch.path().join("request-body");
            std::fs::write(&body_in, body).context("writing request body")?;
            cmd.arg("--data-binary")
                .arg(format!("@{}", body_in.display()));
        }
        cmd.arg(url);
        let out = cmd.output().context("running curl (is it installed?)")?;
        let written = String::from_utf8_lossy(&out.stdout);
        let mut fields = written.split_whitespace();
        let status: u16 = fields.next().and_then(|c| c.parse().ok()).unwrap_or(0);
        let time_connect: f64 = fields.next().and_then(|t| t.parse().ok()).unwrap_or(0.0);
        // A status line means HTTP happened; a later hiccup (e.g. body timeout) is not a
        // transport failure for our purposes.
        let error = if status == 0 {
            Some(TransportError {
                curl_exit: out.status.code().unwrap_or(-1),
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                tcp_connected: time_connect > 0.0,
                tls: self.tls.is_some(),
            })
        } else {
            None
        };
        let headers = std::fs::read(&head_file)
            .map(|h| parse_headers(&String::from_utf8_lossy(&h)))
            .unwrap_or_default();
        let body = std::fs::read(&body_file)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        Ok(Response {
            status,
            body,
            headers,
            error,
        })
    }
}

/// Headers of the last response block in a `curl -D` dump (skips 1xx interim blocks).
fn parse_headers(dump: &str) -> Vec<(String, String)> {
    let mut headers = Vec::new();
    for line in dump.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("HTTP/") {
            headers.clear();
        } else if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_header_block_wins() {
        let dump = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\nX-A: b: c\r\n\r\n";
        assert_eq!(
            parse_headers(dump),
            vec![
                ("content-length".to_string(), "3".to_string()),
                ("x-a".to_string(), "b: c".to_string())
            ]
        );
    }
}
