-- One schema for SQLite and PostgreSQL: only TEXT, BIGINT and DOUBLE PRECISION,
-- times as integer milliseconds since the Unix epoch.

CREATE TABLE api_keys (
    id                  TEXT PRIMARY KEY,
    name                TEXT NOT NULL,
    user_name           TEXT,
    team                TEXT,
    purpose             TEXT,
    environment         TEXT,
    prefix              TEXT NOT NULL,
    key_hash            TEXT NOT NULL UNIQUE,
    old_key_hash        TEXT,
    old_key_expires_at  BIGINT,
    status              TEXT NOT NULL,
    parent_id           TEXT,
    expires_at          BIGINT,
    spec                TEXT NOT NULL,
    spend_usd           DOUBLE PRECISION NOT NULL DEFAULT 0,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    revoked_at          BIGINT,
    last_used_at        BIGINT
);
CREATE INDEX api_keys_user ON api_keys (user_name);
CREATE INDEX api_keys_team ON api_keys (team);
CREATE INDEX api_keys_parent ON api_keys (parent_id);

CREATE TABLE admin_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    prefix      TEXT NOT NULL,
    key_hash    TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

CREATE TABLE usage (
    request_id         TEXT PRIMARY KEY,
    key_id             TEXT NOT NULL,
    user_name          TEXT,
    team               TEXT,
    purpose            TEXT,
    provider           TEXT NOT NULL,
    model              TEXT NOT NULL,
    endpoint           TEXT NOT NULL,
    status             BIGINT NOT NULL,
    prompt_tokens      BIGINT NOT NULL,
    completion_tokens  BIGINT NOT NULL,
    cost_usd           DOUBLE PRECISION NOT NULL,
    latency_ms         BIGINT NOT NULL,
    created_at         BIGINT NOT NULL
);
CREATE INDEX usage_created ON usage (created_at);
CREATE INDEX usage_key ON usage (key_id, created_at);

CREATE TABLE audit (
    seq        BIGINT PRIMARY KEY,
    ts         BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT,
    ip         TEXT,
    detail     TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
CREATE INDEX audit_ts ON audit (ts);

-- The head of the audit chain, so deleting the newest rows is detected too.
CREATE TABLE audit_head (
    id    BIGINT PRIMARY KEY,
    seq   BIGINT NOT NULL,
    hash  TEXT NOT NULL
);
