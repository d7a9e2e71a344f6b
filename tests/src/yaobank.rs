//! Calico's YAO Bank tutorial (customer -> summary -> database, plus an attack
//! pod holding summary's stolen keys) as local Envoy sidecars. Shared by the
//! end-to-end tests and `make demo`, so both play the same story.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context, Result};

use crate::{Identity, Mesh, Pki, Request, Response, Sidecar, SidecarSpec};

pub mod live;
pub mod mesh;

/// The tutorial's three policies and the cluster's pods, as Krites config.
pub const POLICY_CONFIG: &str = include_str!("../fixtures/yaobank-plugin-config.json");
/// The same workloads before any policy is applied (everything allowed).
pub const OPEN_CONFIG: &str = r#"{"version": 1, "revision": "no-policy"}"#;

pub const NAMESPACE: &str = "default";
pub const INGRESS_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 10);
pub const CUSTOMER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);
pub const SUMMARY_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(127, 0, 0, 12), Ipv4Addr::new(127, 0, 0, 22)];
pub const DATABASE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 13);
pub const ATTACK_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 66);

/// Who sends a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// The Istio ingress gateway, forwarding a browser's request.
    Ingress,
    Customer,
    Summary(usize),
    /// The attack pod: its own address, no sidecar of its own.
    Attack,
}

impl Client {
    pub fn ip(self) -> Ipv4Addr {
        match self {
            Client::Ingress => INGRESS_IP,
            Client::Customer => CUSTOMER_IP,
            Client::Summary(i) => SUMMARY_IPS.get(i).copied().unwrap_or(SUMMARY_IPS[0]),
            Client::Attack => ATTACK_IP,
        }
    }
}

/// Which certificate the client presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// The client's own workload certificate.
    Own,
    /// Another workload's certificate (mounted from a stolen secret).
    Stolen(&'static str),
    /// No TLS: the plaintext (PERMISSIVE) port.
    Plaintext,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Customer,
    Summary(usize),
    Database,
}

/// One request of the story and what the tutorial says must happen.
#[derive(Debug, Clone)]
pub struct Step {
    pub title: &'static str,
    pub from: Client,
    pub credential: Credential,
    pub to: Target,
    pub method: &'static str,
    pub path: &'static str,
    pub headers: Vec<(&'static str, String)>,
    /// Status with the tutorial's policies applied.
    pub with_policy: u16,
}

fn step(title: &'static str, from: Client, credential: Credential, to: Target, method: &'static str, path: &'static str, with_policy: u16) -> Step {
    Step { title, from, credential, to, method, path, headers: Vec::new(), with_policy }
}

/// The tutorial's requests, in order. Without policy every one of them succeeds.
pub fn tutorial_steps() -> Vec<Step> {
    use Client::*;
    use Credential::*;
    let xfcc = "By=spiffe://cluster.local/ns/default/sa/database;URI=spiffe://cluster.local/ns/default/sa/summary".to_string();
    let mut steps = vec![
        step("the browser loads the bank page (GET via the ingress)", Ingress, Own, Target::Customer, "GET", "/", 200),
        step("the browser POSTs to the customer page", Ingress, Own, Target::Customer, "POST", "/", 403),
        step("customer calls summary", Customer, Own, Target::Summary(0), "GET", "/", 200),
        step("summary reads the balance from the database", Summary(0), Own, Target::Database, "GET", "/v2/keys/accounts/519940/balance", 200),
        step("the second summary replica reads it too", Summary(1), Own, Target::Database, "GET", "/v2/keys/accounts/519940/balance", 200),
        step("a compromised customer pod reads the database", Customer, Own, Target::Database, "GET", "/v2/keys/accounts/519940/balance", 403),
        step("the attack pod reads the database with summary's stolen keys", Attack, Stolen("summary"), Target::Database, "GET", "/v2/keys/accounts/519940/balance", 403),
        step("the attack pod changes the balance with summary's stolen keys", Attack, Stolen("summary"), Target::Database, "PUT", "/v2/keys/accounts/519940/balance?value=10000000", 403),
        step("summary reaches the database in plaintext (PERMISSIVE)", Summary(0), Plaintext, Target::Database, "GET", "/v2/keys/accounts/519940/balance", 200),
        step("the attack pod reaches the database in plaintext", Attack, Plaintext, Target::Database, "GET", "/v2/keys/accounts/519940/balance", 403),
        step("the customer pod reaches the database in plaintext", Customer, Plaintext, Target::Database, "GET", "/v2/keys/accounts/519940/balance", 403),
    ];
    let mut spoof = step("the attack pod forges x-forwarded-client-cert and x-forwarded-for", Attack, Stolen("summary"), Target::Database, "PUT", "/v2/keys/accounts/519940/balance", 403);
    spoof.headers = vec![("x-forwarded-client-cert", xfcc.clone()), ("x-forwarded-for", SUMMARY_IPS[0].to_string()), ("x-real-ip", SUMMARY_IPS[0].to_string())];
    steps.push(spoof);
    let mut spoof_plain = step("the attack pod forges the same headers in plaintext", Attack, Plaintext, Target::Database, "GET", "/v2/keys", 403);
    spoof_plain.headers = vec![("x-forwarded-client-cert", xfcc), ("x-forwarded-for", SUMMARY_IPS[0].to_string()), ("x-envoy-external-address", SUMMARY_IPS[0].to_string())];
    steps.push(spoof_plain);
    let mut harmless = step("summary sends a bogus x-forwarded-client-cert: still allowed", Summary(0), Own, Target::Database, "GET", "/v2/keys", 200);
    harmless.headers = vec![("x-forwarded-client-cert", "URI=spiffe://cluster.local/ns/default/sa/attack".to_string()), ("x-forwarded-for", ATTACK_IP.to_string())];
    steps.push(harmless);
    steps
}

/// The running tutorial: a sidecar per workload, a PKI, the clients' certificates.
pub struct Bank {
    pub pki: Pki,
    pub customer: Sidecar,
    pub summary: Vec<Sidecar>,
    pub database: Sidecar,
    ingress_cert: Identity,
    customer_cert: Identity,
    summary_cert: Identity,
    attack_cert: Identity,
}

impl Bank {
    /// Starts every sidecar with `plugin_config` and the module at `wasm`.
    pub fn start(work_dir: &Path, wasm: &Path, plugin_config: &str) -> Result<Bank> {
        let pki = Pki::new(&work_dir.join("pki"), "cluster.local")?;
        let sidecar = |name: &str, ip: Ipv4Addr, sa: &str, app: &str| -> Result<Sidecar> {
            let labels: BTreeMap<String, String> =
                [("app".to_string(), app.to_string()), ("version".to_string(), "v1".to_string())].into();
            // The tutorial explains denials from the module's log: its pods carry
            // `sidecar.istio.io/componentLogLevel: wasm:info`.
            let mesh = Mesh { component_log_level: Some("wasm:info".into()), ..Mesh::default() };
            Sidecar::start_with(SidecarSpec {
                name: name.to_string(),
                ip,
                namespace: NAMESPACE.into(),
                service_account: sa.into(),
                labels,
                // The server certificate is issued under the SNI name the clients use.
                identity: pki.issue(name, NAMESPACE, sa)?,
                ca: pki.ca_cert().to_path_buf(),
                wasm: Some(wasm.to_path_buf()),
                plugin_config: plugin_config.to_string(),
                work_dir: work_dir.join(name),
                normalize_path: true,
                peer_address_filter: true,
            }, mesh)
            .with_context(|| format!("starting the {name} sidecar"))
        };
        let customer = sidecar("customer", CUSTOMER_IP, "customer", "customer")?;
        let summary = vec![
            sidecar("summary", SUMMARY_IPS[0], "summary", "summary")?,
            sidecar("summary-2", SUMMARY_IPS[1], "summary", "summary")?,
        ];
        let database = sidecar("database", DATABASE_IP, "database", "database")?;
        Ok(Bank {
            ingress_cert: pki.issue("ingress-client", "istio-system", "istio-ingressgateway-service-account")?,
            customer_cert: pki.issue("customer-client", NAMESPACE, "customer")?,
            summary_cert: pki.issue("summary-client", NAMESPACE, "summary")?,
            attack_cert: pki.issue("attack-client", NAMESPACE, "default")?,
            pki,
            customer,
            summary,
            database,
        })
    }

