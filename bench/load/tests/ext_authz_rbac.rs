//! The two reference configurations of the load benchmark decide as the engine
//! does, in real Envoys: Envoy's RBAC filter with the rules `rbac_filters`
//! translated, and Envoy's ext_authz filter asking `krites-ext-authz` (the
//! built binary). Each Envoy is the workload's sidecar as the istiod builder
//! makes it (`topology::workload_sidecar`, as the benchmark's servers), on
//! 127.0.0.0/8 only, with a direct 200 as the application; curl, bound to
//! chosen 127.x source addresses, plays the pods and the attackers.
//!
//! Each sidecar has a STRICT port and a DISABLE port (`portLevelMtls`), as
//! the loopback rig's: Istio's PERMISSIVE HTTP port takes TLS only with
//! Istio's ALPN (`istio-http/1.1`, `istio-h2`), which curl cannot offer.
//! Certificate rows go to the STRICT port, plaintext rows to the DISABLE
//! port. Istio's inbound TLS refuses a client certificate whose URI SAN is not
//! under `spiffe://<trust domain>/`: such a row is a Deny only where the
//! engine says Deny too, and the test prints how many there were.
//!
//! - YAO Bank's database: the tutorial's verdicts (summary reads and writes,
//!   customer's certificate refused, summary's stolen certificate from an
//!   attacker's address refused, plaintext from an unknown address refused).
//! - `Scale::tutorial()`: every request of `request_mix(&Scale::tutorial(), 300)`,
//!   moved onto loopback, gets the engine's verdict from both Envoys.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use krites_bench::{generate, request_mix, target_workload, OwnedRequest, Scale, TARGET_PORT, TRUST_DOMAIN};
use krites_loadbench::ext_authz::DENIED_BODY;
use krites_loadbench::rbac::rbac_filters;
use krites_policy::config::PortSpec;
use krites_policy::{Peer, PluginConfig, PolicySet, RequestFacts, Verdict, Workload, WorkloadPolicy};
use krites_loadbench::topology::workload_sidecar;
use krites_testbed::istiod::{self, HttpAuthz, MtlsMode};
use krites_testbed::process::{free_port, ChildGuard};
use krites_testbed::{envoy_binary, Identity, Pki, Request, Response};

/// A scratch directory under the target dir, fresh for this run.
fn work_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ext-authz-rbac-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One Envoy standing in for the protected workload's sidecar: certificate rows go to its
/// STRICT port, plaintext rows to its DISABLE port.
struct Server {
    _guard: ChildGuard,
    mtls: SocketAddr,
    plain: SocketAddr,
    name: &'static str,
}

/// The workload's sidecar as the load benchmark builds it (`topology::workload_sidecar`, the
/// istiod builder), on `ip`: a STRICT port and a DISABLE port, `authz` in its HTTP filters.
/// `ports`: fixed (mTLS, plaintext) ports, else free ones.
fn start_envoy(name: &'static str, dir: &Path, ip: Ipv4Addr, ports: Option<(u16, u16)>, authz: HttpAuthz, workload: &Workload, tls: (&Identity, &Path)) -> Server {
    let mut last = String::new();
    // Ports are free when picked, not necessarily when Envoy binds them: retry.
    for _ in 0..3 {
        let (mtls, plain) = ports.unwrap_or_else(|| (free_port(ip).unwrap(), free_port(ip).unwrap()));
        assert_ne!(mtls, plain, "{name}: one port for both transports");
        let admin = SocketAddr::from((ip, free_port(ip).unwrap()));
        let proxy_dir = dir.join(name);
        let mut proxy = workload_sidecar(
            workload,
            &format!("{}-{name}", workload.service_account),
            ip,
            &[(mtls, MtlsMode::Strict), (plain, MtlsMode::Disable)],
            admin,
            tls,
            &proxy_dir,
        );
        proxy.authz.http = authz.clone();
        let config = dir.join(format!("{name}.json"));
        std::fs::write(&config, serde_json::to_vec_pretty(&istiod::build_sidecar_bootstrap(&proxy)).unwrap()).unwrap();
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).unwrap();
        let mut guard = ChildGuard::spawn(
            name,
            Command::new(envoy_binary().unwrap())
                .arg("-c")
                .arg(&config)
                .args(["--concurrency", "1", "--disable-hot-restart", "-l", "warning", "--base-id"])
                .arg(admin.port().to_string())
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out),
        )
        .unwrap();
        let (mtls, plain) = (SocketAddr::from((ip, mtls)), SocketAddr::from((ip, plain)));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = Request::new().to(admin).path("/ready").timeout(Duration::from_secs(2)).send();
            if matches!(ready, Ok(ref r) if r.status == 200) && [mtls, plain].iter().all(|a| std::net::TcpStream::connect(a).is_ok()) {
                return Server { _guard: guard, mtls, plain, name };
            }
            if let Ok(Some(status)) = guard.try_wait() {
                last = format!("{name}: Envoy exited with {status}:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
                break;
            }
            assert!(Instant::now() < deadline, "{name}: Envoy not ready in 20 s:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
            std::thread::sleep(Duration::from_millis(50));
        }
        if !last.contains("ddress already in use") {
            break;
        }
    }
    panic!("{last}");
}

