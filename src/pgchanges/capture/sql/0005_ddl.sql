-- pgchanges schema, version 5: DDL events. The functions are created here; the event triggers that call them
-- need a superuser and are created by `pgchanges install --ddl` (capture/ddl.py).
-- Each command is NOTIFYed on channel 'pgchanges:ddl' as JSON; statements too long for NOTIFY are cut (and
-- say so), the description of the command itself always fits.

CREATE FUNCTION pgchanges.ddl_payload_v1(fields jsonb) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    statement text := current_query();
    payload   text := (fields || jsonb_build_object('statement', statement))::text;
BEGIN
    IF octet_length(payload) >= 7900 THEN
        payload := (fields || jsonb_build_object(
            'statement', left(statement, 7900 - octet_length(fields::text) - 200), 'statement_truncated', true))::text;
    END IF;
    RETURN payload;
END
$fn$;

CREATE FUNCTION pgchanges.ddl_end_v1() RETURNS event_trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    command record;
BEGIN
    FOR command IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
        CONTINUE WHEN command.schema_name = 'pgchanges';
        PERFORM pg_notify('pgchanges:ddl', pgchanges.ddl_payload_v1(jsonb_build_object(
            'event', 'ddl_command_end', 'command_tag', command.command_tag, 'object_type', command.object_type,
            'object_identity', command.object_identity, 'schema', command.schema_name,
            'object_oid', command.objid, 'in_extension', command.in_extension,
            'xid', pg_current_xact_id()::text::bigint)));
    END LOOP;
END
$fn$;

CREATE FUNCTION pgchanges.ddl_drop_v1() RETURNS event_trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    dropped record;
BEGIN
    FOR dropped IN SELECT * FROM pg_event_trigger_dropped_objects() LOOP
        CONTINUE WHEN dropped.schema_name = 'pgchanges' OR NOT dropped.original;
        PERFORM pg_notify('pgchanges:ddl', pgchanges.ddl_payload_v1(jsonb_build_object(
            'event', 'sql_drop', 'command_tag', tg_tag, 'object_type', dropped.object_type,
            'object_identity', dropped.object_identity, 'schema', dropped.schema_name,
            'object_name', dropped.object_name, 'object_oid', dropped.objid,
            'xid', pg_current_xact_id()::text::bigint)));
        -- a captured table that is dropped is no longer captured
        DELETE FROM pgchanges.captures WHERE table_oid = dropped.objid AND dropped.object_type = 'table';
    END LOOP;
END
$fn$;
