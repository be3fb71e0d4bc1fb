//! The records of a [`Plan`] as one sequence.
//!
//! Each partition is read by its own [`Cursor`] in offset order, which is the
//! order task persisted it: a room's records and an inbox's received ones are
//! each in one partition. Partitions are interleaved by record time (the
//! oldest head first, ties by topic and partition), holding one batch per
//! partition, so an export reads chronologically and a rebuild appends a
//! sender's copies (which come from their recipients' partitions) in the
//! order they were admitted.
//!
//! While following, time order cannot be kept (a quiet partition would hold
//! every other back), so records are passed on as they arrive, each
//! partition still in order.

use std::collections::VecDeque;
use std::time::Duration;

use courier_queue::{Cursor, Record, TopicReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Plan;
use crate::report::Progress;

/// Records asked of a cursor at once.
const BATCH: usize = 500;
/// How long one read waits for records.
const WAIT: Duration = Duration::from_millis(500);
/// How long a partition may give nothing while records are still due before
/// the replay fails rather than hang.
const STALL: Duration = Duration::from_secs(60);

/// Why reading stopped.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("reading {topic} partition {partition}: {error}")]
    Queue { topic: String, partition: u32, error: courier_queue::Error },
    #[error("{topic} partition {partition} gave nothing for {seconds} s at offset {at}, before its end {end}")]
    Stalled { topic: String, partition: u32, at: u64, end: u64, seconds: u64 },
}

/// One partition being read, with the records fetched but not yet taken.
struct Feed {
    index: usize,
    topic: String,
    partition: u32,
    cursor: Box<dyn Cursor>,
    /// The next offset wanted.
    next: u64,
    end: Option<u64>,
    buffer: VecDeque<Record>,
}

impl Feed {
    /// Whether the buffer is empty and records are still due.
    fn needs_records(&self) -> bool {
        self.buffer.is_empty() && self.end.is_some_and(|end| self.next < end)
    }

    /// Fetches the next batch if the buffer is empty and records are due,
    /// waiting for them up to [`STALL`].
    async fn fill(&mut self, progress: &Progress) -> Result<(), FeedError> {
        let Some(end) = self.end else { return Ok(()) };
        let started = tokio::time::Instant::now();
        while self.buffer.is_empty() && self.next < end {
            let records = self.cursor.next(BATCH, WAIT).await.map_err(|error| FeedError::Queue {
                topic: self.topic.clone(),
                partition: self.partition,
                error,
            })?;
            if let Some(last) = records.last() {
                // Offsets may skip (retention removed some meanwhile).
                progress.advance(self.index, (last.offset + 1).min(end).saturating_sub(self.next));
                self.next = last.offset + 1;
                self.buffer.extend(records.into_iter().filter(|r| r.offset < end));
            } else if started.elapsed() >= STALL {
                return Err(FeedError::Stalled {
                    topic: self.topic.clone(),
                    partition: self.partition,
                    at: self.next,
                    end,
                    seconds: STALL.as_secs(),
                });
            }
        }
        Ok(())
    }
}

/// The records of a plan, in the order the module docs give.
pub struct Records {
    feeds: Vec<Feed>,
    progress: Progress,
    follow: bool,
    live: Option<mpsc::Receiver<Result<Record, FeedError>>>,
    stop: CancellationToken,
}

impl Records {
    /// Opens a cursor on every range of `plan`; `stop` ends a follow.
    pub async fn open(
        reader: &dyn TopicReader,
        plan: &Plan,
        progress: Progress,
        stop: CancellationToken,
    ) -> Result<Self, FeedError> {
        let mut feeds = Vec::with_capacity(plan.ranges.len());
        for (index, range) in plan.ranges.iter().enumerate() {
            let cursor = reader
                .cursor(&range.topic, range.partition, range.start)
                .await
                .map_err(|error| FeedError::Queue { topic: range.topic.clone(), partition: range.partition, error })?;
            // A follow first reads what is there now, in time order.
            let end = if plan.follow { Some(range.held.end.max(range.start)) } else { range.end };
            feeds.push(Feed {
                index,
                topic: range.topic.clone(),
                partition: range.partition,
                cursor,
                next: range.start,
                end,
                buffer: VecDeque::new(),
            });
        }
        Ok(Self { feeds, progress, follow: plan.follow, live: None, stop })
    }

    /// The next record; `None` at the end of the ranges (or, following, once
    /// stopped).
    pub async fn next(&mut self) -> Result<Option<Record>, FeedError> {
        if let Some(live) = &mut self.live {
            return tokio::select! {
                _ = self.stop.cancelled() => Ok(None),
                record = live.recv() => record.transpose(),
            };
        }
        // The partitions that ran dry fetch their next batch at once (a broker
        // answers each cursor's first fetch after a round of its own); most
        // calls find none.
        let progress = &self.progress;
        let dry: Vec<&mut Feed> = self.feeds.iter_mut().filter(|feed| feed.needs_records()).collect();
        if !dry.is_empty() {
            futures_util::future::try_join_all(dry.into_iter().map(|feed| feed.fill(progress))).await?;
        }
        let oldest = self
            .feeds
            .iter()
            .filter_map(|f| f.buffer.front().map(|r| (r.timestamp_ms, f.index)))
            .min()
            .map(|(_, index)| index);
        match oldest {
            Some(index) => Ok(self.feeds[index].buffer.pop_front()),
            None if self.follow => {
                self.go_live();
                Box::pin(self.next()).await
            }
            None => Ok(None),
        }
    }

    /// Hands every cursor to a task of its own that passes records on as they
    /// come, each partition in order.
    fn go_live(&mut self) {
        let (tx, rx) = mpsc::channel(BATCH);
        for mut feed in self.feeds.drain(..) {
            let (tx, stop, progress) = (tx.clone(), self.stop.clone(), self.progress.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let records = match feed.cursor.next(BATCH, WAIT).await {
                        Ok(records) => records,
                        Err(error) => {
                            let error = FeedError::Queue { topic: feed.topic, partition: feed.partition, error };
                            let _ = tx.send(Err(error)).await;
                            return;
                        }
                    };
                    progress.advance(feed.index, records.len() as u64);
                    for record in records {
                        if tx.send(Ok(record)).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
        self.live = Some(rx);
    }
}
