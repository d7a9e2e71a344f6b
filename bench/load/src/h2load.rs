//! Runs h2load (nghttp2's load generator) and reads what it measured: its
//! summary for throughput and errors, and its per-request log for latency
//! percentiles (h2load's summary has no percentiles).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// How hard to push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Load {
    /// Keep-alive HTTP/1.1 connections, one request in flight on each.
    pub connections: u32,
    pub duration: Duration,
    pub warm_up: Duration,
    /// `None`: as fast as the connections go (throughput; latency is then
    /// mostly queueing). `Some(n)`: n requests/s in all, spread over the
    /// connections (latency at a load every configuration sustains).
    pub rate: Option<u32>,
}

/// One h2load run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Run {
    /// Requests completed in the measured period.
    pub requests: u64,
    pub seconds: f64,
    pub rps: f64,
    pub status_2xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    /// Errored or timed out: anything but an HTTP answer.
    pub errors: u64,
    /// Per-request latencies, microseconds, sorted.
    #[serde(skip)]
    pub latencies_us: Vec<u32>,
}

/// `h2load` on PATH, or an error that says how to get it.
pub fn binary() -> Result<&'static str> {
    match Command::new("h2load").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(s) if s.success() => Ok("h2load"),
        _ => bail!("h2load not found: install Debian's nghttp2-client (`make setup` does)"),
    }
}

/// Drives `urls` (same host and port; h2load sends them round-robin on every
/// connection) for `load.duration` after `load.warm_up`.
pub fn run(urls: &[String], load: Load, log: &Path) -> Result<Run> {
    let bin = binary()?;
    let out = Command::new(bin)
        .args(["--h1", "-t", "1", "-m", "1"])
        .arg("-c")
        .arg(load.connections.to_string())
        .arg("-D")
        .arg(format!("{}", load.duration.as_secs().max(1)))
        .arg("--warm-up-time")
        .arg(format!("{}ms", load.warm_up.as_millis()))
        .arg("--log-file")
        .arg(log)
        .args(load.rate.map(|r| format!("--rps={}", (r / load.connections.max(1)).max(1))))
        .args(urls)
        .stdin(Stdio::null())
        .output()
        .context("running h2load")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("h2load failed ({}): {}{}", out.status, text, String::from_utf8_lossy(&out.stderr));
    }
    let mut run = parse_summary(&text).with_context(|| format!("reading h2load's summary:\n{text}"))?;
    let log_text = std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    run.latencies_us = parse_log(&log_text);
    Ok(run)
}

/// Numbers from h2load's summary.
pub fn parse_summary(text: &str) -> Result<Run> {
    let mut run = Run::default();
    let mut seen = 0;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            // "finished in 5.00s, 12345.60 req/s, 1.23MB/s"
            let mut parts = rest.split(", ");
            run.seconds = parts.next().and_then(|s| s.strip_suffix('s')).and_then(|s| s.parse().ok()).context("duration")?;
            run.rps = parts.next().and_then(|s| s.strip_suffix(" req/s")).and_then(|s| s.parse().ok()).context("req/s")?;
            seen += 1;
        } else if let Some(rest) = line.strip_prefix("requests: ") {
            // "61728 total, 61728 started, 61728 done, 61728 succeeded, 0 failed, 0 errored, 0 timeout"
            let count = |what: &str| field(rest, what);
            run.requests = count("done")?;
            // h2load's "failed" counts 4xx/5xx answers too; transport errors are "errored".
            run.errors = count("errored")? + count("timeout")?;
            seen += 1;
        } else if let Some(rest) = line.strip_prefix("status codes: ") {
            run.status_2xx = field(rest, "2xx")?;
            run.status_4xx = field(rest, "4xx")?;
            run.status_5xx = field(rest, "5xx")?;
            seen += 1;
        }
    }
    if seen < 3 {
        bail!("h2load printed no complete summary");
    }
    Ok(run)
}

/// `N what` in a comma-separated list.
fn field(list: &str, what: &str) -> Result<u64> {
    list.split(", ")
        .find_map(|item| item.strip_suffix(what).and_then(|n| n.trim().parse().ok()))
        .with_context(|| format!("no `{what}` count in {list:?}"))
}

/// h2load's `--log-file`: `start (µs since the epoch) \t status \t duration (µs)` per request.
pub fn parse_log(text: &str) -> Vec<u32> {
    let mut v: Vec<u32> = text
        .lines()
        .filter_map(|l| l.split('\t').nth(2))
        .filter_map(|d| d.trim().parse::<u64>().ok())
        .map(|d| u32::try_from(d).unwrap_or(u32::MAX))
        .collect();
    v.sort_unstable();
    v
}

/// The `q`-quantile (0..=1) of sorted latencies, nearest rank; 0 when empty.
pub fn quantile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const SUMMARY: &str = "
starting benchmark...
finished in 5.00s, 12345.60 req/s, 1.23MB/s
requests: 61728 total, 61729 started, 61728 done, 40000 succeeded, 21728 failed, 1 errored, 2 timeout
status codes: 40000 2xx, 0 3xx, 21728 4xx, 3 5xx
traffic: 6.17MB (6466042) total, 1.55MB (1625234) headers (space savings 0.00%), 247.95KB (253900) data
                     min         max         mean         sd        +/- sd
time for request:      123us      4.56ms       789us       100us    70.00%
";

    #[test]
    fn reads_the_summary() {
        let run = parse_summary(SUMMARY).unwrap();
        assert_eq!((run.requests, run.status_2xx, run.status_4xx, run.status_5xx), (61728, 40000, 21728, 3));
        assert_eq!(run.errors, 1 + 2);
        assert!((run.rps - 12345.6).abs() < 1e-9 && (run.seconds - 5.0).abs() < 1e-9);
        assert!(parse_summary("finished in 1s").is_err());
    }

    #[test]
    fn reads_the_log_and_ranks() {
        let v = parse_log("1700000000000000\t200\t300\n1700000000000100\t403\t100\nbad line\n1700000000000200\t200\t200\n");
        assert_eq!(v, vec![100, 200, 300]);
        assert_eq!((quantile(&v, 0.5), quantile(&v, 0.99), quantile(&v, 0.0)), (200, 300, 100));
        assert_eq!(quantile(&[], 0.5), 0);
    }
}
