//! YAO Bank with real parts, for `make demo`: etcd as the database, the `customer` and
//! `summary` services (crate `krites-demo`), a sidecar Envoy with Krites in front of each, mTLS
//! between them, and an ingress gateway for the browser.
//!
//! ```text
//! browser ──http──▶ ingress 127.0.0.10 ──mTLS──▶ customer sidecar 127.0.0.11 ──▶ customer app
//!   customer app ──http──▶ its sidecar's outbound ──mTLS──▶ summary sidecars 127.0.0.12/.22 ──▶ summary app
//!   summary app  ──http──▶ its sidecar's outbound ──mTLS──▶ database sidecar 127.0.0.13 ──▶ etcd
//! ```
//!
//! Every mTLS hop presents the calling workload's certificate from the calling pod's IP, so
//! the receiving sidecar sees both of Calico's identity factors as it would in a cluster.

use std::collections::BTreeMap;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use krites_demo::Kind;

use super::{CUSTOMER_IP, DATABASE_IP, INGRESS_IP, NAMESPACE, SUMMARY_IPS};
use crate::envoy::{read_lossy, tail_of};
use crate::etcd::Etcd;
use crate::process::{free_port, ChildGuard};
use crate::{
    ContainerPort, EcdsOutcome, Identity, Ingress, IngressSpec, Mesh, Outbound, Pki, Request,
    Sidecar, SidecarSpec,
};

/// The browser's address.
pub const BROWSER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
/// Port the ingress gateway tries first for the browser.
pub const INGRESS_PORT: u16 = 8080;
/// The ingress gateway's service account, as Istio installs it.
pub const INGRESS_NAMESPACE: &str = "istio-system";
pub const INGRESS_SERVICE_ACCOUNT: &str = "istio-ingressgateway-service-account";

/// How the rig runs a service: a command that, given `--listen ... --summary|--database ...`,
/// serves it. `krites-demo` passes itself (`krites-demo service <kind>`); the crate's own
/// binaries (`yaobank-customer`, `yaobank-summary`) take the same flags.
pub type Launcher<'a> = &'a dyn Fn(Kind) -> Command;

/// One of the services, running: its process and where it listens.
pub struct App {
    pub kind: Kind,
    pub listen: SocketAddr,
    log: PathBuf,
    process: ChildGuard,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("kind", &self.kind)
            .field("listen", &self.listen)
            .field("pid", &self.process.pid())
            .finish_non_exhaustive()
    }
}

impl App {
    fn start(
        launch: Launcher<'_>,
        kind: Kind,
        listen: SocketAddr,
        upstream: &str,
        dir: &Path,
        name: &str,
    ) -> Result<App> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = dir.join(format!("{name}.app.log"));
        let out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = launch(kind);
        cmd.arg("--listen")
            .arg(listen.to_string())
            .arg(kind.upstream_flag())
            .arg(upstream)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let mut process = ChildGuard::spawn(&format!("{name} app"), &mut cmd)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = process.try_wait()? {
                bail!(
                    "the {name} app exited during startup ({status}):\n{}",
                    tail_of(&[("log", &log)])
                );
            }
            if TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok() {
                return Ok(App {
                    kind,
                    listen,
                    log,
                    process,
                });
            }
            if Instant::now() > deadline {
                bail!(
                    "the {name} app is not listening on {listen} after 10 s:\n{}",
                    tail_of(&[("log", &log)])
                );
            }
            sleep(Duration::from_millis(25));
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// What the service printed: one line per request.
    pub fn log(&self) -> Result<String> {
        read_lossy(&self.log)
    }
}

/// The running bank. Dropping it stops everything (gateway first, etcd last).
pub struct LiveBank {
    pub ingress: Ingress,
    pub customer_app: App,
    pub customer: Sidecar,
    pub summary_apps: Vec<App>,
    pub summary: Vec<Sidecar>,
    pub database: Sidecar,
    pub etcd: Etcd,
    pub pki: Pki,
    pub dir: PathBuf,
}

