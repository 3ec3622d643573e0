-- Agents, their one-time enrollment tokens, the tasks they run and the
-- Pushgateway groups they push to.

-- Only the SHA-256 of a token is kept; the token itself is shown once.
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
-- Revoked agents stay (for the audit trail and listings); their name is free
-- again for a new enrollment.
CREATE TABLE agents (
    id              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    name            text        NOT NULL,
    hostname        text        NOT NULL,
    labels          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    secret_hash     bytea       NOT NULL,
    version         text        NOT NULL DEFAULT '',
    -- What the agent said about itself in its last heartbeat.
    reported_status jsonb       NULL,
    enrolled_via    uuid        NULL REFERENCES enrollment_tokens (id) ON DELETE SET NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NULL,
    revoked_at      timestamptz NULL
);
CREATE UNIQUE INDEX agents_name_idx ON agents (lower(name)) WHERE revoked_at IS NULL;
CREATE INDEX agents_last_seen_idx ON agents (last_seen_at) WHERE revoked_at IS NULL;

-- A task is claimed with FOR UPDATE SKIP LOCKED and held under a lease; an
-- expired lease or a failed attempt puts it back in the queue until
-- max_attempts is spent (then it is `expired` or `failed`). `result` and
-- `error` are those of the attempt that finished it.
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
    result           jsonb       NULL,
    error            text        NULL,
    created_by       text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tasks_claim_idx ON tasks (agent_id, created_at) WHERE state = 'queued';
CREATE INDEX tasks_lease_idx ON tasks (lease_expires_at) WHERE state = 'leased';
CREATE INDEX tasks_agent_idx ON tasks (agent_id, created_at DESC);
CREATE INDEX tasks_state_idx ON tasks (state);
CREATE INDEX tasks_experiment_idx ON tasks (experiment_id);

-- Every result an agent reported, keyed by the id the agent chose: a result
-- sent again (after a lost reply) is answered from here and changes nothing.
CREATE TABLE task_results (
    id          uuid        PRIMARY KEY,
    task_id     uuid        NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    attempt     integer     NOT NULL,
    outcome     text        NOT NULL CHECK (outcome IN ('succeeded', 'failed')),
    result      jsonb       NULL,
    error       text        NULL,
    -- The task's state after this result was applied: the stored answer.
    task_state  text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX task_results_task_idx ON task_results (task_id);

-- The Pushgateway groups (job phoenix-agent, grouping key agent, experiment,
-- variant) an agent has pushed to, so they can be deleted when the agent is
-- revoked or the experiment ends; `series` is the size of the last push.
CREATE TABLE agent_metric_groups (
    agent_id   uuid        NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    experiment text        NOT NULL,
    variant    text        NOT NULL,
    series     integer     NOT NULL DEFAULT 0,
    pushed_at  timestamptz NULL,
    PRIMARY KEY (agent_id, experiment, variant)
);
CREATE INDEX agent_metric_groups_experiment_idx ON agent_metric_groups (experiment);
