"""The only package that does I/O with PostgreSQL: connecting, listening and (later) replication streams."""
