//! One emulated Istio sidecar: a real Envoy process bound to its own "pod IP" in 127.0.0.0/8.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::client::{Request, Response};
use crate::config::{self, Ports};
use crate::istiod::{self, ProxyFiles};
use crate::pki::{Identity, Pki};
use crate::process::{free_ports, ChildGuard};

/// How long `start` waits for Envoy to come up (V8 compiling the module is the slow part).
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct SidecarSpec {
    /// Workload name, e.g. "database": file names, node id/cluster, response marker.
    /// Must be `[a-z0-9.-]+`.
    pub name: String,
    /// The "pod IP"; every listener (and admin) binds here.
    pub ip: Ipv4Addr,
    /// Node metadata NAMESPACE.
    pub namespace: String,
    /// Node metadata SERVICE_ACCOUNT.
    pub service_account: String,
    /// Node metadata LABELS.
    pub labels: BTreeMap<String, String>,
    /// Server certificate of the mTLS listener.
    pub identity: Identity,
    /// CA trusted for client certificates.
    pub ca: PathBuf,
    /// The Krites module; `None` runs without the wasm filter.
    pub wasm: Option<PathBuf>,
    /// JSON handed to the filter as `configuration`.
    pub plugin_config: String,
    /// Where the bootstrap, the ECDS directory and the logs go.
    pub work_dir: PathBuf,
    /// HCM `normalize_path` + `merge_slashes` (Istio's defaults) when true; both off when false.
    pub normalize_path: bool,
    /// Also run the module's NETWORK role (root id `krites_peer_address`) before the
    /// connection manager, as a `type: NETWORK` WasmPlugin does in Istio: it records each
    /// connection's real peer so that `x-forwarded-for` cannot stand in for it.
    pub peer_address_filter: bool,
}

impl SidecarSpec {
    /// A sidecar of pod `name` (service account `name` in `default`, label
    /// `app=name`) running the Krites module with both its roles, Istio's
    /// path normalisation, and a certificate from `pki`. Override fields
    /// with struct update syntax.
    pub fn krites(name: &str, ip: Ipv4Addr, pki: &Pki, plugin_config: impl Into<String>, work_dir: PathBuf) -> Result<SidecarSpec> {
        Ok(SidecarSpec {
            name: name.into(),
            ip,
            namespace: "default".into(),
            service_account: name.into(),
            labels: BTreeMap::from([("app".to_string(), name.to_string())]),
            identity: pki.issue(name, "default", name)?,
            ca: pki.ca_cert().to_path_buf(),
            wasm: Some(crate::module_path()),
            plugin_config: plugin_config.into(),
            work_dir,
            normalize_path: true,
            peer_address_filter: true,
        })
    }
}