impl LiveBank {
    /// Starts etcd (seeded with `balance` at `krites_demo::BALANCE_KEY`), the services, a
    /// sidecar per workload running the module at `wasm` with `plugin_config`, and the ingress.
    /// `progress` hears about each part as it comes up; an error from it stops the start.
    pub fn start(
        dir: &Path,
        wasm: &Path,
        plugin_config: &str,
        balance: &str,
        launch: Launcher<'_>,
        progress: &mut dyn FnMut(&str) -> Result<()>,
    ) -> Result<LiveBank> {
        let pki = Pki::new(&dir.join("pki"), "cluster.local")?;
        let spiffe = |sa: &str| pki.spiffe_id(NAMESPACE, sa);
        let sidecar =
            |name: &str, ip: Ipv4Addr, sa: &str, app_label: &str, mesh: Mesh| -> Result<Sidecar> {
                let labels: BTreeMap<String, String> = [
                    ("app".to_string(), app_label.to_string()),
                    ("version".to_string(), "v1".to_string()),
                ]
                .into();
                // The tutorial explains denials from the module's log: its pods carry
                // `sidecar.istio.io/componentLogLevel: wasm:info`.
                let mesh = Mesh { component_log_level: Some("wasm:info".into()), ..mesh };
                Sidecar::start_with(
                    SidecarSpec {
                        name: name.to_string(),
                        ip,
                        namespace: NAMESPACE.into(),
                        service_account: sa.into(),
                        labels,
                        // One certificate per workload: the server certificate of its inbound
                        // listener and the client certificate of its outbound traffic, as Istio's.
                        identity: pki.issue(name, NAMESPACE, sa)?,
                        ca: pki.ca_cert().to_path_buf(),
                        wasm: Some(wasm.to_path_buf()),
                        plugin_config: plugin_config.to_string(),
                        work_dir: dir.join(name),
                        normalize_path: true,
                        peer_address_filter: true,
                    },
                    mesh,
                )
                .with_context(|| format!("starting the {name} sidecar"))
            };

        let etcd =
            Etcd::start("database", DATABASE_IP, &dir.join("database")).context("starting etcd")?;
        etcd.put(krites_demo::BALANCE_KEY, balance)
            .context("seeding the balance")?;
        progress(&format!(
            "etcd (v2 API) on {}, balance seeded",
            etcd.client_addr()
        ))?;

        let database = sidecar(
            "database",
            DATABASE_IP,
            "database",
            "database",
            Mesh {
                app: Some(etcd.client_addr()),
                outbound: vec![],
                pod_ports: vec![ContainerPort::tcp("client", etcd.client_addr().port())],
                ..Mesh::default()
            },
        )?;
        progress("database sidecar")?;

        let mut summary = Vec::new();
        let mut summary_apps = Vec::new();
        for (i, (name, ip)) in [("summary", SUMMARY_IPS[0]), ("summary-2", SUMMARY_IPS[1])]
            .into_iter()
            .enumerate()
        {
            let to_database = Outbound {
                service: "database".into(),
                endpoints: vec![database.mtls_addr()],
                server_identity: spiffe("database"),
            };
            let mesh = |app: SocketAddr| Mesh {
                app: Some(app),
                outbound: vec![to_database.clone()],
                pod_ports: vec![ContainerPort::tcp("http", app.port())],
                ..Mesh::default()
            };
            let (s, app) = start_workload(
                launch,
                Kind::Summary,
                name,
                ip,
                "database",
                dir,
                mesh,
                |mesh| sidecar(name, ip, "summary", "summary", mesh),
            )?;
            progress(&format!("summary replica {} and its sidecar", i + 1))?;
            summary.push(s);
            summary_apps.push(app);
        }

        let to_summary = Outbound {
            service: "summary".into(),
            endpoints: summary.iter().map(Sidecar::mtls_addr).collect(),
            server_identity: spiffe("summary"),
        };
        let mesh = |app: SocketAddr| Mesh {
            app: Some(app),
            outbound: vec![to_summary.clone()],
            pod_ports: vec![ContainerPort::tcp("http", app.port())],
            ..Mesh::default()
        };
        let (customer, customer_app) = start_workload(
            launch,
            Kind::Customer,
            "customer",
            CUSTOMER_IP,
            "summary",
            dir,
            mesh,
            |mesh| sidecar("customer", CUSTOMER_IP, "customer", "customer", mesh),
        )?;
        progress("customer and its sidecar")?;

        let ingress = Ingress::start(IngressSpec {
            name: "istio-ingressgateway".into(),
            ip: INGRESS_IP,
            preferred_port: Some(INGRESS_PORT),
            upstream: Outbound {
                service: "customer".into(),
                endpoints: vec![customer.mtls_addr()],
                server_identity: spiffe("customer"),
            },
            identity: pki.issue(
                "istio-ingressgateway",
                INGRESS_NAMESPACE,
                INGRESS_SERVICE_ACCOUNT,
            )?,
            ca: pki.ca_cert().to_path_buf(),
            work_dir: dir.join("ingress"),
        })
        .context("starting the ingress gateway")?;
        progress("ingress gateway")?;

        Ok(LiveBank {
            ingress,
            customer_app,
            customer,
            summary_apps,
            summary,
            database,
            etcd,
            pki,
            dir: dir.to_path_buf(),
        })
    }

