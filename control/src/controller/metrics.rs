//! The controller's state as Prometheus metrics (text exposition format,
//! written by hand: a dozen series need no client library).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::lease::Leadership;

/// One input watch's health.
#[derive(Debug, Default, Clone)]
struct Watch {
    /// Failing since then, with the last error (None: healthy).
    failing: Option<(SystemTime, String)>,
    errors: u64,
}

fn rfc3339(t: SystemTime) -> String {
    k8s_openapi::jiff::Timestamp::try_from(t).map_or_else(|_| "?".into(), |t| t.round(k8s_openapi::jiff::Unit::Second).map_or_else(|_| t.to_string(), |r| r.to_string()))
}

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
    /// Per watched source (`Pod`, ..., `WasmPlugin`).
    watches: BTreeMap<String, Watch>,
    /// Leader election, when on (`None`: a single replica that always writes).
    leadership: Option<Arc<Leadership>>,
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

    /// A watch delivered something: it works (again).
    pub fn watch_ok(&self, source: &str) {
        let mut s = self.lock();
        match s.watches.get_mut(source) {
            Some(w) => w.failing = None,
            None => {
                s.watches.insert(source.to_string(), Watch::default());
            }
        }
    }

    /// A watch failed (its watcher retries with backoff).
    pub fn watch_failed(&self, source: &str, error: &str) {
        let mut s = self.lock();
        let w = s.watches.entry(source.to_string()).or_default();
        w.errors += 1;
        let since = w.failing.as_ref().map_or_else(SystemTime::now, |(t, _)| *t);
        w.failing = Some((since, error.to_string()));
    }

    /// `(source, since, last error)` of each failing watch.
    pub fn failing_watches(&self) -> Vec<(String, SystemTime, String)> {
        self.lock().watches.iter().filter_map(|(k, w)| w.failing.as_ref().map(|(t, e)| (k.clone(), *t, e.clone()))).collect()
    }

    /// Leader election is on: `/readyz` and `krites_control_leader` tell the role.
    pub fn set_leadership(&self, leadership: Arc<Leadership>) {
        self.lock().leadership = Some(leadership);
    }

    /// This replica writes (the leader, or no election).
    pub fn leading(&self) -> bool {
        self.lock().leadership.as_ref().is_none_or(|l| l.is_leader())
    }

    /// `/readyz`: (status, body).
    ///
    /// A follower is ready (200) once it has compiled: readiness must not
    /// depend on leadership. control takes no Service traffic (only metrics
    /// scrapes, which go to every pod anyway), so readiness routes nothing;
    /// what it does drive is the Deployment's rollout and PodDisruptionBudgets,
    /// which count ready pods: a follower reported unready would stall every
    /// rolling update (the new pod could never become ready while the old one
    /// leads) and make a healthy standby look broken. The body says the role.
    ///
    /// During an outage the code stays what it was: the config applied before
    /// is enforced by Envoy, not by control; the body says which watches fail
    /// and since when.
    pub fn readiness(&self) -> (u16, String) {
        let (ready, blocked, leadership) = {
            let s = self.lock();
            (s.ready, s.blocked.clone(), s.leadership.clone())
        };
        if let Some(why) = blocked {
            return (503, format!("not ready: {why}\n"));
        }
        let mut body = String::new();
        let code = if ready {
            body.push_str("ready\n");
            200
        } else {
            body.push_str(if leadership.is_some() { "not ready: nothing compiled (or, leading, applied) yet\n" } else { "no WasmPlugin applied yet\n" });
            503
        };
        if let Some(l) = leadership {
            if l.is_leader() {
                let _ = writeln!(body, "leader ({}): this replica writes the WasmPlugins", l.identity());
            } else {
                let holder = l.holder().unwrap_or_else(|| "none".into());
                let _ = writeln!(body, "follower ({}; leader: {holder}): watching and compiling, writing nothing", l.identity());
            }
            if let Some(e) = l.last_error() {
                let _ = writeln!(body, "leader election failing: {e}");
            }
        }
        let failing = self.failing_watches();
        if !failing.is_empty() {
            let now = SystemTime::now();
            let _ = writeln!(body, "watches failing (the config applied before stays in force in the sidecars; changes wait for the watches):");
            for (source, since, error) in failing {
                let ago = now.duration_since(since).unwrap_or_default().as_secs();
                let _ = writeln!(body, "  {source}: failing since {} ({ago}s): {error}", rfc3339(since));
            }
        }
        (code, body)
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
        one(
            "krites_control_leader",
            "gauge",
            "1 while this replica writes (the leader, or leader election off), else 0.",
            u8::from(s.leadership.as_ref().is_none_or(|l| l.is_leader())).to_string(),
        );
        let failing = s.watches.values().filter(|w| w.failing.is_some()).count();
        one("krites_control_watches_failing", "gauge", "Input watches failing now (retrying).", failing.to_string());
        one("krites_control_watch_errors_total", "counter", "Watch errors (each retried).", s.watches.values().map(|w| w.errors).sum::<u64>().to_string());
        let _ = write!(out, "# HELP krites_control_watch_healthy 1 while the watch of this source works.\n# TYPE krites_control_watch_healthy gauge\n");
        for (source, w) in &s.watches {
            let _ = writeln!(out, "krites_control_watch_healthy{{source=\"{}\"}} {}", escape(source), u8::from(w.failing.is_none()));
        }
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

    #[test]
    fn readyz_keeps_its_code_and_names_failing_watches() {
        let m = Metrics::default();
        m.set_ready();
        m.watch_ok("Pod");
        m.watch_failed("Pod", "connection refused");
        m.watch_failed("Pod", "connection refused again");
        let (code, body) = m.readiness();
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("Pod: failing since") && body.contains("again"), "{body}");
        let text = m.render();
        assert!(text.lines().any(|l| l == "krites_control_watches_failing 1"), "{text}");
        assert!(text.lines().any(|l| l == "krites_control_watch_errors_total 2"), "{text}");
        assert!(text.lines().any(|l| l == "krites_control_watch_healthy{source=\"Pod\"} 0"), "{text}");
        m.watch_ok("Pod");
        assert!(!m.readiness().1.contains("failing"));
        assert!(m.render().lines().any(|l| l == "krites_control_leader 1"));
    }
}
