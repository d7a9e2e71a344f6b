//! A real etcd + kube-apiserver (`scripts/kube-up.sh`) for the end-to-end
//! tests of `control run`, and `control run` itself as a process, running as
//! the `krites-control` ServiceAccount with a TokenRequest token, so the
//! shipped ClusterRole is what the API server enforces.
//!
//! Everything started here is stopped on drop (panics included); the cluster
//! is also watched by `kube-up.sh` (`KRITES_KUBE_WATCH_PID` = this test
//! process), so a killed test run leaves nothing behind. Only 127.0.0.1.
//!
//! Binaries: `scripts/build-kube.sh` (cached). Outside CI (`CI` not `true`)
//! a test is skipped, with a message, when the cache does not hold them: a
//! test never starts the cold build (about 13 minutes). In CI it builds them
//! if needed, and a missing toolchain fails the test.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const MESH: &str = "istio-system";

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// One cluster at a time: each test starts its own (independent), but an
/// apiserver + etcd per test thread at once would swamp a small machine.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The pinned Kubernetes version (scripts/kube/go.mod).
fn kube_version() -> String {
    let gomod = std::fs::read_to_string(root().join("scripts/kube/go.mod")).unwrap();
    gomod
        .lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            let (a, b) = (w.next()?, w.next()?);
            (a == "k8s.io/kubernetes" && b.starts_with('v')).then(|| b.to_string())
        })
        .expect("k8s.io/kubernetes in scripts/kube/go.mod")
}

/// Where `build-kube.sh` keeps the binaries (same rules as the script).
fn cached_bin_dirs() -> Vec<PathBuf> {
    let v = kube_version();
    let mut dirs = Vec::new();
    if let Some(c) = std::env::var_os("KRITES_KUBE_CACHE") {
        dirs.push(PathBuf::from(c).join("bin"));
    } else {
        dirs.push(PathBuf::from(format!("/var/cache/krites/kube-{v}/bin")));
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
        if let Some(b) = base {
            dirs.push(b.join(format!("krites/kube-{v}/bin")));
        }
    }
    dirs
}

fn reports_version(bin: &Path, version: &str) -> bool {
    ["kube-apiserver", "etcd", "kubectl"].iter().all(|b| bin.join(b).is_file())
        && Command::new(bin.join("kube-apiserver"))
            .arg("--version")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == format!("Kubernetes {version}"))
}

/// The directory holding kube-apiserver, etcd and kubectl, or `None` (the
/// caller skips) when they are not cached and this is not CI.
pub fn binaries() -> Option<PathBuf> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if let Some(b) = std::env::var_os("KRITES_KUBE_BIN") {
        return Some(PathBuf::from(b));
    }
    let version = kube_version();
    if !ci && !cached_bin_dirs().iter().any(|d| reports_version(d, &version)) {
        eprintln!(
            "SKIPPED: no cached kube-apiserver/etcd/kubectl {version} (looked in {:?}); run scripts/build-kube.sh \
             (about 13 minutes cold) or set CI=true to build them from the test",
            cached_bin_dirs()
        );
        return None;
    }
    let out = Command::new(root().join("scripts/build-kube.sh")).stderr(Stdio::inherit()).output().expect("running scripts/build-kube.sh");
    assert!(out.status.success(), "scripts/build-kube.sh failed ({})", out.status);
    let bin = String::from_utf8(out.stdout).unwrap().trim().to_string();
    Some(PathBuf::from(bin))
}

/// `kube-up.sh` prints `KEY=value` with bash's `%q` quoting.
fn unquote(v: &str) -> String {
    if let Some(inner) = v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
        return inner.to_string();
    }
    let mut out = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.extend(chars.next());
        } else {
            out.push(c);
        }
    }
    out
}

/// A running etcd + kube-apiserver; taken down on drop.
pub struct Kube {
    pub env: BTreeMap<String, String>,
    pub dir: PathBuf,
    pub server: String,
    pub ca: PathBuf,
    pub kubectl: PathBuf,
    pub kubeconfig: PathBuf,
    /// Scratch space of the test (kubeconfigs, dumps, control's logs); kept
    /// until drop.
    pub work: tempfile::TempDir,
    pub started_in: Duration,
}

