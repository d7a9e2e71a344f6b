//! The story on the namespace mesh (`krites_testbed::yaobank::mesh`): the same acts as on
//! loopback, with the traffic a cluster has. Every call goes from a process in its pod
//! through that pod's iptables interception and sidecar (15001, Istio mTLS) to the callee's
//! sidecar (15006, Krites); the database answers on a port declared HTTP (2379, the HTTP role
//! answers 403) and on one declared TCP (12379, the NETWORK role closes the connection).
//! The attack pod has no sidecar: it sends what a sidecar would, with summary's stolen
//! certificate (`openssl s_client`), or plaintext.

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use krites_demo::{balance_in_page, BALANCE_KEY};
use krites_testbed::mesh::MeshPod;
use krites_testbed::yaobank::mesh::{
    compile_policies, put_request, MeshBank, APP_PORT, CLUSTER_FILE, ETCD_HTTP, ETCD_TCP,
    POLICY_FILE,
};
use krites_testbed::yaobank::OPEN_CONFIG;

use super::{checkpoint, page_problem, verdict, Story, BALANCE, INTERRUPTED, STOLEN};

/// Network namespaces of this process (`kr<pid>n...`) that still exist.
pub fn namespaces_left() -> usize {
    let prefix = format!("kr{}n", std::process::id());
    std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.starts_with(&prefix))
                .count()
        })
        .unwrap_or(0)
}

/// The status line of a raw HTTP/1.1 answer (0: none).
fn http_status(reply: &str) -> u16 {
    reply
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The body of a raw HTTP/1.1 answer.
fn http_body(reply: &str) -> &str {
    reply.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

fn balance_detail(status: u16, body: &str) -> String {
    match status {
        200 | 201 => super::balance_of(body)
            .map(|b| format!(": balance {b}"))
            .unwrap_or_default(),
        0 | 403 => String::new(),
        _ => format!(" ({})", body.lines().next().unwrap_or("").trim()),
    }
}

struct Acts<'a> {
    bank: &'a MeshBank,
    story: Story,
}

impl Acts<'_> {
    /// An HTTP answer (`curl` in a pod) and the status the tutorial says it gets.
    fn curl(&mut self, title: &str, from: &MeshPod, args: &[&str], expect: u16) -> Result<()> {
        let c = self.bank.curl(from, args)?;
        let detail = match c.code {
            0 => format!(" ({})", c.body.lines().last().unwrap_or("").trim()),
            code => balance_detail(code, &c.body),
        };
        self.story.verdict(
            c.code == expect,
            verdict(c.code),
            &c.code.to_string(),
            title,
            &detail,
        );
        Ok(())
    }

    /// A connection the policy must close before the application answers (`tcp`).
    fn closed(&mut self, title: &str, answered: Option<u16>, detail: &str) {
        match answered {
            None => self.story.verdict(true, "CLOSED ", "tcp", title, detail),
            Some(code) => self.story.verdict(
                false,
                verdict(code),
                &code.to_string(),
                title,
                " (the application answered)",
            ),
        }
    }

    /// The bank page, from the browser pod, must show `balance`.
    fn page(&mut self, title: &str, balance: &str) -> Result<()> {
        let c = self.bank.curl(&self.bank.browser, &[&self.bank.page_url()])?;
        let shown = balance_in_page(&c.body).map(str::to_string);
        let detail = match &shown {
            Some(b) => format!(": balance {b}"),
            None => format!(": no balance shown ({})", page_problem(&c.body)),
        };
        self.story.verdict(
            c.code == 200 && shown.as_deref() == Some(balance),
            verdict(c.code),
            &c.code.to_string(),
            title,
            &detail,
        );
        Ok(())
    }

    /// The attack pod's etcd write with summary's stolen certificate, offering `alpn` as
    /// summary's sidecar would; returns the status etcd answered (0: closed, no answer).
    fn stolen_put(&self, port: u16, alpn: &str) -> Result<(u16, String)> {
        let b = self.bank;
        let put = put_request(BALANCE_KEY, STOLEN);
        let t = b.openssl(
            &b.attack,
            (b.database.ip(), port),
            alpn,
            b.summary.identity(),
            &put,
        )?;
        Ok((http_status(&t.output), http_body(&t.output).to_string()))
    }
}

