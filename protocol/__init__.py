"""Pure wire types for studio-worker.

Two channels, one module each: ``studio`` (the WebSocket frames and HTTP bodies exchanged
with the studio, JSON) and ``ipc`` (the supervisor <-> engine host messages, msgpack).
``tasks`` holds the job payloads both channels carry. Nothing in this package does I/O or
imports anyio, zmq, websockets or httpx: it is msgspec Structs, constants and pure helpers.
"""