/// `krites-ext-authz` (the built binary) for `workload`, once it says it listens.
fn start_authorizer(dir: &Path, ip: Ipv4Addr, config: &PluginConfig, workload: &Workload) -> (ChildGuard, SocketAddr) {
    let path = dir.join("plugin-config.json");
    std::fs::write(&path, serde_json::to_vec(config).unwrap()).unwrap();
    let listen = SocketAddr::from((ip, free_port(ip).unwrap()));
    let out_path = dir.join("authorizer.out");
    let out = File::create(&out_path).unwrap();
    let err = File::create(dir.join("authorizer.err")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_krites-ext-authz"));
    cmd.arg("--config").arg(&path).args(["--namespace", &workload.namespace, "--service-account", &workload.service_account]);
    for (k, v) in &workload.labels {
        cmd.arg("--label").arg(format!("{k}={v}"));
    }
    cmd.arg("--listen").arg(listen.to_string()).stdin(Stdio::null()).stdout(out).stderr(err);
    let mut guard = ChildGuard::spawn("krites-ext-authz", &mut cmd).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&out_path).unwrap_or_default();
        if let Some(line) = text.lines().next() {
            assert!(line.starts_with(&format!("krites-ext-authz: listening on {listen} (")), "{line}");
            return (guard, listen);
        }
        if let Ok(Some(status)) = guard.try_wait() {
            panic!("krites-ext-authz exited with {status}: {}", std::fs::read_to_string(dir.join("authorizer.err")).unwrap_or_default());
        }
        assert!(Instant::now() < deadline, "krites-ext-authz did not listen in 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The RBAC Envoy and the ext_authz Envoy (with its authorizer) for one workload.
struct Pair {
    servers: [Server; 2],
    _authorizer: ChildGuard,
    server_name: &'static str,
}

fn start_pair(dir: &Path, ips: [Ipv4Addr; 3], ports: Option<(u16, u16)>, config: &PluginConfig, workload: &Workload, pki: &Pki) -> Pair {
    let server_id = pki.issue("server", &workload.namespace, &workload.service_account).unwrap();
    let rbac = rbac_filters(config, workload).unwrap();
    assert!(rbac.stats.decision_equivalent(), "{}", rbac.stats);
    eprintln!("rbac: {}", rbac.stats);
    let (authorizer, listen) = start_authorizer(dir, ips[2], config, workload);
    let tls = (&server_id, pki.ca_cert());
    let servers = std::thread::scope(|s| {
        let a = s.spawn(|| start_envoy("rbac", dir, ips[0], ports, HttpAuthz::Rbac(rbac.filters.clone()), workload, tls));
        let b = s.spawn(|| start_envoy("ext_authz", dir, ips[1], ports, HttpAuthz::ExtAuthz(listen), workload, tls));
        [a.join().unwrap(), b.join().unwrap()]
    });
    Pair { servers, _authorizer: authorizer, server_name: "server" }
}

/// One request as a pod or an attacker sends it.
#[derive(Debug, Clone)]
struct Sent {
    from: Ipv4Addr,
    cert: Option<Identity>,
    method: String,
    path: String,
}

/// Certificate rows to the STRICT port, plaintext rows to the DISABLE port.
fn send(pair: &Pair, server: &Server, s: &Sent, ca: &Path) -> Response {
    let to = if s.cert.is_some() { server.mtls } else { server.plain };
    let mut req = Request::from(s.from).to(to).method(&s.method).path(&s.path).timeout(Duration::from_secs(10));
    if let Some(id) = &s.cert {
        req = req.tls(ca, Some(id), pair.server_name);
    }
    req.send().unwrap()
}

/// How a server answered one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// 200, or 403 `RBAC: access denied` (the way Istio denies).
    Decided(Verdict),
    /// Istio's inbound TLS refused the client certificate (its URI SAN is not under
    /// `spiffe://<trust domain>/`): no request reached the authorization.
    RefusedHandshake,
}

impl Outcome {
    /// What the client sees: a refused handshake denies too.
    fn verdict(self) -> Verdict {
        match self {
            Outcome::Decided(v) => v,
            Outcome::RefusedHandshake => Verdict::Deny,
        }
    }
}

/// A row's outcome; anything but a verdict or, for a certificate without a SPIFFE id under
/// the trust domain, a refused handshake, is a failure of the rig, not a verdict.
fn outcome(what: &str, via: &str, s: &Sent, r: &Response) -> Outcome {
    match r.status {
        200 => Outcome::Decided(Verdict::Allow),
        403 => {
            if s.method != "HEAD" {
                assert_eq!(r.body, DENIED_BODY, "{what} via {via}: 403 body");
            }
            Outcome::Decided(Verdict::Deny)
        }
        0 if s.cert.as_ref().is_some_and(|c| !in_trust_domain(c)) => {
            let e = r.error.as_ref().unwrap();
            assert!(e.tcp_connected && e.tls, "{what} via {via}: not a refused handshake: {r:?}");
            Outcome::RefusedHandshake
        }
        _ => panic!("{what} via {via}: {r:?}"),
    }
}

/// Whether Istio's inbound TLS accepts `cert`'s URI SAN.
fn in_trust_domain(cert: &Identity) -> bool {
    cert.uri.as_deref().is_some_and(|u| u.starts_with(&format!("spiffe://{TRUST_DOMAIN}/")))
}

/// `outcome` checked against the engine: a refused handshake counts as a Deny only where
/// the engine says Deny.
fn check(what: &str, via: &str, outcome: Outcome, engine: Verdict) {
    if outcome == Outcome::RefusedHandshake {
        assert_eq!(engine, Verdict::Deny, "{what} via {via}: the handshake was refused where the engine allows");
    }
    assert_eq!(outcome.verdict(), engine, "{what} via {via}");
}

fn yaobank() -> PluginConfig {
    let path = krites_testbed::workspace_root().join("tests/fixtures/yaobank-plugin-config.json");
    PluginConfig::from_json(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn yaobank_database_through_rbac_and_ext_authz() {
    let started = Instant::now();
    let dir = work_dir("yaobank");
    let net = |d: u8| Ipv4Addr::new(127, 0, 152, d);
    // The tutorial's pods, moved to addresses no other test uses.
    let mut config = yaobank();
    for ep in &mut config.endpoints {
        for ip in &mut ep.ips {
            let old: Ipv4Addr = ip.parse().unwrap();
            *ip = net(old.octets()[3]).to_string();
        }
    }
    let (customer_ip, summary_ip, summary2_ip, attacker_ip, unknown_ip) = (net(11), net(12), net(22), net(66), net(99));
    let workload = Workload {
        namespace: "default".into(),
        service_account: "database".into(),
        labels: [("app".to_string(), "database".to_string())].into(),
        ports: BTreeMap::new(),
    };
    let pki = Pki::new(&dir.join("pki"), TRUST_DOMAIN).unwrap();
    let summary = pki.issue("summary", "default", "summary").unwrap();
    let customer = pki.issue("customer", "default", "customer").unwrap();
    let no_spiffe = pki.issue_with_uri("no-spiffe", None).unwrap();
    let pair = start_pair(&dir, [net(2), net(3), net(4)], None, &config, &workload, &pki);

    let sent = |from, cert: Option<&Identity>, method: &str, path: &str| Sent { from, cert: cert.cloned(), method: method.into(), path: path.into() };
    let cases = [
        ("summary reads the balance", sent(summary_ip, Some(&summary), "GET", "/v2/keys/accounts/519940/balance"), Verdict::Allow),
        ("summary's second pod writes it", sent(summary2_ip, Some(&summary), "PUT", "/v2/keys/accounts/519940/balance"), Verdict::Allow),
        ("summary's pod in plaintext (the address is the factor)", sent(summary_ip, None, "GET", "/v2/keys"), Verdict::Allow),
        ("a compromised customer pod reads the database", sent(customer_ip, Some(&customer), "GET", "/v2/keys/accounts/519940/balance"), Verdict::Deny),
        ("customer's certificate from summary's address", sent(summary_ip, Some(&customer), "GET", "/v2/keys"), Verdict::Deny),
        ("summary's stolen certificate from customer's pod", sent(customer_ip, Some(&summary), "GET", "/v2/keys"), Verdict::Deny),
        ("summary's stolen certificate from the attack pod", sent(attacker_ip, Some(&summary), "PUT", "/v2/keys/accounts/519940/balance"), Verdict::Deny),
        ("plaintext from an address no pod owns", sent(unknown_ip, None, "GET", "/v2/keys"), Verdict::Deny),
        ("a certificate without a SPIFFE id from summary's address", sent(summary_ip, Some(&no_spiffe), "GET", "/v2/keys"), Verdict::Deny),
    ];
    let engine = WorkloadPolicy::new(Arc::new(PolicySet::from_config(&config).unwrap()), &workload);
    let mut refused = 0;
    for (what, s, want) in &cases {
        let uri = s.cert.as_ref().and_then(|c| c.uri.clone());
        let peer = match &s.cert {
            Some(_) => Peer::Mtls { uri_san: uri.as_deref() },
            None => Peer::Plaintext,
        };
        let oracle = engine.decide(&RequestFacts::http(IpAddr::V4(s.from), peer, &s.method, &s.path));
        assert_eq!(oracle.verdict, *want, "{what}: the engine says {oracle}");
        for server in &pair.servers {
            let r = send(&pair, server, s, pki.ca_cert());
            let o = outcome(what, server.name, s, &r);
            check(what, server.name, o, oracle.verdict);
            refused += usize::from(o == Outcome::RefusedHandshake);
        }
    }
    // The certificate without a SPIFFE id, at both Envoys.
    assert_eq!(refused, 2, "handshakes refused");
    println!(
        "yaobank: {} requests through both Envoys (mTLS to the STRICT port, plaintext to the DISABLE port), same verdict as the engine; {refused} refused at the handshake (no SPIFFE id), in {:?}",
        cases.len(),
        started.elapsed()
    );
    drop(pair);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Moves the generated cluster onto loopback: 10.0.x.y (pods) -> 127.160.x.y,
/// 10.2xx.x.y (unknown) -> 127.(170 + xx).x.y, 192.0.x.y -> 127.230.x.y,
/// 198.51.x.y -> 127.231.x.y, 10.255.x.y -> 127.232.x.y. Prefixes of /16 or
/// longer keep their meaning (the generator uses /24 and /32).
fn to_loopback(ip: Ipv4Addr) -> Ipv4Addr {
    let [a, b, c, d] = ip.octets();
    let second = match (a, b) {
        (10, 0) => 160,
        (10, 200..=249) => 170 + (b - 200),
        (192, 0) => 230,
        (198, 51) => 231,
        (10, 255) => 232,
        _ => panic!("no loopback mapping for {ip}"),
    };
    Ipv4Addr::new(127, second, c, d)
}

fn cidr_to_loopback(net: &str) -> String {
    let (addr, len) = net.split_once('/').unwrap_or((net, "32"));
    assert!(len.parse::<u8>().unwrap() >= 16, "{net}: too wide to move");
    format!("{}/{len}", to_loopback(addr.parse().unwrap()))
}

/// `ports`: the server's (STRICT, DISABLE) ports, which both stand for TARGET_PORT.
fn config_to_loopback(config: &mut PluginConfig, ports: (u16, u16)) {
    for ep in &mut config.endpoints {
        for ip in &mut ep.ips {
            *ip = to_loopback(ip.parse().unwrap()).to_string();
        }
    }
    for rule in config.policies.iter_mut().flat_map(|p| p.ingress.iter_mut()) {
        for entity in [&mut rule.source, &mut rule.destination].into_iter().flatten() {
            for net in entity.nets.iter_mut().chain(entity.not_nets.iter_mut()) {
                *net = cidr_to_loopback(net);
            }
        }
        if let Some(dst) = &mut rule.destination {
            for list in [&mut dst.ports, &mut dst.not_ports] {
                *list = list
                    .drain(..)
                    .flat_map(|p| match p {
                        PortSpec::Number(TARGET_PORT) => vec![PortSpec::Number(ports.0), PortSpec::Number(ports.1)],
                        other => vec![other],
                    })
                    .collect();
            }
        }
    }
}

/// Two ports free on both server addresses standing for TARGET_PORT (STRICT, DISABLE):
/// TARGET_PORT first, then the same rules' ranges (8000-8999: in `8000:8999`, not 80 or 443).
fn target_ports(ips: &[Ipv4Addr]) -> (u16, u16) {
    let mut free = std::iter::once(TARGET_PORT)
        .chain((8000..=8999).filter(|&p| p != TARGET_PORT))
        .filter(|&p| ips.iter().all(|&ip| TcpListener::bind((ip, p)).is_ok()));
    (free.next().unwrap(), free.next().unwrap())
}

#[test]
fn tutorial_request_mix_through_rbac_and_ext_authz() {
    let started = Instant::now();
    let scale = Scale::tutorial();
    let dir = work_dir("tutorial");
    let original = generate(&scale);
    let workload = target_workload(&scale);
    let mix = request_mix(&scale, 300);
    let server_ips = [Ipv4Addr::new(127, 0, 153, 2), Ipv4Addr::new(127, 0, 153, 3), Ipv4Addr::new(127, 0, 153, 4)];
    let ports = target_ports(&server_ips[..2]);
    let mut config = original.clone();
    config_to_loopback(&mut config, ports);

    // The oracle: the engine on the generated config, and (the same verdicts)
    // on the config moved onto loopback, as the Envoys will see the requests:
    // certificate rows at the STRICT port, plaintext rows at the DISABLE port.
    let before = WorkloadPolicy::new(Arc::new(PolicySet::from_config(&original).unwrap()), &workload);
    let after = WorkloadPolicy::new(Arc::new(PolicySet::from_config(&config).unwrap()), &workload);
    let moved = |r: &OwnedRequest| {
        let IpAddr::V4(ip) = r.source_ip else { panic!("{r:?}") };
        let destination_port = if r.uri_san.is_some() { ports.0 } else { ports.1 };
        OwnedRequest { source_ip: IpAddr::V4(to_loopback(ip)), destination_ip: IpAddr::V4(server_ips[0]), destination_port, ..r.clone() }
    };
    let expected: Vec<Verdict> = mix
        .iter()
        .map(|r| {
            let want = before.decide(&r.facts()).verdict;
            let m = moved(r);
            let mut facts: RequestFacts<'_> = m.facts();
            facts.source_port = None; // curl picks its own
            assert_eq!(after.decide(&facts).verdict, want, "moving {r:?} onto loopback changed its verdict");
            want
        })
        .collect();

    let pki = Pki::new(&dir.join("pki"), TRUST_DOMAIN).unwrap();
    let mut certs: HashMap<Option<String>, Identity> = HashMap::new();
    for r in &mix {
        if let Some(uri) = &r.uri_san {
            if !certs.contains_key(uri) {
                let id = pki.issue_with_uri(&format!("client-{}", certs.len()), uri.as_deref()).unwrap();
                certs.insert(uri.clone(), id);
            }
        }
    }
    let pair = start_pair(&dir, server_ips, Some(ports), &config, &workload, &pki);
    let sent: Vec<Sent> = mix
        .iter()
        .map(|r| {
            let IpAddr::V4(from) = moved(r).source_ip else { panic!("{r:?}") };
            Sent { from, cert: r.uri_san.as_ref().map(|u| certs[u].clone()), method: r.method.clone(), path: r.path.clone() }
        })
        .collect();

    // Four curls at a time; each request through both Envoys.
    let results: Vec<(usize, [Outcome; 2])> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let (pair, sent, mix, ca) = (&pair, &sent, &mix, pki.ca_cert());
                scope.spawn(move || {
                    (w..sent.len())
                        .step_by(4)
                        .map(|i| {
                            let what = format!("request {i} {:?}", mix[i]);
                            let v = pair.servers.each_ref().map(|server| outcome(&what, server.name, &sent[i], &send(pair, server, &sent[i], ca)));
                            (i, v)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    });
    let mut tally: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut refused = 0;
    for (i, outcomes) in &results {
        let r = &mix[*i];
        let what = format!("request {i} {r:?}");
        for (server, o) in pair.servers.iter().zip(outcomes) {
            check(&what, server.name, *o, expected[*i]);
        }
        // Both Envoys run the same inbound TLS: they refuse the same handshakes.
        assert_eq!(outcomes[0] == Outcome::RefusedHandshake, outcomes[1] == Outcome::RefusedHandshake, "{what}: {outcomes:?}");
        if outcomes[0] == Outcome::RefusedHandshake {
            refused += 1;
            *tally.entry((r.kind.name().to_string(), "DENY (handshake)".to_string())).or_default() += 1;
        } else {
            *tally.entry((r.kind.name().to_string(), expected[*i].to_string())).or_default() += 1;
        }
    }
    assert_eq!(results.len(), mix.len());
    assert!(tally.keys().any(|(_, v)| v == "ALLOW") && tally.keys().any(|(_, v)| v == "DENY"), "{tally:?}");
    println!(
        "tutorial: {} requests (mTLS to STRICT port {}, plaintext to DISABLE port {}), same verdict from the engine, RBAC and ext_authz; {refused} refused at the handshake (no SPIFFE id under {TRUST_DOMAIN}); {tally:?} in {:?}",
        mix.len(),
        ports.0,
        ports.1,
        started.elapsed()
    );
    drop(pair);
    let _ = std::fs::remove_dir_all(&dir);
}
