//! Pods as Linux network namespaces: one bridge per test, and per pod a namespace with a veth
//! into the bridge, an address in a private /24 and `lo` up.
//!
//! Nothing here can send traffic off the machine: the bridge has no address in the host and
//! is enslaved to nothing, the pods have only their connected /24 (no default route, no
//! gateway), and no host route, rule or sysctl is changed. The bridge is created with
//! `nf_call_iptables 0` (a setting of this bridge only), so a host that loads `br_netfilter`
//! with a `FORWARD` policy of `DROP` (Docker's) does not filter traffic between the pods.
//!
//! Teardown: [`Pod`]'s `Drop` kills what still runs in its namespace and deletes it (which
//! deletes its veth pair); [`Network`]'s `Drop` deletes the bridge. Unwinding from a panic runs
//! both. A watchdog `sh` per network deletes the namespaces and the bridge if this process dies
//! without unwinding (SIGKILL, `panic = "abort"`).
//!
//! Names are unique per process and per network: namespaces `kr<pid>n<net>-<pod>`, bridge
//! `kr<pid>b<net>`, host veth ends `kr<pid>n<net>v<pod#>` (interface names have 15 bytes;
//! `<net>` is one digit, so at most 10 networks may live at once in one process).

use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::ChildGuard;

/// Why this machine cannot run the namespace mesh, if it cannot: not root, no `ip netns`,
/// or a tool the mesh uses is missing. Tests skip on `Err` (and fail in CI).
pub fn preflight() -> std::result::Result<(), String> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("reading /proc/self/status: {e}"))?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        .unwrap_or("?");
    if euid != "0" {
        return Err(format!(
            "the namespace mesh needs root (effective uid is {euid})"
        ));
    }
    match Command::new("ip")
        .args(["netns", "list"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
    {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            return Err(format!(
                "`ip netns list` failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
        Err(e) => return Err(format!("no `ip` command (Debian package iproute2): {e}")),
    }
    // Debian packages: iptables, util-linux (setpriv), python3, openssl, curl.
    for (tool, package) in [
        ("iptables-restore", "iptables"),
        ("setpriv", "util-linux"),
        ("python3", "python3"),
        ("openssl", "openssl"),
        ("curl", "curl"),
    ] {
        if which(tool).is_none() {
            return Err(format!("no `{tool}` on PATH (Debian package {package})"));
        }
    }
    Ok(())
}

/// `tool` on PATH (or under /usr/sbin, /sbin, where root's tools live).
pub fn which(tool: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .map(Into::into),
        )
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Run a host command (`ip ...`), failing with its stderr.
fn run(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!(
            "{args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn run_quiet(args: &[&str]) {
    let _ = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A bridge and a private /24 for the pods of one test.
pub struct Network {
    bridge: String,
    /// `kr<pid>n<net>-`: every namespace of this network starts with it.
    prefix: String,
    /// The veth prefix `kr<pid>n<net>v`.
    veth_prefix: String,
    /// `10.a.b`: the /24 of this network.
    subnet: [u8; 3],
    next: AtomicU32,
    watchdog: Mutex<Option<Child>>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("bridge", &self.bridge)
            .field("subnet", &self.subnet)
            .finish_non_exhaustive()
    }
}

impl Network {
    /// A new bridge with a /24 derived from this process's pid and a per-process counter, so
    /// parallel tests and concurrent runs get different names and (almost always) subnets.
    /// (The addresses exist only inside the namespaces, so even a collision stays harmless.)
    pub fn new() -> Result<Network> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(sweep_dead_runs);
        // One digit: `kr<7-digit pid>n<n>v<3-digit pod>` is 15 bytes, the limit for a link.
        let n = NEXT.fetch_add(1, Ordering::SeqCst) % 10;
        let pid = std::process::id();
        let seq = pid.wrapping_mul(7).wrapping_add(n);
        let subnet = [10, 100 + ((seq >> 8) % 150) as u8, (seq % 256) as u8];
        let bridge = format!("kr{pid}b{n}");
        let net = Network {
            prefix: format!("kr{pid}n{n}-"),
            veth_prefix: format!("kr{pid}n{n}v"),
            bridge,
            subnet,
            next: AtomicU32::new(0),
            watchdog: Mutex::new(None),
        };
        // The watchdog first: if creating the bridge half-fails, it still cleans up.
        *net.watchdog.lock().unwrap_or_else(|e| e.into_inner()) = net.spawn_watchdog();
        let created = run(&[
            "ip",
            "link",
            "add",
            &net.bridge,
            "type",
            "bridge",
            "nf_call_iptables",
            "0",
            "nf_call_ip6tables",
            "0",
            "nf_call_arptables",
            "0",
        ]);
        if created.is_err() {
            // Older iproute2/kernels lack the per-bridge netfilter switches.
            run(&["ip", "link", "add", &net.bridge, "type", "bridge"])?;
        }
        // No IPv6 link-local chatter from the host's end of the bridge.
        run_quiet(&[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{}.disable_ipv6=1", net.bridge),
        ]);
        run(&["ip", "link", "set", &net.bridge, "up"])?;
        Ok(net)
    }

    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The network's /24, e.g. `10.123.45.0/24`.
    pub fn cidr(&self) -> String {
        let [a, b, c] = self.subnet;
        format!("{a}.{b}.{c}.0/24")
    }

    /// A new pod: namespace, veth into the bridge (`eth0` inside), the next address, `lo` up.
    /// `name` must be short and `[a-z0-9-]`.
    pub fn add_pod(&self, name: &str) -> Result<Pod> {
        if name.is_empty()
            || name.len() > 40
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            bail!("pod name {name:?} must match [a-z0-9-]{{1,40}}");
        }
        let k = self.next.fetch_add(1, Ordering::SeqCst);
        if k > 200 {
            bail!("too many pods on one network");
        }
        let [a, b, c] = self.subnet;
        let ip = Ipv4Addr::new(a, b, c, (k + 2) as u8);
        let pod = Pod {
            name: name.to_string(),
            netns: format!("{}{name}", self.prefix),
            veth: format!("{}{k}", self.veth_prefix),
            ip,
        };
        // `pod` owns the namespace from here on: an error below still deletes it on drop.
        run(&["ip", "netns", "add", &pod.netns])?;
        run(&[
            "ip", "link", "add", &pod.veth, "type", "veth", "peer", "name", "eth0", "netns",
            &pod.netns,
        ])?;
        run_quiet(&[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{}.disable_ipv6=1", pod.veth),
        ]);
        run(&["ip", "link", "set", &pod.veth, "master", &self.bridge, "up"])?;
        let ns = pod.netns.as_str();
        run_quiet(&[
            "ip",
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
        ]);
        run(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ])?;
        run(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
        run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        Ok(pod)
    }

    /// `sh` that, once this process is gone, deletes every namespace of this network and the
    /// bridge. Its own process group, so `Drop` can end it with its `sleep`.
    fn spawn_watchdog(&self) -> Option<Child> {
        use std::os::unix::process::CommandExt;
        Command::new("sh")
            .arg("-c")
            .arg(
                "while kill -0 \"$1\" 2>/dev/null; do sleep 1; done; \
                 for ns in $(ip netns list | awk '{print $1}'); do \
                   case \"$ns\" in \"$2\"*) ip netns pids \"$ns\" | xargs -r kill -9; ip netns del \"$ns\";; esac; \
                 done; \
                 for l in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1); do \
                   case \"$l\" in \"$4\"*) ip link del \"$l\";; esac; \
                 done; ip link del \"$3\" 2>/dev/null",
            )
            .arg("krites-mesh-watchdog")
            .arg(std::process::id().to_string())
            .arg(&self.prefix)
            .arg(&self.bridge)
            .arg(&self.veth_prefix)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .ok()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Pods normally went first (they borrow nothing, so a test may keep one longer):
        // delete any left with this network's prefix, then the bridge.
        if let Ok(o) = Command::new("ip").args(["netns", "list"]).output() {
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                if let Some(ns) = line
                    .split_whitespace()
                    .next()
                    .filter(|ns| ns.starts_with(&self.prefix))
                {
                    kill_all_in(ns);
                    run_quiet(&["ip", "netns", "del", ns]);
                }
            }
        }
        // Host veth ends whose namespace the kernel has not freed yet.
        if let Ok(o) = Command::new("ip").args(["-o", "link", "show"]).output() {
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                let name = line
                    .split(": ")
                    .nth(1)
                    .and_then(|n| n.split('@').next())
                    .unwrap_or("");
                if name.starts_with(&self.veth_prefix) {
                    run_quiet(&["ip", "link", "del", name]);
                }
            }
        }
        run_quiet(&["ip", "link", "del", &self.bridge]);
        if let Some(mut w) = self
            .watchdog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", w.id())])
                .stderr(Stdio::null())
                .status();
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// SIGKILL every process in namespace `ns` (all of them were started by this rig).
/// The pid in a name this harness gives (`kr<pid>n…` or `kr<pid>b…`).
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("kr")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let after = rest.get(digits.len()..)?;
    (after.starts_with('n') || after.starts_with('b')).then(|| digits.parse().ok()).flatten()
}

/// Removes namespaces, veths and bridges a run left behind when it was
/// killed with its watchdog (a session or CI job ending): names this harness
/// gives, whose process no longer exists. Nothing else is touched.
fn sweep_dead_runs() {
    let dead = |name: &str| owner_pid(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
    if let Ok(o) = Command::new("ip").args(["netns", "list"]).output() {
        for ns in String::from_utf8_lossy(&o.stdout).lines().filter_map(|l| l.split_whitespace().next()) {
            if dead(ns) {
                kill_all_in(ns);
                run_quiet(&["ip", "netns", "del", ns]);
            }
        }
    }
    if let Ok(o) = Command::new("ip").args(["-o", "link", "show"]).output() {
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            let Some(link) = line.split(": ").nth(1).and_then(|l| l.split('@').next()) else { continue };
            if dead(link) {
                run_quiet(&["ip", "link", "del", link]);
            }
        }
    }
}

fn kill_all_in(ns: &str) {
    if let Ok(o) = Command::new("ip")
        .args(["netns", "pids", ns])
        .stderr(Stdio::null())
        .output()
    {
        for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
            if pid.parse::<u32>().is_ok() {
                run_quiet(&["kill", "-KILL", pid]);
            }
        }
    }
}

