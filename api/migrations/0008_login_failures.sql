-- Failed logins, shared by the API's replicas: each replica counts in
-- memory and writes its counts here after a failure, and reads them back
-- before each attempt, so that a limit hit on one replica holds on all.
-- Keys: `source:<address or /64>`, `pair:<user>` + newline + `<source>`,
-- `user:<user>`.
CREATE TABLE login_failures (
    key text PRIMARY KEY,
    failures integer NOT NULL CHECK (failures >= 0),
    last_failure timestamptz NOT NULL,
    blocked_until timestamptz NOT NULL
);
CREATE INDEX login_failures_last_failure_idx ON login_failures (last_failure);
