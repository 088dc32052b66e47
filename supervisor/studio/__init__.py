"""The studio side of the supervisor: registration, the WebSocket session, offers, results
and shipped logs (protocol.md). It reaches the engines only through ``supervisor.pool``.
"""
