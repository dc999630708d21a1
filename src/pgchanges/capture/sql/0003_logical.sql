-- pgchanges schema, version 3: what the logical source created, so that uninstall can remove it.

CREATE TABLE pgchanges.logical_objects (
    kind        text NOT NULL CHECK (kind IN ('publication', 'slot')),
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, name)
);

-- Initial snapshot progress per slot and table: rows up to last_key (primary key, as JSON) are acknowledged.
CREATE TABLE pgchanges.snapshot_progress (
    slot        text NOT NULL,
    table_oid   oid NOT NULL,
    last_key    jsonb,
    done        boolean NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slot, table_oid)
);
