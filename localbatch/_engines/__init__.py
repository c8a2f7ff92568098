"""Engines: where an execution's rows run, and the operations on executions.

- the seam: ``base`` (``Engine``, ``RunHandle``, ``RUNS``, options, chunks) and
  ``registry`` (engines by name; Dask imported only when asked for);
- the implementations: ``local`` (supervised worker processes, the default),
  ``inline`` (the calling thread), ``dask`` (a Dask cluster, caller side) and
  ``dask_tasks`` (the task a Dask worker runs: imports only ``_workers``);
- ``supervisor``: what the local and Dask supervisors share (chunk dealing,
  worker-death charging, end states, the exit wait);
- ``executions``: submit, wait, cancel, resume, retry on one store;
  ``consume``: one request-response call.

Docstring only, so that importing ``dask_tasks`` imports nothing else here.
"""
