//! YAO Bank on the namespace mesh (issue #12): Calico's tutorial with its real parts (etcd v2
//! as the database, the `customer` and `summary` services of `demo/`) in pods that are
//! network namespaces, each workload behind an istiod-shaped sidecar (uid 1337, Istio's
//! iptables interception, PERMISSIVE mTLS, the Krites module delivered by ECDS).
//!
//! The database pod serves etcd on two ports: 2379, declared HTTP (the tutorial's `http`
//! Service port: HTTP chains, the HTTP role answers 403), and 12379, declared TCP (a `tcp`
//! Service port to the same etcd: TCP chains, the NETWORK role closes the connection). The
//! attack pod has no sidecar and holds summary's stolen certificate; the browser pod has no
//! sidecar either and stands for the ingress gateway's client.
//!
//! ```text
//! browser ─plain─▶ customer sidecar ─▶ customer app ─▶ (15001) ─mTLS─▶ summary sidecar ─▶ summary app
//!   summary app ─▶ (15001) ─mTLS─▶ database sidecar ─▶ etcd :2379 (http) / :12379 (tcp)
//! attack (summary's stolen cert, or plaintext) ──▶ database :2379 / :12379
//! ```
//!
//! Shared by `tests/tests/netns_tutorial.rs`, `tests/tests/netns_cluster.rs` (the config
//! comes from `control run` against a real apiserver) and `krites-demo --mesh`. Setup is in
//! two steps because the policy needs the pods' addresses: [`MeshBank::create`] makes the
//! namespaces (addresses known), [`MeshBank::start`] starts the sidecars with a plugin
//! config, etcd and the services. [`MeshBank::apply`] pushes a new config to the running
//! sidecars through their ECDS files. Dropping the bank stops every process and removes every
//! namespace and the bridge.
//!
//! Needs root, the namespace mesh's Debian packages (see [`crate::mesh`]) and etcd (Debian's
//! etcd-server): [`preflight`] says what is missing.

use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use krites_control::compile::{compile, Options};
use krites_control::inventory::Inventory;
use krites_control::manifests;
use krites_demo::BALANCE_KEY;

use crate::mesh::{self, istiod, ContainerPort, Mesh, MeshPod, PodSpec, Protocol, Upstream};
use crate::process::ChildGuard;
use crate::Identity;

/// The tutorial's Service ports: customer and summary `http` 80.
pub const APP_PORT: u16 = 80;
/// The database's `http` Service port (etcd's client port).
pub const ETCD_HTTP: u16 = 2379;
/// The same etcd behind a port a Service declares `tcp`.
pub const ETCD_TCP: u16 = 12379;
/// etcd's peer port, on the database pod's loopback only.
const ETCD_PEER: u16 = 2380;

pub const TRUST_DOMAIN: &str = "cluster.local";

pub const POLICY_FILE: &str = "tests/fixtures/yaobank/policy.yaml";
pub const POLICY_YAML: &str = include_str!("../../fixtures/yaobank/policy.yaml");
pub const CLUSTER_FILE: &str = "tests/fixtures/yaobank/cluster.yaml";
pub const CLUSTER_YAML: &str = include_str!("../../fixtures/yaobank/cluster.yaml");

/// Why this machine cannot run YAO Bank on the namespace mesh, if it cannot: not root, no
/// `ip netns`, a tool of the mesh missing, no etcd, or no Krites module.
pub fn preflight() -> std::result::Result<(), String> {
    mesh::preflight()?;
    crate::etcd::etcd_binary().map_err(|e| format!("{e:#}"))?;
    let module = crate::module_path();
    if !module.is_file() {
        return Err(format!(
            "no Krites module at {} (run `make build`)",
            module.display()
        ));
    }
    Ok(())
}

/// The pods' addresses, which the policy's endpoints need before any sidecar starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodIps {
    pub customer: Ipv4Addr,
    pub summary: Ipv4Addr,
    pub database: Ipv4Addr,
    pub attack: Ipv4Addr,
    pub browser: Ipv4Addr,
}

