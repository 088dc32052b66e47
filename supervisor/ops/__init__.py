"""What an operator reaches on a running supervisor: the control socket (``status``,
``pause``, ``resume``), Prometheus metrics, the health endpoints and the status page
(``web/``). Read-only views of the pool and the worker state, plus pause/resume and the
VRAM threshold (the page's behind its action secret).
"""
