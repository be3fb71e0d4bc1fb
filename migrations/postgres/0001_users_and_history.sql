-- Accounts and message history for the production (PostgreSQL) backend; the same
-- tables as migrations/sqlite. Times are BIGINT milliseconds since the Unix epoch.

CREATE TABLE users (
    id            BIGSERIAL PRIMARY KEY,
    name          TEXT      NOT NULL UNIQUE,
    password_hash TEXT      NOT NULL,
    created_ms    BIGINT    NOT NULL
);

-- One row per stream (`room:<id>` or `user:<id>`): its epoch and the last seq given.
CREATE TABLE streams (
    stream   TEXT   PRIMARY KEY,
    epoch    TEXT   NOT NULL,
    last_seq BIGINT NOT NULL
);

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

-- UNIQUE (stream, msg_id): a redelivered record finds its seq instead of a new one.
CREATE TABLE stream_entries (
    stream TEXT   NOT NULL,
    seq    BIGINT NOT NULL,
    msg_id BIGINT NOT NULL REFERENCES messages (msg_id),
    PRIMARY KEY (stream, seq),
    UNIQUE (stream, msg_id)
);
