//! A minimal HTTP/1.1 client over a plain TCP connection bound to a chosen source address,
//! for what curl cannot do: send arbitrary bytes (non-UTF-8 header values and request
//! targets) and keep one connection alive across many requests cheaply (load generators
//! with thousands of requests per second from many "pod IPs").
//!
//! It reads exactly one response per request (`Content-Length` or chunked bodies), and
//! notices when the server closes the connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use socket2::{Domain, Protocol, Socket, Type};

/// One HTTP/1.1 response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResponse {
    pub status: u16,
    /// Names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The server said `connection: close` (the connection cannot be reused).
    pub close: bool,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A keep-alive connection from `from` to `to`.
pub struct RawConn {
    from: IpAddr,
    to: SocketAddr,
    reader: BufReader<TcpStream>,
    closed: bool,
}

impl std::fmt::Debug for RawConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawConn")
            .field("from", &self.from)
            .field("to", &self.to)
            .field("closed", &self.closed)
            .finish()
    }
}

impl RawConn {
    /// Connect from `from` (port chosen by the kernel) to `to`. An IPv4 source may connect
    /// to an IPv4 address served by a dual-stack (`::`) listener.
    pub fn connect(from: IpAddr, to: SocketAddr, timeout: Duration) -> Result<RawConn> {
        let socket = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))
            .context("creating a socket")?;
        socket
            .bind(&SocketAddr::new(from, 0).into())
            .with_context(|| format!("binding {from}"))?;
        socket
            .connect_timeout(&to.into(), timeout)
            .with_context(|| format!("connecting {from} -> {to}"))?;
        let stream: TcpStream = socket.into();
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(RawConn {
            from,
            to,
            reader: BufReader::new(stream),
            closed: false,
        })
    }

    /// This connection's own address (source IP and port), as the server sees it.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.reader.get_ref().local_addr()?)
    }

    /// Whether the server closed (or announced closing) the connection.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// `method target` with `Host: <to>` and `headers`, no body.
    pub fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Result<RawResponse> {
        let mut req = format!("{method} {target} HTTP/1.1\r\nhost: {}\r\n", self.to).into_bytes();
        for (k, v) in headers {
            req.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        self.send(&req)
    }

    /// Writes `bytes` as they are (one complete request) and reads one response.
    pub fn send(&mut self, bytes: &[u8]) -> Result<RawResponse> {
        if self.closed {
            bail!("connection {} -> {} is closed", self.from, self.to);
        }
        let result = self.exchange(bytes);
        match &result {
            Ok(r) if !r.close => {}
            _ => self.closed = true,
        }
        result
    }

    fn exchange(&mut self, bytes: &[u8]) -> Result<RawResponse> {
        self.reader
            .get_mut()
            .write_all(bytes)
            .context("writing the request")?;
        let status_line = self.line()?;
        if status_line.is_empty() {
            bail!("connection closed before a response");
        }
        let status = parse_status(&status_line)?;
        let mut headers = Vec::new();
        loop {
            let line = self.line()?;
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let close = get("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let chunked = get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let length = get("content-length").and_then(|v| v.parse::<usize>().ok());
        let body = if chunked {
            self.chunked()?
        } else if let Some(n) = length {
            let mut body = vec![0; n];
            self.reader
                .read_exact(&mut body)
                .context("reading the body")?;
            body
        } else if close {
            let mut body = Vec::new();
            self.reader.read_to_end(&mut body)?;
            body
        } else {
            Vec::new()
        };
        Ok(RawResponse {
            status,
            headers,
            body,
            close,
        })
    }

    /// One header line without its CRLF; empty at the end of the headers (or on EOF).
    fn line(&mut self) -> Result<String> {
        let mut buf = Vec::new();
        self.reader
            .read_until(b'\n', &mut buf)
            .context("reading the response")?;
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    fn chunked(&mut self) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let size_line = self.line()?;
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .with_context(|| format!("bad chunk size {size_line:?}"))?;
            if size == 0 {
                // Trailers, then the empty line.
                while !self.line()?.is_empty() {}
                return Ok(body);
            }
            let start = body.len();
            body.resize(start + size, 0);
            self.reader
                .read_exact(body.get_mut(start..).unwrap_or_default())?;
            self.line()?;
        }
    }
}

fn parse_status(line: &str) -> Result<u16> {
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next().and_then(|c| c.parse().ok())) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => Ok(code),
        _ => bail!("not an HTTP status line: {line:?}"),
    }
}

/// One request on a fresh connection (closed afterwards).
pub fn raw_request(
    from: IpAddr,
    to: SocketAddr,
    bytes: &[u8],
    timeout: Duration,
) -> Result<RawResponse> {
    RawConn::connect(from, to, timeout)?.send(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::net::TcpListener;
    use std::thread;

    use super::*;

    #[test]
    fn keep_alive_lengths_chunks_and_close() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let t = thread::spawn(move || {
            let (mut s, peer) = server.accept().unwrap();
            assert_eq!(peer.ip(), "127.0.0.9".parse::<IpAddr>().unwrap());
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut read_request = || {
                let mut line = Vec::new();
                loop {
                    line.clear();
                    r.read_until(b'\n', &mut line).unwrap();
                    if line == b"\r\n" {
                        break;
                    }
                }
            };
            read_request();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .unwrap();
            read_request();
            s.write_all(b"HTTP/1.1 403 Forbidden\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n1\r\nd\r\n0\r\n\r\n").unwrap();
            read_request();
            s.write_all(
                b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            )
            .unwrap();
        });
        let mut c =
            RawConn::connect("127.0.0.9".parse().unwrap(), addr, Duration::from_secs(5)).unwrap();
        let a = c.request("GET", "/a", &[("x", "y")]).unwrap();
        assert_eq!(
            (a.status, a.body_text().as_str(), a.close),
            (200, "ok", false)
        );
        let b = c.send(b"GET /\xff HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        assert_eq!((b.status, b.body_text().as_str()), (403, "abcd"));
        let z = c.request("GET", "/", &[]).unwrap();
        assert!(z.close && c.is_closed());
        assert!(c.request("GET", "/", &[]).is_err());
        t.join().unwrap();
    }
}