/// How a sidecar is wired into the mesh beyond its two inbound listeners. The default is the
/// echo rig: the inbound listeners answer themselves, no outbound listeners, no `POD_PORTS`.
///
/// A separate struct (not more `SidecarSpec` fields) so that every existing `SidecarSpec { .. }`
/// literal keeps compiling: `Sidecar::start(spec)` is `Sidecar::start_with(spec, Mesh::default())`.
#[derive(Debug, Clone, Default)]
pub struct Mesh {
    /// The application container. Inbound requests that pass the filters are proxied here in
    /// plain HTTP, as Istio's `inbound|<port>||` cluster does. `None`: Envoy answers itself
    /// (`200 ok <name>` with the request echoed, see `config.rs`).
    pub app: Option<SocketAddr>,
    /// Outbound listeners on the pod IP, one per destination service: the application sends
    /// plain HTTP there and the sidecar carries it over mTLS with this workload's certificate,
    /// from the pod IP, to the destination sidecars' mTLS listeners.
    pub outbound: Vec<Outbound>,
    /// The pod's container ports, handed to the filter as Istio's `POD_PORTS` node metadata
    /// (a JSON string); left out when empty.
    pub pod_ports: Vec<ContainerPort>,
    /// Further addresses both inbound listeners also accept on, each on its own ports (see
    /// `mtls_addr_on`/`plain_addr_on`): `::1` for IPv6 clients; `::` for a dual-stack listener
    /// (`ipv4_compat`), where IPv4 clients arrive as IPv4-mapped IPv6 peers
    /// (`::ffff:a.b.c.d`) as on a dual-stack pod.
    pub extra_inbound: Vec<IpAddr>,
    /// A TCP application (a port no HTTP filter sees). When set, the sidecar gets two more
    /// inbound listeners shaped like Istio's TCP filter chains (a port declared TCP, or TLS
    /// with ALPN `istio` on an auto-detected port): mTLS and plaintext, each running the
    /// module's NETWORK role and then `tcp_proxy` straight to this address, with no HTTP
    /// connection manager. See `tcp_mtls_addr`/`tcp_plain_addr`.
    pub tcp_app: Option<SocketAddr>,
    /// Istio's `meshConfig.pathNormalization` for the inbound connection managers; `None`
    /// keeps `SidecarSpec::normalize_path` (true: normalise and merge slashes; false: NONE).
    pub path_normalization: Option<PathNormalization>,
    /// The pod's `sidecar.istio.io/componentLogLevel` annotation (`--component-log-level`),
    /// e.g. `wasm:info` to see the module's startup logs; the sidecar logs at `warning`
    /// otherwise, as Istio's do. Later changes go through the admin API
    /// (`admin("POST", "/logging?wasm=debug")`, what `istioctl proxy-config log` does).
    pub component_log_level: Option<String>,
    /// The pod's `sidecar.istio.io/extraStatTags`, e.g. `krites_tier` and `krites_policy` for
    /// Krites' per-policy counters as Prometheus labels (`prometheus()`).
    pub extra_stat_tags: Vec<String>,
}

pub use crate::istiod::PathNormalization;

/// One destination service as seen from a sidecar (an Istio `outbound|<port>||<host>` cluster).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    /// The service name, e.g. "database": listener and cluster names, SNI.
    pub service: String,
    /// The destination sidecars' mTLS listeners, balanced round robin.
    pub endpoints: Vec<SocketAddr>,
    /// The SPIFFE id the destination must present, checked as Istio checks the server's
    /// identity (e.g. `spiffe://cluster.local/ns/default/sa/database`).
    pub server_identity: String,
}

/// A container port as Kubernetes declares it (`POD_PORTS` carries a list of these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPort {
    pub name: String,
    pub container_port: u16,
    /// "TCP" unless told otherwise.
    pub protocol: String,
}

impl ContainerPort {
    pub fn tcp(name: &str, port: u16) -> ContainerPort {
        ContainerPort {
            name: name.to_string(),
            container_port: port,
            protocol: "TCP".to_string(),
        }
    }
}

/// What Envoy did with an ECDS version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EcdsOutcome {
    Accepted,
    Rejected,
}

/// ECDS counters for the Krites filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EcdsCounts {
    pub success: u64,
    pub rejected: u64,
}

impl EcdsCounts {
    pub fn total(&self) -> u64 {
        self.success + self.rejected
    }
}

struct Paths {
    bootstrap: PathBuf,
    proxy: ProxyFiles,
    log: PathBuf,
    stderr: PathBuf,
    access_log: PathBuf,
}

impl Paths {
    fn new(spec: &SidecarSpec) -> Paths {
        let d = &spec.work_dir;
        let n = &spec.name;
        let ecds_dir = d.join(format!("{n}-ecds"));
        let network_ecds_dir = d.join(format!("{n}-ecds-network"));
        let access_log = d.join(format!("{n}.access.log"));
        Paths {
            bootstrap: d.join(format!("{n}.envoy.json")),
            proxy: ProxyFiles {
                ecds: ecds_dir.join("krites.json"),
                ecds_dir,
                network_ecds: network_ecds_dir.join("krites-peer-address.json"),
                network_ecds_dir,
                access_log: Some(access_log.clone()),
            },
            log: d.join(format!("{n}.log")),
            stderr: d.join(format!("{n}.stderr")),
            access_log,
        }
    }
}

