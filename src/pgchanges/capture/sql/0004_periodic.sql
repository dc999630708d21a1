-- pgchanges schema, version 4: periodic tasks. One row per task; whoever locks the row while it is due runs
-- the task and moves next_run_at forward in the same transaction, so a period runs once across all workers.

CREATE TABLE pgchanges.periodic (
    name              text PRIMARY KEY,
    spec              text NOT NULL,
    next_run_at       timestamptz NOT NULL,
    last_started_at   timestamptz,
    last_finished_at  timestamptz,
    last_error        text,
    runs              bigint NOT NULL DEFAULT 0
);
