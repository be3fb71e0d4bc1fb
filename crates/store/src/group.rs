//! Group commit in front of any [`HistoryStore`]: task runs a lane per
//! partition, each appending small batches, and each append is a transaction
//! with a fixed handful of statements whatever its size. So the appends of
//! every lane go to one writer task, which takes every append waiting at that
//! moment into a single call of the store (one transaction: their streams are
//! disjoint, one writer per stream) and answers each with its own positions.
//! Statements, round trips and the commit are paid once per group rather than
//! once per lane: on a loaded machine that is most of the store's CPU.
//!
//! If a group fails, each of its appends is tried again alone, so a batch the
//! store refuses fails only its own caller (whose persister then finds the
//! poison record) and never an innocent lane's.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use crate::{DeadLetter, Error, HistoryStore, Message, Page, Position, Result, StoredMessage, StreamId, StreamInfo};

/// Most appends combined into one.
const MAX_GROUP: usize = 64;

/// A [`HistoryStore`] whose appends are group-committed; everything else goes
/// straight to the store inside. Cheap to clone; the writer ends with the last
/// clone.
#[derive(Clone)]
pub struct GroupCommit {
    store: Arc<dyn HistoryStore>,
    appends: mpsc::Sender<Request>,
}

/// One caller's batch, and where its positions go.
struct Request {
    batch: Vec<Message>,
    reply: oneshot::Sender<Result<Vec<Vec<Position>>>>,
}

impl GroupCommit {
    /// Group-commits appends to `store`; must be called inside a Tokio runtime.
    pub fn new(store: Arc<dyn HistoryStore>) -> Self {
        let (appends, queued) = mpsc::channel(MAX_GROUP * 4);
        tokio::spawn(write_loop(store.clone(), queued));
        Self { store, appends }
    }
}

/// Appends what is waiting, a group at a time, until every handle is gone.
async fn write_loop(store: Arc<dyn HistoryStore>, mut queued: mpsc::Receiver<Request>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while queued.recv_many(&mut group, MAX_GROUP).await > 0 {
        let results = append_group(store.as_ref(), &mut group).await;
        for (request, result) in group.drain(..).zip(results) {
            // A caller that went away (shutdown) no longer needs its answer.
            let _ = request.reply.send(result);
        }
    }
}

/// Appends every request's batch in one call, or, if that fails, each alone;
/// returns each request's outcome, in order. Takes the batches.
async fn append_group(store: &dyn HistoryStore, group: &mut [Request]) -> Vec<Result<Vec<Vec<Position>>>> {
    let lengths: Vec<usize> = group.iter().map(|r| r.batch.len()).collect();
    let mut all: Vec<Message> = group.iter_mut().flat_map(|r| std::mem::take(&mut r.batch)).collect();
    if group.len() > 1 {
        match store.append(&all).await {
            Ok(mut positions) if positions.len() == all.len() => {
                return lengths.iter().map(|n| Ok(positions.drain(..*n).collect())).collect();
            }
            Ok(_) => {
                tracing::warn!(appends = group.len(), "a store answered a group with the wrong number of positions")
            }
            Err(e) => tracing::debug!(error = %e, appends = group.len(), "a group append failed; appending one by one"),
        }
    }
    let mut results = Vec::with_capacity(group.len());
    for n in lengths {
        let batch: Vec<Message> = all.drain(..n).collect();
        results.push(store.append(&batch).await);
    }
    results
}

#[async_trait]
impl HistoryStore for GroupCommit {
    async fn append(&self, batch: &[Message]) -> Result<Vec<Vec<Position>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        let gone = || Error::Database(sqlx::Error::WorkerCrashed);
        self.appends.send(Request { batch: batch.to_vec(), reply }).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    async fn read(&self, stream: StreamId, peer: Option<u64>, page: Page, limit: u32) -> Result<Vec<StoredMessage>> {
        self.store.read(stream, peer, page, limit).await
    }

    async fn stream_info(&self, stream: StreamId) -> Result<Option<StreamInfo>> {
        self.store.stream_info(stream).await
    }

    async fn set_aside(&self, letter: &DeadLetter) -> Result<()> {
        self.store.set_aside(letter).await
    }

    async fn dead_letters(&self, topic: &str, limit: u32) -> Result<Vec<DeadLetter>> {
        self.store.dead_letters(topic, limit).await
    }
}
