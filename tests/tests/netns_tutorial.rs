//! YAO Bank on the namespace mesh (issue 12, part 5): Calico's tutorial with its real parts
//! (etcd v2 as the database, the `customer` and `summary` services of `demo/`) in pods that
//! are network namespaces, each workload behind an istiod-shaped sidecar (uid 1337, Istio's
//! iptables interception, PERMISSIVE mTLS, the Krites module), and the tutorial's three
//! policies compiled by `control` from `tests/fixtures/yaobank/` with this mesh's pod IPs.
//!
//! The database pod serves etcd on two ports: 2379, declared HTTP (the tutorial's `http`
//! Service port: HTTP chains, the HTTP role answers 403), and 12379, declared TCP (a `tcp`
//! Service port to the same etcd: TCP chains, the NETWORK role closes the connection). The
//! attack pod (no sidecar) holds summary's stolen certificate and tries both, over mTLS as a
//! sidecar would and in plaintext; etcd's index shows that none of its writes arrived.
//!
//! ```text
//! browser ─plain─▶ customer sidecar ─▶ customer app ─▶ (15001) ─mTLS─▶ summary sidecar ─▶ summary app
//!   summary app ─▶ (15001) ─mTLS─▶ database sidecar ─▶ etcd :2379 (http) / :12379 (tcp)
//! attack (summary's stolen cert, or plaintext) ──▶ database :2379 / :12379  → 403 / closed
//! ```
//!
//! The pods, the services and the probes are `krites_testbed::yaobank::mesh` (shared with
//! `make demo` and `netns_cluster.rs`); this file holds the tutorial's checks.
//!
//! Needs root (skipped otherwise, with the reason; with `CI=true` it fails instead), the
//! namespace mesh's Debian packages (iproute2, iptables, util-linux, python3, openssl, curl)
//! and etcd (Debian's etcd-server).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::path::Path;
use std::time::{Duration, Instant};

use krites_demo::{balance_in_page, BALANCE_KEY};
use krites_testbed::yaobank::mesh::{
    compile_policies, put_request, MeshBank, APP_PORT, ETCD_HTTP, ETCD_TCP,
};

const BALANCE: &str = "1500.00";
const STOLEN: &str = "1000000000.00";

