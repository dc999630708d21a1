-- Queries of DDL capture's event triggers (pgchanges.capture.ddl), loaded by name (pgchanges.capture.queries).
-- Parameters are %(name)s; {name} marks an identifier or keyword composed in Python with psycopg.sql.

-- name: current_role_superuser
SELECT current_user AS role_name, rolsuper AS superuser FROM pg_catalog.pg_roles WHERE rolname = current_user

-- name: event_trigger_exists
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger WHERE evtname = %(name)s) AS present

-- name: create_event_trigger
CREATE EVENT TRIGGER {name} ON {event} EXECUTE FUNCTION {function}()

-- name: drop_event_trigger
DROP EVENT TRIGGER IF EXISTS {name}

-- name: event_triggers_present
SELECT count(*) AS present FROM pg_catalog.pg_event_trigger WHERE evtname = ANY (%(names)s)
