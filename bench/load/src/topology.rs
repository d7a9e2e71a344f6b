//! The processes of one scale: one server Envoy per configuration (the
//! workload's sidecar, `--concurrency 2` as Istio runs sidecars, or 1 as a
//! second series), the out-of-process authorizer for
//! `ext_authz`, and one client Envoy standing in for the calling pods'
//! sidecars: it originates mTLS with each source's certificate from each
//! source's address, as Istio's client sidecars do, so h2load (which can
//! neither bind a source address nor present several certificates) drives
//! every source through one plaintext listener.
//!
//! Every Envoy is built by `krites_testbed::istiod`: the servers with
//! `build_sidecar_bootstrap` ([`workload_sidecar`]), the callers with
//! `client_sidecars::build_client_sidecars_bootstrap` (Istio's outbound
//! cluster TLS per source). Every address is on 127.0.0.0/8.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use krites_bench::TARGET_PORT;
use krites_testbed::process::{free_port, ChildGuard};
use krites_policy::Workload;
use krites_testbed::istiod::client_sidecars::{build_client_sidecars_bootstrap, CallingPod, ClientSidecars, Destination};
use krites_testbed::istiod::{self, Authorization, HttpAuthz, MtlsMode, ProxyFiles};
use krites_testbed::{envoy_binary, module_path, parse_stats, Identity, Pki, Request};
use serde_json::Value;

use crate::report::{MemoryBreakdown, WasmMemory};
use crate::scenario::{Scenario, Source};

/// A way to authorize the requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Authz {
    /// No authorization filter.
    Baseline,
    /// Envoy's RBAC filter, translated from the policy set.
    Rbac,
    /// Envoy's ext_authz (gRPC) to `krites-ext-authz`, the same engine out of process.
    ExtAuthz,
    /// The Krites Wasm filter (and its NETWORK role).
    Krites,
    /// The same module and roles with a config scoped to another namespace:
    /// it counts each request and lets it through without deciding. What
    /// being a Wasm filter costs at all (VM entries, context per stream),
    /// so `krites - wasm-floor` is what deciding costs.
    WasmFloor,
    /// A hand-written module (`bench/load/wasm/minimal.wat`) that Envoy enters twice per
    /// request and that makes no host call: what any Wasm filter costs, in memory and CPU.
    WasmMin,
}

impl Authz {
    pub const ALL: [Authz; 6] = [Authz::Baseline, Authz::Rbac, Authz::ExtAuthz, Authz::Krites, Authz::WasmFloor, Authz::WasmMin];

    pub fn name(self) -> &'static str {
        match self {
            Authz::Baseline => "baseline",
            Authz::Rbac => "rbac",
            Authz::ExtAuthz => "ext_authz",
            Authz::Krites => "krites",
            Authz::WasmFloor => "wasm-floor",
            Authz::WasmMin => "wasm-min",
        }
    }

    pub fn parse(s: &str) -> Option<Authz> {
        Authz::ALL.into_iter().find(|a| a.name() == s)
    }

    /// The server Envoy's address for this configuration.
    fn ip(self) -> Ipv4Addr {
        Ipv4Addr::new(127, 0, 60, 1 + self as u8)
    }
}

impl fmt::Display for Authz {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 60, 10);
const AUTHORIZER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 60, 20);

/// A running Envoy (or the authorizer) and where to reach its admin API.
pub struct Proc {
    pub name: String,
    pub guard: ChildGuard,
    pub admin: Option<SocketAddr>,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// Envoy's counters and gauges (`/stats`).
    pub fn stats(&self) -> Result<std::collections::BTreeMap<String, u64>> {
        let admin = self.admin.context("no admin endpoint")?;
        let resp = Request::new().to(admin).path("/stats").timeout(Duration::from_secs(10)).send()?;
        if resp.status != 200 {
            bail!("{}: /stats answered {}", self.name, resp.status);
        }
        Ok(parse_stats(&resp.body))
    }