impl PodIps {
    /// `(fixture address in cluster.yaml, this mesh's address)` for every pod of the fixture
    /// that runs here. The finished summary pod whose IP the attack pod reuses keeps sharing
    /// the attack pod's address; the second summary replica (127.0.0.22) has no pod here and
    /// keeps its address.
    pub fn fixture_mapping(&self) -> [(Ipv4Addr, Ipv4Addr); 4] {
        [
            (Ipv4Addr::new(127, 0, 0, 11), self.customer),
            (Ipv4Addr::new(127, 0, 0, 12), self.summary),
            (Ipv4Addr::new(127, 0, 0, 13), self.database),
            (Ipv4Addr::new(127, 0, 0, 66), self.attack),
        ]
    }

    /// `(address, service account)` of the pods the policy must know as running.
    pub fn workloads(&self) -> [(Ipv4Addr, &'static str); 4] {
        [
            (self.customer, "customer"),
            (self.summary, "summary"),
            (self.database, "database"),
            (self.attack, "default"),
        ]
    }
}

/// `cluster.yaml` (what `kubectl get ... -o yaml` prints for the tutorial) with the fixture's
/// 127.0.0.x pod IPs replaced by this mesh's.
pub fn cluster_yaml(ips: &PodIps) -> String {
    ips.fixture_mapping()
        .iter()
        .fold(CLUSTER_YAML.to_string(), |text, (fixture, here)| {
            text.replace(&format!("{fixture}\n"), &format!("{here}\n"))
        })
}

/// What `control compile` makes of the tutorial's policies and [`cluster_yaml`]: the
/// WasmPlugin's `pluginConfig` (JSON) and its revision. Fails if the inventory does not see
/// every pod of this mesh running as its service account.
pub fn compile_policies(ips: &PodIps) -> Result<(String, String)> {
    let mut docs = Vec::new();
    manifests::parse_text(POLICY_FILE, POLICY_YAML, &mut docs)?;
    manifests::parse_text(
        &format!("{CLUSTER_FILE} (mesh IPs)"),
        &cluster_yaml(ips),
        &mut docs,
    )?;
    let inv = Inventory::from_manifests(&docs);
    ensure!(inv.errors.is_empty(), "invalid objects: {:?}", inv.errors);
    for (ip, sa) in ips.workloads() {
        ensure!(
            inv.pods
                .iter()
                .any(|p| p.service_account == sa && p.ips.contains(&ip.into())),
            "the inventory has no running pod {ip} with service account {sa}"
        );
    }
    let compiled = compile(&inv, &Options::default())?;
    Ok((
        serde_json::to_string(&compiled.config)?,
        compiled.revision,
    ))
}

/// What `curl` saw.
#[derive(Debug, Clone)]
pub struct Curl {
    /// The command, to paste into a shell.
    pub command: String,
    /// The body, then curl's stderr.
    pub body: String,
    /// 0: no HTTP answer.
    pub code: u16,
}

/// What `openssl s_client` printed.
#[derive(Debug, Clone)]
pub struct Tls {
    pub command: String,
    pub output: String,
}

/// The bank on the mesh. Field order is drop order: the processes, then the pods (their
/// namespaces), then the mesh (its bridge and directory).
pub struct MeshBank {
    customer_app: Option<ChildGuard>,
    summary_app: Option<ChildGuard>,
    etcd: Option<ChildGuard>,
    pub customer: MeshPod,
    pub summary: MeshPod,
    pub database: MeshPod,
    /// No sidecar: the tutorial's attack pod, with summary's stolen certificate.
    pub attack: MeshPod,
    /// No sidecar: a browser outside the mesh (the tutorial's goes through the ingress).
    pub browser: MeshPod,
    pub mesh: Mesh,
    /// The ECDS version last written to the sidecars.
    ecds_version: u64,
}

impl std::fmt::Debug for MeshBank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshBank")
            .field("ips", &self.ips())
            .field("mesh", &self.mesh)
            .finish_non_exhaustive()
    }
}

