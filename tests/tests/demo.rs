//! `make demo`: the story's outcomes (`--once`, as CI runs it), and that the demo leaves no
//! process behind, whether it finishes, is stopped with Ctrl-C while serving, or is stopped
//! while it is still starting up. Both modes: loopback (`--loopback`: each pod an Envoy on
//! 127.0.0.x) and the namespace mesh (the default as root; these tests need root and skip
//! without it, except under `CI=true`, where they fail), which must also leave no network
//! namespace behind.
//!
//! Every process the demo starts inherits a marker in its environment, so "nothing left" is
//! checked on the whole process table, not on what the demo says it started.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use krites_testbed::Request;

fn demo(marker: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_krites-demo"));
    cmd.env("KRITES_DEMO_TEST_MARKER", marker);
    cmd
}

fn marker(test: &str) -> String {
    format!("{test}-{}", std::process::id())
}

/// Processes whose environment carries the marker (the demo's whole process tree).
fn processes_with(marker: &str) -> Vec<String> {
    let needle = format!("KRITES_DEMO_TEST_MARKER={marker}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()) {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            found.push(format!(
                "{} {}",
                entry.file_name().to_string_lossy(),
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            ));
        }
    }
    found
}

fn assert_nothing_left(marker: &str, output: &str) {
    let left = processes_with(marker);
    assert!(
        left.is_empty(),
        "the demo left processes behind:\n{}\n--- its output ---\n{output}",
        left.join("\n")
    );
}

/// Lines of the child's stdout, as they come.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Reads lines until one contains `needle`; returns everything read.
fn read_until(rx: &mpsc::Receiver<String>, needle: &str, seen: &mut String, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !seen.contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
            }
            Err(_) => panic!("{needle:?} not printed within {timeout:?}:\n{seen}"),
        }
    }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the demo did not exit within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

