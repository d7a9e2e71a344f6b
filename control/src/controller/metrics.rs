//! The controller's state as Prometheus metrics (text exposition format,
//! written by hand: a dozen series need no client library).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Default, Clone)]
struct State {
    compiles: u64,
    compile_errors: u64,
    last_compile_timestamp: f64,
    last_compile_duration: f64,
    objects: BTreeMap<(String, String), usize>,
    invalid_objects: usize,
    applies: u64,
    apply_errors: u64,
    deletes: u64,
    events: u64,
    config_bytes: usize,
    wasmplugins: usize,
    ready: bool,
    alive: bool,
    /// Why the controller cannot compile at all (told by `/readyz`).
    blocked: Option<String>,
}

/// Shared between the control loop (writes) and the HTTP server (reads).
#[derive(Debug, Default)]
pub struct Metrics {
    state: Mutex<State>,
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One compile: its outcome, how long it took, and (when it succeeded)
    /// the largest config it produced and how many WasmPlugins.
    pub fn compiled(&self, ok: bool, took: Duration, config_bytes: usize, wasmplugins: usize) {
        let mut s = self.lock();
        s.compiles += 1;
        s.last_compile_timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        s.last_compile_duration = took.as_secs_f64();
        if ok {
            s.config_bytes = config_bytes;
            s.wasmplugins = wasmplugins;
        } else {
            s.compile_errors += 1;
        }
    }

    /// Objects in the stores, per (API group, kind), and how many were rejected.
    pub fn objects(&self, counts: BTreeMap<(String, String), usize>, invalid: usize) {
        let mut s = self.lock();
        s.objects = counts;
        s.invalid_objects = invalid;
    }

    pub fn applied(&self, applies: usize, deletes: usize) {
        let mut s = self.lock();
        s.applies += applies as u64;
        s.deletes += deletes as u64;
    }

    pub fn apply_failed(&self) {
        self.lock().apply_errors += 1;
    }

    pub fn event_published(&self) {
        self.lock().events += 1;
    }

    /// The first compile + apply succeeded: `/readyz` turns 200.
    pub fn set_ready(&self) {
        self.lock().ready = true;
    }

    /// Ready: applied once, and nothing stops the controller now.
    pub fn ready(&self) -> bool {
        let s = self.lock();
        s.ready && s.blocked.is_none()
    }

    /// Sets (or clears) what keeps the controller from compiling.
    pub fn set_blocked(&self, why: Option<String>) {
        self.lock().blocked = why;
    }

    pub fn blocked(&self) -> Option<String> {
        self.lock().blocked.clone()
    }

    /// The control loop runs: `/healthz` is 200 while it does.
    pub fn set_alive(&self, alive: bool) {
        self.lock().alive = alive;
    }

    pub fn alive(&self) -> bool {
        self.lock().alive
    }

    pub fn invalid_objects(&self) -> usize {
        self.lock().invalid_objects
    }

    pub fn applies(&self) -> u64 {
        self.lock().applies
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let s = self.lock().clone();
        let mut out = String::new();
        let mut one = |name: &str, kind: &str, help: &str, value: String| {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n");
        };
        one("krites_control_compiles_total", "counter", "Compiles run.", s.compiles.to_string());
        one(
            "krites_control_compile_errors_total",
            "counter",
            "Compiles that failed (the WasmPlugins applied before stay in force).",
            s.compile_errors.to_string(),
        );
        one(
            "krites_control_last_compile_timestamp_seconds",
            "gauge",
            "When the last compile ran, seconds since the Unix epoch.",
            s.last_compile_timestamp.to_string(),
        );
        one("krites_control_last_compile_duration_seconds", "gauge", "How long the last compile took.", s.last_compile_duration.to_string());
        one(
            "krites_control_invalid_objects",
            "gauge",
            "Objects left out of the config because they are invalid.",
            s.invalid_objects.to_string(),
        );
        one("krites_control_applies_total", "counter", "WasmPlugins written with server-side apply.", s.applies.to_string());
        one("krites_control_apply_errors_total", "counter", "Reconciles whose writes to the API server failed.", s.apply_errors.to_string());
        one("krites_control_deletes_total", "counter", "WasmPlugins deleted because no longer wanted.", s.deletes.to_string());
        one("krites_control_events_total", "counter", "Kubernetes Events published about invalid objects.", s.events.to_string());
        one("krites_control_config_bytes", "gauge", "Size of the largest plugin config applied.", s.config_bytes.to_string());
        one("krites_control_wasmplugins", "gauge", "WasmPlugins the controller keeps.", s.wasmplugins.to_string());
        one(
            "krites_control_ready",
            "gauge",
            "1 once the first compile and apply succeeded (0 while the controller cannot compile).",
            u8::from(s.ready && s.blocked.is_none()).to_string(),
        );
        let _ = write!(
            out,
            "# HELP krites_control_objects Objects in the controller's stores.\n# TYPE krites_control_objects gauge\n"
        );
        for ((group, kind), n) in &s.objects {
            let _ = writeln!(out, "krites_control_objects{{group=\"{}\",kind=\"{}\"}} {n}", escape(group), escape(kind));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric() {
        let m = Metrics::default();
        m.compiled(true, Duration::from_millis(12), 2048, 2);
        m.compiled(false, Duration::from_millis(3), 0, 0);
        m.objects(BTreeMap::from([((String::new(), "Pod".to_string()), 5)]), 1);
        m.applied(2, 0);
        m.set_ready();
        let text = m.render();
        for line in [
            "krites_control_compiles_total 2",
            "krites_control_compile_errors_total 1",
            "krites_control_last_compile_duration_seconds 0.003",
            "krites_control_objects{group=\"\",kind=\"Pod\"} 5",
            "krites_control_invalid_objects 1",
            "krites_control_applies_total 2",
            "krites_control_config_bytes 2048",
            "krites_control_ready 1",
            "# TYPE krites_control_compiles_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from\n{text}");
        }
        assert!(text.contains("krites_control_last_compile_timestamp_seconds 1"), "{text}");
    }
}
