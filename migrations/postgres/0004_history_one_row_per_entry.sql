-- History as one row per stream entry, the message's columns in the row.
--
-- Before, an entry was a row of `stream_entries` pointing at a shared
-- `messages` row. Each entry touched three B-trees keyed by stream (primary
-- key, unique (stream, msg_id), peer) besides the message's own, and the two
-- copies of a private message, appended by two lanes (the recipient's and the
-- sender's partition), inserted the same `messages` key, so one lane waited
-- for the other's open transaction. Now an entry is one row: the index that
-- finds a redelivered message is keyed by message id first (ids grow with
-- time, so it is appended at its right edge), the peer index holds private
-- entries only, and nothing is shared between streams. A private message is
-- stored twice (once per inbox), which costs bytes and saves index pages.
--
-- Copies every entry and takes the history tables' locks while it runs: on a
-- large history, run it in a quiet hour.

CREATE TABLE history (
    stream         TEXT COLLATE "C" NOT NULL,
    seq            BIGINT   NOT NULL,
    msg_id         BIGINT   NOT NULL,
    -- The other party of a private message in this inbox; 0 in a room.
    peer_user_id   BIGINT   NOT NULL,
    kind           SMALLINT NOT NULL,
    room_id        BIGINT   NOT NULL,
    from_user_id   BIGINT   NOT NULL,
    from_user_name TEXT     NOT NULL,
    to_user_id     BIGINT   NOT NULL,
    to_user_name   TEXT     NOT NULL,
    body           TEXT     NOT NULL,
    admitted_ms    BIGINT   NOT NULL,
    client_msg_id  TEXT     NOT NULL,
    PRIMARY KEY (stream, seq)
);

INSERT INTO history
SELECT e.stream, e.seq, e.msg_id, e.peer_user_id, m.kind, m.room_id, m.from_user_id, m.from_user_name,
       m.to_user_id, m.to_user_name, m.body, m.admitted_ms, m.client_msg_id
FROM stream_entries e JOIN messages m ON m.msg_id = e.msg_id;

DROP TABLE stream_entries;
DROP TABLE messages;

-- A redelivered message finds the seq it already has.
CREATE UNIQUE INDEX history_by_message ON history (msg_id, stream);
-- One conversation of an inbox (reads give `peer_user_id <> 0` to use it).
CREATE INDEX history_by_peer ON history (stream, peer_user_id, seq) WHERE peer_user_id <> 0;
