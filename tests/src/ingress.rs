//! The Istio ingress gateway stand-in: an Envoy on its own address with a plaintext listener
//! for browsers, forwarding over mTLS (with the gateway's workload certificate) to a sidecar.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::client::Request;
use crate::config;
use crate::envoy::{read_lossy, spawn_envoy, tail_of, validate_name, write_json, Outbound};
use crate::pki::Identity;
use crate::process::{free_port, free_ports, port_or_free, ChildGuard};
use crate::READY_TIMEOUT;

#[derive(Debug, Clone)]
pub struct IngressSpec {
    /// File names and node id, e.g. "istio-ingressgateway". `[a-z0-9.-]+`.
    pub name: String,
    /// The gateway's address; the browser listener and admin bind here, and upstream
    /// connections come from here.
    pub ip: Ipv4Addr,
    /// Browser port to use if it is free (else any free port).
    pub preferred_port: Option<u16>,
    /// Where every request goes.
    pub upstream: Outbound,
    /// The gateway's workload certificate (Istio's is
    /// `spiffe://<td>/ns/istio-system/sa/istio-ingressgateway-service-account`).
    pub identity: Identity,
    pub ca: PathBuf,
    pub work_dir: PathBuf,
}

/// A running ingress gateway. Dropping it stops Envoy.
pub struct Ingress {
    spec: IngressSpec,
    admin_port: u16,
    port: u16,
    log: PathBuf,
    stderr: PathBuf,
    access_log: PathBuf,
    process: ChildGuard,
}

impl std::fmt::Debug for Ingress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingress")
            .field("name", &self.spec.name)
            .field("addr", &self.addr())
            .field("pid", &self.process.pid())
            .finish_non_exhaustive()
    }
}

impl Ingress {
    pub fn start(spec: IngressSpec) -> Result<Ingress> {
        validate_name(&spec.name)?;
        let binary = crate::envoy_binary()?;
        fs::create_dir_all(&spec.work_dir)
            .with_context(|| format!("creating {}", spec.work_dir.display()))?;
        let mut last_err = anyhow!("not started");
        for attempt in 0..3 {
            let port = match (attempt, spec.preferred_port) {
                (0, Some(p)) => port_or_free(spec.ip, p)?,
                _ => free_port(spec.ip)?,
            };
            match Ingress::try_start(&binary, spec.clone(), port) {
                Ok(ingress) => return Ok(ingress),
                Err(e) if format!("{e:#}").contains("Address already in use") => last_err = e,
                Err(e) => return Err(e),
            }
        }
        Err(last_err)
    }

    fn try_start(binary: &Path, spec: IngressSpec, port: u16) -> Result<Ingress> {
        // Distinct from the listener's port, which is not bound yet.
        let admin_port = free_ports(spec.ip, 2)?.into_iter().find(|p| *p != port).unwrap_or(0);
        let d = &spec.work_dir;
        let n = &spec.name;
        let bootstrap = d.join(format!("{n}.envoy.json"));
        let log = d.join(format!("{n}.log"));
        let stderr = d.join(format!("{n}.stderr"));
        let access_log = d.join(format!("{n}.access.log"));
        for stale in [&log, &stderr, &access_log] {
            let _ = fs::remove_file(stale);
        }
        let doc = config::ingress_bootstrap(
            n,
            spec.ip,
            admin_port,
            port,
            &spec.upstream,
            &spec.identity,
            &spec.ca,
            &access_log,
        );
        write_json(&bootstrap, &doc)?;
        let process = spawn_envoy(n, binary, &bootstrap, &log, &stderr, None)?;
        let mut ingress = Ingress {
            spec,
            admin_port,
            port,
            log,
            stderr,
            access_log,
            process,
        };
        ingress.wait_ready()?;
        Ok(ingress)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.process.try_wait()? {
                bail!(
                    "envoy {} exited during startup ({status}):\n{}",
                    self.spec.name,
                    self.log_tail()
                );
            }
            let live = Request::new()
                .to(self.admin_addr())
                .path("/ready")
                .timeout(Duration::from_secs(2))
                .send()
                .map(|r| r.status == 200 && r.body.trim() == "LIVE")
                .unwrap_or(false);
            if live && TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "envoy {} not ready after {READY_TIMEOUT:?}:\n{}",
                    self.spec.name,
                    self.log_tail()
                );
            }
            sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        tail_of(&[("stderr", &self.stderr), ("log", &self.log)])
    }

    pub fn spec(&self) -> &IngressSpec {
        &self.spec
    }

    /// The browser listener.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.spec.ip, self.port))
    }

    /// `http://<ip>:<port>/`
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr())
    }

    pub fn admin_addr(&self) -> SocketAddr {
        SocketAddr::from((self.spec.ip, self.admin_port))
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// One line per request: status, `%RESPONSE_CODE_DETAILS%`, upstream host.
    pub fn access_log(&self) -> Result<String> {
        read_lossy(&self.access_log)
    }
}
