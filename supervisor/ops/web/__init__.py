"""The status page and the HTTP surface it shares with ``/metrics``, ``/healthz`` and
``/readyz``: a Starlette app served by uvicorn inside the supervisor's task group
(``supervisor.ops.metrics_server``). It reads the pool and the lanes; its only writes are
pause / resume and the VRAM threshold, behind the action secret."""
