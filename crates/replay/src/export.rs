//! `courier replay export`: the selected messages as JSON lines, one object
//! per message, with where its record is in the queue. `msgId` is a string,
//! as in the frames clients get: JavaScript readers keep every digit. A room
//! message has `toUserId` 0; a private one has the room its sender was in,
//! or 0, as `roomId`.

use std::io::Write;

use courier_model::Message;
use courier_queue::{Record, TopicReader};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::feed::Records;
use crate::report::{Progress, Summary};
use crate::{Plan, time};

/// One exported message, its fields in the order a reader expects them.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Line<'a> {
    pub msg_id: String,
    pub kind: &'static str,
    pub room_id: u64,
    pub from_user_id: u64,
    pub from_user_name: &'a str,
    pub to_user_id: u64,
    pub to_user_name: &'a str,
    pub body: &'a str,
    pub admitted_at: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub client_msg_id: &'a str,
    pub topic: &'a str,
    pub partition: u32,
    pub offset: u64,
}

impl<'a> Line<'a> {
    /// The line of `message`, read from `record`.
    pub fn new(message: &'a Message, record: &'a Record) -> Self {
        Self {
            msg_id: message.msg_id.to_string(),
            kind: message.kind.as_str(),
            room_id: message.room_id,
            from_user_id: message.from_user_id,
            from_user_name: &message.from_user_name,
            to_user_id: message.to_user_id,
            to_user_name: &message.to_user_name,
            body: &message.body,
            admitted_at: time::rfc3339(message.admitted_ms()),
            client_msg_id: &message.client_msg_id,
            topic: &record.topic,
            partition: record.partition,
            offset: record.offset,
        }
    }
}

/// Writes the messages `plan` selects to `out`, one JSON object per line.
/// Following, each line is flushed as it is written.
pub async fn export(
    reader: &dyn TopicReader,
    plan: &Plan,
    out: &mut (dyn Write + Send),
    progress: Progress,
    stop: CancellationToken,
) -> anyhow::Result<Summary> {
    let mut records = Records::open(reader, plan, progress, stop).await?;
    let mut summary = Summary::default();
    let mut seen = Seen::default();
    while let Some(record) = records.next().await? {
        let Some(message) = plan.select(&record, &mut summary, false)? else { continue };
        if !seen.insert(message.msg_id) {
            // A retried send's records come again under the first one's id.
            summary.topic(&record.topic).skipped += 1;
            continue;
        }
        serde_json::to_writer(&mut *out, &Line::new(&message, &record))?;
        out.write_all(b"\n")?;
        if plan.follow {
            out.flush()?;
        }
        summary.topic(&record.topic).written += 1;
    }
    out.flush()?;
    Ok(summary)
}

/// Message ids exported lately, to write a retried send once: its records
/// come again soon after the first (a client retries within minutes), so the
/// newest [`SEEN`] ids are enough and memory stays bounded.
#[derive(Default)]
struct Seen {
    ids: std::collections::HashSet<u64>,
    order: std::collections::VecDeque<u64>,
}

/// Message ids remembered for [`Seen`].
const SEEN: usize = 1 << 20;

impl Seen {
    /// False if `id` was seen.
    fn insert(&mut self, id: u64) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > SEEN
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        true
    }
}
