-- pgchanges schema, version 3: what the logical source created, so that uninstall can remove it.

CREATE TABLE pgchanges.logical_objects (
    kind        text NOT NULL CHECK (kind IN ('publication', 'slot')),
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, name)
);