/// A running Envoy. Dropping it stops the process.
pub struct Sidecar {
    spec: SidecarSpec,
    mesh: Mesh,
    ports: Ports,
    paths: Paths,
    process: ChildGuard,
    version: AtomicU64,
    wasm: Mutex<Option<PathBuf>>,
    initial_ecds: Option<EcdsOutcome>,
}

impl std::fmt::Debug for Sidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sidecar")
            .field("name", &self.spec.name)
            .field("ip", &self.spec.ip)
            .field("ports", &self.ports)
            .field("pid", &self.process.pid())
            .finish_non_exhaustive()
    }
}

impl Sidecar {
    /// Start Envoy and wait until it serves (see `READY_TIMEOUT`).
    ///
    /// With `wasm` set, waits for the first ECDS verdict as well; a rejected initial config
    /// is not an error (tests may want exactly that): check `initial_ecds()`.
    pub fn start(spec: SidecarSpec) -> Result<Sidecar> {
        Sidecar::start_with(spec, Mesh::default())
    }

    /// `start`, wired into a mesh: an application behind the inbound listeners, outbound
    /// listeners to other sidecars, `POD_PORTS`.
    pub fn start_with(spec: SidecarSpec, mesh: Mesh) -> Result<Sidecar> {
        validate_name(&spec.name)?;
        for o in &mesh.outbound {
            validate_name(&o.service)?;
        }
        let binary = crate::envoy_binary()?;
        fs::create_dir_all(&spec.work_dir)
            .with_context(|| format!("creating {}", spec.work_dir.display()))?;
        // Ports are picked by the kernel and released before Envoy binds them; losing that race
        // is rare (each sidecar has its own IP) and shows up as a bind error, so retry.
        let mut last_err = anyhow!("not started");
        for _ in 0..3 {
            match Sidecar::try_start(&binary, spec.clone(), mesh.clone()) {
                Ok(sidecar) => return Ok(sidecar),
                Err(e) if format!("{e:#}").contains("Address already in use") => last_err = e,
                Err(e) => return Err(e),
            }
        }
        Err(last_err)
    }