pub fn run(bank: Box<MeshBank>, once: bool, stop_rx: &mpsc::Receiver<()>) -> Result<bool> {
    let mut bank = *bank;
    let started = Instant::now();
    let exe = std::env::current_exe().context("locating the demo's own binary")?;
    println!("== Krites demo: Calico's YAO Bank tutorial, enforced inside Envoy ==");
    println!(
        "work dir (bootstraps, ECDS files, logs, certificates): {}\n",
        bank.mesh.dir().display()
    );
    println!("Starting YAO Bank with no policy (Krites config {OPEN_CONFIG}):");
    bank.start(OPEN_CONFIG, BALANCE, &exe, &mut |what| {
        println!("  up: {what}");
        checkpoint()
    })
    .context("starting YAO Bank on the namespace mesh")?;
    print_topology(&bank);
    println!(
        "\nThe bank: {}   (from the browser pod: ip netns exec {} curl {})",
        bank.page_url(),
        bank.browser.pod().netns(),
        bank.page_url()
    );
    checkpoint()?;

    let mut acts = Acts {
        bank: &bank,
        story: Story::default(),
    };
    let b = &bank;
    println!("\n-- Act 1: no policy. The app works, and so do the attacks. --");
    acts.page("the browser loads the bank page", BALANCE)?;
    acts.curl(
        &format!("a compromised customer pod reads the database (port {ETCD_HTTP}, http)"),
        &b.customer,
        &[&b.balance_url(ETCD_HTTP)],
        200,
    )?;
    checkpoint()?;
    let (code, body) = acts.stolen_put(ETCD_HTTP, "istio-http/1.1")?;
    acts.story.verdict(
        code == 200,
        verdict(code),
        &code.to_string(),
        &format!("the attack pod, with summary's stolen keys, changes the balance (port {ETCD_HTTP}, http)"),
        &balance_detail(code, &body),
    );
    let (code, body) = acts.stolen_put(ETCD_TCP, "istio")?;
    acts.story.verdict(
        code == 200,
        verdict(code),
        &code.to_string(),
        &format!("the attack pod, with summary's stolen keys, changes it over port {ETCD_TCP} (tcp)"),
        &balance_detail(code, &body),
    );
    acts.page("the bank page now shows the attacker's balance", STOLEN)?;
    b.set_balance(BALANCE).context("restoring the balance")?;
    println!("  (the bank restores the balance from its books: {BALANCE})");
    checkpoint()?;

    println!("\n-- Act 2: the tutorial's policies, compiled by control and applied hot --");
    println!("  customer: GET only, from anyone | summary: only from service account customer | database: only from service account summary");
    let ips = b.ips();
    let (config, revision) = compile_policies(&ips)?;
    let names: Vec<String> = serde_json::from_str::<serde_json::Value>(&config)?["policies"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    println!(
        "  control compiled {POLICY_FILE} ({}) and {CLUSTER_FILE} (with this mesh's pod IPs) into {} bytes, revision {revision}",
        names.join(", "),
        config.len()
    );
    let uptime = |p: &MeshPod| MeshBank::stat(p, "server.uptime");
    let before: Vec<u64> = b.sidecars().iter().map(|p| uptime(p)).collect();
    let story = acts.story;
    let pushed = Instant::now();
    let version = bank.apply(&config).context("applying the policies")?;
    let took = pushed.elapsed();
    let b = &bank;
    let mut acts = Acts { bank: b, story };
    let accepted: Vec<String> = b
        .sidecars()
        .iter()
        .map(|p| {
            let (ok, _) = MeshBank::ecds_counts(p).unwrap_or_default();
            format!("{} v{ok}", p.spec.name)
        })
        .collect();
    let kept = b
        .sidecars()
        .iter()
        .zip(&before)
        .all(|(p, up)| uptime(p) >= *up);
    println!(
        "  written as ECDS version {version} into each sidecar's watched file, taken in {:.0} ms (accepted: {}); Envoy restarted: {}",
        took.as_secs_f64() * 1000.0,
        accepted.join(", "),
        if kept { "no (uptime kept)" } else { "YES" }
    );
    acts.story
        .check(kept, "the sidecars took the policies without restarting");
    checkpoint()?;

    acts.page("the browser loads the bank page", BALANCE)?;
    acts.curl(
        "the browser POSTs to the bank page",
        &b.browser,
        &["-X", "POST", &b.page_url()],
        403,
    )?;
    acts.curl(
        &format!("a compromised customer pod reads the database (port {ETCD_HTTP}, http)"),
        &b.customer,
        &[&b.balance_url(ETCD_HTTP)],
        403,
    )?;
    let c = b.curl(&b.customer, &[&b.balance_url(ETCD_TCP)])?;
    acts.closed(
        &format!("a compromised customer pod reads the database over port {ETCD_TCP} (tcp)"),
        (c.code != 0).then_some(c.code),
        "",
    );
    checkpoint()?;
    let (index_before, balance_before) = {
        let (balance, index) = b.etcd_state()?;
        (index, balance)
    };
    let (code, _) = acts.stolen_put(ETCD_HTTP, "istio-http/1.1")?;
    acts.story.verdict(
        code == 403,
        verdict(code),
        &code.to_string(),
        &format!("the attack pod, with summary's stolen keys, changes the balance (port {ETCD_HTTP}, http)"),
        "",
    );
    let (code, _) = acts.stolen_put(ETCD_TCP, "istio")?;
    acts.closed(
        &format!("the attack pod, with summary's stolen keys, changes it over port {ETCD_TCP} (tcp)"),
        (code != 0).then_some(code),
        "",
    );
    let value = format!("value={STOLEN}");
    acts.curl(
        &format!("the attack pod changes the balance in plaintext (port {ETCD_HTTP}, http)"),
        &b.attack,
        &["-X", "PUT", &b.balance_url(ETCD_HTTP), "-d", &value],
        403,
    )?;
    let got = b.mesh.client(
        &b.attack,
        (ips.database, ETCD_TCP),
        &put_request(BALANCE_KEY, STOLEN),
        None,
    )?;
    let answered = http_status(&got.reply);
    acts.closed(
        &format!("the attack pod changes it in plaintext over port {ETCD_TCP} (tcp)"),
        (answered != 0 || !got.closed).then_some(answered),
        "",
    );
    let xfcc = "x-forwarded-client-cert: By=spiffe://cluster.local/ns/default/sa/database;URI=spiffe://cluster.local/ns/default/sa/summary";
    let xff = format!("x-forwarded-for: {}", ips.summary);
    acts.curl(
        "the attack pod also forges x-forwarded-client-cert and x-forwarded-for",
        &b.attack,
        &[
            "-X",
            "PUT",
            &b.balance_url(ETCD_HTTP),
            "-H",
            xfcc,
            "-H",
            &xff,
            "-d",
            &value,
        ],
        403,
    )?;
    checkpoint()?;
    let (balance, index) = b.etcd_state()?;
    acts.story.check(
        balance == BALANCE && balance_before == BALANCE && index == index_before,
        &format!("the balance in etcd is unchanged: {balance} (etcd index {index_before} -> {index}: no write arrived)"),
    );
    acts.curl(
        &format!("summary, through its sidecar, reads the database over port {ETCD_TCP} (tcp)"),
        &b.summary,
        &[&b.balance_url(ETCD_TCP)],
        200,
    )?;
    acts.page("the browser loads the bank page again", BALANCE)?;
    let mut story = acts.story;
    story.all_running(&bank.exited());
    print_stats(&bank);
    story.result(started);

    if !once {
        print_usage(&bank);
        loop {
            match stop_rx.recv_timeout(Duration::from_secs(2)) {
                Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let gone = bank.exited();
                    if !gone.is_empty() && !INTERRUPTED.load(Ordering::SeqCst) {
                        bail!(
                            "stopped unexpectedly: {} (logs in {})",
                            gone.join(", "),
                            bank.mesh.dir().display()
                        );
                    }
                }
            }
        }
        println!("\nstopping etcd, the services and the sidecars; removing the pods' namespaces");
    }
    drop(bank);
    Ok(story.ok)
}

