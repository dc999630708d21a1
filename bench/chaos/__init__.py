"""The chaos suite (issue 16): a steady pgbench write load, faults injected at random times, a history checked
row version by row version afterwards.

Modules, one job each:

- :mod:`bench.chaos.workload`: the table, its ledger, the pgbench scripts and the writer loop that keeps
  pgbench running through server restarts;
- :mod:`bench.chaos.consumer_app`: the App that ``pgchanges run`` serves in the consumer process (one JSON
  line per delivered row version);
- :mod:`bench.chaos.faults`: the fault injectors (terminated backends, server restarts, SIGKILL and
  SIGSTOP of the consumer, a silent network partition, a slow link);
- :mod:`bench.chaos.history`: the checker (lost, repeated, out of order, gaps for notify);
- :mod:`bench.chaos.runner`: one run of one source under one fault plan;
- :mod:`bench.chaos.report`: the results table (``bench/results/chaos.md``);
- ``python -m bench.chaos``: the command (``--help``); ``docs/chaos.md`` says what is checked and why.

The network partition reuses :mod:`tests.partition` (a network namespace and a veth pair), which the
partition tests also use.
"""
