//! A real etcd (Debian's `etcd-server`), the YAO Bank database, with its v2 API enabled as the
//! tutorial's `spikecurtis/yaobank-database` image uses it.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::client::{Request, Response};
use crate::envoy::{read_lossy, tail_of};
use crate::process::{free_ports, port_or_free, ChildGuard};

/// How long `start` waits for etcd to serve the v2 API.
pub const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// etcd to run: `$KRITES_ETCD`, else `etcd` on PATH, else `/usr/bin/etcd`.
pub fn etcd_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("KRITES_ETCD").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("KRITES_ETCD={} is not a file", p.display());
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("etcd"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/bin/etcd")])
        .find(|p| p.is_file())
        .context("no etcd binary: install Debian's etcd-server (`scripts/setup.sh demo` does) or set KRITES_ETCD")
}

/// A running single-member etcd on `ip`. Dropping it stops the process.
pub struct Etcd {
    /// The member name, unique per start: how `wait_ready` knows the etcd answering on the
    /// port is this one and not another run's that got there first.
    member: String,
    ip: Ipv4Addr,
    client_port: u16,
    log: PathBuf,
    process: ChildGuard,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("client", &self.client_addr())
            .field("pid", &self.process.pid())
            .finish_non_exhaustive()
    }
}

impl Etcd {
    /// Start etcd serving clients on `ip` (port 2379 if free, as in the tutorial), with its
    /// data and log under `work_dir`, and wait until the v2 API answers.
    pub fn start(name: &str, ip: Ipv4Addr, work_dir: &Path) -> Result<Etcd> {
        let binary = etcd_binary()?;
        fs::create_dir_all(work_dir).with_context(|| format!("creating {}", work_dir.display()))?;
        let mut last_err = anyhow!("not started");
        for attempt in 0..3 {
            let (client, peer) = if attempt == 0 {
                (port_or_free(ip, 2379)?, port_or_free(ip, 2380)?)
            } else {
                let p = free_ports(ip, 2)?;
                (p[0], p[1])
            };
            match Etcd::try_start(&binary, name, ip, client, peer, work_dir) {
                Ok(etcd) => return Ok(etcd),
                Err(e) if format!("{e:#}").contains("address already in use") => last_err = e,
                Err(e) => return Err(e),
            }
        }
        Err(last_err)
    }

    fn try_start(
        binary: &Path,
        name: &str,
        ip: Ipv4Addr,
        client: u16,
        peer: u16,
        work_dir: &Path,
    ) -> Result<Etcd> {
        let data = work_dir.join(format!("{name}.etcd"));
        let _ = fs::remove_dir_all(&data);
        let log = work_dir.join(format!("{name}.etcd.log"));
        let out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        static STARTS: AtomicU32 = AtomicU32::new(0);
        let member = format!(
            "{name}-{}-{}",
            std::process::id(),
            STARTS.fetch_add(1, Ordering::SeqCst)
        );
        let client_url = format!("http://{ip}:{client}");
        let peer_url = format!("http://{ip}:{peer}");
        let process = ChildGuard::spawn(
            &format!("etcd {name}"),
            Command::new(binary)
                .args(["--name", &member])
                .arg("--data-dir")
                .arg(&data)
                // etcd 3.4 serves the v2 API (what the tutorial's apps use) only when asked.
                .arg("--enable-v2=true")
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .arg("--initial-cluster")
                .arg(format!("{member}={peer_url}"))
                .args(["--initial-cluster-state", "new"])
                .args(["--logger", "zap", "--log-outputs", "stderr"])
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err),
        )?;
        let mut etcd = Etcd {
            member,
            ip,
            client_port: client,
            log,
            process,
        };
        etcd.wait_ready()?;
        Ok(etcd)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + ETCD_READY_TIMEOUT;
        loop {
            if let Some(status) = self.process.try_wait()? {
                bail!(
                    "etcd exited during startup ({status}):\n{}",
                    tail_of(&[("log", &self.log)])
                );
            }
            if self.answers_as_itself() {
                let v2 = self.request("GET", "/v2/keys/").send()?;
                if v2.status == 200 {
                    return Ok(());
                }
                if v2.status == 404 {
                    bail!(
                        "etcd at {} has no v2 API (needs --enable-v2)",
                        self.client_addr()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "etcd not ready after {ETCD_READY_TIMEOUT:?}:\n{}",
                    tail_of(&[("log", &self.log)])
                );
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// The etcd answering on our port is ours (its member name), not one that held the port
    /// first: ours then fails to bind and `start` retries elsewhere.
    fn answers_as_itself(&self) -> bool {
        let Ok(r) = self.request("GET", "/v2/stats/self").send() else {
            return false;
        };
        r.status == 200
            && serde_json::from_str::<Value>(&r.body)
                .ok()
                .and_then(|v| {
                    v.get("name")
                        .and_then(Value::as_str)
                        .map(|n| n == self.member)
                })
                .unwrap_or(false)
    }

    fn request(&self, method: &str, path: &str) -> Request {
        Request::new()
            .to(self.client_addr())
            .method(method)
            .path(path)
            .timeout(Duration::from_secs(5))
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.client_port))
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    pub fn log(&self) -> Result<String> {
        read_lossy(&self.log)
    }

    /// v2 `PUT <path> value=<value>` straight to etcd (the operator's access, not the mesh's).
    /// `path` is the full v2 path, e.g. `/v2/keys/accounts/519940/balance`.
    pub fn put(&self, path: &str, value: &str) -> Result<()> {
        let r = self
            .request("PUT", path)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(form_value(value))
            .send()?;
        if !(r.status == 200 || r.status == 201) {
            bail!("etcd PUT {path}: {} {}", r.status, transport(&r));
        }
        Ok(())
    }

    /// v2 `GET <path>`: the node's value, `None` if the key does not exist.
    pub fn get(&self, path: &str) -> Result<Option<String>> {
        let r = self.request("GET", path).send()?;
        match r.status {
            200 => node_value(&r.body)
                .map(Some)
                .with_context(|| format!("etcd GET {path}: no node.value in {}", r.body)),
            404 => Ok(None),
            s => bail!("etcd GET {path}: {s} {}", transport(&r)),
        }
    }
}

fn transport(r: &Response) -> String {
    match &r.error {
        Some(e) => e.message.clone(),
        None => r.body.trim().to_string(),
    }
}

/// `node.value` of an etcd v2 answer.
pub fn node_value(body: &str) -> Option<String> {
    serde_json::from_str::<Value>(body)
        .ok()?
        .pointer("/node/value")?
        .as_str()
        .map(str::to_string)
}

/// `value=<v>`, form-encoded.
pub fn form_value(value: &str) -> String {
    let mut out = String::from("value=");
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_and_node_values() {
        assert_eq!(form_value("1,500.00 $"), "value=1%2C500.00%20%24");
        assert_eq!(
            node_value(r#"{"action":"get","node":{"key":"/a","value":"7"}}"#).as_deref(),
            Some("7")
        );
        assert_eq!(node_value(r#"{"errorCode":100}"#), None);
    }
}
