"""What an operator reaches on a running supervisor: the control socket (``status``,
``pause``, ``resume``), Prometheus metrics and the health endpoints. Read-only views of
the pool and the worker state, plus pause/resume.
"""
