-- Catalog queries of typed row values (pgchanges.rowtypes), loaded by name (pgchanges.capture.queries).
-- Parameters are %(name)s.

-- name: table_column_types
SELECT a.attrelid AS table_oid, a.attname AS column_name, a.atttypid AS type_oid, a.atttypmod AS type_mod
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = ANY (%(table_oids)s) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum

-- name: type_info
-- typtype: b base, c composite, d domain, e enum, p pseudo, r range, m multirange. typelem is the element
-- type of an array type and typbasetype the base type of a domain (else 0).
SELECT t.oid AS type_oid, t.typtype, t.typelem, t.typbasetype, (t.typcategory = 'A') AS is_array
FROM pg_catalog.pg_type t WHERE t.oid = ANY (%(type_oids)s)