impl Drop for Kube {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/kube-down.sh")).arg(&self.dir).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// Which Calico CRDs a cluster gets (both kinds of policy CRDs and Tier).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalicoForm {
    /// `projectcalico.org/v3`: `istio-manifests/calico-crds/` (kustomization).
    V3,
    /// `crd.projectcalico.org/v1`: the Tier CRD of `calico-crds/` and the
    /// policy CRDs of `control/tests/fixtures/calico-crd-v1/`.
    Crd,
}

impl Kube {
    /// Starts a cluster, or `None` when the test is skipped.
    pub fn up() -> Option<Kube> {
        let bin = binaries()?;
        let t = Instant::now();
        let work = tempfile::Builder::new().prefix("krites-e2e.").tempdir().unwrap();
        let out = Command::new(root().join("scripts/kube-up.sh"))
            .env("KRITES_KUBE_BIN", &bin)
            .env("KRITES_KUBE_WATCH_PID", std::process::id().to_string())
            .env("KRITES_KUBE_TMP", work.path())
            .stderr(Stdio::inherit())
            .output()
            .expect("running scripts/kube-up.sh");
        assert!(out.status.success(), "scripts/kube-up.sh failed ({})", out.status);
        let env: BTreeMap<String, String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), unquote(v))))
            .collect();
        let get = |k: &str| env.get(k).cloned().unwrap_or_else(|| panic!("kube-up.sh did not print {k}"));
        let kube = Kube {
            dir: PathBuf::from(get("KRITES_KUBE_DIR")),
            server: get("KRITES_KUBE_SERVER"),
            ca: PathBuf::from(get("KRITES_KUBE_CA")),
            kubectl: PathBuf::from(get("KRITES_KUBECTL")),
            kubeconfig: PathBuf::from(get("KUBECONFIG")),
            env,
            work,
            started_in: t.elapsed(),
        };
        assert!(kube.server.starts_with("https://127.0.0.1:"), "{}", kube.server);
        Some(kube)
    }

    fn command(&self, args: &[&str]) -> Command {
        self.command_timeout("20s", args)
    }

    /// kubectl with its `--request-timeout` (`0`: none, for a long watch).
    fn command_timeout(&self, timeout: &str, args: &[&str]) -> Command {
        let mut c = Command::new(&self.kubectl);
        c.arg("--kubeconfig").arg(&self.kubeconfig).arg(format!("--request-timeout={timeout}")).args(args);
        c.env_remove("KUBERNETES_SERVICE_HOST");
        c
    }

    /// kubectl as the admin; `Err(stderr)` on failure.
    pub fn try_kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        let mut c = self.command(args);
        c.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().expect("running kubectl");
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!("kubectl {args:?}: {}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout)))
        }
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        self.try_kubectl(args, None).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn kubectl_in(&self, args: &[&str], stdin: &str) -> String {
        self.try_kubectl(args, Some(stdin)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `kubectl apply` of JSON objects (a List).
    pub fn apply(&self, objects: &[Value]) -> String {
        let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
        self.kubectl_in(&["apply", "-f", "-"], &list.to_string())
    }

    pub fn get_json(&self, args: &[&str]) -> Option<Value> {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        self.try_kubectl(&a, None).ok().map(|s| serde_json::from_str(&s).unwrap())
    }

    pub fn plugin(&self, name: &str) -> Option<Value> {
        self.get_json(&["wasmplugins.extensions.istio.io", name, "-n", MESH])
    }

    /// The CRDs (Istio's WasmPlugin, Calico's in `form`), the namespaces,
    /// control's ServiceAccount and the shipped RBAC.
    pub fn install(&self, form: CalicoForm) {
        let r = root();
        let p = |s: &str| r.join(s).to_string_lossy().into_owned();
        self.kubectl(&["apply", "-f", &p("istio-manifests/istio-crds/")]);
        match form {
            CalicoForm::V3 => {
                self.kubectl(&["apply", "-k", &p("istio-manifests/calico-crds/")]);
            }
            CalicoForm::Crd => {
                self.kubectl(&["apply", "-f", &p("istio-manifests/calico-crds/crd.projectcalico.org_tiers.yaml")]);
                self.kubectl(&["apply", "-f", &p("control/tests/fixtures/calico-crd-v1/")]);
            }
        }
        self.kubectl(&["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"]);
        self.kubectl(&["create", "namespace", MESH]);
        self.kubectl(&["create", "namespace", "krites-system"]);
        self.kubectl(&["apply", "-f", &p("istio-manifests/control/serviceaccount.yaml"), "-f", &p("istio-manifests/control/rbac.yaml")]);
        // No controller-manager: namespaces get no `default` ServiceAccount.
        self.kubectl(&["create", "serviceaccount", "default", "-n", "default"]);
        // Discovery must list the new resources before control asks.
        let want = match form {
            CalicoForm::V3 => "projectcalico.org/v3",
            CalicoForm::Crd => "crd.projectcalico.org/v1",
        };
        eventually(30, "discovery serves the CRDs", || {
            self.try_kubectl(&["api-resources", "--api-group", want.split('/').next().unwrap(), "-o", "name"], None)
                .is_ok_and(|s| s.lines().count() >= 3)
                && self.try_kubectl(&["api-resources", "--api-group", "extensions.istio.io", "-o", "name"], None).is_ok_and(|s| s.contains("wasmplugins"))
        });
    }

    /// The YAO Bank objects: ServiceAccounts and Pods of
    /// `tests/fixtures/yaobank/cluster.yaml` (each pod's status written
    /// through the status subresource, as a kubelet would), and the policies
    /// of `tests/fixtures/yaobank/policy.yaml` in `form`.
    pub fn yaobank(&self, form: CalicoForm) {
        let cluster = load_yaml(&root().join("tests/fixtures/yaobank/cluster.yaml"));
        let mut objects = Vec::new();
        let mut statuses = Vec::new();
        for mut o in cluster {
            match o["kind"].as_str().unwrap() {
                "Namespace" => continue, // `default` is there
                "ServiceAccount" if o["metadata"]["name"] == "default" => continue,
                _ => {}
            }
            if let Some(m) = o["metadata"].as_object_mut() {
                m.remove("uid");
            }
            if let Some(st) = o.as_object_mut().unwrap().remove("status") {
                statuses.push((o["metadata"]["namespace"].as_str().unwrap().to_string(), o["metadata"]["name"].as_str().unwrap().to_string(), st));
            }
            objects.push(o);
        }
        self.apply(&objects);
        for (ns, name, st) in statuses {
            self.pod_status(&ns, &name, &st);
        }
        self.apply(&policies(form));
    }

    pub fn pod_status(&self, ns: &str, name: &str, status: &Value) {
        let patch = json!({"status": status}).to_string();
        self.kubectl(&["patch", "pod", name, "-n", ns, "--subresource=status", "--type=merge", "-p", &patch]);
    }

    /// A TokenRequest token for `krites-control` and a kubeconfig with it.
    pub fn control_kubeconfig(&self) -> PathBuf {
        let path = self.work.path().join("control.kubeconfig");
        if path.exists() {
            return path;
        }
        let token = self.kubectl(&["create", "token", "krites-control", "-n", "krites-system", "--duration=1h"]);
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: krites\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
             users:\n- name: krites-control\n  user:\n    token: {}\ncontexts:\n- name: krites\n  context:\n    cluster: krites\n    \
             user: krites-control\n    namespace: krites-system\ncurrent-context: krites\n",
            self.server,
            self.ca.display(),
            token.trim()
        );
        std::fs::write(&path, text).unwrap();
        // The token is what the apiserver says it is.
        let who = Command::new(&self.kubectl).arg("--kubeconfig").arg(&path).args(["auth", "whoami", "-o", "json"]).output().unwrap();
        let who: Value = serde_json::from_slice(&who.stdout).unwrap_or(Value::Null);
        assert_eq!(who.pointer("/status/userInfo/username"), Some(&json!("system:serviceaccount:krites-system:krites-control")), "{who}");
        path
    }

    /// `scripts/kube-up.sh stop|start apiserver|etcd DIR`.
    pub fn component(&self, action: &str, which: &str) {
        let st = Command::new(root().join("scripts/kube-up.sh"))
            .args([action, which])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .unwrap();
        assert!(st.success(), "kube-up.sh {action} {which}");
    }

    /// SIGSTOP (`pause = true`) or SIGCONT a component (`etcd`, `apiserver`).
    pub fn signal(&self, which: &str, pause: bool) {
        let pid = std::fs::read_to_string(self.dir.join(format!("{which}.pid"))).unwrap();
        let st = Command::new("kill").arg(if pause { "-STOP" } else { "-CONT" }).arg(pid.trim()).status().unwrap();
        assert!(st.success(), "kill {which}");
    }

    /// The leader-election Lease's holder (`krites-system/krites-control`).
    pub fn lease_holder(&self) -> Option<String> {
        let l = self.get_json(&["leases.coordination.k8s.io", "krites-control", "-n", "krites-system"])?;
        l["spec"]["holderIdentity"].as_str().map(str::to_string)
    }

    /// Events (events.k8s.io/v1) of every namespace.
    pub fn events(&self) -> Vec<Value> {
        let v = self.get_json(&["events.v1.events.k8s.io", "-A"]).unwrap();
        v["items"].as_array().cloned().unwrap_or_default()
    }

    /// Dumps what the cluster holds as the README says, and runs
    /// `control compile -f <dump>`: (the config, its revision).
    pub fn compile_dump(&self, form: CalicoForm) -> (Value, String) {
        let calico = match form {
            CalicoForm::V3 => "globalnetworkpolicies.projectcalico.org,networkpolicies.projectcalico.org,tiers.projectcalico.org,\
                stagedglobalnetworkpolicies.projectcalico.org,stagednetworkpolicies.projectcalico.org,stagedkubernetesnetworkpolicies.projectcalico.org",
            CalicoForm::Crd => "globalnetworkpolicies.crd.projectcalico.org,networkpolicies.crd.projectcalico.org,tiers.crd.projectcalico.org,\
                stagedglobalnetworkpolicies.crd.projectcalico.org,stagednetworkpolicies.crd.projectcalico.org,stagedkubernetesnetworkpolicies.crd.projectcalico.org",
        };
        let dir = self.work.path().join("dump");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("policies.yaml"), self.kubectl(&["get", calico, "-A", "-o", "yaml"])).unwrap();
        std::fs::write(dir.join("cluster.yaml"), self.kubectl(&["get", "networkpolicies.networking.k8s.io,namespaces,serviceaccounts,pods,services,endpointslices.discovery.k8s.io", "-A", "-o", "yaml"]))
            .unwrap();
        let out = Command::new(control_binary())
            .args(["compile", "-f"])
            .arg(dir.join("policies.yaml"))
            .arg("-f")
            .arg(dir.join("cluster.yaml"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "control compile: {stderr}");
        let revision = stderr.split("revision ").nth(1).map(|s| s.trim().to_string()).expect("a revision on stderr");
        (plain(&serde_json::from_slice(&out.stdout).unwrap()), revision)
    }
}

