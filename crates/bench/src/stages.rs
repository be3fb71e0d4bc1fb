//! The servers' own account of where a message's time goes, for a bench run:
//! every tier times each message from its admission to the stage it reached
//! (`courier_message_stage_seconds{stage}`), and the bench scrapes those
//! histograms from every server's `/metrics` before and after the run. The
//! difference is this run's messages only, whatever ran before; its quantiles
//! are interpolated inside buckets as Prometheus' `histogram_quantile` does
//! (the buckets are √2 apart, so a quantile is within about 20 %).
//!
//! The gaps connect saw (`courier_errors_total{reason="push_gap"}`) come along:
//! in a steady run with one writer per stream they stay at zero, and a gap
//! costs its stream the gap grace.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// The stages, in the order a message reaches them (as the servers name them).
pub const STAGES: [&str; 6] = ["produced", "consumed", "persisted", "pushed", "received", "written"];

const FAMILY: &str = "courier_message_stage_seconds_bucket";

/// Admin endpoints scanned when none are given: the standalone's and the local
/// cluster's (`scripts/cluster`) admin ports are all in this range, but for
/// connect-7 on ([`more_connect_admin`]).
pub const DEFAULT_PORTS: std::ops::RangeInclusive<u16> = 9100..=9199;

/// The admin ports of the local cluster's connect-7 to connect-98: 10003 + 10i.
fn more_connect_admin() -> impl Iterator<Item = u16> {
    (7..=98).map(|i| 10_003 + 10 * i)
}

/// What the servers had counted at one moment, summed over every endpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Per stage: cumulative counts by upper bound (`le`, in seconds).
    buckets: BTreeMap<&'static str, BTreeMap<Bound, f64>>,
    /// Gaps connect held frames back for (`push_gap`), and gaps it had to
    /// fill from history after the grace.
    gaps: f64,
    gaps_from_history: f64,
    /// Endpoints that answered.
    pub endpoints: usize,
}

/// A bucket's upper bound, ordered (`+Inf` last).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Bound(f64);

impl Eq for Bound {}

impl PartialOrd for Bound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// One stage's latency from admission, over the run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StageLatency {
    pub stage: &'static str,
    /// Messages (or, from `received` on, frames) that reached it.
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

/// The servers' view of a run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Breakdown {
    pub stages: Vec<StageLatency>,
    pub push_gaps: u64,
    pub gaps_filled_from_history: u64,
}

impl Snapshot {
    /// Adds one endpoint's exposition (Prometheus text or OpenMetrics).
    pub fn add_exposition(&mut self, text: &str) {
        self.endpoints += 1;
        for line in text.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            if let Some(labels) = series.strip_prefix(FAMILY).and_then(|l| l.strip_prefix('{')) {
                let stage = label(labels, "stage").and_then(|s| STAGES.iter().find(|known| **known == s));
                let le = label(labels, "le").and_then(|le| le.parse::<f64>().ok());
                if let (Some(stage), Some(le)) = (stage, le) {
                    *self.buckets.entry(stage).or_default().entry(Bound(le)).or_default() += value;
                }
            } else if let Some(labels) = series.strip_prefix("courier_errors_total{") {
                match label(labels, "reason") {
                    Some("push_gap") => self.gaps += value,
                    Some("push_gap_filled_from_history") => self.gaps_from_history += value,
                    _ => {}
                }
            }
        }
    }

    /// What was counted between `earlier` and this snapshot.
    pub fn since(&self, earlier: &Snapshot) -> Breakdown {
        let stages = STAGES
            .iter()
            .filter_map(|stage| {
                let now = self.buckets.get(stage)?;
                let before = earlier.buckets.get(stage);
                let delta: Vec<(f64, f64)> = now
                    .iter()
                    .map(|(le, n)| (le.0, n - before.and_then(|b| b.get(le)).copied().unwrap_or(0.0)))
                    .collect();
                let count = delta.last().map_or(0.0, |(_, n)| *n);
                (count > 0.0).then(|| StageLatency {
                    stage,
                    count: count as u64,
                    p50_ms: quantile(&delta, 0.5) * 1e3,
                    p99_ms: quantile(&delta, 0.99) * 1e3,
                    p999_ms: quantile(&delta, 0.999) * 1e3,
                })
            })
            .collect();
        Breakdown {
            stages,
            push_gaps: (self.gaps - earlier.gaps).max(0.0) as u64,
            gaps_filled_from_history: (self.gaps_from_history - earlier.gaps_from_history).max(0.0) as u64,
        }
    }
}

/// The value of `name` in a label set `a="x",b="y"}`.
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
    let rest = &labels[start..];
    Some(&rest[..rest.find('"')?])
}