    fn try_start(binary: &Path, spec: SidecarSpec, mesh: Mesh) -> Result<Sidecar> {
        let picked = free_ports(spec.ip, 5 + mesh.outbound.len())?;
        let ports = Ports {
            admin: picked[0],
            mtls: picked[1],
            plain: picked[2],
            tcp: mesh.tcp_app.map(|_| (picked[3], picked[4])),
            outbound: picked[5..].to_vec(),
            extra: mesh
                .extra_inbound
                .iter()
                .map(|&ip| {
                    let p = free_ports(ip, 2)?;
                    Ok((ip, p[0], p[1]))
                })
                .collect::<Result<_>>()?,
        };
        let mut inbound = ports.inbound();
        inbound.sort_unstable();
        inbound.dedup();
        if inbound.len() != ports.inbound().len() {
            // A port's mTLS mode and cluster are keyed by its number: two addresses picking
            // the same one would share them. `start_with` retries on this message.
            bail!("Address already in use: one inbound port picked twice in {ports:?}");
        }
        let paths = Paths::new(&spec);
        for stale in [&paths.log, &paths.stderr, &paths.access_log] {
            let _ = fs::remove_file(stale);
        }
        if let Some(wasm) = &spec.wasm {
            let files = &paths.proxy;
            fs::create_dir_all(&files.ecds_dir)
                .with_context(|| format!("creating {}", files.ecds_dir.display()))?;
            write_atomically(&files.ecds_dir, &files.ecds, &config::ecds(1, wasm, &spec.plugin_config))?;
            if spec.peer_address_filter {
                fs::create_dir_all(&files.network_ecds_dir)
                    .with_context(|| format!("creating {}", files.network_ecds_dir.display()))?;
                write_atomically(&files.network_ecds_dir, &files.network_ecds, &istiod::build_network_ecds(1, wasm))?;
            }
        }
        let boot = config::bootstrap(&spec, &mesh, &ports, &paths.proxy);
        write_json(&paths.bootstrap, &boot)?;

        let process = spawn_envoy(
            &spec.name,
            binary,
            &paths.bootstrap,
            &paths.log,
            &paths.stderr,
            mesh.component_log_level.as_deref(),
        )?;
        let mut sidecar = Sidecar {
            wasm: Mutex::new(spec.wasm.clone()),
            spec,
            mesh,
            ports,
            paths,
            process,
            version: AtomicU64::new(1),
            initial_ecds: None,
        };
        sidecar.wait_ready()?;
        Ok(sidecar)
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
            // An admin error just means "not up yet" until the deadline.
            let waiting_for = self.readiness_gap();
            if let Ok(None) = waiting_for {
                return Ok(());
            }
            if Instant::now() > deadline {
                let what = match waiting_for {
                    Ok(Some(w)) => w,
                    Ok(None) => String::new(),
                    Err(e) => format!("{e:#}"),
                };
                bail!(
                    "envoy {} not ready after {READY_TIMEOUT:?} (waiting for {what}):\n{}",
                    self.spec.name,
                    self.log_tail()
                );
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// `None` when ready, otherwise what is still missing.
    fn readiness_gap(&mut self) -> Result<Option<String>> {
        if self.spec.wasm.is_some() && self.initial_ecds.is_none() {
            let c = self.ecds_counts()?;
            if c.success > 0 {
                self.initial_ecds = Some(EcdsOutcome::Accepted);
            } else if c.rejected > 0 {
                self.initial_ecds = Some(EcdsOutcome::Rejected);
            } else {
                return Ok(Some("the first ECDS update".into()));
            }
        }
        let ready = self.admin("GET", "/ready")?;
        if ready.status != 200 || ready.body.trim() != "LIVE" {
            return Ok(Some(format!(
                "/ready = {} {}",
                ready.status,
                ready.body.trim()
            )));
        }
        let outbound = self
            .ports
            .outbound
            .iter()
            .map(|&p| SocketAddr::from((self.spec.ip, p)));
        let extra = self.ports.extra.iter().flat_map(|&(ip, m, p)| {
            // A wildcard listener is reached through the pod IP.
            let ip = if ip.is_unspecified() {
                IpAddr::V4(self.spec.ip)
            } else {
                ip
            };
            [SocketAddr::new(ip, m), SocketAddr::new(ip, p)]
        });
        let tcp = self.ports.tcp.into_iter().flat_map(|(m, p)| [SocketAddr::from((self.spec.ip, m)), SocketAddr::from((self.spec.ip, p))]);
        for addr in [self.mtls_addr(), self.plain_addr()]
            .into_iter()
            .chain(tcp)
            .chain(outbound)
            .chain(extra)
        {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                return Ok(Some(format!("a listener on {addr}")));
            }
        }
        Ok(None)
    }

    pub fn spec(&self) -> &SidecarSpec {
        &self.spec
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.spec.ip
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Whether the Envoy process still runs.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    /// The outbound listener for `service` (see `Mesh::outbound`).
    pub fn outbound_addr(&self, service: &str) -> Option<SocketAddr> {
        let i = self
            .mesh
            .outbound
            .iter()
            .position(|o| o.service == service)?;
        let port = *self.ports.outbound.get(i)?;
        Some(SocketAddr::from((self.spec.ip, port)))
    }

    pub fn mtls_addr(&self) -> SocketAddr {
        SocketAddr::from((self.spec.ip, self.ports.mtls))
    }

    pub fn plain_addr(&self) -> SocketAddr {
        SocketAddr::from((self.spec.ip, self.ports.plain))
    }

    /// The TCP chain with mTLS (see `Mesh::tcp_app`); `None` without a TCP application.
    pub fn tcp_mtls_addr(&self) -> Option<SocketAddr> {
        self.ports.tcp.map(|(m, _)| SocketAddr::from((self.spec.ip, m)))
    }

    /// The plaintext TCP chain (Istio PERMISSIVE); `None` without a TCP application.
    pub fn tcp_plain_addr(&self) -> Option<SocketAddr> {
        self.ports.tcp.map(|(_, p)| SocketAddr::from((self.spec.ip, p)))
    }

    /// The mTLS listener's port on one of `Mesh::extra_inbound` (for `::`, connect to any
    /// local address on this port, e.g. the pod IP).
    pub fn mtls_addr_on(&self, ip: IpAddr) -> Option<SocketAddr> {
        let &(ip, port, _) = self.ports.extra.iter().find(|(i, _, _)| *i == ip)?;
        Some(SocketAddr::new(ip, port))
    }

    /// The plaintext listener's port on one of `Mesh::extra_inbound`.
    pub fn plain_addr_on(&self, ip: IpAddr) -> Option<SocketAddr> {
        let &(ip, _, port) = self.ports.extra.iter().find(|(i, _, _)| *i == ip)?;
        Some(SocketAddr::new(ip, port))
    }

    /// The stat prefix of the mTLS listener's connection manager (`http.<prefix>.*`), as
    /// istiod names it: `inbound_0.0.0.0_<port>`.
    pub fn mtls_stat_prefix(&self) -> String {
        istiod::inbound_http_stat_prefix(self.ports.mtls)
    }

    /// The stat prefix of the plaintext listener's connection manager.
    pub fn plain_stat_prefix(&self) -> String {
        istiod::inbound_http_stat_prefix(self.ports.plain)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        SocketAddr::from((self.spec.ip, self.ports.admin))
    }

    /// SNI / Host name for the mTLS listener: the spec name, which `Pki::issue(name, ..)`
    /// puts in the DNS SANs (so issue the server identity under the sidecar's name).
    pub fn server_name(&self) -> &str {
        &self.spec.name
    }

    /// The ECDS verdict on the config given at start (`None` without wasm).
    pub fn initial_ecds(&self) -> Option<EcdsOutcome> {
        self.initial_ecds
    }

    /// Any admin endpoint, e.g. `admin("POST", "/logging?wasm=trace")`.
    pub fn admin(&self, method: &str, path: &str) -> Result<Response> {
        let resp = Request::new()
            .to(self.admin_addr())
            .method(method)
            .path(path)
            // Envoy's admin runs on its main thread, which also compiles each new Wasm
            // config (V8 and `on_configure`): on a loaded machine that takes seconds.
            .timeout(Duration::from_secs(30))
            .send()?;
        if let Some(e) = &resp.error {
            bail!("admin {method} {path} on {}: {}", self.spec.name, e.message);
        }
        Ok(resp)
    }

    fn admin_get_ok(&self, path: &str) -> Result<String> {
        let resp = self.admin("GET", path)?;
        if resp.status != 200 {
            bail!("admin GET {path}: HTTP {} {}", resp.status, resp.body);
        }
        Ok(resp.body)
    }

    /// Counters and gauges from `/stats`; histogram and text lines are skipped.
    pub fn stats(&self) -> Result<BTreeMap<String, u64>> {
        Ok(parse_stats(&self.admin_get_ok("/stats")?))
    }

    /// One stat, 0 if Envoy does not have it (yet).
    pub fn stat(&self, name: &str) -> Result<u64> {
        Ok(self.stats()?.get(name).copied().unwrap_or(0))
    }

    pub fn prometheus(&self) -> Result<String> {
        self.admin_get_ok("/stats/prometheus")
    }

    /// Envoy's application log so far.
    pub fn log(&self) -> Result<String> {
        read_lossy(&self.paths.log)
    }

    /// Wait until the application log contains `needle` (it is flushed every 50 ms, so a
    /// line can trail the stat or response that it explains). Returns the whole log.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log()?;
            if log.contains(needle) {
                return Ok(log);
            }
            if Instant::now() > deadline {
                bail!(
                    "{needle:?} not in {} after {timeout:?}",
                    self.paths.log.display()
                );
            }
            sleep(Duration::from_millis(25));
        }
    }

