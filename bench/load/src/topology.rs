//! The processes of one scale: one server Envoy per configuration (the
//! workload's sidecar, `--concurrency 1`), the out-of-process authorizer for
//! `ext_authz`, and one client Envoy standing in for the calling pods'
//! sidecars: it originates mTLS with each source's certificate from each
//! source's address, as Istio's client sidecars do, so h2load (which can
//! neither bind a source address nor present several certificates) drives
//! every source through one plaintext listener.
//!
//! Every address is on 127.0.0.0/8.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use krites_bench::TARGET_PORT;
use krites_testbed::process::{free_port, ChildGuard};
use krites_testbed::{envoy_binary, module_path, parse_stats, Identity, Pki, Request};
use serde_json::{json, Value};

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
}

impl Authz {
    pub const ALL: [Authz; 5] = [Authz::Baseline, Authz::Rbac, Authz::ExtAuthz, Authz::Krites, Authz::WasmFloor];

    pub fn name(self) -> &'static str {
        match self {
            Authz::Baseline => "baseline",
            Authz::Rbac => "rbac",
            Authz::ExtAuthz => "ext_authz",
            Authz::Krites => "krites",
            Authz::WasmFloor => "wasm-floor",
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
const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const H2_OPTIONS: &str = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

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
    pub fn start(scenario: &Scenario, authz: &[Authz], dir: &Path, ext_authz_bin: &Path) -> Result<Topology> {
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
            let (filters, clusters) = match a {
                Authz::Baseline => (Vec::new(), Vec::new()),
                Authz::Rbac => match crate::rbac::rbac_filters(&scenario.config, w) {
                    Ok(t) => (t.filters, Vec::new()),
                    Err(e) => {
                        skipped.push((a, format!("{e:#}")));
                        continue;
                    }
                },
                Authz::ExtAuthz => {
                    let listen = SocketAddr::from((AUTHORIZER_IP, free_port(AUTHORIZER_IP)?));
                    authorizer = Some(start_authorizer(ext_authz_bin, scenario, &files, listen)?);
                    (vec![ext_authz_filter()], vec![h2_cluster(static_cluster("ext_authz", listen))])
                }
                Authz::Krites => (vec![krites_filter(&wasm, &scenario.config_json)], Vec::new()),
                Authz::WasmFloor => (vec![krites_filter(&wasm, &out_of_scope(scenario)?)], Vec::new()),
            };
            let admin = SocketAddr::from((a.ip(), free_port(a.ip())?));
            let bootstrap = server_bootstrap(scenario, a, admin, &filters, clusters, &server_id, pki.ca_cert(), &wasm);
            let cfg = files.write(&format!("server-{a}.json"), &bootstrap)?;
            let proc = start_envoy(&format!("server-{a}"), &cfg, &files, admin)?;
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
        let bootstrap = client_bootstrap(&live, &scenario.sources, &certs, pki.ca_cert(), client_listener, client_admin);
        let cfg = files.write("client.json", &bootstrap)?;
        let client = start_envoy("client", &cfg, &files, client_admin)?;
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

fn start_envoy(name: &str, config: &Path, files: &Files, admin: SocketAddr) -> Result<Proc> {
    let log = files.path(&format!("{name}.log"));
    let out = std::fs::File::create(&log)?;
    let mut cmd = Command::new(envoy_binary()?);
    cmd.arg("-c")
        .arg(config)
        .args(["--concurrency", "1", "--log-level", "warn", "--disable-hot-restart"])
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

fn socket(addr: SocketAddr) -> Value {
    json!({ "socket_address": { "address": addr.ip().to_string(), "port_value": addr.port() } })
}

fn static_cluster(name: &str, to: SocketAddr) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": socket(to) } }] }] }
    })
}

/// HTTP/2 to the upstream, as Istio's sidecars speak to each other (and gRPC needs).
fn h2_cluster(mut cluster: Value) -> Value {
    cluster["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": H2_OPTIONS,
            "explicit_http_config": { "http2_protocol_options": {} }
        }
    });
    cluster
}

fn router() -> Value {
    json!({ "name": "envoy.filters.http.router", "typed_config": { "@type": ROUTER } })
}

fn ext_authz_filter() -> Value {
    json!({
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "grpc_service": { "envoy_grpc": { "cluster_name": "ext_authz" }, "timeout": "2s" },
            "failure_mode_allow": false
        }
    })
}

/// The scenario's config, scoped to a namespace the workload is not in.
fn out_of_scope(scenario: &Scenario) -> Result<String> {
    let mut config = scenario.config.clone();
    config.scope = Some(vec!["krites-bench-elsewhere".to_string()]);
    Ok(serde_json::to_string(&config)?)
}

fn krites_filter(wasm: &Path, config: &str) -> Value {
    json!({
        "name": "krites",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "krites",
                "root_id": "",
                "configuration": { "@type": "type.googleapis.com/google.protobuf.StringValue", "value": config },
                "vm_config": { "runtime": "envoy.wasm.runtime.v8", "code": { "local": { "filename": wasm } } },
                "failure_policy": "FAIL_CLOSED"
            }
        }
    })
}

