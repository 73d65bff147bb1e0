"""Operating a running VM: the pure building blocks behind healing, idle shutdown and benchmarks.

- ``heal``: what went wrong when vLLM did not start (from its own log) and the settings change
  that fixes it, if one does.
- ``metrics``: vLLM's Prometheus ``/metrics`` text → a snapshot; the idle signal and throughput.
- ``watchdog_policy``: when the idle watchdog warns and destroys, shared by the on-VM service and
  the laptop, with the JSON both sides read.
- ``prompts``: the fixed, versioned benchmark prompt set and the cost-per-token arithmetic.
- ``benchdb``: benchmark history in SQLite (WAL, safe with several writers).

Everything here imports only the standard library and light maider modules (``maider.sizing``,
``maider.errors``): no pydantic, no SDK, no network. The commands that use them do the I/O.
"""
