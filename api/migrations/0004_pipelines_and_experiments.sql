-- Saved reduction pipelines, and the A/B experiments that compare two of them
-- on a set of agents, with every state change recorded.

CREATE TABLE pipelines (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text        NOT NULL,
    description text        NOT NULL DEFAULT '',
    -- A validated pipeline_spec::PipelineSpec.
    spec        jsonb       NOT NULL,
    created_by  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX pipelines_name_idx ON pipelines (lower(name));

-- An experiment snapshots both pipelines' specs when it is created, so
-- editing or deleting a saved pipeline later changes nothing about it.
-- agent_ids cannot carry a foreign key; the API checks at creation that each
-- names an enrolled, unrevoked agent.
CREATE TABLE experiments (
    id                    uuid             PRIMARY KEY DEFAULT gen_random_uuid(),
    name                  text             NOT NULL,
    baseline_pipeline_id  uuid             NULL REFERENCES pipelines (id) ON DELETE SET NULL,
    baseline_spec         jsonb            NOT NULL,
    candidate_pipeline_id uuid             NULL REFERENCES pipelines (id) ON DELETE SET NULL,
    candidate_spec        jsonb            NOT NULL,
    agent_ids             uuid[]           NOT NULL CHECK (cardinality(agent_ids) >= 1),
    duration_seconds      integer          NOT NULL CHECK (duration_seconds > 0),
    min_reduction_pct     double precision NOT NULL CHECK (min_reduction_pct BETWEEN 0 AND 100),
    min_accuracy_pct      double precision NOT NULL CHECK (min_accuracy_pct BETWEEN 0 AND 100),
    state                 text             NOT NULL DEFAULT 'created' CHECK (state IN (
                              'created', 'deploying', 'running', 'analyzing', 'completed',
                              'promoted', 'rolled_back', 'failed', 'stopped')),
    created_by            text             NOT NULL,
    created_at            timestamptz      NOT NULL DEFAULT now(),
    updated_at            timestamptz      NOT NULL DEFAULT now(),
    -- When deploying began, and the measured window [started_at, ends_at].
    deploy_started_at     timestamptz      NULL,
    started_at            timestamptz      NULL,
    ends_at               timestamptz      NULL,
    -- Measured KPIs with the queries that produced them (kpi::Kpis).
    kpis                  jsonb            NULL,
    recommendation        text             NULL CHECK (recommendation IN ('promote', 'rollback')),
    -- Why it failed, or the last analysis problem while it is retried.
    error                 text             NULL,
    -- The background driver's claim, so that replicas do not work on the
    -- same experiment at once; transitions themselves are guarded by state.
    driver_claim_until    timestamptz      NULL
);
CREATE INDEX experiments_active_idx ON experiments (updated_at)
    WHERE state IN ('deploying', 'running', 'analyzing');
CREATE INDEX experiments_agents_idx ON experiments USING gin (agent_ids);

-- Every transition, including creation (from_state NULL).
CREATE TABLE experiment_events (
    id            bigserial   PRIMARY KEY,
    experiment_id uuid        NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    from_state    text        NULL,
    to_state      text        NOT NULL,
    action        text        NOT NULL,
    actor         text        NOT NULL,
    reason        text        NOT NULL DEFAULT '',
    at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX experiment_events_experiment_idx ON experiment_events (experiment_id, id);
