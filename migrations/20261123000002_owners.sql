-- Users and teams: owners of keys, with their own limits and budgets.
CREATE TABLE owners (
    kind        TEXT NOT NULL,
    name        TEXT NOT NULL,
    team        TEXT,
    spec        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (kind, name)
);
