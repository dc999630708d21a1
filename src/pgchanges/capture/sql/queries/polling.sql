-- Named queries of the polling source. Its per-table statements name the table's own columns and are composed
-- with psycopg.sql in sources/polling_plan.py.

-- name: polling_columns
-- Each column's type as SQL writes it (for casts of the watermark) and its category (date/time, numeric, …).
SELECT a.attname AS column_name, format_type(a.atttypid, a.atttypmod) AS type_name, t.typcategory::text AS category
FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = %(table_oid)s AND a.attnum > 0 AND NOT a.attisdropped

-- name: polling_snapshot
-- The poll's snapshot, and the transactions running in it (their late rows are looked for next time).
SELECT pg_current_snapshot()::text AS snapshot, ARRAY(SELECT pg_snapshot_xip(pg_current_snapshot())::text) AS running
