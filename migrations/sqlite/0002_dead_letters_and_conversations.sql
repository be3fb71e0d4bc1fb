-- Records task could not turn into history (undecodable, or refused by the store
-- after bounded retries) are set aside here with the reason, so their partition
-- moves on and an operator can inspect or repair them. The raw record is kept as
-- bytes.
CREATE TABLE dead_letters (
    topic         TEXT    NOT NULL,
    partition_id  INTEGER NOT NULL,
    record_offset BIGINT  NOT NULL,
    record_key    BLOB    NOT NULL,
    record_value  BLOB    NOT NULL,
    error         TEXT    NOT NULL,
    dead_at_ms    BIGINT  NOT NULL,
    -- A record redelivered after a crash is set aside once.
    PRIMARY KEY (topic, partition_id, record_offset)
);

-- The other party of a private message in an inbox (the sender in the
-- recipient's inbox, the recipient in the sender's; 0 for room entries), so one
-- conversation's page is one index range instead of a scan of the inbox.
ALTER TABLE stream_entries ADD COLUMN peer_user_id BIGINT NOT NULL DEFAULT 0;

UPDATE stream_entries
SET peer_user_id = (
    SELECT CASE WHEN stream_entries.stream = 'user:' || m.from_user_id THEN m.to_user_id ELSE m.from_user_id END
    FROM messages m WHERE m.msg_id = stream_entries.msg_id
)
WHERE msg_id IN (SELECT msg_id FROM messages WHERE kind = 2);

CREATE INDEX stream_entries_by_peer ON stream_entries (stream, peer_user_id, seq);
