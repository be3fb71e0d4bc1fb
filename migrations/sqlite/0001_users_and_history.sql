-- Accounts and message history for the embedded (SQLite) backend.
-- Times are BIGINT milliseconds since the Unix epoch (portable across databases).

CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    created_ms    BIGINT  NOT NULL
);

-- One row per stream (a room `room:<id>` or an inbox `user:<id>`): its epoch and
-- the last seq handed out, so the next seq is gap-free.
CREATE TABLE streams (
    stream   TEXT   PRIMARY KEY,
    epoch    TEXT   NOT NULL,
    last_seq BIGINT NOT NULL
);

-- One row per message, whatever the number of streams it was appended to.
CREATE TABLE messages (
    msg_id         BIGINT   PRIMARY KEY,
    kind           SMALLINT NOT NULL,
    room_id        BIGINT   NOT NULL,
    from_user_id   BIGINT   NOT NULL,
    from_user_name TEXT     NOT NULL,
    to_user_id     BIGINT   NOT NULL,
    to_user_name   TEXT     NOT NULL,
    body           TEXT     NOT NULL,
    admitted_ms    BIGINT   NOT NULL,
    client_msg_id  TEXT     NOT NULL DEFAULT ''
);

-- The position of a message in a stream. UNIQUE (stream, msg_id) makes a
-- redelivered record find its existing seq instead of taking a new one.
CREATE TABLE stream_entries (
    stream TEXT   NOT NULL,
    seq    BIGINT NOT NULL,
    msg_id BIGINT NOT NULL REFERENCES messages (msg_id),
    PRIMARY KEY (stream, seq),
    UNIQUE (stream, msg_id)
);
