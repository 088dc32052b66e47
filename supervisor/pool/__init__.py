"""The engine pool: one slot per engine host process, its pure core, the host processes,
the ZeroMQ router and the policies (liveness, backoff, crash loops, poison, recycle).
It knows nothing of the studio.
"""
