-- How many pushes reached a group: a deletion forgets the group only if no
-- push landed while it was deleting it from the Pushgateway (such a push may
-- have re-created it there).
ALTER TABLE agent_metric_groups ADD COLUMN pushes bigint NOT NULL DEFAULT 0;
