-- The audit log becomes a table partitioned by month, so that months past
-- the retention can be dropped whole while no row is ever changed: append-only
-- means "no entry is altered or removed one by one", not "the disk fills".
-- Existing rows move over with their ids; the id sequence carries on.

ALTER TABLE audit_log RENAME TO audit_log_unpartitioned;
ALTER INDEX audit_log_pkey RENAME TO audit_log_unpartitioned_pkey;
ALTER INDEX audit_log_at_idx RENAME TO audit_log_unpartitioned_at_idx;
-- Kept when the old table is dropped below.
ALTER SEQUENCE audit_log_id_seq OWNED BY NONE;

CREATE TABLE audit_log (
    id        bigint      NOT NULL DEFAULT nextval('audit_log_id_seq'),
    at        timestamptz NOT NULL DEFAULT now(),
    actor     text        NOT NULL,
    action    text        NOT NULL,
    target    text        NOT NULL,
    source_ip inet        NULL,
    outcome   text        NOT NULL,
    details   jsonb       NOT NULL DEFAULT '{}'::jsonb,
    -- How many events the row stands for: repeated refusals from one source
    -- are summed into one row per window.
    count     bigint      NOT NULL DEFAULT 1 CHECK (count >= 1),
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
ALTER SEQUENCE audit_log_id_seq OWNED BY audit_log.id;
CREATE INDEX audit_log_at_idx ON audit_log (at);

-- Through the parent: statement-level, so the refusal does not depend on
-- whether any row matches. Statement triggers are not inherited, so each
-- partition gets its own (below); DROP of a whole partition stays possible.
CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_reject_change();

-- The partition of the month (UTC) holding `day`, named audit_log_pYYYYMM,
-- created with its append-only trigger unless it exists. The API's
-- housekeeping creates months ahead with it; returns the partition's name.
CREATE FUNCTION audit_log_create_partition(day date) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    first date := date_trunc('month', day)::date;
    name  text := 'audit_log_p' || to_char(first, 'YYYYMM');
BEGIN
    IF to_regclass(quote_ident(name)) IS NOT NULL THEN
        RETURN name;
    END IF;
    EXECUTE format(
        'CREATE TABLE %I PARTITION OF audit_log FOR VALUES FROM (%L) TO (%L)',
        name,
        first::timestamp AT TIME ZONE 'UTC',
        (first + interval '1 month')::timestamp AT TIME ZONE 'UTC');
    EXECUTE format(
        'CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON %I '
        'FOR EACH STATEMENT EXECUTE FUNCTION audit_log_reject_change()',
        name);
    RETURN name;
END;
$$;

-- Each month that holds entries, and this month with the three after it.
SELECT audit_log_create_partition(month::date)
FROM (
    SELECT DISTINCT date_trunc('month', at AT TIME ZONE 'UTC') AS month FROM audit_log_unpartitioned
    UNION
    SELECT generate_series(
        date_trunc('month', now() AT TIME ZONE 'UTC'),
        date_trunc('month', now() AT TIME ZONE 'UTC') + interval '3 months',
        interval '1 month')
) AS months;

INSERT INTO audit_log (id, at, actor, action, target, source_ip, outcome, details)
SELECT id, at, actor, action, target, source_ip, outcome, details FROM audit_log_unpartitioned;

DROP TABLE audit_log_unpartitioned;

-- How long audit entries are kept, set by an admin (GET/PUT
-- /api/v1/audit/retention). One row.
CREATE TABLE audit_settings (
    singleton        boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    retention_months integer     NOT NULL DEFAULT 13 CHECK (retention_months BETWEEN 1 AND 1200),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    updated_by       text        NOT NULL DEFAULT 'default'
);
INSERT INTO audit_settings DEFAULT VALUES;
