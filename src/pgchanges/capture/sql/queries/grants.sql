-- Queries of `pgchanges grant` (pgchanges.capture.grants): what exists, so that only grants on real objects
-- are printed or applied. The GRANT statements themselves name a role and tables, and are composed with
-- psycopg.sql in grants.py. Parameters are %(name)s.

-- name: grant_context
-- The database the role must connect to, and whether the role exists (a clear error before any GRANT).
SELECT current_database() AS database_name,
       EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %(role)s) AS role_exists

-- name: grant_existing_relations
-- Which of the given pgchanges relations (schema-qualified names) exist in this database, in the given order.
SELECT name FROM unnest(%(names)s::text[]) WITH ORDINALITY AS n (name, i)
WHERE pg_catalog.to_regclass(name) IS NOT NULL
ORDER BY i

-- name: grant_existing_functions
-- Which of the given pgchanges functions (signatures as regprocedure reads them) exist, in the given order.
SELECT signature FROM unnest(%(signatures)s::text[]) WITH ORDINALITY AS n (signature, i)
WHERE pg_catalog.to_regprocedure(signature) IS NOT NULL
ORDER BY i

-- name: grant_table_schemas
-- The schemas of the given tables (oids), once each: the role needs USAGE on them.
SELECT DISTINCT n.nspname AS schema_name
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = ANY(%(oids)s::oid[])
ORDER BY 1
