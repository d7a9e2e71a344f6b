//! The two reference configurations of the load benchmark decide as the engine
//! does, in real Envoys: Envoy's RBAC filter with the rules `rbac_filters`
//! translated, and Envoy's ext_authz filter asking `krites-ext-authz` (the
//! built binary). Each Envoy listens on 127.0.0.0/8 only, on ports the kernel
//! says are free, with an Istio-style PERMISSIVE inbound listener (mTLS that
//! requires a client certificate, or plaintext, told apart by the TLS
//! inspector) and a direct 200 as the application; curl, bound to chosen
//! 127.x source addresses, plays the pods and the attackers.
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
use krites_testbed::process::{free_port, ChildGuard};
use krites_testbed::{envoy_binary, Identity, Pki, Request, Response};
use serde_json::{json, Value};

const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// A scratch directory under the target dir, fresh for this run.
fn work_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ext-authz-rbac-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One Envoy standing in for the protected workload's sidecar.
struct Server {
    _guard: ChildGuard,
    addr: SocketAddr,
    name: &'static str,
}

fn socket(addr: SocketAddr) -> Value {
    json!({ "socket_address": { "address": addr.ip().to_string(), "port_value": addr.port() } })
}

/// The inbound listener on `addr`: PERMISSIVE (mTLS requiring a client
/// certificate from `ca`, or plaintext), `filters` then the router, a direct 200.
fn bootstrap(addr: SocketAddr, admin: SocketAddr, filters: &[Value], clusters: Vec<Value>, id: &Identity, ca: &Path) -> Value {
    let mut http_filters = filters.to_vec();
    http_filters.push(json!({ "name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }));
    let hcm = |stat: &str| {
        json!([{ "name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": HCM,
            "stat_prefix": stat,
            "use_remote_address": false,
            "normalize_path": true,
            "merge_slashes": true,
            "route_config": { "name": "inbound", "virtual_hosts": [{ "name": "app", "domains": ["*"],
                "routes": [{ "match": { "prefix": "/" }, "direct_response": { "status": 200, "body": { "inline_string": "ok\n" } } }] }] },
            "http_filters": http_filters
        } }])
    };
    json!({
        "node": { "id": "sidecar~test", "cluster": "test" },
        "admin": { "address": socket(admin) },
        "static_resources": {
            "listeners": [{
                "name": "inbound",
                "address": socket(addr),
                "enable_reuse_port": false,
                "listener_filters": [{ "name": "envoy.filters.listener.tls_inspector", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector" } }],
                "filter_chains": [
                    {
                        "filter_chain_match": { "transport_protocol": "tls" },
                        "filters": hcm("inbound_mtls"),
                        "transport_socket": { "name": "envoy.transport_sockets.tls", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                            "require_client_certificate": true,
                            "common_tls_context": {
                                "tls_certificates": [{ "certificate_chain": { "filename": id.cert }, "private_key": { "filename": id.key } }],
                                "validation_context": { "trusted_ca": { "filename": ca } }
                            }
                        } }
                    },
                    { "filters": hcm("inbound_plain") }
                ]
            }],
            "clusters": clusters
        }
    })
}

/// `tls`: the server's certificate and the CA its clients' certificates come from.
fn start_envoy(name: &'static str, dir: &Path, ip: Ipv4Addr, port: Option<u16>, filters: &[Value], clusters: Vec<Value>, tls: (&Identity, &Path)) -> Server {
    let (id, ca) = tls;
    let mut last = String::new();
    // Ports are free when picked, not necessarily when Envoy binds them: retry.
    for _ in 0..3 {
        let addr = SocketAddr::from((ip, port.unwrap_or_else(|| free_port(ip).unwrap())));
        let admin = SocketAddr::from((ip, free_port(ip).unwrap()));
        let config = dir.join(format!("{name}.json"));
        std::fs::write(&config, serde_json::to_vec_pretty(&bootstrap(addr, admin, filters, clusters.clone(), id, ca)).unwrap()).unwrap();
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
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = Request::new().to(admin).path("/ready").timeout(Duration::from_secs(2)).send();
            if matches!(ready, Ok(ref r) if r.status == 200) && std::net::TcpStream::connect(addr).is_ok() {
                return Server { _guard: guard, addr, name };
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

fn ext_authz_filter() -> Value {
    json!({ "name": "envoy.filters.http.ext_authz", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "transport_api_version": "V3",
        "grpc_service": { "envoy_grpc": { "cluster_name": "ext_authz" }, "timeout": "5s" },
        "failure_mode_allow": false
    } })
}

fn ext_authz_cluster(to: SocketAddr) -> Value {
    json!({
        "name": "ext_authz",
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": { "cluster_name": "ext_authz", "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": socket(to) } }] }] },
        "typed_extension_protocol_options": { "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": { "http2_protocol_options": {} }
        } }
    })
}

/// The RBAC Envoy and the ext_authz Envoy (with its authorizer) for one workload.
struct Pair {
    servers: [Server; 2],
    _authorizer: ChildGuard,
    server_name: &'static str,
}

fn start_pair(dir: &Path, ips: [Ipv4Addr; 3], port: Option<u16>, config: &PluginConfig, workload: &Workload, pki: &Pki) -> Pair {
    let server_id = pki.issue("server", &workload.namespace, &workload.service_account).unwrap();
    let rbac = rbac_filters(config, workload).unwrap();
    assert!(rbac.stats.decision_equivalent(), "{}", rbac.stats);
    eprintln!("rbac: {}", rbac.stats);
    let (authorizer, listen) = start_authorizer(dir, ips[2], config, workload);
    let servers = std::thread::scope(|s| {
        let a = s.spawn(|| start_envoy("rbac", dir, ips[0], port, &rbac.filters, Vec::new(), (&server_id, pki.ca_cert())));
        let b = s.spawn(|| {
            start_envoy("ext_authz", dir, ips[1], port, &[ext_authz_filter()], vec![ext_authz_cluster(listen)], (&server_id, pki.ca_cert()))
        });
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

fn send(pair: &Pair, server: &Server, s: &Sent, ca: &Path) -> Response {
    let mut req = Request::from(s.from).to(server.addr).method(&s.method).path(&s.path).timeout(Duration::from_secs(10));
    if let Some(id) = &s.cert {
        req = req.tls(ca, Some(id), pair.server_name);
    }
    req.send().unwrap()
}

/// Allowed (200) or denied the way Istio denies (403 `RBAC: access denied`);
/// anything else is a failure of the rig, not a verdict.
fn verdict(what: &str, via: &str, s: &Sent, r: &Response) -> Verdict {
    match r.status {
        200 => Verdict::Allow,
        403 => {
            if s.method != "HEAD" {
                assert_eq!(r.body, DENIED_BODY, "{what} via {via}: 403 body");
            }
            Verdict::Deny
        }
        _ => panic!("{what} via {via}: {r:?}"),
    }
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
        ("summary's pod in plaintext (PERMISSIVE: the address is the factor)", sent(summary_ip, None, "GET", "/v2/keys"), Verdict::Allow),
        ("a compromised customer pod reads the database", sent(customer_ip, Some(&customer), "GET", "/v2/keys/accounts/519940/balance"), Verdict::Deny),
        ("customer's certificate from summary's address", sent(summary_ip, Some(&customer), "GET", "/v2/keys"), Verdict::Deny),
        ("summary's stolen certificate from customer's pod", sent(customer_ip, Some(&summary), "GET", "/v2/keys"), Verdict::Deny),
        ("summary's stolen certificate from the attack pod", sent(attacker_ip, Some(&summary), "PUT", "/v2/keys/accounts/519940/balance"), Verdict::Deny),
        ("plaintext from an address no pod owns", sent(unknown_ip, None, "GET", "/v2/keys"), Verdict::Deny),
        ("a certificate without a SPIFFE id from summary's address", sent(summary_ip, Some(&no_spiffe), "GET", "/v2/keys"), Verdict::Deny),
    ];
    let engine = WorkloadPolicy::new(Arc::new(PolicySet::from_config(&config).unwrap()), &workload);
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
            assert_eq!(verdict(what, server.name, s, &r), *want, "{what} via {}: {r:?}", server.name);
        }
    }
    eprintln!("yaobank: {} requests through both Envoys in {:?}", cases.len(), started.elapsed());
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

fn config_to_loopback(config: &mut PluginConfig, port: u16) {
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
            for p in dst.ports.iter_mut().chain(dst.not_ports.iter_mut()) {
                if *p == PortSpec::Number(TARGET_PORT) {
                    *p = PortSpec::Number(port);
                }
            }
        }
    }
}

/// TARGET_PORT if free on both server addresses, else a free port of the
/// same rules' ranges (8000-8999: in `8000:8999`, not 80 or 443).
fn target_port(ips: &[Ipv4Addr]) -> u16 {
    std::iter::once(TARGET_PORT)
        .chain(8000..=8999)
        .find(|&p| ips.iter().all(|&ip| TcpListener::bind((ip, p)).is_ok()))
        .unwrap()
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
    let port = target_port(&server_ips[..2]);
    let mut config = original.clone();
    config_to_loopback(&mut config, port);

    // The oracle: the engine on the generated config, and (the same verdicts)
    // on the config moved onto loopback, as the Envoys will see the requests.
    let before = WorkloadPolicy::new(Arc::new(PolicySet::from_config(&original).unwrap()), &workload);
    let after = WorkloadPolicy::new(Arc::new(PolicySet::from_config(&config).unwrap()), &workload);
    let moved = |r: &OwnedRequest| {
        let IpAddr::V4(ip) = r.source_ip else { panic!("{r:?}") };
        OwnedRequest { source_ip: IpAddr::V4(to_loopback(ip)), destination_ip: IpAddr::V4(server_ips[0]), destination_port: port, ..r.clone() }
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
    let pair = start_pair(&dir, server_ips, Some(port), &config, &workload, &pki);
    let sent: Vec<Sent> = mix
        .iter()
        .map(|r| {
            let IpAddr::V4(from) = moved(r).source_ip else { panic!("{r:?}") };
            Sent { from, cert: r.uri_san.as_ref().map(|u| certs[u].clone()), method: r.method.clone(), path: r.path.clone() }
        })
        .collect();

    // Four curls at a time; each request through both Envoys.
    let results: Vec<(usize, [Verdict; 2])> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let (pair, sent, mix, ca) = (&pair, &sent, &mix, pki.ca_cert());
                scope.spawn(move || {
                    (w..sent.len())
                        .step_by(4)
                        .map(|i| {
                            let what = format!("request {i} {:?}", mix[i]);
                            let v = pair.servers.each_ref().map(|server| verdict(&what, server.name, &sent[i], &send(pair, server, &sent[i], ca)));
                            (i, v)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    });
    let mut tally: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (i, [rbac, ext_authz]) in &results {
        let r = &mix[*i];
        assert_eq!(*rbac, expected[*i], "request {i} via rbac: {r:?}");
        assert_eq!(*ext_authz, expected[*i], "request {i} via ext_authz: {r:?}");
        *tally.entry((r.kind.name().to_string(), expected[*i].to_string())).or_default() += 1;
    }
    assert_eq!(results.len(), mix.len());
    assert!(tally.keys().any(|(_, v)| v == "ALLOW") && tally.keys().any(|(_, v)| v == "DENY"), "{tally:?}");
    eprintln!("tutorial: {} requests, same verdict from the engine, RBAC and ext_authz: {tally:?} in {:?}", mix.len(), started.elapsed());
    drop(pair);
    let _ = std::fs::remove_dir_all(&dir);
}