fn print_topology(bank: &MeshBank) {
    println!(
        "\n  {:<9} {:<12} {:<26} {:<38} app",
        "pod", "pod IP", "network namespace", "sidecar"
    );
    let rows: [(&MeshPod, &str, String); 5] = [
        (
            &bank.database,
            "envoy, uid 1337, Krites",
            format!("etcd :{ETCD_HTTP} (http) :{ETCD_TCP} (tcp)"),
        ),
        (
            &bank.summary,
            "envoy, uid 1337, Krites",
            format!("summary :{APP_PORT}"),
        ),
        (
            &bank.customer,
            "envoy, uid 1337, Krites",
            format!("customer :{APP_PORT}"),
        ),
        (
            &bank.attack,
            "none",
            "openssl/curl with summary's stolen certificate".into(),
        ),
        (&bank.browser, "none", "curl".into()),
    ];
    for (p, sidecar, app) in rows {
        println!(
            "  {:<9} {:<12} {:<26} {:<38} {app}",
            p.spec.name,
            p.ip().to_string(),
            p.pod().netns(),
            sidecar
        );
    }
    println!(
        "  bridge {} ({}), connected to nothing else; sidecars: virtualInbound :15006, virtualOutbound :15001, PERMISSIVE mTLS",
        bank.mesh.network().bridge(),
        bank.mesh.network().cidr()
    );
}