    /// The access log: one line per request with status and `%RESPONSE_CODE_DETAILS%`.
    pub fn access_log(&self) -> Result<String> {
        read_lossy(&self.paths.access_log)
    }

    pub fn log_path(&self) -> &Path {
        &self.paths.log
    }

    pub fn config_dump_ecds(&self) -> Result<String> {
        self.admin_get_ok("/config_dump?resource=ecds_filters")
    }

    /// ECDS name of the Krites filter in this sidecar.
    pub fn ecds_name(&self) -> String {
        config::ecds_name()
    }

    pub fn ecds_counts(&self) -> Result<EcdsCounts> {
        let stats = self.stats()?;
        let prefix = format!(
            "extension_config_discovery.http_filter.{}",
            self.ecds_name()
        );
        let get = |s: &str| stats.get(&format!("{prefix}.{s}")).copied().unwrap_or(0);
        Ok(EcdsCounts {
            success: get("update_success"),
            rejected: get("update_rejected"),
        })
    }

    /// Push a new plugin configuration (same module) through ECDS. Returns once the file is
    /// in place, not when Envoy has acted on it: see `wait_for_ecds` / `reconfigure`.
    pub fn update_config(&self, plugin_config: &str) -> Result<()> {
        let wasm = self
            .wasm
            .lock()
            .map_err(|_| anyhow!("wasm path lock poisoned"))?
            .clone()
            .context("this sidecar runs without the wasm filter")?;
        self.update_plugin(&wasm, plugin_config)
    }

