"""pgchanges beside the tools a user would pick instead, in one run on one cluster (issue 15).

    .venv/bin/python -m bench.peers [--quick] [--rounds N] [--only logical,notify,latency,rss,profile]
                                    [--backends asyncio,trio] [--baseline CHECKOUT] [--skip KEYS]

writes ``bench/results/peers.md`` and ``peers.json``. Logical: postgres.js ``subscribe`` and psycopg2 +
wal2json + ``json.loads`` beside pgchanges' logical source; NOTIFY: asyncpg ``add_listener``, psycopg 3
``notifies()`` and pg-listen beside pgchanges' notify source; pgchanges each with a no-op handler and with one
that reads every value. ``../shared/peers/`` is the reference harness this one measures like.

* :mod:`~bench.peers.install` puts the peers in a cache directory outside the project;
* :mod:`~bench.peers.checkout` finds the pgchanges checkouts to measure (and builds their C parts if needed);
* :mod:`~bench.peers.database` starts the throwaway cluster and creates the schema;
* :mod:`~bench.peers.roster` says who is measured, :mod:`~bench.peers.workloads` what is written,
  :mod:`~bench.peers.runs` how each is timed (:mod:`~bench.peers.procs`: processes and /proc figures),
  :mod:`~bench.peers.profile` where pgchanges spends its time (py-spy);
* :mod:`~bench.peers.report` turns the results into ratios, the floors of issue 15 and the Markdown page;
* ``clients/`` holds the consumers, one process each (Python, and JavaScript run by node).

pgchanges is imported by its consumers from ``$PGCHANGES_SRC`` (a checkout or its ``src/``; default this
checkout), so the same script measures any revision: ``git worktree add /tmp/before <rev>``, then
``--baseline /tmp/before`` measures it beside this one in the same rounds, or ``PGCHANGES_SRC=/tmp/before``
measures it alone.
"""