/// The module's NETWORK role: records the real peer address for the HTTP filter.
fn peer_address_filter(wasm: &Path) -> Value {
    json!({
        "name": "envoy.filters.network.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm",
            "config": {
                "name": "krites-peer-address",
                "root_id": "krites_peer_address",
                "vm_config": { "runtime": "envoy.wasm.runtime.v8", "code": { "local": { "filename": wasm } } },
                "failure_policy": "FAIL_CLOSED"
            }
        }
    })
}

/// The workload's sidecar: one inbound listener on port 8080 that takes mTLS
/// and plaintext (Istio's PERMISSIVE mode, told apart by the TLS inspector),
/// the configuration's filters, and a direct 200 as the application, so that
/// what is measured is the proxy and its authorization, not an app.
#[allow(clippy::too_many_arguments)]
fn server_bootstrap(
    scenario: &Scenario,
    a: Authz,
    admin: SocketAddr,
    filters: &[Value],
    clusters: Vec<Value>,
    id: &Identity,
    ca: &Path,
    wasm: &Path,
) -> Value {
    let mut http_filters = filters.to_vec();
    http_filters.push(router());
    let hcm = |stat: &str| {
        json!({
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": HCM,
                "stat_prefix": stat,
                "forward_client_cert_details": "SANITIZE_SET",
                "set_current_client_cert_details": { "uri": true },
                "use_remote_address": false,
                "normalize_path": true,
                "merge_slashes": true,
                "route_config": { "name": "inbound", "virtual_hosts": [{
                    "name": "app", "domains": ["*"],
                    "routes": [{ "match": { "prefix": "/" }, "direct_response": { "status": 200, "body": { "inline_string": "ok\n" } } }]
                }] },
                "http_filters": http_filters
            }
        })
    };
    let network = |stat: &str| {
        let mut f = Vec::new();
        if matches!(a, Authz::Krites | Authz::WasmFloor) {
            f.push(peer_address_filter(wasm));
        }
        f.push(hcm(stat));
        f
    };
    let w = &scenario.workload;
    json!({
        "node": {
            "id": format!("sidecar~{}~{}~{}.svc.cluster.local", a.ip(), w.service_account, w.namespace),
            "cluster": format!("{}.{}", w.service_account, w.namespace),
            "metadata": { "NAMESPACE": w.namespace, "SERVICE_ACCOUNT": w.service_account, "LABELS": w.labels }
        },
        "admin": { "address": socket(admin) },
        "static_resources": {
            "listeners": [{
                "name": "inbound",
                "address": socket(SocketAddr::from((a.ip(), TARGET_PORT))),
                "enable_reuse_port": false,
                "listener_filters": [{ "name": "envoy.filters.listener.tls_inspector", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector" } }],
                "filter_chains": [
                    {
                        "filter_chain_match": { "transport_protocol": "tls" },
                        "filters": network("inbound_mtls"),
                        "transport_socket": { "name": "envoy.transport_sockets.tls", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                            "require_client_certificate": true,
                            "common_tls_context": {
                                "alpn_protocols": ["h2", "http/1.1"],
                                "tls_certificates": [{ "certificate_chain": { "filename": id.cert }, "private_key": { "filename": id.key } }],
                                "validation_context": { "trusted_ca": { "filename": ca } }
                            }
                        } }
                    },
                    { "filter_chain_match": { "transport_protocol": "raw_buffer" }, "filters": network("inbound_plain") }
                ]
            }],
            "clusters": clusters
        }
    })
}

/// The callers' sidecar: `/<config>/<source>/...` goes to configuration
/// `config`'s server, from the source's address, with its certificate (or in
/// plaintext), over HTTP/2; the prefix is stripped.
fn client_bootstrap(
    authz: &[Authz],
    sources: &[Source],
    certs: &[Option<Identity>],
    ca: &Path,
    listen: SocketAddr,
    admin: SocketAddr,
) -> Value {
    let mut routes = Vec::new();
    let mut clusters = Vec::new();
    for &a in authz {
        for (s, cert) in sources.iter().zip(certs) {
            let name = format!("{a}-{}", s.name);
            routes.push(json!({
                "match": { "prefix": format!("/{a}/{}/", s.name) },
                "route": { "cluster": name, "prefix_rewrite": "/", "timeout": "10s" }
            }));
            let mut c = h2_cluster(static_cluster(&name, SocketAddr::from((a.ip(), TARGET_PORT))));
            c["upstream_bind_config"] = json!({ "source_address": { "address": s.ip.to_string(), "port_value": 0 } });
            if let Some(id) = cert {
                c["transport_socket"] = json!({ "name": "envoy.transport_sockets.tls", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    "common_tls_context": {
                        "alpn_protocols": ["h2"],
                        "tls_certificates": [{ "certificate_chain": { "filename": id.cert }, "private_key": { "filename": id.key } }],
                        "validation_context": { "trusted_ca": { "filename": ca } }
                    }
                } });
            }
            clusters.push(c);
        }
    }
    json!({
        "node": { "id": "loadgen~127.0.60.10~loadgen~bench.svc.cluster.local", "cluster": "loadgen.bench" },
        "admin": { "address": socket(admin) },
        "static_resources": {
            "listeners": [{
                "name": "outbound",
                "address": socket(listen),
                "enable_reuse_port": false,
                "filter_chains": [{ "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": HCM,
                        "stat_prefix": "outbound",
                        "route_config": { "name": "outbound", "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": routes }] },
                        "http_filters": [router()]
                    }
                }] }]
            }],
            "clusters": clusters
        }
    })
}

