//! `make demo ARGS=--once` plays the whole story and exits 0 only if every
//! step came out as the tutorial says.

use std::process::Command;

#[test]
fn demo_plays_the_tutorial_and_exits() {
    let out = Command::new(env!("CARGO_BIN_EXE_krites-demo")).arg("--once").output().expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed: {}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("Act 1: no policy"), "{stdout}");
    assert!(stdout.contains("Envoy restarted: no"), "{stdout}");
    assert!(stdout.contains("every step as the tutorial says"), "{stdout}");
    assert!(stdout.contains("certificate says default/summary but no known pod owns 127.0.0.66"), "{stdout}");
    assert!(!stdout.contains(" x "), "a step differed: {stdout}");
}