#[test]
fn demo_once_plays_the_tutorial_and_cleans_up() {
    let marker = marker("once");
    let started = Instant::now();
    let out = demo(&marker)
        .args(["--loopback", "--once"])
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let all = format!(
        "{stdout}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "demo failed: {}\n{all}", out.status);
    println!(
        "{stdout}\n(the demo took {:.1} s)",
        started.elapsed().as_secs_f64()
    );

    assert!(
        stdout.starts_with("mode: loopback: asked for with --loopback\n"),
        "{all}"
    );
    // Setup: real etcd, the services and their sidecars, the ingress, the URL.
    for up in [
        "up: etcd (v2 API) on 127.0.0.13:",
        "up: database sidecar",
        "up: summary replica 2 and its sidecar",
        "up: customer and its sidecar",
        "up: ingress gateway",
    ] {
        assert!(stdout.contains(up), "missing {up:?}:\n{all}");
    }
    assert!(stdout.contains("The bank: http://127.0.0.10:"), "{all}");

    // Act 1 (no policy), then Act 2 (policies) in order, each step's verdict line exactly.
    let act2 = stdout.find("-- Act 2").expect("Act 2");
    let (act1, act2) = stdout.split_at(act2);
    for line in [
        "  ✓ allowed 200  the browser loads the bank page: balance 1500.00",
        "  ✓ allowed 200  a compromised customer pod reads the database: balance 1500.00",
        "  ✓ allowed 200  the attack pod, with summary's stolen keys, changes the balance: balance 1000000000.00",
        "  ✓ allowed 200  the bank page now shows the attacker's balance: balance 1000000000.00",
    ] {
        assert!(act1.lines().any(|l| l == line), "Act 1 lacks {line:?}:\n{all}");
    }
    for line in [
        "  ✓ the sidecars took the policies without restarting",
        "  ✓ allowed 200  the browser loads the bank page: balance 1500.00",
        "  ✓ DENIED  403  the browser POSTs to the bank page",
        "  ✓ DENIED  403  a compromised customer pod reads the database",
        "  ✓ DENIED  403  the attack pod reads the database with summary's stolen keys",
        "  ✓ DENIED  403  the attack pod, with summary's stolen keys, changes the balance",
        "  ✓ DENIED  403  the attack pod also forges x-forwarded-client-cert and x-forwarded-for",
        "  ✓ the balance in etcd is unchanged: 1500.00",
        "  ✓ allowed 200  the browser loads the bank page again: balance 1500.00",
        "  ✓ every process is still running",
    ] {
        assert!(
            act2.lines().any(|l| l == line),
            "Act 2 lacks {line:?}:\n{all}"
        );
    }
    assert!(
        act2.contains(
            "control compiled tests/fixtures/yaobank/policy.yaml (customer, summary, database)"
        ),
        "{all}"
    );
    assert!(act2.contains("Envoy restarted: no (same pids)"), "{all}");
    // The filter's own account of it: counters and the denial log line.
    assert!(
        act2.lines()
            .any(|l| l.starts_with("  database   ") && l.contains("denied  4")),
        "{all}"
    );
    assert!(
        act2.lines()
            .any(|l| l.starts_with("  customer   ") && l.contains("denied  1")),
        "{all}"
    );
    assert!(
        act2.contains("krites: DENY tier/default: no rule matched and tier default denies by default; certificate says default/summary but no known pod owns 127.0.0.66"),
        "{all}"
    );
    assert!(
        !stdout.lines().any(|l| l.starts_with("  x ")),
        "a step differed:\n{all}"
    );
    assert!(
        stdout.contains("RESULT: every step as the tutorial says"),
        "{all}"
    );

    assert_nothing_left(&marker, &all);
}

#[test]
fn demo_serves_until_ctrl_c_then_cleans_up() {
    let marker = marker("serve");
    let mut child = demo(&marker)
        .arg("--loopback")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut child);
    let mut seen = String::new();
    read_until(
        &rx,
        "Ctrl-C stops everything.",
        &mut seen,
        Duration::from_secs(120),
    );
    assert!(
        seen.contains("RESULT: every step as the tutorial says"),
        "{seen}"
    );
    assert!(
        seen.contains("--cert ") && seen.contains("-X PUT -d value="),
        "no attack commands printed:\n{seen}"
    );

    // The bank keeps serving the browser, with the policies in force.
    let url = seen
        .lines()
        .find_map(|l| l.strip_prefix("The bank: "))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let page = Request::from("127.0.0.1".parse().unwrap())
        .to(addr)
        .send()
        .unwrap();
    assert_eq!(page.status, 200, "{page:?}");
    assert!(
        page.body.contains("<span id=\"balance\">1500.00</span>"),
        "{}",
        page.body
    );
    let post = Request::from("127.0.0.1".parse().unwrap())
        .to(addr)
        .method("POST")
        .send()
        .unwrap();
    assert_eq!(post.status, 403, "{post:?}");

    signal(&child, "-INT");
    let status = wait_exit(&mut child, Duration::from_secs(30));
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
        seen.push_str(&line);
        seen.push('\n');
    }
    assert_eq!(status.code(), Some(130), "{seen}");
    assert!(
        seen.contains("interrupted: stopped every process the demo started (0 left)"),
        "{seen}"
    );
    assert_nothing_left(&marker, &seen);
}

#[test]
fn demo_stopped_during_startup_cleans_up() {
    let marker = marker("startup");
    let mut child = demo(&marker)
        .arg("--loopback")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut child);
    let mut seen = String::new();
    // etcd and the database sidecar run, the rest is on its way.
    read_until(
        &rx,
        "up: database sidecar",
        &mut seen,
        Duration::from_secs(120),
    );
    assert!(!processes_with(&marker).is_empty());
    signal(&child, "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(30));
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
        seen.push_str(&line);
        seen.push('\n');
    }
    assert_eq!(status.code(), Some(130), "{seen}");
    assert_nothing_left(&marker, &seen);
}

