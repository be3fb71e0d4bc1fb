-- History as one row per stream entry, the message's columns in the row.
--
-- Before, an entry was a row of `stream_entries` pointing at a shared
-- `messages` row, and every append touched, per entry, a leaf of its stream in
-- each of three indexes (the primary key, the unique (stream, msg_id) and the
-- peer index), besides the two tables. Now rows are appended at the end of
-- the table (rowid order), a stream's order is one small index (stream, seq),
-- the index that finds a redelivered message is keyed by message id first
-- (ids grow with time, so it is appended at its right edge), and the peer
-- index holds private entries only: one leaf per stream for a room entry, two
-- for an inbox entry. A private message is stored twice (once per inbox),
-- which costs bytes and saves pages, and its two copies no longer share a row.
--
-- Copies every entry: on a large history, run it in a quiet hour.

CREATE TABLE history (
    id             INTEGER  PRIMARY KEY,
    stream         TEXT     NOT NULL,
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
    client_msg_id  TEXT     NOT NULL
);

INSERT INTO history (stream, seq, msg_id, peer_user_id, kind, room_id, from_user_id, from_user_name,
    to_user_id, to_user_name, body, admitted_ms, client_msg_id)
SELECT e.stream, e.seq, e.msg_id, e.peer_user_id, m.kind, m.room_id, m.from_user_id, m.from_user_name,
       m.to_user_id, m.to_user_name, m.body, m.admitted_ms, m.client_msg_id
FROM stream_entries e JOIN messages m ON m.msg_id = e.msg_id
ORDER BY e.msg_id, e.stream;

DROP TABLE stream_entries;
DROP TABLE messages;

-- A stream in order; makes seqs unique per stream.
CREATE UNIQUE INDEX history_by_seq ON history (stream, seq);
-- A redelivered message finds the seq it already has.
CREATE UNIQUE INDEX history_by_message ON history (msg_id, stream);
-- One conversation of an inbox (reads give `peer_user_id <> 0` to use it).
CREATE INDEX history_by_peer ON history (stream, peer_user_id, seq) WHERE peer_user_id <> 0;