#[test]
fn yao_bank_runs_on_the_namespace_mesh_and_the_stolen_key_opens_neither_port() {
    if !krites_testbed::mesh::runnable("netns_tutorial") {
        return;
    }
    let started = Instant::now();
    let mut bank = MeshBank::create().unwrap();
    let ips = bank.ips();
    let (config, revision) = compile_policies(&ips).unwrap();
    bank.start(
        &config,
        BALANCE,
        Path::new(env!("CARGO_BIN_EXE_krites-demo")),
        &mut |what| {
            eprintln!("up: {what}");
            Ok(())
        },
    )
    .unwrap();
    let setup = started.elapsed();
    eprintln!(
        "YAO Bank up in {setup:?}: customer {}, summary {}, database {} (etcd :{ETCD_HTTP} http, :{ETCD_TCP} tcp), attack {}, browser {}; {} bytes of compiled policy, revision {revision}",
        ips.customer, ips.summary, ips.database, ips.attack, ips.browser,
        config.len()
    );
    let (db, summary, customer, attack, browser) =
        (&bank.database, &bank.summary, &bank.customer, &bank.attack, &bank.browser);
    let stat = MeshBank::stat;

    let stolen = summary.identity().clone();
    let mut r = krites_testbed::mesh::Report::default();
    let db_ip = ips.database;

    // (1) The bank page, end to end: browser -> customer -> summary -> etcd, each hop
    // through the caller's sidecar (15001, mTLS) and the callee's (15006, Krites).
    let c = bank.curl(browser, &[&bank.page_url()]).unwrap();
    r.check(
        c.code == 200 && balance_in_page(&c.body) == Some(BALANCE),
        &format!("(1) browser GET customer page -> 200, balance {BALANCE} (customer -> summary -> database)"),
        || format!("{}: {} {}", c.command, c.code, c.body),
    );
    let c = bank.curl(browser, &["-X", "POST", &bank.page_url()]).unwrap();
    r.check(
        c.code == 403,
        "(1) browser POST customer page -> 403 (customer: GET only)",
        || format!("{}: {} {}", c.command, c.code, c.body),
    );
    let summary_out = format!("listener.{db_ip}_{ETCD_HTTP}.downstream_cx_total");
    let customer_out = format!("listener.{}_{APP_PORT}.downstream_cx_total", ips.summary);
    r.check(
        stat(summary, &summary_out) > 0
            && stat(customer, &customer_out) > 0
            && stat(db, &format!("http.inbound_0.0.0.0_{ETCD_HTTP}.downstream_rq_2xx")) > 0
            && stat(summary, &format!("http.inbound_0.0.0.0_{APP_PORT}.downstream_rq_2xx")) > 0,
        "(1) the page went through the sidecars: customer/summary outbound, summary/database inbound HTTP chains",
        || format!("{summary_out}={}, {customer_out}={}", stat(summary, &summary_out), stat(customer, &customer_out)),
    );
    // The tutorial's compromised customer pod, through its own sidecar (its own cert).
    let c = bank.curl(customer, &[&bank.balance_url(ETCD_HTTP)]).unwrap();
    r.check(
        c.code == 403,
        &format!("(1) compromised customer pod -> database:{ETCD_HTTP} -> 403"),
        || format!("{}: {} {}", c.command, c.code, c.body),
    );
    let c = bank.curl(customer, &[&bank.balance_url(ETCD_TCP)]).unwrap();
    r.check(
        c.code == 0,
        &format!("(1) compromised customer pod -> database:{ETCD_TCP} (tcp) -> closed"),
        || format!("{}: {} {}", c.command, c.code, c.body),
    );

    // (2) + (3): the attack pod. Every attempt is the attacker's etcd write; none may arrive.
    let (before, index_before) = bank.etcd_state().unwrap();
    assert_eq!(before, BALANCE, "etcd's balance before the attacks");
    let put = put_request(BALANCE_KEY, STOLEN);

    // (2) Summary's stolen certificate, as summary's sidecar would present it.
    let t = bank.openssl(attack, (db_ip, ETCD_HTTP), "istio-http/1.1", &stolen, &put).unwrap();
    r.check(
        t.output.starts_with("HTTP/1.1 403"),
        &format!("(2) attack, stolen cert, ALPN istio-http/1.1, PUT -> database:{ETCD_HTTP} (http) -> 403"),
        || format!("{}: {:?}", t.command, t.output),
    );
    let t = bank.openssl(attack, (db_ip, ETCD_TCP), "istio", &stolen, &put).unwrap();
    r.check(
        !t.output.contains("HTTP/1."),
        &format!("(2) attack, stolen cert, ALPN istio, PUT -> database:{ETCD_TCP} (tcp) -> closed, no answer"),
        || format!("{}: {:?}", t.command, t.output),
    );
    // (3) Plaintext (PERMISSIVE takes it to the same chains; the address decides).
    let value = format!("value={STOLEN}");
    let c = bank
        .curl(attack, &["-X", "PUT", &bank.balance_url(ETCD_HTTP), "-d", &value])
        .unwrap();
    r.check(
        c.code == 403,
        &format!("(3) attack, plaintext PUT -> database:{ETCD_HTTP} (http) -> 403"),
        || format!("{}: {} {}", c.command, c.code, c.body),
    );
    let got = bank.mesh.client(attack, (db_ip, ETCD_TCP), &put, None).unwrap();
    r.check(
        !got.reply.contains("HTTP/1.") && got.closed,
        &format!("(3) attack, plaintext PUT -> database:{ETCD_TCP} (tcp) -> closed, no answer"),
        || format!("{}: {got:?}", got.command),
    );
    let c = bank
        .curl(attack, &["-X", "PUT", &bank.balance_url(ETCD_TCP), "-d", &value])
        .unwrap();
    r.check(
        c.code == 0,
        &format!("(3) attack, curl PUT -> database:{ETCD_TCP} (tcp) -> closed"),
        || format!("{}: {} {}", c.command, c.code, c.body),
    );
    let (after, index_after) = bank.etcd_state().unwrap();
    r.check(
        after == BALANCE && index_after == index_before,
        &format!("(2)(3) etcd got no write: balance {BALANCE}, X-Etcd-Index unchanged"),
        || format!("balance {after:?}, index {index_before} -> {index_after}"),
    );
    // One denial per attempt: HTTP and TCP with the stolen cert, HTTP and twice TCP in
    // plaintext.
    let denials = bank.denials_of(ips.attack, 5, Duration::from_secs(3));
    r.check(
        denials.len() >= 5 && stat(db, &format!("http.inbound_0.0.0.0_{ETCD_HTTP}.downstream_rq_4xx")) >= 2,
        &format!("(2)(3) Krites' denials on the database name the attack pod {} (HTTP and TCP chains)", ips.attack),
        || {
            format!(
                "{} denials:\n{}",
                denials.len(),
                db.envoy_log().lines().filter(|l| l.contains("krites")).take(20).collect::<Vec<_>>().join("\n")
            )
        },
    );

    // (4) Summary through its own sidecar to the TCP port: allowed, etcd answers.
    let c = bank.curl(summary, &[&bank.balance_url(ETCD_TCP)]).unwrap();
    r.check(
        c.code == 200 && c.body.contains(BALANCE),
        &format!("(4) summary app -> database:{ETCD_TCP} (tcp) via its sidecar -> etcd answers {BALANCE}"),
        || format!("{}: {} {}", c.command, c.code, c.body),
    );
    // The same kind of write the attacker sent, to a scratch key: it does arrive from summary,
    // so the refusals above were the policy's.
    let c = bank
        .curl(
            summary,
            &[
                "-X",
                "PUT",
                &format!("http://{db_ip}:{ETCD_TCP}/v2/keys/krites/probe"),
                "-d",
                "value=from-summary",
            ],
        )
        .unwrap();
    let (_, index_probe) = bank.etcd_state().unwrap();
    r.check(
        (c.code == 200 || c.code == 201) && index_probe > index_after,
        &format!("(4) summary app PUT -> database:{ETCD_TCP} (tcp) -> etcd writes it"),
        || format!("{}: {} {}; index {index_after} -> {index_probe}", c.command, c.code, c.body),
    );
    let tcp_out = format!("listener.{db_ip}_{ETCD_TCP}.downstream_cx_total");
    r.check(
        stat(summary, &tcp_out) >= 2
            && stat(db, &format!("tcp.inbound|{ETCD_TCP}||.downstream_cx_total")) > 0,
        "(4) it went summary outbound TCP listener -> mTLS -> database inbound TCP chain",
        || format!("{tcp_out}={}", stat(summary, &tcp_out)),
    );
    // The page still shows the untouched balance.
    let c = bank.curl(browser, &[&bank.page_url()]).unwrap();
    r.check(
        c.code == 200 && balance_in_page(&c.body) == Some(BALANCE),
        &format!("(1) after the attacks the page still shows {BALANCE}"),
        || format!("{}: {} {}", c.command, c.code, c.body),
    );

    eprintln!(
        "{} rows in {:?} (setup {setup:?})",
        r.rows,
        started.elapsed()
    );
    assert!(
        r.failures.is_empty(),
        "{} of {} rows failed:\n{}\n--- database access log ---\n{}\n--- summary access log ---\n{}\n--- customer access log ---\n{}",
        r.failures.len(),
        r.rows,
        r.failures.join("\n"),
        db.access_log(),
        summary.access_log(),
        customer.access_log()
    );
}
