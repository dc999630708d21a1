"""Operating pgchanges: metrics, health and readiness, true lag, JSON logs, progress of long work.

The modules, bottom up (README.md, "Operating it", lists the metrics):

* :mod:`~pgchanges.ops.figures`: plain counters that sources and sinks keep (standard library only, so they
  are there with or without the ``ops`` extra); :func:`~pgchanges.ops.figures.sink_metrics` for sinks;
* :mod:`~pgchanges.ops.observer`: what the runtime and the server report while an App serves, per batch;
* :mod:`~pgchanges.ops.sampler`: slots and outbox consumers, queried off the hot path;
* :mod:`~pgchanges.ops.metrics`: the Prometheus collector (prometheus-client), made at scrape time;
* :mod:`~pgchanges.ops.health`: ``/healthz`` and ``/readyz``;
* :mod:`~pgchanges.ops.http`: the small anyio + h11 server; :mod:`~pgchanges.ops.service`: the endpoint
  of one App (:class:`~pgchanges.ops.service.Ops`);
* :mod:`~pgchanges.ops.logs`: ``--log-format json`` and scrubbing secrets; :mod:`~pgchanges.ops.progress`:
  progress bars; :mod:`~pgchanges.ops.status`: ``pgchanges status``.

Importing this package imports nothing else: prometheus-client, h11 and tqdm are loaded only when used.
"""