    /// Push a new module and configuration through ECDS.
    pub fn update_plugin(&self, wasm: &Path, plugin_config: &str) -> Result<()> {
        if self.spec.wasm.is_none() {
            bail!(
                "sidecar {} was started without the wasm filter",
                self.spec.name
            );
        }
        let version = self.version.fetch_add(1, Ordering::SeqCst) + 1;
        let doc = config::ecds(version, wasm, plugin_config);
        write_atomically(&self.paths.proxy.ecds_dir, &self.paths.proxy.ecds, &doc)?;
        *self
            .wasm
            .lock()
            .map_err(|_| anyhow!("wasm path lock poisoned"))? = Some(wasm.to_path_buf());
        Ok(())
    }

    /// Wait until `update_success + update_rejected >= total`.
    pub fn wait_for_ecds(&self, total: u64, timeout: Duration) -> Result<EcdsCounts> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.ecds_counts()?;
            if c.total() >= total {
                return Ok(c);
            }
            if Instant::now() > deadline {
                bail!(
                    "ECDS on {}: {c:?} after {timeout:?}, wanted {total} verdicts:\n{}",
                    self.spec.name,
                    self.log_tail()
                );
            }
            sleep(Duration::from_millis(25));
        }
    }

    /// `update_config` and wait for Envoy's verdict on it.
    pub fn reconfigure(&self, plugin_config: &str, timeout: Duration) -> Result<EcdsOutcome> {
        let before = self.ecds_counts()?;
        self.update_config(plugin_config)?;
        let after = self.wait_for_ecds(before.total() + 1, timeout)?;
        Ok(if after.rejected > before.rejected {
            EcdsOutcome::Rejected
        } else {
            EcdsOutcome::Accepted
        })
    }

    /// Resident set size of the Envoy process.
    pub fn rss_kib(&self) -> Result<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .context("reading /proc/<pid>/status")?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in /proc/<pid>/status")
    }

    fn log_tail(&self) -> String {
        tail_of(&[("stderr", &self.paths.stderr), ("log", &self.paths.log)])
    }
}