fn upstream(to: &MeshPod, sa: &str, port: u16, protocol: Protocol) -> Upstream {
    Upstream {
        host: format!("{}.default.svc.{TRUST_DOMAIN}", to.spec.name),
        ip: to.ip(),
        port,
        protocol,
        identity: format!("spiffe://{TRUST_DOMAIN}/ns/default/sa/{sa}"),
        endpoints: Vec::new(),
    }
}

impl MeshBank {
    /// The mesh and the pods' namespaces, with their ports and outbound Services; nothing
    /// runs yet.
    pub fn create() -> Result<MeshBank> {
        let mesh = Mesh::new(TRUST_DOMAIN).context("creating the namespace mesh")?;
        let mut database = mesh.add_pod(PodSpec::new("database", "database", "database"))?;
        let mut summary = mesh.add_pod(PodSpec::new("summary", "summary", "summary"))?;
        let mut customer = mesh.add_pod(PodSpec::new("customer", "customer", "customer"))?;
        let mut attack_spec = PodSpec::new("attack", "attack", "default");
        attack_spec.sidecar = false;
        let attack = mesh.add_pod(attack_spec)?;
        // Plaintext to customer's PERMISSIVE port; customer's policy takes GET from anyone.
        let mut browser_spec = PodSpec::new("browser", "browser", "default");
        browser_spec.sidecar = false;
        let browser = mesh.add_pod(browser_spec)?;

        database.spec.ports = vec![
            ContainerPort::new("http", ETCD_HTTP, Some(Protocol::Http)),
            ContainerPort::new("tcp-etcd", ETCD_TCP, Some(Protocol::Tcp)),
        ];
        summary.spec.ports = vec![ContainerPort::new("http", APP_PORT, Some(Protocol::Http))];
        customer.spec.ports = vec![ContainerPort::new("http", APP_PORT, Some(Protocol::Http))];
        let to_db = vec![
            upstream(&database, "database", ETCD_HTTP, Protocol::Http),
            upstream(&database, "database", ETCD_TCP, Protocol::Tcp),
        ];
        summary.spec.outbound = to_db.clone();
        // Without a Sidecar resource every proxy knows every Service: the compromised
        // customer pod's sidecar can reach the database too.
        customer.spec.outbound =
            std::iter::once(upstream(&summary, "summary", APP_PORT, Protocol::Http))
                .chain(to_db)
                .collect();
        Ok(MeshBank {
            customer_app: None,
            summary_app: None,
            etcd: None,
            customer,
            summary,
            database,
            attack,
            browser,
            mesh,
            ecds_version: 1,
        })
    }

    pub fn ips(&self) -> PodIps {
        PodIps {
            customer: self.customer.ip(),
            summary: self.summary.ip(),
            database: self.database.ip(),
            attack: self.attack.ip(),
            browser: self.browser.ip(),
        }
    }

    /// Starts the sidecars with `plugin_config` (the WasmPlugin's `pluginConfig` as written;
    /// istiod's transform is applied), etcd seeded with `balance`, and the services
    /// (`service_binary service <kind> --listen .. --summary|--database ..`: `krites-demo`).
    /// `progress` hears about each part as it comes up; an error from it stops the start.
    pub fn start(
        &mut self,
        plugin_config: &str,
        balance: &str,
        service_binary: &Path,
        progress: &mut dyn FnMut(&str) -> Result<()>,
    ) -> Result<()> {
        for p in [&mut self.database, &mut self.summary, &mut self.customer] {
            p.spec.plugin_config = plugin_config.to_string();
            self.mesh
                .start(p)
                .with_context(|| format!("starting the {} sidecar", p.spec.name))?;
            // Krites' decision lines are logged at info.
            p.set_log_level("wasm", "info")?;
            progress(&format!(
                "{} pod {} and its sidecar (uid {}, iptables interception)",
                p.spec.name,
                p.ip(),
                istiod::PROXY_UID
            ))?;
        }
        self.etcd = Some(start_etcd(&self.database, balance)?);
        progress(&format!(
            "etcd (v2 API) in the database pod on :{ETCD_HTTP} (http) and :{ETCD_TCP} (tcp), balance seeded"
        ))?;
        self.summary_app = Some(start_service(
            &self.summary,
            service_binary,
            "summary",
            "--database",
            &format!("http://{}:{ETCD_HTTP}/", self.database.ip()),
        )?);
        progress("summary app")?;
        self.customer_app = Some(start_service(
            &self.customer,
            service_binary,
            "customer",
            "--summary",
            &format!("http://{}:{APP_PORT}/", self.summary.ip()),
        )?);
        progress("customer app")?;
        Ok(())
    }

