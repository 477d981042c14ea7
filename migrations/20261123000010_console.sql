-- The web console: accounts (sign in with a password), invite links and
-- sessions. Secrets are stored only as hashes: argon2id for passwords,
-- SHA-256 for session and invite tokens.
CREATE TABLE console_users (
    id                   TEXT PRIMARY KEY,
    name                 TEXT NOT NULL UNIQUE,
    role                 TEXT NOT NULL,
    team                 TEXT,
    password_hash        TEXT,
    status               TEXT NOT NULL,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL,
    last_login_at        BIGINT
);

CREATE TABLE console_invites (
    token_hash   TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    used_at      BIGINT
);
CREATE INDEX console_invites_user ON console_invites (user_id);

CREATE TABLE console_sessions (
    token_hash    TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL,
    csrf          TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    last_seen_at  BIGINT NOT NULL,
    ip            TEXT
);
CREATE INDEX console_sessions_user ON console_sessions (user_id);