fn print_stats(bank: &MeshBank) {
    println!("\nKrites' counters (Envoy /stats, wasmcustom.*):");
    for p in bank.sidecars() {
        let stats = p.stats().unwrap_or_default();
        let stat = |n: &str| stats.get(&format!("wasmcustom.{n}")).copied().unwrap_or(0);
        let reasons: Vec<String> = stats
            .iter()
            .filter_map(|(k, v)| {
                let reason = k
                    .strip_prefix("wasmcustom.krites_reason_")?
                    .strip_suffix("_total")?;
                (*v > 0).then(|| format!("{reason} {v}"))
            })
            .collect();
        println!(
            "  {:<10} requests {:>2}  allowed {:>2}  denied {:>2}  ({})",
            p.spec.name,
            stat("krites_requests_total"),
            stat("krites_allowed_total"),
            stat("krites_denied_total"),
            reasons.join(", ")
        );
    }
    let denials = bank.denials_of(bank.attack.ip(), 5, Duration::from_secs(3));
    let shorten = |l: &str| {
        l.find("wasm log")
            .and_then(|i| l.get(i..))
            .unwrap_or(l)
            .trim()
            .to_string()
    };
    let http = denials
        .iter()
        .rev()
        .find(|l| l.contains("certificate says") && l.contains("request "));
    let tcp = denials
        .iter()
        .rev()
        .find(|l| l.contains("certificate says") && !l.contains("request "));
    if let Some(line) = http {
        println!(
            "Why the database sidecar denied the stolen keys on the http port (its log):\n  {}",
            shorten(line)
        );
    }
    if let Some(line) = tcp {
        println!("and on the tcp port:\n  {}", shorten(line));
    }
}

fn print_usage(bank: &MeshBank) {
    let id = bank.summary.identity();
    let ns = |p: &MeshPod| p.pod().netns().to_string();
    println!(
        "\nYAO Bank keeps running, with the policies in force. From the pods (as root):"
    );
    println!(
        "  ip netns exec {} curl {}                 # the page (GET is allowed)",
        ns(&bank.browser),
        bank.page_url()
    );
    println!(
        "  ip netns exec {} curl -X POST {}         # 403: customer takes GET only",
        ns(&bank.browser),
        bank.page_url()
    );
    println!("  # the compromised customer pod reads the database through its sidecar (403):");
    println!(
        "  ip netns exec {} curl {}",
        ns(&bank.customer),
        bank.balance_url(ETCD_HTTP)
    );
    println!("  # the attack pod changes the balance with summary's stolen keys (403; on :{ETCD_TCP} the connection closes):");
    println!(
        "  printf 'PUT {BALANCE_KEY}?value={STOLEN} HTTP/1.1\\r\\nHost: database\\r\\nConnection: close\\r\\n\\r\\n' | \\\n    ip netns exec {} openssl s_client -quiet -connect {}:{ETCD_HTTP} -alpn istio-http/1.1 -cert {} -key {}",
        ns(&bank.attack),
        bank.database.ip(),
        id.cert.display(),
        id.key.display()
    );
    println!(
        "  ip netns exec {} curl -s 127.0.0.1:15000/stats | grep krites   # the database sidecar's counters",
        ns(&bank.database)
    );
    println!(
        "  grep 'krites: DENY' {}   # and why it denied",
        bank.database.dir().join("envoy.log").display()
    );
    println!("Ctrl-C stops everything and removes the namespaces.");
}
