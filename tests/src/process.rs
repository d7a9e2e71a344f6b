//! Child processes the rig starts (Envoys, etcd, the demo's services), and the guarantee that
//! they go away with it.
//!
//! Three layers, each covering what the previous cannot:
//! - `Drop`: SIGTERM, a grace period, then SIGKILL, and the child is reaped (normal exit,
//!   early error, panic with unwinding);
//! - [`terminate_all`]: SIGTERM to every live child, for a signal handler (the handler thread
//!   cannot run the owners' `Drop`s, but it can make every wait they are in end now);
//! - a watchdog `sh` per child that SIGKILLs it once this process is gone (SIGKILL,
//!   `panic = "abort"`, a `static` fixture that never drops).

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Pids of children spawned and not yet reaped. A pid leaves the set under this lock before
/// (or as) it is reaped, so [`terminate_all`] never signals a pid the kernel may have reused.
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn live() -> MutexGuard<'static, Vec<u32>> {
    LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running child process. Dropping it stops it (SIGTERM, then SIGKILL after `grace`).
pub struct ChildGuard {
    name: String,
    child: Child,
    watchdog: Option<Child>,
    grace: Duration,
    reaped: Option<ExitStatus>,
}

impl std::fmt::Debug for ChildGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildGuard")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

impl ChildGuard {
    /// Spawn `cmd` (stdio as the caller set it up) under a guard named `name`.
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<ChildGuard> {
        let mut registry = live();
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {name} ({:?})", cmd.get_program()))?;
        registry.push(child.id());
        drop(registry);
        let watchdog = spawn_watchdog(child.id());
        Ok(ChildGuard {
            name: name.to_string(),
            child,
            watchdog,
            grace: Duration::from_secs(3),
            reaped: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the child has exited (it is reaped then).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if let Some(status) = self.reaped {
            return Ok(Some(status));
        }
        let mut registry = live();
        let status = self
            .child
            .try_wait()
            .with_context(|| format!("polling {}", self.name))?;
        if let Some(status) = status {
            registry.retain(|&p| p != self.child.id());
            self.reaped = Some(status);
        }
        Ok(status)
    }

    /// Whether the child still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // The watchdog first, so it cannot outlive the child and shoot a recycled pid. It is
        // its own process group (`sh` and its `sleep`): kill the group, or the `sleep` lingers.
        if let Some(mut w) = self.watchdog.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", w.id())])
                .stderr(Stdio::null())
                .status();
            let _ = w.kill();
            let _ = w.wait();
        }
        let pid = self.child.id();
        live().retain(|&p| p != pid);
        if self.reaped.is_some() {
            return;
        }
        // SIGTERM lets Envoy flush its logs and etcd close its store; SIGKILL if they dawdle.
        // The child is not reaped yet, so the pid is still ours (at worst a zombie).
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGTERM every child a guard owns and has not reaped. For signal handlers: the owners'
/// `Drop`s still run later (and reap), this only makes sure nothing waits for a live child.
/// Returns how many were signalled.
pub fn terminate_all() -> usize {
    let registry = live();
    if registry.is_empty() {
        return 0;
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .args(registry.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status();
    registry.len()
}

/// How many children are running under guards.
pub fn live_children() -> usize {
    live().len()
}

/// Kills `pid` if this process dies without running `Drop`. Best effort: without `sh` we
/// just lose that guarantee.
fn spawn_watchdog(pid: u32) -> Option<Child> {
    use std::os::unix::process::CommandExt;
    Command::new("sh")
        .arg("-c")
        .arg(
            "while kill -0 \"$1\" 2>/dev/null && kill -0 \"$2\" 2>/dev/null; do sleep 0.5; done; \
             kill -9 \"$2\" 2>/dev/null",
        )
        .arg("krites-watchdog")
        .arg(std::process::id().to_string())
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own group, so that `Drop` can end it with its `sleep`, and a terminal's Ctrl-C
        // (sent to the foreground group) leaves it to do its job.
        .process_group(0)
        .spawn()
        .ok()
}

/// A port the kernel considers free on `ip` right now (released before returning, so a
/// caller can lose it to someone else: retry on "address in use").
/// IPv6 works too; `::` (unspecified) gives a port free on every address, IPv4 included.
pub fn free_port(ip: impl Into<IpAddr>) -> Result<u16> {
    let ip = ip.into();
    let l = TcpListener::bind((ip, 0)).with_context(|| format!("binding {ip} port 0"))?;
    Ok(l.local_addr()?.port())
}

/// `n` distinct ports free on `ip` right now: all are held while the next is picked, so the
/// kernel cannot hand the same port out twice (two listeners of one Envoy on one port).
pub fn free_ports(ip: impl Into<IpAddr>, n: usize) -> Result<Vec<u16>> {
    let ip = ip.into();
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind((ip, 0)).with_context(|| format!("binding {ip} port 0")))
        .collect::<Result<_>>()?;
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// `preferred` if it is free on `ip`, else any free port.
pub fn port_or_free(ip: Ipv4Addr, preferred: u16) -> Result<u16> {
    if TcpListener::bind((ip, preferred)).is_ok() {
        return Ok(preferred);
    }
    free_port(ip)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    // One test: `terminate_all` signals every guard in the process, so it must not run next
    // to another test's children.
    #[test]
    fn guards_stop_their_children_on_drop_and_on_terminate_all() {
        let mut g = ChildGuard::spawn("sleeper", Command::new("sleep").arg("30")).unwrap();
        let pid = g.pid();
        assert!(g.is_running());
        assert!(live().contains(&pid));
        drop(g);
        assert!(!live().contains(&pid));
        // Reaped: no /proc entry, not even a zombie.
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());

        let mut g = ChildGuard::spawn("sleeper", Command::new("sleep").arg("30")).unwrap();
        assert_eq!(terminate_all(), 1);
        let deadline = Instant::now() + Duration::from_secs(5);
        while g.is_running() && Instant::now() < deadline {
            sleep(Duration::from_millis(20));
        }
        assert!(!g.is_running());
        assert!(!live().contains(&g.pid()));
    }
}