/// Multi-document YAML (lists flattened) as JSON values.
pub fn load_yaml(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        match v["kind"].as_str() {
            Some("List") => out.extend(v["items"].as_array().cloned().unwrap_or_default()),
            Some(_) => out.push(v),
            None => {}
        }
    }
    out
}

/// The tutorial's policies in `form` (`crd.projectcalico.org/v1` stores
/// default-tier policies as `default.<name>`).
pub fn policies(form: CalicoForm) -> Vec<Value> {
    load_yaml(&root().join("tests/fixtures/yaobank/policy.yaml")).into_iter().map(|v| in_form(v, form)).collect()
}

/// A `projectcalico.org/v3` object in `form`.
pub fn in_form(mut v: Value, form: CalicoForm) -> Value {
    if form == CalicoForm::Crd && v["apiVersion"] == "projectcalico.org/v3" {
        v["apiVersion"] = json!("crd.projectcalico.org/v1");
        let name = v["metadata"]["name"].as_str().unwrap().to_string();
        if v["kind"] != "Tier" && !name.starts_with("default.") {
            v["metadata"]["name"] = json!(format!("default.{name}"));
        }
    }
    v
}

/// A delivered `pluginConfig` (plain or compressed) as plain JSON, read as
/// the filter reads it.
pub fn plain(config: &Value) -> Value {
    let read = krites_policy::PluginConfig::from_json(&serde_json::to_vec(config).unwrap()).unwrap();
    serde_json::to_value(&read).unwrap()
}

