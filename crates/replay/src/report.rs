//! What a replay tells its user: a progress bar per partition while it reads
//! (records done of the records in range, rate, time left; drawn only on a
//! terminal, never with `--quiet`), and the summary at the end, as one line or
//! as JSON.

use std::collections::BTreeMap;
use std::sync::Arc;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::Plan;

/// The progress bars of one replay; cheap to clone.
#[derive(Clone)]
pub struct Progress {
    bars: Arc<Vec<ProgressBar>>,
}

impl Progress {
    /// One bar per range of `plan`, on standard error if it is a terminal
    /// and `quiet` is not set.
    pub fn new(plan: &Plan, quiet: bool) -> Self {
        let target = if quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
        let multi = MultiProgress::with_draw_target(target);
        let style = ProgressStyle::with_template("{prefix:>24} [{bar:30}] {pos}/{len} records  {per_sec}  ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let bars = plan
            .ranges
            .iter()
            .map(|range| {
                let bar = multi.add(ProgressBar::new(range.len().unwrap_or(0)));
                bar.set_style(style.clone());
                bar.set_prefix(format!("{} #{}", range.topic, range.partition));
                bar
            })
            .collect();
        Self { bars: Arc::new(bars) }
    }

    /// No bars at all (tests, libraries).
    pub fn hidden() -> Self {
        Self { bars: Arc::new(Vec::new()) }
    }

    /// Moves range `index` on by `records` offsets.
    pub fn advance(&self, index: usize, records: u64) {
        if let Some(bar) = self.bars.get(index) {
            bar.inc(records);
        }
    }

    /// Removes the bars (before the summary is printed).
    pub fn finish(&self) {
        for bar in self.bars.iter() {
            bar.finish_and_clear();
        }
    }
}

/// Counts of one topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicCounts {
    /// Records read from the topic.
    pub read: u64,
    /// Messages exported, or re-persisted.
    pub written: u64,
    /// Records not selected (another room, another user).
    pub skipped: u64,
    /// Records that are not a message this build can read.
    pub undecodable: u64,
    /// Messages the store refused, kept in its dead letters (rebuild).
    pub set_aside: u64,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub topics: BTreeMap<String, TopicCounts>,
    /// Rebuild: stream entries the store did not hold before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entries_added: Option<u64>,
    /// Rebuild: streams created from a partition read from above offset 0,
    /// so possibly without their first message: their epoch (and seqs) may
    /// differ from the lost history's, and clients holding positions in them
    /// are told to start over.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub new_epochs: Vec<String>,
}

impl Summary {
    /// The counts of `topic`.
    pub fn topic(&mut self, topic: &str) -> &mut TopicCounts {
        self.topics.entry(topic.to_owned()).or_default()
    }

    /// One line for people.
    pub fn line(&self, verb: &str) -> String {
        let total = self.topics.values().fold(TopicCounts::default(), |a, c| TopicCounts {
            read: a.read + c.read,
            written: a.written + c.written,
            skipped: a.skipped + c.skipped,
            undecodable: a.undecodable + c.undecodable,
            set_aside: a.set_aside + c.set_aside,
        });
        let per_topic: Vec<String> =
            self.topics.iter().map(|(topic, c)| format!("{topic}: {} read, {} {verb}", c.read, c.written)).collect();
        let mut line = format!(
            "{} records read, {} {verb}, {} not selected, {} undecodable",
            total.read, total.written, total.skipped, total.undecodable
        );
        if total.set_aside > 0 {
            line.push_str(&format!(", {} set aside as dead letters", total.set_aside));
        }
        if let Some(added) = self.entries_added {
            line.push_str(&format!(", {added} stream entries added"));
        }
        if !per_topic.is_empty() {
            line.push_str(&format!(" ({})", per_topic.join("; ")));
        }
        if !self.new_epochs.is_empty() {
            line.push_str(&format!(
                "\nstreams rebuilt without the start of their partition (their epoch may be new): {}",
                self.new_epochs.join(", ")
            ));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_line_counts_every_topic() {
        let mut summary = Summary::default();
        *summary.topic("courier-room") = TopicCounts { read: 10, written: 8, skipped: 1, undecodable: 1, set_aside: 0 };
        *summary.topic("courier-private") = TopicCounts { read: 5, written: 5, ..TopicCounts::default() };
        let line = summary.line("exported");
        assert!(line.starts_with("15 records read, 13 exported, 1 not selected, 1 undecodable"), "{line}");
        assert!(line.contains("courier-room: 10 read, 8 exported"), "{line}");
        let json = serde_json::to_value(&summary).expect("json");
        assert_eq!(json["topics"]["courier-private"]["written"], 5);
        assert!(json.get("entriesAdded").is_none(), "export adds no entries");
    }
}
