-- pgchanges schema, version 7: where polling consumers keep their watermark, when they may write here.
-- A read-only role keeps it in a local file instead (sources/poll_state.py).

CREATE TABLE pgchanges.poll_state (
    consumer    text NOT NULL,
    table_name  text NOT NULL,   -- schema.table as pgchanges prints it
    state       jsonb NOT NULL,  -- watermark, the snapshot of the last poll, transactions seen running
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, table_name)
);