    /// The pods with a sidecar.
    pub fn sidecars(&self) -> [&MeshPod; 3] {
        [&self.database, &self.summary, &self.customer]
    }

    /// Names of the bank's processes that are no longer running.
    pub fn exited(&mut self) -> Vec<String> {
        let mut gone = Vec::new();
        for (name, guard) in [
            ("etcd", &mut self.etcd),
            ("summary app", &mut self.summary_app),
            ("customer app", &mut self.customer_app),
        ] {
            if let Some(g) = guard {
                if !g.is_running() {
                    gone.push(name.to_string());
                }
            }
        }
        for p in self.sidecars() {
            if p.admin("GET", "/ready").map(|b| b.trim() == "LIVE").ok() != Some(true) {
                gone.push(format!("envoy {}", p.spec.name));
            }
        }
        gone
    }

    /// ECDS updates (`update_success`, `update_rejected`) a sidecar has taken.
    pub fn ecds_counts(p: &MeshPod) -> Result<(u64, u64)> {
        let stats = p.stats()?;
        let prefix = format!(
            "extension_config_discovery.http_filter.{}",
            istiod::ecds_resource_name(istiod::PLUGIN_NAMESPACE, "krites")
        );
        let get = |s: &str| stats.get(&format!("{prefix}.{s}")).copied().unwrap_or(0);
        Ok((get("update_success"), get("update_rejected")))
    }

