-- Agents, their one-time enrollment tokens, and the tasks they run.

CREATE TABLE enrollment_tokens (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    token_hash  bytea       NOT NULL UNIQUE,
    description text        NOT NULL DEFAULT '',
    expires_at  timestamptz NOT NULL,
    uses_left   integer     NOT NULL CHECK (uses_left >= 0),
    created_by  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz NULL
);

-- An agent's credential is `<id>.<secret>`; only the secret's SHA-256 is kept.
CREATE TABLE agents (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    name         text        NOT NULL,
    hostname     text        NOT NULL,
    labels       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    secret_hash  bytea       NOT NULL,
    version      text        NOT NULL DEFAULT '',
    enrolled_via uuid        NULL REFERENCES enrollment_tokens (id) ON DELETE SET NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NULL,
    revoked_at   timestamptz NULL
);
CREATE UNIQUE INDEX agents_name_idx ON agents (lower(name)) WHERE revoked_at IS NULL;

-- A task is claimed with FOR UPDATE SKIP LOCKED and held under a lease; an
-- expired lease puts it back in the queue until max_attempts is spent.
CREATE TABLE tasks (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    agent_id         uuid        NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    kind             text        NOT NULL,
    payload          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    state            text        NOT NULL DEFAULT 'queued'
                     CHECK (state IN ('queued', 'leased', 'succeeded', 'failed', 'expired', 'cancelled')),
    attempts         integer     NOT NULL DEFAULT 0,
    max_attempts     integer     NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    lease_expires_at timestamptz NULL,
    experiment_id    uuid        NULL,
    result_id        uuid        NULL UNIQUE,
    result           jsonb       NULL,
    error            text        NULL,
    created_by       text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tasks_claim_idx ON tasks (agent_id, created_at) WHERE state = 'queued';
CREATE INDEX tasks_lease_idx ON tasks (lease_expires_at) WHERE state = 'leased';
CREATE INDEX tasks_experiment_idx ON tasks (experiment_id);