/// The `q` quantile of cumulative buckets `(le, count)` sorted by `le`,
/// interpolated linearly inside its bucket (the first bucket starts at 0; a
/// quantile in `+Inf` is the highest finite bound).
fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let Some(&(_, total)) = buckets.last() else { return 0.0 };
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank && count > below {
            if le.is_infinite() {
                return lower;
            }
            return lower + (le - lower) * (rank - below) / (count - below);
        }
        (lower, below) = (le, count);
    }
    lower
}

/// Scrapes every endpoint (`host:port` or a URL; `/metrics` is added) and
/// sums what they export. Endpoints that do not answer are left out.
pub async fn scrape(http: &reqwest::Client, endpoints: &[String]) -> Snapshot {
    let fetches = endpoints.iter().map(|endpoint| async move {
        let base = if endpoint.contains("://") { endpoint.clone() } else { format!("http://{endpoint}") };
        let url = format!("{}/metrics", base.trim_end_matches('/').trim_end_matches("/metrics"));
        let response = http.get(url).timeout(Duration::from_secs(2)).send().await.ok()?;
        response.error_for_status().ok()?.text().await.ok()
    });
    let mut snapshot = Snapshot::default();
    for text in futures_util::future::join_all(fetches).await.into_iter().flatten() {
        snapshot.add_exposition(&text);
    }
    snapshot
}

/// The endpoints to scrape: those given, or every admin port in
/// [`DEFAULT_PORTS`] (and the local cluster's further connect nodes) on
/// loopback that accepts a connection.
pub async fn endpoints(given: &[String]) -> Vec<String> {
    if !given.is_empty() {
        return given.to_vec();
    }
    let probes = DEFAULT_PORTS.chain(more_connect_admin()).map(|port| async move {
        let address = format!("127.0.0.1:{port}");
        let open = tokio::time::timeout(Duration::from_millis(500), tokio::net::TcpStream::connect(&address)).await;
        matches!(open, Ok(Ok(_))).then_some(address)
    });
    futures_util::future::join_all(probes).await.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"# TYPE courier_message_stage_seconds histogram
courier_message_stage_seconds_bucket{stage="produced",le="0.001"} 10
courier_message_stage_seconds_bucket{stage="produced",le="0.002"} 10
courier_message_stage_seconds_bucket{stage="produced",le="+Inf"} 10
courier_errors_total{reason="push_gap"} 1
"#;

    const AFTER: &str = r#"# TYPE courier_message_stage_seconds histogram
courier_message_stage_seconds_bucket{stage="produced",le="0.001"} 60
courier_message_stage_seconds_bucket{stage="produced",le="0.002"} 110
courier_message_stage_seconds_bucket{stage="produced",le="+Inf"} 110
courier_message_stage_seconds_sum{stage="produced"} 0.1
courier_errors_total{reason="push_gap"} 1
courier_errors_total{reason="push_gap_filled_from_history"} 2
courier_errors_total{reason="produce"} 7
"#;

    const CONNECT: &str = r#"courier_message_stage_seconds_bucket{stage="written",le="0.004"} 0
courier_message_stage_seconds_bucket{stage="written",le="0.008"} 4
courier_message_stage_seconds_bucket{stage="written",le="+Inf"} 5
"#;

    #[test]
    fn a_run_is_the_difference_of_two_scrapes_summed_over_endpoints() {
        let (mut before, mut after) = (Snapshot::default(), Snapshot::default());
        before.add_exposition(BEFORE);
        after.add_exposition(AFTER);
        after.add_exposition(CONNECT);
        assert_eq!(after.endpoints, 2);
        let run = after.since(&before);
        let names: Vec<&str> = run.stages.iter().map(|s| s.stage).collect();
        assert_eq!(names, ["produced", "written"], "stages in their order, only those reached");
        let produced = &run.stages[0];
        assert_eq!(produced.count, 100, "the 10 counted before the run are not this run's");
        // 50 of the 100 are at or under 1 ms, 50 between 1 and 2 ms.
        assert!((produced.p50_ms - 1.0).abs() < 1e-9, "{produced:?}");
        assert!((produced.p99_ms - 1.98).abs() < 1e-9, "{produced:?}");
        let written = &run.stages[1];
        assert_eq!(written.count, 5);
        assert!((written.p50_ms - 6.5).abs() < 1e-9, "{written:?}");
        assert_eq!(written.p99_ms, 8.0, "a quantile in +Inf is the highest finite bound");
        assert_eq!((run.push_gaps, run.gaps_filled_from_history), (0, 2));
    }

    #[test]
    fn foreign_lines_and_unknown_stages_are_ignored() {
        let mut s = Snapshot::default();
        s.add_exposition(
            "courier_message_stage_seconds_bucket{stage=\"elsewhere\",le=\"1\"} 3\n\
             courier_message_stage_seconds_bucket{stage=\"produced\",le=\"x\"} 3\n\
             garbage\n# EOF\n",
        );
        assert_eq!(s.since(&Snapshot::default()).stages, []);
    }
}
