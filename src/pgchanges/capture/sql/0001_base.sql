-- pgchanges schema, version 1: bookkeeping, the event id sequence, and the notify capture.
-- Applied by pgchanges.capture.migrations inside one transaction; never edit a released migration,
-- add a new file instead (functions carry a version suffix so a migration can replace them side by side).

CREATE SCHEMA IF NOT EXISTS pgchanges;

CREATE TABLE IF NOT EXISTS pgchanges.migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per captured table and source, so uninstall and status know what exists.
CREATE TABLE IF NOT EXISTS pgchanges.captures (
    table_oid    oid NOT NULL,
    schema_name  name NOT NULL,
    table_name   name NOT NULL,
    source       text NOT NULL,
    installed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (table_oid, source)
);

-- Ids for changes captured by triggers: unique, never reused; not gapless and not commit-ordered.
CREATE SEQUENCE IF NOT EXISTS pgchanges.event_seq AS bigint;

-- NOTIFY payloads must be shorter than 8000 bytes. Larger ones are stored here and the notification
-- carries only their id; listeners fetch them. Rows are removed by age, not on fetch, because several
-- listeners may need the same payload.
CREATE TABLE IF NOT EXISTS pgchanges.spill (
    id          bigint PRIMARY KEY,
    payload     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS spill_created_at ON pgchanges.spill (created_at);

-- Row and TRUNCATE trigger of the notify source. TG_ARGV[0] is the channel. The payload is JSON:
--   v: format version, id: event id, op, s/t: schema/table, r: table oid, x: transaction id,
--   n/o: new/old row as to_json() writes it (typed back to Python by the listener).
-- SECURITY DEFINER so that writers need no privilege on the pgchanges schema for spilling.
CREATE OR REPLACE FUNCTION pgchanges.notify_row_v1() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    event_id bigint := nextval('pgchanges.event_seq');
    payload  text;
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        payload := json_build_object(
            'v', 1, 'id', event_id, 'op', 'truncate', 's', TG_TABLE_SCHEMA, 't', TG_TABLE_NAME,
            'r', TG_RELID::bigint, 'x', pg_current_xact_id()::text::bigint)::text;
    ELSE
        payload := json_build_object(
            'v', 1, 'id', event_id, 'op', lower(TG_OP), 's', TG_TABLE_SCHEMA, 't', TG_TABLE_NAME,
            'r', TG_RELID::bigint, 'x', pg_current_xact_id()::text::bigint,
            'n', CASE WHEN TG_OP <> 'DELETE' THEN to_json(NEW) END,
            'o', CASE WHEN TG_OP <> 'INSERT' THEN to_json(OLD) END)::text;
    END IF;
    IF octet_length(payload) >= 8000 THEN
        INSERT INTO pgchanges.spill (id, payload) VALUES (event_id, payload);
        payload := json_build_object(
            'v', 1, 'id', event_id, 'spill', true, 's', TG_TABLE_SCHEMA, 't', TG_TABLE_NAME)::text;
    END IF;
    PERFORM pg_notify(TG_ARGV[0], payload);
    RETURN NULL;
END
$fn$;
