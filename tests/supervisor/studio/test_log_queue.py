"""The studio-bound log queue (protocol.md §2.9, §11 ``runtime_helpers.rs``): bounded at
5000 with a drop marker, requeue ahead of newer entries, and the logging handler feeding it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from protocol.studio import LogEntry
from supervisor.studio.log_queue import SHIP_QUEUE_MAX, LogShipQueue, ShipHandler, utc_timestamp


def entry(n: int, job_id: str | None = None) -> LogEntry:
    return LogEntry(
        ts="2026-05-16T00:00:00.000Z", level="info", category="t", message=f"m{n}", job_id=job_id
    )


def messages(entries: list[LogEntry]) -> list[str]:
    return [e.message for e in entries]


def is_marker(e: LogEntry) -> bool:
    return e.level == "warn" and e.category == "logs" and "dropped" in e.message


# --- timestamps -------------------------------------------------------------------------------


def test_utc_timestamp_has_milliseconds_and_z() -> None:
    assert utc_timestamp(datetime(2026, 5, 16, tzinfo=UTC)) == "2026-05-16T00:00:00.000Z"
    when = datetime(2026, 5, 25, 12, 0, 1, 987_654, tzinfo=UTC)
    assert utc_timestamp(when) == "2026-05-25T12:00:01.987Z"


def test_utc_timestamp_converts_other_zones() -> None:
    cest = timezone(timedelta(hours=2))
    assert utc_timestamp(datetime(2026, 5, 16, 2, 0, tzinfo=cest)) == "2026-05-16T00:00:00.000Z"


def test_utc_timestamp_now_shape() -> None:
    ts = utc_timestamp()
    assert len(ts) == len("2026-05-16T00:00:00.000Z")
    assert ts.endswith("Z")
    assert datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ")


# --- the queue --------------------------------------------------------------------------------


def test_push_and_drain_in_order() -> None:
    queue = LogShipQueue()
    for n in range(3):
        queue.push(entry(n))
    assert len(queue) == 3
    assert messages(queue.drain()) == ["m0", "m1", "m2"]
    assert len(queue) == 0
    assert queue.drain() == []


def test_capacity_is_5000() -> None:
    assert SHIP_QUEUE_MAX == 5000
    assert LogShipQueue().capacity == 5000


def test_full_queue_keeps_everything() -> None:
    queue = LogShipQueue()
    for n in range(SHIP_QUEUE_MAX):
        queue.push(entry(n))
    batch = queue.drain()
    assert len(batch) == SHIP_QUEUE_MAX
    assert not any(is_marker(e) for e in batch)


def test_overflow_keeps_the_newest_and_appends_a_drop_marker() -> None:
    queue = LogShipQueue()
    for n in range(SHIP_QUEUE_MAX + 1):
        queue.push(entry(n))
    batch = queue.drain()
    assert len(batch) == SHIP_QUEUE_MAX
    # Two go: the one over the cap and one to make room for the marker.
    assert batch[0].message == "m2"
    assert batch[-2].message == f"m{SHIP_QUEUE_MAX}"
    marker = batch[-1]
    assert (marker.level, marker.category) == ("warn", "logs")
    assert marker.message == "ship queue full (5000 entries); dropped 2 oldest"
    assert marker.job_id is None
    assert marker.ts.endswith("Z")


def test_small_capacity_overflow() -> None:
    queue = LogShipQueue(capacity=3)
    for n in range(5):
        queue.push(entry(n))
    batch = queue.drain()
    assert len(batch) == 3
    # Each overflowing push drops two and adds its marker; the newest entry is always kept.
    assert "m4" in messages(batch)
    assert is_marker(batch[-1])
    assert batch[-1].message == "ship queue full (3 entries); dropped 2 oldest"


def test_requeue_goes_ahead_of_newer_entries() -> None:
    queue = LogShipQueue()
    for n in range(3):
        queue.push(entry(n))
    batch = queue.drain()
    queue.push(entry(3))
    queue.push(entry(4))
    queue.requeue(batch)
    assert messages(queue.drain()) == ["m0", "m1", "m2", "m3", "m4"]


def test_requeue_up_to_the_cap_keeps_everything() -> None:
    queue = LogShipQueue()
    batch = [entry(n) for n in range(3000)]
    for n in range(3000, 5000):
        queue.push(entry(n))
    queue.requeue(batch)  # 3000 + 2000 = exactly the cap
    assert messages(queue.drain()) == [f"m{n}" for n in range(5000)]


def test_requeue_respects_the_cap_keeping_the_newest() -> None:
    queue = LogShipQueue()
    batch = [entry(n) for n in range(3000)]
    for n in range(3000, 6000):
        queue.push(entry(n))
    queue.requeue(batch)  # 3000 + 3000 = 1000 over
    result = queue.drain()
    assert len(result) == SHIP_QUEUE_MAX
    assert result[0].message == "m1001"  # the oldest of the requeued batch went first
    assert messages(result[:-1]) == [f"m{n}" for n in range(1001, 6000)]
    assert result[-1].message == "ship queue full (5000 entries); dropped 1001 oldest"


def test_requeue_of_an_empty_batch_is_a_no_op() -> None:
    queue = LogShipQueue()
    queue.push(entry(0))
    queue.requeue([])
    assert messages(queue.drain()) == ["m0"]


# --- the logging handler ------------------------------------------------------------------------


@pytest.fixture
def shipped() -> Iterator[tuple[LogShipQueue, list[logging.Logger]]]:
    queue = LogShipQueue()
    handler = ShipHandler(queue)
    loggers: list[logging.Logger] = []

    def attach(name: str) -> logging.Logger:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        loggers.append(logger)
        return logger

    yield (
        queue,
        [
            attach(n)
            for n in (
                "test_ship.plain",
                "engines.test_ship",
                "supervisor.session_test",
                "supervisor.ws_test",
            )
        ],
    )
    for logger in loggers:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
        logger.propagate = True


def test_handler_maps_levels_and_skips_debug(
    shipped: tuple[LogShipQueue, list[logging.Logger]],
) -> None:
    queue, (log, *_) = shipped
    log.debug("not shipped")
    log.info("i")
    log.warning("w")
    log.error("e")
    log.critical("c")
    batch = queue.drain()
    assert [(e.level, e.message) for e in batch] == [
        ("info", "i"),
        ("warn", "w"),
        ("error", "e"),
        ("error", "c"),
    ]
    assert all(e.category == "plain" for e in batch)


def test_handler_carries_job_id_only_when_given(
    shipped: tuple[LogShipQueue, list[logging.Logger]],
) -> None:
    queue, (log, *_) = shipped
    log.info("json result sent", extra={"job_id": "job-7"})
    log.info("no job")
    log.info("not a string", extra={"job_id": 7})
    batch = queue.drain()
    assert [e.job_id for e in batch] == ["job-7", None, None]


def test_handler_categories(shipped: tuple[LogShipQueue, list[logging.Logger]]) -> None:
    queue, loggers = shipped
    for logger in loggers:
        logger.info("x")
    assert [e.category for e in queue.drain()] == ["plain", "engine", "ws", "ws"]


def test_handler_formats_args(shipped: tuple[LogShipQueue, list[logging.Logger]]) -> None:
    queue, (log, *_) = shipped
    log.info("offer received %s vram=%.1f", "job-1", 12.5)
    assert messages(queue.drain()) == ["offer received job-1 vram=12.5"]


def test_handler_survives_a_bad_format_string() -> None:
    # Emitted directly: pytest's own capture handler would raise on the same record.
    queue = LogShipQueue()
    record = logging.LogRecord("x.y", logging.INFO, __file__, 1, "broken %d", ("nan",), None)
    ShipHandler(queue).emit(record)
    (shipped_entry,) = queue.drain()
    assert (shipped_entry.message, shipped_entry.category) == ("broken %d", "y")


def test_handler_timestamp_is_the_record_time(
    shipped: tuple[LogShipQueue, list[logging.Logger]],
) -> None:
    queue, (log, *_) = shipped
    log.info("x")
    (shipped_entry,) = queue.drain()
    parsed = datetime.strptime(shipped_entry.ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - parsed).total_seconds()) < 60