/// One pod: a network namespace with one address.
#[derive(Debug)]
pub struct Pod {
    name: String,
    netns: String,
    veth: String,
    ip: Ipv4Addr,
}

impl Pod {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn netns(&self) -> &str {
        &self.netns
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// A command that runs `program` inside the pod (`ip netns exec <ns> <program>`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns]).arg(program);
        cmd
    }

    /// The same, as uid/gid `uid` with no supplementary groups (how a sidecar runs as 1337).
    pub fn command_as(&self, uid: u32, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = self.command("setpriv");
        cmd.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .arg("--")
            .arg(program);
        cmd
    }

    /// Run `args` inside the pod to completion, killed after `timeout`; stdin gets `input`.
    pub fn exec(&self, args: &[&str], input: Option<&[u8]>, timeout: Duration) -> Result<Output> {
        let mut cmd = self.command("timeout");
        cmd.arg("-s")
            .arg("KILL")
            .arg(format!("{}", timeout.as_secs_f64()))
            .args(args);
        run_with_input(&mut cmd, input).with_context(|| format!("in pod {}: {args:?}", self.name))
    }

    /// `exec` that must succeed; returns stdout.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let out = self.exec(args, None, Duration::from_secs(30))?;
        if !out.status.success() {
            bail!(
                "in pod {}: {args:?} failed ({}): {}{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Start a long-running process inside the pod, its stdout and stderr appended to `log`.
    /// The guard stops it; the pod's `Drop` kills whatever is left in the namespace anyway.
    pub fn spawn(&self, name: &str, mut cmd: Command, log: &Path) -> Result<ChildGuard> {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        ChildGuard::spawn(&format!("{name} in pod {}", self.name), &mut cmd)
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        kill_all_in(&self.netns);
        run_quiet(&["ip", "netns", "del", &self.netns]);
        // Deleting the namespace deletes eth0 and so its peer; this is for a half-made pod.
        run_quiet(&["ip", "link", "del", &self.veth]);
    }
}

/// Run `cmd` with `input` on stdin (or none), collecting its output.
pub(crate) fn run_with_input(cmd: &mut Command, input: Option<&[u8]>) -> Result<Output> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawning {:?}", cmd.get_program()))?;
    if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
        // A client that exits early closes its stdin: not an error here.
        let _ = stdin.write_all(bytes);
    }
    Ok(child.wait_with_output()?)
}

#[cfg(test)]
mod sweep_tests {
    use super::owner_pid;

    #[test]
    fn only_the_harness_names_carry_a_pid() {
        assert_eq!(owner_pid("kr11594n0-summary"), Some(11594));
        assert_eq!(owner_pid("kr11594n0v3"), Some(11594));
        assert_eq!(owner_pid("kr11594b0"), Some(11594));
        assert_eq!(owner_pid("kr11594x0"), None);
        assert_eq!(owner_pid("krites-demo"), None);
        assert_eq!(owner_pid("eth0"), None);
        assert_eq!(owner_pid("kr"), None);
    }
}