    /// The sidecars (database, summary replicas, customer).
    pub fn sidecars(&self) -> impl Iterator<Item = &Sidecar> {
        std::iter::once(&self.database)
            .chain(&self.summary)
            .chain(std::iter::once(&self.customer))
    }

    /// Every process: (what, pid).
    pub fn processes(&self) -> Vec<(String, u32)> {
        let mut out = vec![("etcd".to_string(), self.etcd.pid())];
        out.extend(
            self.sidecars()
                .map(|s| (format!("envoy {}", s.name()), s.pid())),
        );
        out.extend(
            self.summary_apps
                .iter()
                .map(|a| ("summary app".to_string(), a.pid())),
        );
        out.push(("customer app".to_string(), self.customer_app.pid()));
        out.push(("envoy ingress".to_string(), self.ingress.pid()));
        out
    }

    /// Names of processes that are no longer running.
    pub fn exited(&mut self) -> Vec<String> {
        let mut gone = Vec::new();
        if !self.etcd.is_running() {
            gone.push("etcd".to_string());
        }
        if !self.ingress.is_running() {
            gone.push("envoy ingress".to_string());
        }
        if !self.customer_app.is_running() {
            gone.push("customer app".to_string());
        }
        for a in &mut self.summary_apps {
            if !a.is_running() {
                gone.push("summary app".to_string());
            }
        }
        for s in std::iter::once(&mut self.database)
            .chain(&mut self.summary)
            .chain(std::iter::once(&mut self.customer))
        {
            if !s.is_running() {
                gone.push(format!("envoy {}", s.name()));
            }
        }
        gone
    }

    /// A browser request through the ingress gateway.
    pub fn browser(&self, method: &str) -> Request {
        Request::from(BROWSER_IP)
            .to(self.ingress.addr())
            .method(method)
            .path("/")
    }

    /// A request from `from` straight to `to`'s mTLS listener, presenting `cert`: what a
    /// process in a pod holding that certificate can send.
    pub fn mtls(&self, from: Ipv4Addr, cert: &Identity, to: &Sidecar) -> Request {
        Request::from(from)
            .to(to.mtls_addr())
            .tls(self.pki.ca_cert(), Some(cert), to.server_name())
    }

    /// The customer workload's certificate (what a compromised customer pod holds).
    pub fn customer_cert(&self) -> &Identity {
        &self.customer.spec().identity
    }

    /// Summary's certificate: the `istio.summary` secret the tutorial's attack pod mounts.
    pub fn summary_cert(&self) -> &Identity {
        &self.summary[0].spec().identity
    }

    /// Hot-swaps the plugin config of every sidecar through ECDS; fails if any rejects it.
    pub fn apply(&self, plugin_config: &str) -> Result<()> {
        for s in self.sidecars() {
            let outcome = s.reconfigure(plugin_config, Duration::from_secs(10))?;
            anyhow::ensure!(
                outcome == EcdsOutcome::Accepted,
                "{} rejected the config:\n{}",
                s.name(),
                s.log().unwrap_or_default()
            );
        }
        Ok(())
    }
}

/// Sidecar first (the app needs its outbound listener's address), then the app behind it on
/// the port the sidecar routes to. If someone took that port meanwhile, both start again.
#[allow(clippy::too_many_arguments)]
fn start_workload(
    launch: Launcher<'_>,
    kind: Kind,
    name: &str,
    ip: Ipv4Addr,
    upstream_service: &str,
    dir: &Path,
    mesh: impl Fn(SocketAddr) -> Mesh,
    start_sidecar: impl Fn(Mesh) -> Result<Sidecar>,
) -> Result<(Sidecar, App)> {
    let mut last_err = anyhow!("not started");
    for _ in 0..3 {
        let app_addr = SocketAddr::from((ip, free_port(ip)?));
        let sidecar = start_sidecar(mesh(app_addr))?;
        let outbound = sidecar
            .outbound_addr(upstream_service)
            .context("no outbound listener")?;
        match App::start(
            launch,
            kind,
            app_addr,
            &format!("http://{outbound}/"),
            &dir.join(name),
            name,
        ) {
            Ok(app) => return Ok((sidecar, app)),
            Err(e) if format!("{e:#}").contains("in use") => last_err = e,
            Err(e) => return Err(e.context(format!("starting the {name} app"))),
        }
    }
    Err(last_err.context(format!("starting the {name} app")))
}
