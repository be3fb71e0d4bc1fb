//! `courier replay rebuild`: the selected records re-persisted into the
//! history store through task's own [`Persister`], in batches, in the order
//! [`crate::feed`] gives.
//!
//! What comes back:
//! - A message already stored keeps its positions (appends are idempotent by
//!   message id), so rebuilding into a store that holds everything changes
//!   nothing, and a rebuild can run beside task or be run again after an
//!   interruption.
//! - A stream rebuilt into an empty store from its first record gets the
//!   seqs it had (they are given in persisting order) and the same epoch
//!   (derived from its first message), so clients' positions stay valid.
//! - A stream whose partition was read from above offset 0 (retention, or a
//!   later start asked for) may be missing its first messages: it then gets
//!   another epoch, which tells clients to start over, and the summary names
//!   it.
//! - Records the store refuses go to its dead letters, as task's would.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::Context as _;
use courier_queue::{Record, TopicReader};
use courier_store::{HistoryStore, Message, StreamId};
use courier_task::Persister;
use courier_telemetry::Metrics;
use tokio_util::sync::CancellationToken;

use crate::Plan;
use crate::feed::Records;
use crate::report::{Progress, Summary};

/// Records persisted in one transaction.
const BATCH: usize = 256;

/// Re-persists the messages `plan` selects into `history`.
pub async fn rebuild(
    reader: &dyn TopicReader,
    plan: &Plan,
    history: Arc<dyn HistoryStore>,
    progress: Progress,
    stop: CancellationToken,
) -> anyhow::Result<Summary> {
    anyhow::ensure!(!plan.follow, "rebuild reads what the topics hold; task persists what comes next (drop --follow)");
    let partial: HashSet<(&str, u32)> =
        plan.ranges.iter().filter(|r| r.start > 0).map(|r| (r.topic.as_str(), r.partition)).collect();
    let persister = Persister::new(history.clone(), Arc::new(Metrics::new()), stop.clone());
    let mut records = Records::open(reader, plan, progress, stop).await?;
    let mut summary = Summary::default();
    // Every stream touched: its last seq before the rebuild touched it.
    let mut before: HashMap<StreamId, u64> = HashMap::new();
    let mut new_epochs: Vec<String> = Vec::new();
    let mut batch: Vec<(Record, Message)> = Vec::with_capacity(BATCH);
    loop {
        let next = records.next().await?;
        let done = next.is_none();
        if let Some(record) = next {
            if let Some(message) = plan.select(&record, &mut summary, true)? {
                for stream in message.streams() {
                    if before.contains_key(&stream) {
                        continue;
                    }
                    let info = history.stream_info(stream).await.context("reading the history store")?;
                    if info.is_none() && partial.contains(&(record.topic.as_str(), record.partition)) {
                        new_epochs.push(stream.to_string());
                    }
                    before.insert(stream, info.map_or(0, |i| i.last_seq));
                }
                batch.push((record, message));
            }
            if batch.len() < BATCH {
                continue;
            }
        }
        if !batch.is_empty() {
            // Already decoded to be selected: handed over as they are.
            let decoded = batch.iter().map(|(record, message)| (record, message.clone())).collect();
            let stored = persister
                .persist_decoded(decoded)
                .await
                .context("interrupted; what was persisted stays, and running the same rebuild again finishes it")?;
            let kept: HashSet<u64> = stored.iter().map(|(message, _)| message.msg_id).collect();
            for (record, message) in batch.drain(..) {
                let counts = summary.topic(&record.topic);
                if kept.contains(&message.msg_id) {
                    counts.written += 1;
                } else {
                    counts.set_aside += 1;
                }
            }
        }
        if done {
            break;
        }
    }
    let mut added = 0;
    for (stream, last) in before {
        let now = history.stream_info(stream).await.context("reading the history store")?;
        added += now.map_or(0, |i| i.last_seq).saturating_sub(last);
    }
    summary.entries_added = Some(added);
    new_epochs.sort();
    summary.new_epochs = new_epochs;
    Ok(summary)
}