/// Whether the namespace mesh can run here: skip (outside CI) or fail (in CI) if not.
fn mesh_runnable(test: &str) -> bool {
    match krites_testbed::yaobank::mesh::preflight() {
        Ok(()) => true,
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
            panic!("the demo on the namespace mesh must run in CI: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}

/// Network namespaces (and the bridge) of the demo process `pid`: `kr<pid>n...` / `kr<pid>b...`.
fn namespaces_of(pid: u32) -> Vec<String> {
    let list = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ns = format!("kr{pid}n");
    let bridge = format!("kr{pid}b");
    let mut found: Vec<String> = list(&["netns", "list"])
        .lines()
        .filter(|l| l.starts_with(&ns))
        .map(str::to_string)
        .collect();
    found.extend(
        list(&["-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .filter(|n| n.starts_with(&bridge) || n.starts_with(&ns))
            .map(str::to_string),
    );
    found
}

#[test]
fn demo_once_on_the_namespace_mesh_plays_the_tutorial_and_cleans_up() {
    if !mesh_runnable("demo_once_on_the_namespace_mesh") {
        return;
    }
    let marker = marker("mesh-once");
    let started = Instant::now();
    // No flag: as root the demo picks the mesh by itself.
    let child = demo(&marker)
        .arg("--once")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the demo");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let all = format!(
        "{stdout}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "demo failed: {}\n{all}", out.status);
    println!(
        "{stdout}\n(the demo on the namespace mesh took {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    assert!(
        stdout.starts_with(
            "mode: namespace mesh: running as root and network namespaces can be created here\n"
        ),
        "{all}"
    );
    for up in [
        "up: database pod 10.",
        "up: summary pod 10.",
        "up: customer pod 10.",
        "up: etcd (v2 API) in the database pod on :2379 (http) and :12379 (tcp), balance seeded",
        "up: summary app",
        "up: customer app",
    ] {
        assert!(stdout.contains(up), "missing {up:?}:\n{all}");
    }
    let act2 = stdout.find("-- Act 2").expect("Act 2");
    let (act1, act2) = stdout.split_at(act2);
    for line in [
        "  ✓ allowed 200  the browser loads the bank page: balance 1500.00",
        "  ✓ allowed 200  a compromised customer pod reads the database (port 2379, http): balance 1500.00",
        "  ✓ allowed 200  the attack pod, with summary's stolen keys, changes the balance (port 2379, http): balance 1000000000.00",
        "  ✓ allowed 200  the attack pod, with summary's stolen keys, changes it over port 12379 (tcp): balance 1000000000.00",
        "  ✓ allowed 200  the bank page now shows the attacker's balance: balance 1000000000.00",
    ] {
        assert!(act1.lines().any(|l| l == line), "Act 1 lacks {line:?}:\n{all}");
    }
    for line in [
        "  ✓ the sidecars took the policies without restarting",
        "  ✓ allowed 200  the browser loads the bank page: balance 1500.00",
        "  ✓ DENIED  403  the browser POSTs to the bank page",
        "  ✓ DENIED  403  a compromised customer pod reads the database (port 2379, http)",
        "  ✓ CLOSED  tcp  a compromised customer pod reads the database over port 12379 (tcp)",
        "  ✓ DENIED  403  the attack pod, with summary's stolen keys, changes the balance (port 2379, http)",
        "  ✓ CLOSED  tcp  the attack pod, with summary's stolen keys, changes it over port 12379 (tcp)",
        "  ✓ DENIED  403  the attack pod changes the balance in plaintext (port 2379, http)",
        "  ✓ CLOSED  tcp  the attack pod changes it in plaintext over port 12379 (tcp)",
        "  ✓ DENIED  403  the attack pod also forges x-forwarded-client-cert and x-forwarded-for",
        "  ✓ allowed 200  summary, through its sidecar, reads the database over port 12379 (tcp): balance 1500.00",
        "  ✓ allowed 200  the browser loads the bank page again: balance 1500.00",
        "  ✓ every process is still running",
    ] {
        assert!(
            act2.lines().any(|l| l == line),
            "Act 2 lacks {line:?}:\n{all}"
        );
    }
    assert!(
        act2.lines()
            .any(|l| l.starts_with("  ✓ the balance in etcd is unchanged: 1500.00")),
        "{all}"
    );
    assert!(act2.contains("control compiled tests/fixtures/yaobank/policy.yaml (customer, database, summary)"), "{all}");
    assert!(act2.contains("Envoy restarted: no (uptime kept)"), "{all}");
    // The reasons, from the database sidecar's log: the HTTP role and the NETWORK role.
    let reasons = act2
        .split_once("Why the database sidecar denied the stolen keys on the http port")
        .map(|(_, r)| r)
        .unwrap_or_else(|| panic!("no reasons shown:\n{all}"));
    assert!(
        reasons.contains("krites: DENY tier/default: no rule matched and tier default denies by default; certificate says default/summary but no known pod owns 10.")
            && reasons.contains("request PUT \"/v2/keys/accounts/519940/balance\""),
        "{all}"
    );
    assert!(
        reasons.contains("and on the tcp port:")
            && reasons.contains("krites_peer_address: krites: DENY")
            && reasons.contains("TCP connection from 10."),
        "{all}"
    );
    assert!(!stdout.lines().any(|l| l.starts_with("  x ")), "a step differed:\n{all}");
    assert!(stdout.contains("RESULT: every step as the tutorial says"), "{all}");
    assert!(
        stdout.contains("stopped every process the demo started (0 left), network namespaces left: 0"),
        "{all}"
    );
    assert_nothing_left(&marker, &all);
    let left = namespaces_of(pid);
    assert!(left.is_empty(), "namespaces/links left: {left:?}\n{all}");
}

#[test]
fn demo_on_the_namespace_mesh_serves_until_ctrl_c_then_cleans_up() {
    if !mesh_runnable("demo_on_the_namespace_mesh_serves_until_ctrl_c") {
        return;
    }
    let marker = marker("mesh-serve");
    let mut child = demo(&marker)
        .arg("--mesh")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let rx = lines_of(&mut child);
    let mut seen = String::new();
    read_until(
        &rx,
        "Ctrl-C stops everything",
        &mut seen,
        Duration::from_secs(120),
    );
    assert!(
        seen.starts_with("mode: namespace mesh: asked for with --mesh"),
        "{seen}"
    );
    assert!(seen.contains("RESULT: every step as the tutorial says"), "{seen}");
    assert!(!namespaces_of(pid).is_empty(), "no namespaces while serving");

    // The printed commands work: the page from the browser pod, the POST refused.
    let page_cmd = seen
        .lines()
        .find(|l| l.trim_start().starts_with("ip netns exec") && l.contains("# the page"))
        .unwrap_or_else(|| panic!("no page command:\n{seen}"));
    let words: Vec<&str> = page_cmd.split('#').next().unwrap().split_whitespace().collect();
    let run = |extra: &[&str]| {
        let mut args: Vec<&str> = words[1..words.len() - 1].to_vec();
        args.extend_from_slice(&["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "8"]);
        args.extend_from_slice(extra);
        args.push(words[words.len() - 1]);
        let out = Command::new(words[0]).args(&args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(run(&[]), "200", "{page_cmd}");
    assert_eq!(run(&["-X", "POST"]), "403", "{page_cmd}");

    let t = Instant::now();
    signal(&child, "-INT");
    let status = wait_exit(&mut child, Duration::from_secs(30));
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
        seen.push_str(&line);
        seen.push('\n');
    }
    println!("Ctrl-C -> exit in {:.1} s", t.elapsed().as_secs_f64());
    assert_eq!(status.code(), Some(130), "{seen}");
    assert!(
        seen.contains("interrupted: stopped every process the demo started (0 left), network namespaces left: 0"),
        "{seen}"
    );
    assert_nothing_left(&marker, &seen);
    let left = namespaces_of(pid);
    assert!(left.is_empty(), "namespaces/links left: {left:?}\n{seen}");
}

#[test]
fn demo_on_the_namespace_mesh_stopped_during_startup_cleans_up() {
    if !mesh_runnable("demo_on_the_namespace_mesh_stopped_during_startup") {
        return;
    }
    let marker = marker("mesh-startup");
    let mut child = demo(&marker)
        .arg("--mesh")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let rx = lines_of(&mut child);
    let mut seen = String::new();
    // The database's sidecar runs, the other pods are on their way.
    read_until(&rx, "up: database pod", &mut seen, Duration::from_secs(120));
    assert!(!processes_with(&marker).is_empty());
    assert!(!namespaces_of(pid).is_empty());
    signal(&child, "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(30));
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
        seen.push_str(&line);
        seen.push('\n');
    }
    assert_eq!(status.code(), Some(130), "{seen}");
    assert!(seen.contains("network namespaces left: 0"), "{seen}");
    assert_nothing_left(&marker, &seen);
    let left = namespaces_of(pid);
    assert!(left.is_empty(), "namespaces/links left: {left:?}\n{seen}");
    println!("stopped during startup: exit 130, no process, namespace or link left");
}
