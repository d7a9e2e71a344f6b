//! Coalescing bursts of watch events into one reconcile.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};

/// Waits for a change, then for the burst to settle: `quiet` without a new
/// change, or `max_delay` after the first one, whichever comes first (so a
/// cluster whose pods never stop churning still gets its config updated).
#[derive(Debug, Clone, Copy)]
pub struct Debouncer {
    pub quiet: Duration,
    pub max_delay: Duration,
}

impl Debouncer {
    /// `max_delay` is ten times `quiet`.
    pub fn new(quiet: Duration) -> Debouncer {
        Debouncer { quiet, max_delay: quiet.saturating_mul(10) }
    }

    /// How many change signals the next burst held; `None` once every
    /// sender is gone and nothing is pending.
    pub async fn next(&self, changes: &mut mpsc::Receiver<()>) -> Option<usize> {
        changes.recv().await?;
        let mut n = 1;
        let deadline = Instant::now() + self.max_delay;
        loop {
            let until = (Instant::now() + self.quiet).min(deadline);
            match timeout_at(until, changes.recv()).await {
                Ok(Some(())) => n += 1,
                Ok(None) | Err(_) => return Some(n),
            }
        }
    }
}

/// Parses `1s`, `500ms`, `2m`, `1h` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number.parse().map_err(|_| format!("{text:?} is not a duration such as 1s or 500ms"))?;
    let seconds = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("unknown unit {other:?} in {text:?} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_one_wake() {
        let (tx, mut rx) = mpsc::channel(64);
        let d = Debouncer::new(Duration::from_secs(1));
        let sender = tokio::spawn(async move {
            for _ in 0..20 {
                tx.send(()).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
            tx.send(()).await.unwrap();
        });
        let start = Instant::now();
        assert_eq!(d.next(&mut rx).await, Some(20));
        // the last event came at 1.9 s, then 1 s of quiet
        assert_eq!(start.elapsed(), Duration::from_millis(2900));
        assert_eq!(d.next(&mut rx).await, Some(1));
        sender.await.unwrap();
        assert_eq!(d.next(&mut rx).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn endless_churn_still_wakes_by_max_delay() {
        let (tx, mut rx) = mpsc::channel(64);
        let d = Debouncer::new(Duration::from_millis(500));
        tokio::spawn(async move {
            while tx.send(()).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let start = Instant::now();
        let n = d.next(&mut rx).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert!((49..=51).contains(&n), "{n}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3d").is_err());
    }
}