    /// Resident and peak memory, KiB.
    pub fn memory_kib(&self) -> Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let field = |name: &str| {
            status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        };
        Ok((field("VmRSS:").context("VmRSS")?, field("VmHWM:").context("VmHWM")?))
    }

    /// Where this Envoy's memory is: its Wasm VMs' linear memories (from
    /// `/proc/<pid>/smaps`) and its own heap (tcmalloc, from admin `/memory`).
    pub fn memory_breakdown(&self) -> Result<MemoryBreakdown> {
        let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", self.pid()))?;
        let maps = mappings(&smaps);
        let resident = |anonymous: bool| maps.iter().filter(|m| m.anonymous == anonymous).map(|m| m.rss_kib).sum();
        let mut breakdown = MemoryBreakdown {
            file_backed_kib: resident(false),
            anonymous_kib: resident(true),
            wasm_memories: wasm_memories(&maps),
            ..MemoryBreakdown::default()
        };
        if let Some(admin) = self.admin {
            let resp = Request::new().to(admin).path("/memory").timeout(Duration::from_secs(10)).send()?;
            let heap: Value = serde_json::from_str(&resp.body).context("admin /memory")?;
            // tcmalloc reports byte counts as strings.
            let field = |name: &str| heap.get(name).and_then(|v| v.as_str()).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) / 1024;
            breakdown.heap_allocated_kib = field("allocated");
            breakdown.heap_free_kib = field("pageheap_free") + field("total_thread_cache");
        }
        Ok(breakdown)
    }

    /// User + system CPU time so far, in seconds (from `/proc/<pid>/stat`, 100 ticks/s).
    pub fn cpu_seconds(&self) -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the `(comm)`, which may hold spaces.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed /proc/<pid>/stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).context("utime/stime");
        // utime and stime are fields 14 and 15; `rest` starts at field 3.
        Ok((ticks(11)? + ticks(12)?) as f64 / 100.0)
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// The processes of one scale.
pub struct Topology {
    pub servers: Vec<(Authz, Proc)>,
    /// Why a configuration could not run at this scale.
    pub skipped: Vec<(Authz, String)>,
    pub authorizer: Option<Proc>,
    pub client: Proc,
    pub client_listener: SocketAddr,
    pub wasm_bytes: u64,
}

/// Files of one scale.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn write(&self, name: &str, value: &Value) -> Result<PathBuf> {
        let path = self.path(name);
        std::fs::write(&path, serde_json::to_vec(value)?).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

impl Topology {
    /// Starts everything for `scenario`, each configuration of `authz`.
    /// `concurrency`: the server Envoys' worker threads (the callers' Envoy runs 2).
    pub fn start(scenario: &Scenario, authz: &[Authz], dir: &Path, ext_authz_bin: &Path, concurrency: u32) -> Result<Topology> {
        std::fs::create_dir_all(dir)?;
        let files = Files { dir: dir.to_path_buf() };
        let pki = Pki::new(&dir.join("pki"), krites_bench::TRUST_DOMAIN)?;
        let w = &scenario.workload;
        let server_id = pki.issue("server", &w.namespace, &w.service_account)?;
        let wasm = module_path();
        let wasm_bytes = std::fs::metadata(&wasm).with_context(|| format!("{}: run `make build`", wasm.display()))?.len();

        let mut skipped = Vec::new();
        let mut authorizer = None;
        let mut servers = Vec::new();
        for &a in authz {
            let admin = SocketAddr::from((a.ip(), free_port(a.ip())?));
            let proxy_dir = dir.join(format!("server-{a}"));
            let mut proxy = server_proxy(scenario, a, admin, &server_id, pki.ca_cert(), &proxy_dir);
            let plugin_config = match a {
                Authz::Baseline => None,
                Authz::Rbac => match crate::rbac::rbac_filters(&scenario.config, w) {
                    Ok(t) => {
                        proxy.authz.http = HttpAuthz::Rbac(t.filters);
                        None
                    }
                    Err(e) => {
                        skipped.push((a, format!("{e:#}")));
                        continue;
                    }
                },
                Authz::ExtAuthz => {
                    let listen = SocketAddr::from((AUTHORIZER_IP, free_port(AUTHORIZER_IP)?));
                    authorizer = Some(start_authorizer(ext_authz_bin, scenario, &files, listen)?);
                    proxy.authz.http = HttpAuthz::ExtAuthz(listen);
                    None
                }
                Authz::Krites => Some(scenario.config_json.clone()),
                Authz::WasmFloor => Some(out_of_scope(scenario)?),
                Authz::WasmMin => {
                    proxy.authz = Authorization { krites_network: false, http: HttpAuthz::Krites };
                    let module = write_minimal_module(&files)?;
                    let doc = istiod::build_http_ecds(1, &module, None);
                    std::fs::create_dir_all(&proxy.files.ecds_dir)?;
                    std::fs::write(&proxy.files.ecds, serde_json::to_vec(&doc)?)?;
                    None
                }
            };
            if let Some(plugin_config) = plugin_config {
                proxy.authz = Authorization::krites();
                write_ecds(&proxy.files, &wasm, &plugin_config)?;
            }
            let bootstrap = istiod::build_sidecar_bootstrap(&proxy);
            let cfg = files.write(&format!("server-{a}.json"), &bootstrap)?;
            let proc = start_envoy(&format!("server-{a}"), &cfg, &files, admin, concurrency)?;
            servers.push((a, proc));
        }

        let client_port = free_port(CLIENT_IP)?;
        let client_listener = SocketAddr::from((CLIENT_IP, client_port));
        let client_admin = SocketAddr::from((CLIENT_IP, free_port(CLIENT_IP)?));
        let mut certs = Vec::new();
        for s in &scenario.sources {
            certs.push(match &s.cert {
                Some((ns, sa)) => Some(pki.issue(&format!("client-{}", s.name), ns, sa)?),
                None => None,
            });
        }
        let live: Vec<Authz> = servers.iter().map(|(a, _)| *a).collect();
        let server_identity = server_id.uri.clone().context("the server's certificate has no SPIFFE id")?;
        let callers = client_sidecars(scenario, &live, &certs, &server_identity, pki.ca_cert(), client_listener, client_admin);
        let bootstrap = build_client_sidecars_bootstrap(&callers);
        let cfg = files.write("client.json", &bootstrap)?;
        let client = start_envoy("client", &cfg, &files, client_admin, 2)?;
        Ok(Topology { servers, skipped, authorizer, client, client_listener, wasm_bytes })
    }