pub fn policy_names(config: &Value) -> Vec<String> {
    plain(config)["policies"].as_array().map(|a| a.iter().map(|p| p["name"].as_str().unwrap().to_string()).collect()).unwrap_or_default()
}

/// Polls `f` every 25 ms for up to `secs` seconds; returns how long it took.
pub fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(secs), "timed out after {secs}s waiting for: {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
    t.elapsed()
}

/// A free port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET path` on 127.0.0.1:port: (status, body); `None` when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_string());
    Some((code, body))
}

/// The `control` binary: Cargo's own for control's tests; for another crate's tests (which
/// include this file by `#[path]`), `control` next to the test binary's `deps/` directory
/// (`cargo test --workspace` has built it), built with `cargo build -p krites-control --bin
/// control` only when it is missing or older than a source it is made of (that build
/// resolves features for control alone, so it may recompile its dependencies: minutes).
pub fn control_binary() -> PathBuf {
    if let Some(bin) = option_env!("CARGO_BIN_EXE_control") {
        return PathBuf::from(bin);
    }
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            // <target>/<profile>/deps/<test binary>
            let exe = std::env::current_exe().unwrap();
            let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
            let bin = profile_dir.join("control");
            let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
            let newest_source = ["control/src", "control/Cargo.toml", "config/src", "policy/src", "Cargo.lock"]
                .iter()
                .filter_map(|p| newest_mtime(&root().join(p)))
                .max();
            if let (Some(built), Some(source)) = (built, newest_source) {
                if built >= source {
                    return bin;
                }
            }
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let t = Instant::now();
            let mut build = Command::new(cargo);
            build.args(["build", "--quiet", "-p", "krites-control", "--bin", "control", "--manifest-path"]).arg(root().join("Cargo.toml"));
            if profile_dir.ends_with("release") {
                build.arg("--release");
            }
            let status = build
                .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap())
                .stdin(Stdio::null())
                .status();
            match status {
                Ok(s) if s.success() => eprintln!("control binary {} up to date in {:?}", bin.display(), t.elapsed()),
                other => assert!(bin.is_file(), "building control failed ({other:?}) and there is no {}", bin.display()),
            }
            bin
        })
        .clone()
}

