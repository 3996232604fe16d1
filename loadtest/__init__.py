"""Load tests for Vitrine: Locust users over gRPC, headless runs judged against a latency objective.

``python -m loadtest run`` drives the gateway (or Triton directly) for a fixed time and exits non-zero when
the objective is missed; ``python -m loadtest step`` raises a paced request rate until the objective breaks
and reports the highest rate that met it. Locust runs in a child process so its gevent monkey-patching
never reaches the caller (pytest, the CLI parent).
"""