    pub fn server(&self, a: Authz) -> Option<&Proc> {
        self.servers.iter().find(|(x, _)| *x == a).map(|(_, p)| p)
    }

    /// The URL h2load and the checks use for `path` from `source` through configuration `a`.
    pub fn url(&self, a: Authz, source: &Source, path: &str) -> String {
        format!("http://{}/{a}/{}{path}", self.client_listener, source.name)
    }

    /// The request target (path) part of [`Topology::url`].
    pub fn target(a: Authz, source: &Source, path: &str) -> String {
        format!("/{a}/{}{path}", source.name)
    }
}

/// Starts `krites-ext-authz` for the scenario's workload and waits until it listens.
fn start_authorizer(bin: &Path, scenario: &Scenario, files: &Files, listen: SocketAddr) -> Result<Proc> {
    let config = files.path("plugin-config.json");
    std::fs::write(&config, &scenario.config_json)?;
    let log = files.path("authorizer.log");
    let out = std::fs::File::create(&log)?;
    let w = &scenario.workload;
    let mut cmd = Command::new(bin);
    cmd.arg("--config").arg(&config).args(["--namespace", &w.namespace, "--service-account", &w.service_account]);
    for (k, v) in &w.labels {
        cmd.arg("--label").arg(format!("{k}={v}"));
    }
    cmd.arg("--listen").arg(listen.to_string()).stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
    let mut guard = ChildGuard::spawn("krites-ext-authz", &mut cmd)?;
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("listening on") {
            break;
        }
        if let Ok(Some(status)) = guard.try_wait() {
            bail!("krites-ext-authz exited with {status}: {text}");
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("krites-ext-authz did not listen within 120 s: {text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Proc { name: "krites-ext-authz".into(), guard, admin: None, log })
}

fn start_envoy(name: &str, config: &Path, files: &Files, admin: SocketAddr, concurrency: u32) -> Result<Proc> {
    let log = files.path(&format!("{name}.log"));
    let out = std::fs::File::create(&log)?;
    let mut cmd = Command::new(envoy_binary()?);
    cmd.arg("-c")
        .arg(config)
        .arg("--concurrency")
        .arg(concurrency.to_string())
        .args(["--log-level", "warn", "--disable-hot-restart"])
        .arg("--base-id")
        .arg(admin.port().to_string())
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let mut guard = ChildGuard::spawn(name, &mut cmd)?;
    let started = Instant::now();
    loop {
        let ready = Request::new().to(admin).path("/ready").timeout(Duration::from_secs(2)).send();
        if matches!(ready, Ok(ref r) if r.status == 200) {
            break;
        }
        if let Ok(Some(status)) = guard.try_wait() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            bail!("{name}: Envoy exited with {status}:\n{text}");
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("{name}: Envoy not ready within 300 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Proc { name: name.to_string(), guard, admin: Some(admin), log })
}

/// The `wasm-min` module, assembled from its text.
fn write_minimal_module(files: &Files) -> Result<PathBuf> {
    let binary = wat::parse_str(include_str!("../wasm/minimal.wat")).context("bench/load/wasm/minimal.wat")?;
    let path = files.path("minimal.wasm");
    std::fs::write(&path, binary).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The scenario's config, scoped to a namespace the workload is not in,
/// delivered as control would deliver it (as the krites configuration's is).
fn out_of_scope(scenario: &Scenario) -> Result<String> {
    let mut config = scenario.config.clone();
    config.scope = Some(vec!["krites-bench-elsewhere".to_string()]);
    krites_bench::delivered_json(&config).map_err(|e| anyhow::anyhow!("{}: {e}", scenario.bench.name))
}

/// Both Krites WasmPlugins' ECDS resources, as istiod sends them.
fn write_ecds(files: &ProxyFiles, wasm: &Path, plugin_config: &str) -> Result<()> {
    let configuration = istiod::plugin_config_or_raw(plugin_config);
    for (dir, file, doc) in [
        (&files.ecds_dir, &files.ecds, istiod::build_http_ecds(1, wasm, Some(&configuration))),
        (&files.network_ecds_dir, &files.network_ecds, istiod::build_network_ecds(1, wasm)),
    ] {
        std::fs::create_dir_all(dir)?;
        std::fs::write(file, serde_json::to_vec(&doc)?).with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(())
}

/// The workload's sidecar as istiod builds it without interception (the benchmark's pods
/// share the host): one `Sidecar` ingress listener per `ports` entry on `ip`, declared HTTP,
/// each under its `portLevelMtls` mode, Envoy answering 200 itself in place of the
/// application, so that what is measured is the proxy and its authorization, not an app.
/// The authorization is set by the caller (none by default).
pub fn workload_sidecar(
    workload: &Workload,
    pod_name: &str,
    ip: Ipv4Addr,
    ports: &[(u16, MtlsMode)],
    admin: SocketAddr,
    tls: (&Identity, &Path),
    dir: &Path,
) -> istiod::Proxy {
    let (identity, ca) = tls;
    istiod::Proxy {
        pod_name: pod_name.replace('_', "-"),
        namespace: workload.namespace.clone(),
        service_account: workload.service_account.clone(),
        labels: workload.labels.clone().into_iter().collect(),
        ip,
        ports: ports.iter().map(|&(port, _)| istiod::ContainerPort::new(&format!("http-{port}"), port, Some(istiod::Protocol::Http))).collect(),
        mtls: MtlsMode::Permissive,
        port_mtls: ports.iter().copied().collect(),
        path_normalization: istiod::PathNormalization::Base,
        trust_domain: krites_bench::TRUST_DOMAIN.to_string(),
        identity: identity.clone(),
        ca: ca.to_path_buf(),
        capture: istiod::CaptureMode::None {
            ingress: ports
                .iter()
                .map(|&(port, _)| istiod::IngressListener {
                    port,
                    protocol: istiod::Protocol::Http,
                    bind: ip.into(),
                    default_endpoint: istiod::InboundEndpoint::Ok,
                })
                .collect(),
            egress: Vec::new(),
        },
        authz: Authorization { krites_network: false, http: HttpAuthz::None },
        outbound: Vec::new(),
        admin,
        extra_stat_tags: Vec::new(),
        envoy_filters: Vec::new(),
        // No access log (`meshConfig.accessLogFile` unset, Istio's default): what is measured
        // is authorization, not logging.
        files: ProxyFiles { access_log: None, ..ProxyFiles::under(dir) },
    }
}

/// Configuration `a`'s server: the workload's sidecar with one PERMISSIVE port, which takes
/// the client sidecars' mTLS (ALPN `istio-h2`) and the plaintext sources alike.
fn server_proxy(scenario: &Scenario, a: Authz, admin: SocketAddr, id: &Identity, ca: &Path, dir: &Path) -> istiod::Proxy {
    let w = &scenario.workload;
    workload_sidecar(w, &server_pod_name(w, a), a.ip(), &[(TARGET_PORT, MtlsMode::Permissive)], admin, (id, ca), dir)
}

fn server_pod_name(w: &Workload, a: Authz) -> String {
    format!("{}-{a}", w.service_account).replace('_', "-")
}

/// The callers' sidecars ([`istiod::client_sidecars`]): `/<config>/<source>/...` goes to
/// configuration `config`'s server, from the source's address, with its certificate (or in
/// plaintext), over HTTP/2; the prefix is stripped.
fn client_sidecars(
    scenario: &Scenario,
    authz: &[Authz],
    certs: &[Option<Identity>],
    server_identity: &str,
    ca: &Path,
    listen: SocketAddr,
    admin: SocketAddr,
) -> ClientSidecars {
    let w = &scenario.workload;
    ClientSidecars {
        name: "loadgen".to_string(),
        namespace: "bench".to_string(),
        listen,
        admin,
        ca: ca.to_path_buf(),
        pods: scenario
            .sources
            .iter()
            .zip(certs)
            .map(|(s, cert)| CallingPod { name: s.name.to_string(), ip: s.ip, identity: cert.clone() })
            .collect(),
        destinations: authz
            .iter()
            .map(|&a| Destination {
                name: a.name().to_string(),
                upstream: istiod::Upstream {
                    // Each configuration's server is its own Service in front of one pod.
                    host: format!("{}.{}.svc.cluster.local", server_pod_name(w, a), w.namespace),
                    ip: a.ip(),
                    port: TARGET_PORT,
                    protocol: istiod::Protocol::Http,
                    identity: server_identity.to_string(),
                    endpoints: Vec::new(),
                },
            })
            .collect(),
        // h2load speaks HTTP/2; so do the sidecars, to the servers.
        h2_upgrade: true,
        access_log: None,
    }
}

/// One mapping of `/proc/<pid>/smaps`.
struct Mapping {
    start: u64,
    end: u64,
    perms: String,
    anonymous: bool,
    rss_kib: u64,
}

fn mappings(smaps: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                let perms = fields.next().unwrap_or_default().to_string();
                // offset, device, inode, then the path (none for anonymous memory)
                let anonymous = fields.nth(3).is_none();
                out.push(Mapping { start, end, perms, anonymous, rss_kib: 0 });
                continue;
            }
        }
        if first == "Rss:" {
            if let (Some(m), Some(kib)) = (out.last_mut(), fields.next().and_then(|v| v.parse().ok())) {
                m.rss_kib = kib;
            }
        }
    }
    out
}

/// V8 (with Envoy's trap handler) reserves each Wasm memory as one region of
/// several GiB: the memory's current pages, readable and writable, then the
/// rest inaccessible until the module grows it. Each such pair is one VM's
/// linear memory.
fn wasm_memories(maps: &[Mapping]) -> Vec<WasmMemory> {
    const RESERVATION: u64 = 4 << 30;
    maps.windows(2)
        .filter(|w| {
            let (head, rest) = (&w[0], &w[1]);
            head.anonymous && rest.anonymous && head.perms.starts_with("rw") && rest.perms.starts_with("---")
                && rest.start == head.end && rest.end - head.start >= RESERVATION
        })
        .map(|w| WasmMemory { size_kib: (w[0].end - w[0].start) / 1024, resident_kib: w[0].rss_kib })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
559bf86b3000-559bfcc2c000 r-xp 00000000 08:01 123 /usr/bin/envoy
Rss:               46228 kB
53f1bd400000-53f1bfc00000 rw-p 00000000 00:00 0 
Rss:               44528 kB
7f9592330000-7f95943b0000 rw-p 00000000 00:00 0 
Rss:               28952 kB
7f95943b0000-7f9792330000 ---p 00000000 00:00 0 
Rss:                   0 kB
7f9792340000-7f97943c0000 rw-p 00000000 00:00 0 
Rss:               28000 kB
7f97943c0000-7f97953c0000 ---p 00000000 00:00 0 
Rss:                   0 kB
";

    #[test]
    fn a_wasm_memory_is_a_writable_head_of_a_reservation_of_gib() {
        let maps = mappings(SMAPS);
        assert_eq!(maps.len(), 6);
        assert!(!maps[0].anonymous && maps[1].anonymous);
        // The first pair spans 8 GiB; the second only 16 MiB: no Wasm memory.
        let memories = wasm_memories(&maps);
        assert_eq!(memories.len(), 1);
        assert_eq!(memories[0].size_kib, (0x7f95943b0000u64 - 0x7f9592330000) / 1024);
        assert_eq!(memories[0].resident_kib, 28952);
    }
}
