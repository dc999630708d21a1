"""What pgchanges installs into a database: the ``pgchanges`` schema, trigger functions and triggers."""
