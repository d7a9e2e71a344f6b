//! Raw TCP and TLS for the filter chains no HTTP filter sees: a TCP application that
//! records every byte it receives, and clients bound to a chosen source address that
//! offer any ALPN and any certificate (an attacker's `openssl s_client` with stolen keys).

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};
use socket2::{Domain, Protocol, Socket, Type};

use crate::pki::Identity;

/// A TCP application: answers `echo:<bytes>` to what it reads, after an optional greeting
/// (a server-first protocol), and records everything it received, per connection.
pub struct TcpApp {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl TcpApp {
    pub fn start(ip: IpAddr, greeting: Option<&'static [u8]>) -> Result<TcpApp> {
        let listener = TcpListener::bind((ip, 0)).context("binding the TCP app")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let received: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, a, s) = (received.clone(), accepted.clone(), stop.clone());
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let slot = {
                            let mut all = r.lock().unwrap_or_else(|e| e.into_inner());
                            all.push(Vec::new());
                            all.len() - 1
                        };
                        a.fetch_add(1, Ordering::SeqCst);
                        let r = r.clone();
                        thread::spawn(move || serve(conn, greeting, &r, slot));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(10)),
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(TcpApp { addr, received, accepted, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every byte any connection delivered, concatenated.
    pub fn received(&self) -> Vec<u8> {
        self.received.lock().unwrap_or_else(|e| e.into_inner()).concat()
    }

    /// How many connections the proxy opened to the application.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for TcpApp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(mut conn: TcpStream, greeting: Option<&[u8]>, received: &Mutex<Vec<Vec<u8>>>, slot: usize) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    if let Some(g) = greeting {
        if conn.write_all(g).is_err() {
            return;
        }
    }
    let mut buf = [0u8; 4096];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 {
            return;
        }
        let data = &buf[..n];
        if let Some(v) = received.lock().unwrap_or_else(|e| e.into_inner()).get_mut(slot) {
            v.extend_from_slice(data);
        }
        let mut reply = b"echo:".to_vec();
        reply.extend_from_slice(data);
        if conn.write_all(&reply).is_err() {
            return;
        }
    }
}

/// What a client got back after sending its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// Everything read before the connection closed or went quiet.
    pub reply: Vec<u8>,
    /// The proxy closed the connection (EOF or reset, or the handshake failed).
    pub closed: bool,
}

impl Exchange {
    pub fn reply_text(&self) -> String {
        String::from_utf8_lossy(&self.reply).into_owned()
    }
}

fn bound_stream(from: IpAddr, to: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let domain = if to.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SocketAddr::new(from, 0).into()).with_context(|| format!("binding to {from}"))?;
    socket.connect_timeout(&to.into(), timeout).with_context(|| format!("connecting {from} -> {to}"))?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_millis(300)))?;
    Ok(stream)
}

/// Reads until EOF, an error, or `quiet` with nothing new (whichever first), up to `limit`.
fn drain(stream: &mut impl Read, quiet: Duration, limit: Duration) -> Exchange {
    let mut reply = Vec::new();
    let started = Instant::now();
    let mut last = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Exchange { reply, closed: true },
            Ok(n) => {
                reply.extend_from_slice(&buf[..n]);
                last = Instant::now();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Exchange { reply, closed: true },
        }
        if last.elapsed() >= quiet || started.elapsed() >= limit {
            return Exchange { reply, closed: false };
        }
    }
}

/// Plain TCP from `from`: connect, wait `wait_first` (a server-first greeting may come),
/// send `bytes`, read what comes back.
pub fn plain_exchange(from: IpAddr, to: SocketAddr, bytes: &[u8], wait_first: Duration) -> Result<Exchange> {
    let mut stream = bound_stream(from, to, Duration::from_secs(3))?;
    let mut first = drain(&mut stream, wait_first, wait_first);
    if first.closed {
        return Ok(first);
    }
    if stream.write_all(bytes).is_err() {
        return Ok(Exchange { reply: first.reply, closed: true });
    }
    let rest = drain(&mut stream, Duration::from_millis(700), Duration::from_secs(3));
    first.reply.extend(rest.reply);
    first.closed = rest.closed;
    Ok(first)
}

/// A TLS client: which certificate it presents and which ALPN it offers.
pub struct TlsClient {
    config: Arc<ClientConfig>,
}

impl TlsClient {
    /// `client`: the certificate and key presented (stolen or not); `None` presents none.
    /// The server's certificate is not checked: an attacker does not care who answers.
    pub fn new(client: Option<&Identity>, alpn: &[&str]) -> Result<TlsClient> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
        let mut config = match client {
            Some(id) => builder.with_client_auth_cert(read_certs(&id.cert)?, read_key(&id.key)?)?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Ok(TlsClient { config: Arc::new(config) })
    }

    /// Connect from `from`, finish the handshake, wait `wait_first` for a greeting, send
    /// `bytes`, read the reply. A handshake the server refuses reads as closed.
    pub fn exchange(&self, from: IpAddr, to: SocketAddr, bytes: &[u8], wait_first: Duration) -> Result<Exchange> {
        let stream = bound_stream(from, to, Duration::from_secs(3))?;
        let name = ServerName::try_from("krites.test").map_err(|e| anyhow!("{e}"))?;
        let conn = ClientConnection::new(self.config.clone(), name)?;
        let mut tls = StreamOwned::new(conn, stream);
        let deadline = Instant::now() + Duration::from_secs(3);
        while tls.conn.is_handshaking() {
            match tls.conn.complete_io(&mut tls.sock) {
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) && Instant::now() < deadline => {}
                Err(_) => return Ok(Exchange { reply: Vec::new(), closed: true }),
            }
        }
        let mut first = drain(&mut tls, wait_first, wait_first);
        if first.closed {
            return Ok(first);
        }
        if tls.write_all(bytes).and_then(|_| tls.flush()).is_err() {
            return Ok(Exchange { reply: first.reply, closed: true });
        }
        let rest = drain(&mut tls, Duration::from_millis(700), Duration::from_secs(3));
        first.reply.extend(rest.reply);
        first.closed = rest.closed;
        Ok(first)
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", path.display()))
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).with_context(|| format!("reading the key {}", path.display()))
}

#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