    pub fn sidecars(&self) -> impl Iterator<Item = &Sidecar> {
        std::iter::once(&self.customer).chain(&self.summary).chain(std::iter::once(&self.database))
    }

    pub fn target(&self, to: Target) -> &Sidecar {
        match to {
            Target::Customer => &self.customer,
            Target::Summary(i) => self.summary.get(i).unwrap_or(&self.customer),
            Target::Database => &self.database,
        }
    }

    fn certificate(&self, from: Client, credential: Credential) -> Option<&Identity> {
        let own = match from {
            Client::Ingress => &self.ingress_cert,
            Client::Customer => &self.customer_cert,
            Client::Summary(_) => &self.summary_cert,
            Client::Attack => &self.attack_cert,
        };
        match credential {
            Credential::Own => Some(own),
            Credential::Stolen("summary") => Some(&self.summary_cert),
            Credential::Stolen("customer") => Some(&self.customer_cert),
            Credential::Stolen(_) => Some(own),
            Credential::Plaintext => None,
        }
    }

    /// Sends one step's request.
    pub fn send(&self, step: &Step) -> Result<Response> {
        let target = self.target(step.to);
        let mut req = Request::from(step.from.ip()).method(step.method).path(step.path);
        req = match self.certificate(step.from, step.credential) {
            Some(cert) => req.to(target.mtls_addr()).tls(self.pki.ca_cert(), Some(cert), target.server_name()),
            None => req.to(target.plain_addr()),
        };
        for (name, value) in &step.headers {
            req = req.header(name, value);
        }
        req.send()
    }

    /// Hot-swaps the plugin config of every sidecar through ECDS; fails if any rejects it.
    pub fn apply(&self, plugin_config: &str) -> Result<()> {
        for s in self.sidecars() {
            let outcome = s.reconfigure(plugin_config, std::time::Duration::from_secs(10))?;
            anyhow::ensure!(outcome == crate::EcdsOutcome::Accepted, "{} rejected the config", s.name());
        }
        Ok(())
    }
}