    /// Pushes `plugin_config` to every sidecar as istio-agent does: a new version of the
    /// ECDS file, renamed into the watched directory. Waits until each has accepted it
    /// (fails if one rejects it); returns the new ECDS version.
    pub fn apply(&mut self, plugin_config: &str) -> Result<u64> {
        let version = self.ecds_version + 1;
        let wasm = self.mesh.dir().join("krites.wasm");
        let doc = istiod::build_ecds(version, &wasm, plugin_config)?;
        let text = serde_json::to_string_pretty(&doc)?;
        let mut before = Vec::new();
        for p in self.sidecars() {
            before.push(Self::ecds_counts(p)?);
            let dir = p.dir().join("ecds");
            let mut tmp = tempfile::Builder::new()
                .prefix(".ecds-")
                .suffix(".json")
                .tempfile_in(&dir)
                .with_context(|| format!("temp file in {}", dir.display()))?;
            tmp.write_all(text.as_bytes())?;
            // Envoy runs as 1337 and must read it.
            let mut perms = tmp.as_file().metadata()?.permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
            tmp.as_file().set_permissions(perms)?;
            tmp.persist(dir.join("krites.json"))
                .with_context(|| format!("renaming into {}", dir.display()))?;
        }
        self.ecds_version = version;
        let deadline = Instant::now() + Duration::from_secs(15);
        for (p, (ok0, rejected0)) in self.sidecars().into_iter().zip(before) {
            loop {
                let (ok, rejected) = Self::ecds_counts(p)?;
                if rejected > rejected0 {
                    bail!(
                        "the {} sidecar rejected ECDS version {version}:\n{}",
                        p.spec.name,
                        tail(&p.envoy_log(), 30)
                    );
                }
                if ok > ok0 {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "the {} sidecar did not take ECDS version {version} within 15 s:\n{}",
                        p.spec.name,
                        tail(&p.envoy_log(), 30)
                    );
                }
                sleep(Duration::from_millis(25));
            }
        }
        Ok(version)
    }

    /// The ECDS version last written.
    pub fn ecds_version(&self) -> u64 {
        self.ecds_version
    }

    /// The bank page's URL (customer's Service address).
    pub fn page_url(&self) -> String {
        format!("http://{}:{APP_PORT}/", self.customer.ip())
    }

    /// The balance's URL on the database at `port`.
    pub fn balance_url(&self, port: u16) -> String {
        format!("http://{}:{port}{BALANCE_KEY}", self.database.ip())
    }

    /// `curl` inside `from` (as root, so a sidecar pod's own sidecar intercepts it).
    pub fn curl(&self, from: &MeshPod, args: &[&str]) -> Result<Curl> {
        let mut all = vec![
            "curl",
            "-sS",
            "--max-time",
            "8",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
        ];
        all.extend_from_slice(args);
        let out = from.pod().exec(&all, None, Duration::from_secs(15))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_str()));
        Ok(Curl {
            command: format!("ip netns exec {} {}", from.pod().netns(), all.join(" ")),
            body: format!("{body}{}", String::from_utf8_lossy(&out.stderr)),
            code: code.trim().parse().unwrap_or(0),
        })
    }

    /// `openssl s_client` from `from` with `cert`, offering `alpn`, sending `payload` and
    /// reading for 2 s: what an attacker with a stolen key sends as a sidecar would.
    pub fn openssl(
        &self,
        from: &MeshPod,
        to: (Ipv4Addr, u16),
        alpn: &str,
        cert: &Identity,
        payload: &str,
    ) -> Result<Tls> {
        let client = format!(
            "openssl s_client -connect {}:{} -alpn {alpn} -cert {} -key {} -quiet -no_ign_eof",
            to.0,
            to.1,
            cert.cert.display(),
            cert.key.display()
        );
        let script = format!("(cat; sleep 2) | {client}");
        let out = from.pod().exec(
            &["sh", "-c", &script],
            Some(payload.as_bytes()),
            Duration::from_secs(15),
        )?;
        Ok(Tls {
            command: format!(
                "printf {payload:?} | ip netns exec {} {client}",
                from.pod().netns()
            ),
            output: String::from_utf8_lossy(&out.stdout).into_owned(),
        })
    }

    /// etcd as the database pod itself sees it (loopback, which the interception leaves
    /// alone): the balance and etcd's index, which every write raises.
    pub fn etcd_state(&self) -> Result<(String, u64)> {
        let url = format!("http://127.0.0.1:{ETCD_HTTP}{BALANCE_KEY}");
        let out = self.database.pod().exec(
            &["curl", "-sS", "--max-time", "5", "-i", &url],
            None,
            Duration::from_secs(10),
        )?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let index = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("x-etcd-index")
                    .then(|| v.trim().parse().ok())?
            })
            .with_context(|| format!("no X-Etcd-Index from etcd: {text:?}"))?;
        let value: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        Ok((
            value["node"]["value"].as_str().unwrap_or("").to_string(),
            index,
        ))
    }

    /// Sets the balance from inside the database pod (the bank's own books).
    pub fn set_balance(&self, balance: &str) -> Result<()> {
        put_local(&self.database, balance)
    }

    /// Krites' `DENY` lines in the database sidecar's log that name `ip`, waiting up to
    /// `timeout` for at least `at_least` (Envoy flushes its log every 50 ms).
    pub fn denials_of(&self, ip: Ipv4Addr, at_least: usize, timeout: Duration) -> Vec<String> {
        let ip = ip.to_string();
        let deadline = Instant::now() + timeout;
        loop {
            let found: Vec<String> = self
                .database
                .envoy_log()
                .lines()
                .filter(|l| l.contains("DENY") && l.contains(&ip))
                .map(str::to_string)
                .collect();
            if found.len() >= at_least || Instant::now() > deadline {
                return found;
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// A counter or gauge of a sidecar (0 when absent or unreadable).
    pub fn stat(p: &MeshPod, key: &str) -> u64 {
        p.stats()
            .ok()
            .and_then(|s| s.get(key).copied())
            .unwrap_or(0)
    }
}

/// The etcd v2 write the tutorial's attacker makes, as raw HTTP/1.1.
pub fn put_request(key: &str, value: &str) -> String {
    let body = format!("value={value}");
    format!(
        "PUT {key} HTTP/1.1\r\nHost: database\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// PUT the balance on the database pod's loopback (not intercepted, no sidecar involved).
fn put_local(db: &MeshPod, balance: &str) -> Result<()> {
    let url = format!("http://127.0.0.1:{ETCD_HTTP}{BALANCE_KEY}");
    let value = format!("value={balance}");
    let out = db.pod().exec(
        &[
            "curl",
            "-sS",
            "--max-time",
            "2",
            "-X",
            "PUT",
            &url,
            "-d",
            &value,
        ],
        None,
        Duration::from_secs(5),
    )?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(balance),
        "etcd did not take the balance: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// etcd in the database pod: client URLs on 2379 and 12379 (all addresses of the pod), peer
/// on its loopback; seeded with `balance`.
fn start_etcd(db: &MeshPod, balance: &str) -> Result<ChildGuard> {
    let data = db.dir().join("etcd-data");
    let peer = format!("http://127.0.0.1:{ETCD_PEER}");
    let mut cmd = db.pod().command(crate::etcd::etcd_binary()?);
    cmd.args(["--name", "database"])
        .arg("--data-dir")
        .arg(&data)
        .arg("--enable-v2=true")
        .arg("--listen-client-urls")
        .arg(format!(
            "http://0.0.0.0:{ETCD_HTTP},http://0.0.0.0:{ETCD_TCP}"
        ))
        .arg("--advertise-client-urls")
        .arg(format!("http://{}:{ETCD_HTTP}", db.ip()))
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .arg("--initial-cluster")
        .arg(format!("database={peer}"))
        .args(["--initial-cluster-state", "new"])
        .args(["--logger", "zap", "--log-outputs", "stderr"]);
    let log = db.dir().join("etcd.log");
    let guard = db.pod().spawn("etcd", cmd, &log)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match put_local(db, balance) {
            Ok(()) => return Ok(guard),
            Err(e) if Instant::now() > deadline => {
                bail!(
                    "etcd in the database pod did not start ({e:#}):\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                )
            }
            Err(_) => sleep(Duration::from_millis(200)),
        }
    }
}

/// A YAO Bank service (`<binary> service <kind>`) in its pod, listening on all of the pod's
/// addresses, its upstream a plain URL its sidecar intercepts.
fn start_service(
    p: &MeshPod,
    binary: &Path,
    kind: &str,
    upstream_flag: &str,
    upstream: &str,
) -> Result<ChildGuard> {
    let mut cmd = p.pod().command(binary);
    cmd.args([
        "service",
        kind,
        "--listen",
        &format!("0.0.0.0:{APP_PORT}"),
        upstream_flag,
        upstream,
    ]);
    let log = p.dir().join("app.log");
    let guard = p.pod().spawn(kind, cmd, &log)?;
    // Any answer from the pod's loopback (not intercepted) means it listens.
    let url = format!("http://127.0.0.1:{APP_PORT}/ready");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = p.pod().exec(
            &[
                "curl",
                "-s",
                "--max-time",
                "1",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &url,
            ],
            None,
            Duration::from_secs(5),
        )?;
        if String::from_utf8_lossy(&out.stdout).trim() == "404" {
            return Ok(guard);
        }
        if Instant::now() > deadline {
            bail!(
                "the {kind} service did not start:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        sleep(Duration::from_millis(100));
    }
}