/// The newest modification time of a file, or of any file under a directory.
fn newest_mtime(path: &Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path).ok()?.flatten().filter_map(|e| newest_mtime(&e.path())).max()
}

/// `control run` as a process, as the `krites-control` ServiceAccount.
pub struct Control {
    child: std::cell::RefCell<Child>,
    pub port: u16,
    pub log: PathBuf,
    pub started: Instant,
}

/// The `control run` debounce the tests use.
pub const DEBOUNCE: &str = "250ms";

impl Control {
    pub fn start(kube: &Kube, calico_api: &str) -> Control {
        Self::start_with(kube, calico_api, &[])
    }

    pub fn start_with(kube: &Kube, calico_api: &str, extra: &[&str]) -> Control {
        Self::start_as(kube, calico_api, "krites-control-e2e", extra)
    }

    /// A replica named `pod_name` (its POD_NAME: Events and the Lease's identity).
    pub fn start_as(kube: &Kube, calico_api: &str, pod_name: &str, extra: &[&str]) -> Control {
        let kubeconfig = kube.control_kubeconfig();
        let port = free_port();
        let n = std::fs::read_dir(kube.work.path()).unwrap().count();
        let log = kube.work.path().join(format!("control-{n}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let started = Instant::now();
        let child = Command::new(control_binary())
            .args([
                "run",
                "--module-url=oci://registry.test/krites:1",
                "--sha256=e5f07c4bc0482b4abf25eb7aa00fb3790b737754b4bb5fabbdee2539865dcaa8",
                &format!("--mesh-namespace={MESH}"),
                &format!("--calico-api={calico_api}"),
                &format!("--listen=127.0.0.1:{port}"),
                &format!("--debounce={DEBOUNCE}"),
            ])
            .args(extra)
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .env("POD_NAME", pod_name)
            .env_remove("POD_NAMESPACE")
            .env("RUST_LOG", "krites_control=debug")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("starting control run");
        Control { child: std::cell::RefCell::new(child), port, log, started }
    }

    pub fn pid(&self) -> u32 {
        self.child.borrow().id()
    }

    pub fn readyz(&self) -> Option<(u16, String)> {
        http_get(self.port, "/readyz")
    }

    pub fn ready(&self) -> bool {
        self.readyz().is_some_and(|(c, _)| c == 200)
    }

    /// Waits for `/readyz` 200; returns the time since the process started.
    pub fn wait_ready(&self, secs: u64) -> Duration {
        eventually(secs, "control ready", || {
            if let Some(st) = self.exited() {
                panic!("control exited ({st}):\n{}", self.log_text());
            }
            self.ready()
        });
        self.started.elapsed()
    }

    pub fn exited(&self) -> Option<std::process::ExitStatus> {
        self.child.borrow_mut().try_wait().ok().flatten()
    }

    /// A metric's value (the sum over its series).
    pub fn metric(&self, name: &str) -> f64 {
        let (_, page) = http_get(self.port, "/metrics").expect("/metrics");
        page.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split([' ', '{']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// (VmRSS, VmHWM) in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |k: &str| status.lines().find_map(|l| l.strip_prefix(k)?.split_whitespace().next()?.parse().ok()).unwrap_or(0);
        (field("VmRSS:"), field("VmHWM:"))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM (graceful), then SIGKILL after 5 s.
    pub fn stop(self) {
        self.terminate();
    }

    fn terminate(&self) {
        if self.exited().is_some() {
            return;
        }
        let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.hard_kill();
    }

    fn hard_kill(&self) {
        let mut c = self.child.borrow_mut();
        let _ = Command::new("kill").args(["-CONT", &c.id().to_string()]).stderr(Stdio::null()).status();
        let _ = c.kill();
        let _ = c.wait();
    }

    /// SIGKILL: a crash.
    pub fn kill(self) {
        self.hard_kill();
    }

    /// SIGSTOP / SIGCONT: a replica cut off (it cannot renew, then wakes up).
    pub fn pause(&self, pause: bool) {
        let st = Command::new("kill").arg(if pause { "-STOP" } else { "-CONT" }).arg(self.pid().to_string()).status().unwrap();
        assert!(st.success());
    }

    /// `/readyz`'s body.
    pub fn readyz_body(&self) -> String {
        self.readyz().map(|(_, b)| b).unwrap_or_default()
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!("---- control's log (last 60 lines of {}) ----", self.log.display());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        self.hard_kill();
    }
}

/// One WasmPlugin watch event, as the admin's `kubectl get -w` saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub kind: String,
    pub name: String,
    pub resource_version: String,
    pub object: Value,
}

/// A watch on the WasmPlugins of the mesh namespace (kubectl -w as admin):
/// every write anyone makes, with the time it was seen.
pub struct PluginWatch {
    child: Child,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl PluginWatch {
    pub fn start(kube: &Kube) -> PluginWatch {
        // No request timeout: the watch must outlive a failover (20 s would end it).
        let mut child = kube
            .command_timeout("0", &["get", "wasmplugins.extensions.istio.io", "-n", MESH, "-w", "--output-watch-events", "-o", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = seen.clone();
        std::thread::spawn(move || {
            for v in serde_json::Deserializer::from_reader(BufReader::new(out)).into_iter::<Value>() {
                let Ok(v) = v else { break };
                let o = &v["object"];
                sink.lock().unwrap().push(Seen {
                    at: Instant::now(),
                    kind: v["type"].as_str().unwrap_or("").to_string(),
                    name: o["metadata"]["name"].as_str().unwrap_or("").to_string(),
                    resource_version: o["metadata"]["resourceVersion"].as_str().unwrap_or("").to_string(),
                    object: o.clone(),
                });
            }
        });
        let w = PluginWatch { child, seen };
        // kubectl -w lists first: wait until that initial state is in (one event per
        // WasmPlugin there is; on a loaded machine kubectl can take seconds to list, and a
        // write made before it lists would be missed).
        let present = kube.get_json(&["wasmplugins.extensions.istio.io", "-n", MESH]).map_or(0, |v| v["items"].as_array().map_or(0, Vec::len));
        let deadline = Instant::now() + Duration::from_secs(20);
        while w.seen.lock().unwrap().len() < present && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100));
        w
    }

    pub fn mark(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Events about `name` since `mark`.
    pub fn since(&self, mark: usize, name: &str) -> Vec<Seen> {
        self.seen.lock().unwrap()[mark..].iter().filter(|s| s.name == name).cloned().collect()
    }
}

impl Drop for PluginWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The admin's own API client (the `kube` crate, on its own Tokio runtime)
/// for what `kubectl` is too slow for: thousands of objects created in
/// parallel, and single changes timed from the API server's answer rather
/// than from a kubectl process starting.
pub struct Admin {
    runtime: tokio::runtime::Runtime,
    client: ::kube::Client,
    resources: Mutex<BTreeMap<String, (::kube::discovery::ApiResource, bool)>>,
}

/// What [`Admin::create_all`] did.
#[derive(Debug, Clone, Copy)]
pub struct Created {
    pub objects: usize,
    /// Creates, status writes and retries.
    pub requests: usize,
    pub retries: usize,
    pub took: Duration,
}

/// Answers worth another try: the API server or etcd shedding load, a
/// connection dropped under it. Anything else is a bug in the test.
fn transient(e: &::kube::Error) -> bool {
    match e {
        ::kube::Error::Api(s) => matches!(s.code, 429 | 500 | 502 | 503 | 504),
        ::kube::Error::HyperError(_) | ::kube::Error::Service(_) => true,
        _ => false,
    }
}

impl Kube {
    /// The admin (system:masters, the kubeconfig `kube-up.sh` wrote) as a
    /// `kube::Client`.
    pub fn admin(&self) -> Admin {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let client = runtime.block_on(async {
            let kubeconfig = ::kube::config::Kubeconfig::read_from(&self.kubeconfig).unwrap();
            let mut config = ::kube::Config::from_custom_kubeconfig(kubeconfig, &::kube::config::KubeConfigOptions::default()).await.unwrap();
            config.read_timeout = Some(Duration::from_secs(60));
            ::kube::Client::try_from(config).unwrap()
        });
        Admin { runtime, client, resources: Mutex::new(BTreeMap::new()) }
    }
}

impl Admin {
    /// The API resource of an object's apiVersion + kind (discovery, once per
    /// kind) and whether it is namespaced.
    async fn resource(&self, object: &Value) -> (::kube::discovery::ApiResource, bool) {
        let api_version = object["apiVersion"].as_str().unwrap();
        let kind = object["kind"].as_str().unwrap();
        let key = format!("{api_version}/{kind}");
        if let Some(r) = self.resources.lock().unwrap().get(&key) {
            return r.clone();
        }
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = ::kube::api::GroupVersionKind::gvk(group, version, kind);
        let (ar, caps) = ::kube::discovery::pinned_kind(&self.client, &gvk).await.unwrap_or_else(|e| panic!("discovery of {key}: {e}"));
        let r = (ar, caps.scope == ::kube::discovery::Scope::Namespaced);
        self.resources.lock().unwrap().insert(key, r.clone());
        r
    }

    async fn api(&self, object: &Value) -> ::kube::Api<::kube::api::DynamicObject> {
        let (ar, namespaced) = self.resource(object).await;
        match object["metadata"]["namespace"].as_str() {
            Some(ns) if namespaced => ::kube::Api::namespaced_with(self.client.clone(), ns, &ar),
            _ => ::kube::Api::all_with(self.client.clone(), &ar),
        }
    }

    /// Creates one object, then writes its `status` (if it has one) through
    /// the status subresource, as a kubelet would for a pod. Transient
    /// failures are retried (a create that did land answers 409 the second
    /// time: that is success). Returns (requests, retries).
    async fn create_one(&self, object: &Value) -> Result<(usize, usize), String> {
        use ::kube::api::{Patch, PatchParams, PostParams};
        let api = self.api(object).await;
        let mut body = object.clone();
        let status = body.as_object_mut().unwrap().remove("status");
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        let dynamic: ::kube::api::DynamicObject = serde_json::from_value(body).map_err(|e| format!("{name}: {e}"))?;
        let (mut requests, mut retries) = (0, 0);
        let mut delay = Duration::from_millis(100);
        loop {
            requests += 1;
            match api.create(&PostParams::default(), &dynamic).await {
                Ok(_) => break,
                Err(::kube::Error::Api(s)) if s.code == 409 && retries > 0 => break,
                Err(e) if transient(&e) && retries < 8 => {
                    retries += 1;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(format!("create {name}: {e}")),
            }
        }
        if let Some(status) = status {
            let patch = Patch::Merge(json!({"status": status}));
            loop {
                requests += 1;
                match api.patch_status(&name, &PatchParams::default(), &patch).await {
                    Ok(_) => break,
                    Err(e) if transient(&e) && retries < 16 => {
                        retries += 1;
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                    Err(e) => return Err(format!("status of {name}: {e}")),
                }
            }
        }
        Ok((requests, retries))
    }

    /// Creates `objects` with up to `in_flight` requests at a time:
    /// Namespaces first, then ServiceAccounts and Tiers (what pods and
    /// policies refer to), then the rest.
    pub fn create_all(&self, objects: &[Value], in_flight: usize) -> Created {
        use futures::StreamExt;
        let t = Instant::now();
        let phase = |o: &Value| match o["kind"].as_str() {
            Some("Namespace") => 0,
            Some("ServiceAccount" | "Tier") => 1,
            _ => 2,
        };
        let (mut requests, mut retries) = (0, 0);
        for p in 0..3 {
            let batch: Vec<&Value> = objects.iter().filter(|o| phase(o) == p).collect();
            let results: Vec<Result<(usize, usize), String>> = self
                .runtime
                .block_on(futures::stream::iter(batch).map(|o| self.create_one(o)).buffer_unordered(in_flight.max(1)).collect());
            let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
            assert!(failed.is_empty(), "{} of {} objects not created; first: {}", failed.len(), results.len(), failed[0]);
            for (r, n) in results.into_iter().flatten() {
                requests += r;
                retries += n;
            }
        }
        Created { objects: objects.len(), requests, retries, took: t.elapsed() }
    }

    /// Creates one object (and its status); returns when the API server has answered.
    pub fn create(&self, object: &Value) {
        self.runtime.block_on(self.create_one(object)).unwrap_or_else(|e| panic!("{e}"));
    }

    /// A JSON merge patch of `object`'s (apiVersion, kind, namespace, name).
    pub fn merge_patch(&self, object: &Value, patch: &Value) {
        let name = object["metadata"]["name"].as_str().unwrap();
        self.runtime.block_on(async {
            let api = self.api(object).await;
            api.patch(name, &::kube::api::PatchParams::default(), &::kube::api::Patch::Merge(patch)).await
        })
        .unwrap_or_else(|e| panic!("patch {name}: {e}"));
    }

    /// Deletes `object` (no grace period: nothing runs it).
    pub fn delete(&self, object: &Value) {
        let name = object["metadata"]["name"].as_str().unwrap();
        self.runtime.block_on(async {
            let api = self.api(object).await;
            api.delete(name, &::kube::api::DeleteParams::default().grace_period(0)).await
        })
        .unwrap_or_else(|e| panic!("delete {name}: {e}"));
    }
}