/// The last 40 lines of each file, labelled, for error messages.
pub(crate) fn tail_of(files: &[(&str, &Path)]) -> String {
    let mut out = String::new();
    for (label, path) in files {
        let text = read_lossy(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines.get(lines.len().saturating_sub(40)..).unwrap_or(&[]);
        if !tail.is_empty() {
            out.push_str(&format!(
                "--- {label} {} ---\n{}\n",
                path.display(),
                tail.join("\n")
            ));
        }
    }
    out
}

/// Start Envoy on `bootstrap` as pilot-agent starts a sidecar (`--concurrency 2`, log level
/// `warning`), under a guard that stops it. `component_log_level` is the pod's
/// `sidecar.istio.io/componentLogLevel` annotation, e.g. `wasm:info`.
pub(crate) fn spawn_envoy(
    name: &str,
    binary: &Path,
    bootstrap: &Path,
    log: &Path,
    stderr: &Path,
    component_log_level: Option<&str>,
) -> Result<ChildGuard> {
    let stderr =
        fs::File::create(stderr).with_context(|| format!("creating {}", stderr.display()))?;
    let mut cmd = Command::new(binary);
    cmd.arg("-c")
        .arg(bootstrap)
        .args(["--concurrency", &istiod::SIDECAR_CONCURRENCY.to_string()])
        .arg("--base-id")
        .arg(base_id().to_string())
        // Shared memory for hot restart is useless here and collides between runs.
        .arg("--disable-hot-restart")
        .arg("--log-path")
        .arg(log)
        .args(["-l", istiod::SIDECAR_LOG_LEVEL])
        // Flush logs promptly so `log()` sees what just happened.
        .args(["--file-flush-interval-msec", "50"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    if let Some(levels) = component_log_level {
        cmd.args(["--component-log-level", levels]);
    }
    ChildGuard::spawn(&format!("envoy {name}"), &mut cmd)
}

/// Unique per Envoy started by this process, and unlikely to collide across processes.
fn base_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    (std::process::id() % 100_000) * 100 + n % 100
}

pub(crate) fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !ok {
        bail!("sidecar name {name:?} must match [a-z0-9.-]+ (it ends up in file names and Envoy format strings)");
    }
    Ok(())
}

pub(crate) fn write_json(path: &Path, doc: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(doc)?;
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Write into `dir` then rename over `path`: Envoy's watched_directory reacts to the rename
/// and never sees a half-written file.
fn write_atomically(dir: &Path, path: &Path, doc: &serde_json::Value) -> Result<()> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".ecds-")
        .suffix(".json")
        .tempfile_in(dir)
        .with_context(|| format!("temp file in {}", dir.display()))?;
    tmp.write_all(serde_json::to_string_pretty(doc)?.as_bytes())?;
    tmp.persist(path)
        .with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

pub(crate) fn read_lossy(path: &Path) -> Result<String> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// `name: value` lines with an integer value.
pub fn parse_stats(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(": ")?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_parsing_skips_text_and_histograms() {
        let s = parse_stats(
            "http.inbound.downstream_rq_total: 3\n\
             extension_config_discovery.http_filter.x.version_text: \"1\"\n\
             cluster.h: P0(nan,0) P25(nan,0)\n\
             server.live: 1\n",
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s["http.inbound.downstream_rq_total"], 3);
    }

    #[test]
    fn names_are_restricted() {
        assert!(validate_name("database").is_ok());
        assert!(validate_name("a%b").is_err());
        assert!(validate_name("").is_err());
    }
}
