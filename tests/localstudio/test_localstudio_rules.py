"""Pure rules of the local studio (no event loop, no server): the job and session
lifecycle tables, the job policies, worker selection under both offer rules, secrets, and
the job queue's compare-and-set transitions on a real SQLite file in tmp_path."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest

from localstudio.auth import (
    admin_token_matches,
    bearer_token,
    is_sha256_hex,
    secret_matches,
    sha256_hex,
)
from localstudio.errors import StudioConfigError
from localstudio.jobs import INITIAL as JOB_INITIAL
from localstudio.jobs import (
    TERMINAL,
    JobEvent,
    JobStatus,
    event_after_failure,
    is_transient_reject,
    job_machine,
)
from localstudio.jobs import TRANSITIONS as JOB_TRANSITIONS
from localstudio.records import NewJob
from localstudio.schema import open_database, prepare_data_dir
from localstudio.selection import JobNeeds, OfferRule, capacity_of, pick_worker
from localstudio.session import INITIAL as SESSION_INITIAL
from localstudio.session import TRANSITIONS as SESSION_TRANSITIONS
from localstudio.session import (
    CloseRequest,
    SessionEvent,
    SessionState,
    WorkerSession,
    clip_close_reason,
)
from localstudio.store import Store
from protocol.state_machine import IllegalTransition, StateMachine
from protocol.studio import Capabilities, Error, HeartbeatAck


def caps(**overrides: object) -> Capabilities:
    values: dict[str, object] = {
        "machine_name": "rig",
        "username": "op",
        "agent_version": "0.5.0",
        "engine": "multi",
        "vram_total_gb": 24.0,
        "vram_threshold_gb": 12.0,
        "auto_enabled": True,
        "auto_start": False,
        "task_kinds": ["image", "llm"],
    }
    values.update(overrides)
    return Capabilities(**values)  # type: ignore[arg-type]


@dataclass
class FakeCandidate:
    connected_seq: int
    capabilities: Capabilities | None = field(default_factory=caps)
    accepts_offers: bool = True
    in_flight: int = 0
    held_off: bool = False
    declined: set[str] = field(default_factory=set)

    def has_declined(self, job_id: str) -> bool:
        return job_id in self.declined


IMAGE = JobNeeds("job-1", "image", 4.0)


# --- jobs ---------------------------------------------------------------------------------


Q, C, D, F = JobStatus.QUEUED, JobStatus.CLAIMED, JobStatus.DONE, JobStatus.FAILED

# Written out independently of the module so a change to the table is a deliberate one.
JOB_TABLE: dict[tuple[JobStatus, JobEvent], JobStatus] = {
    (Q, JobEvent.CLAIM): C,
    (Q, JobEvent.UNOFFERABLE): F,
    (C, JobEvent.RELEASE): Q,
    (C, JobEvent.RETRY): Q,
    (C, JobEvent.GIVE_UP): F,
    (C, JobEvent.COMPLETE): D,
}
JOB_ILLEGAL = [pair for pair in itertools.product(JobStatus, JobEvent) if pair not in JOB_TABLE]


def test_job_table_is_exactly_the_planned_one() -> None:
    assert JOB_TRANSITIONS == JOB_TABLE
    assert JOB_INITIAL is Q
    assert {D, F} == TERMINAL
    assert not any((state, event) in JOB_TABLE for state in (D, F) for event in JobEvent)


@pytest.mark.parametrize(("pair", "target"), list(JOB_TABLE.items()), ids=str)
def test_every_legal_job_event(pair: tuple[JobStatus, JobEvent], target: JobStatus) -> None:
    state, event = pair
    life = job_machine("job-1", state)
    assert life.allows(event)
    assert life.apply(event) is target
    assert life.state is target


@pytest.mark.parametrize("pair", JOB_ILLEGAL, ids=str)
def test_every_illegal_job_event_raises_and_changes_nothing(
    pair: tuple[JobStatus, JobEvent],
) -> None:
    state, event = pair
    life = job_machine("job-1", state)
    assert not life.allows(event)
    with pytest.raises(IllegalTransition) as info:
        life.apply(event)
    assert life.state is state
    assert (info.value.state, info.value.event) == (state, event)
    assert str(info.value) == f"job job-1: event {event.value} is illegal in state {state.value}"


@pytest.mark.parametrize(
    ("code", "reason", "transient"),
    [
        ("busy", "worker already has an in-flight job", True),
        ("paused", "worker paused by operator", True),
        (None, "worker paused by operator", True),
        (None, "Worker BUSY", True),
        (None, "model unloaded", False),
        (None, "", False),
    ],
)
def test_transient_reject(code: str | None, reason: str, transient: bool) -> None:
    assert is_transient_reject(code, reason) is transient


def test_event_after_failure() -> None:
    assert event_after_failure(1, 3, retryable=True) is JobEvent.RETRY
    assert event_after_failure(2, 3, retryable=True) is JobEvent.RETRY
    assert event_after_failure(3, 3, retryable=True) is JobEvent.GIVE_UP
    assert event_after_failure(1, 3, retryable=False) is JobEvent.GIVE_UP


# --- selection ----------------------------------------------------------------------------


def test_earliest_connected_eligible_wins() -> None:
    early, late = FakeCandidate(1), FakeCandidate(2)
    assert pick_worker(IMAGE, [late, early]) is early


@pytest.mark.parametrize(
    "candidate",
    [
        FakeCandidate(1, capabilities=caps(auto_enabled=False)),
        FakeCandidate(1, capabilities=caps(vram_threshold_gb=2.0)),
        FakeCandidate(1, capabilities=caps(task_kinds=["llm"])),
        FakeCandidate(1, capabilities=None),
        FakeCandidate(1, accepts_offers=False),
        FakeCandidate(1, in_flight=1),
        FakeCandidate(1, held_off=True),
        FakeCandidate(1, declined={"job-1"}),
    ],
    ids=["paused", "vram", "kind", "no-caps", "not-welcomed", "busy", "held-off", "declined"],
)
def test_ineligible_candidates_are_skipped(candidate: FakeCandidate) -> None:
    assert pick_worker(IMAGE, [candidate]) is None
    assert pick_worker(IMAGE, [candidate, FakeCandidate(9)]) is not candidate


def test_vram_threshold_equal_to_estimate_is_enough() -> None:
    exact = FakeCandidate(1, capabilities=caps(vram_threshold_gb=4.0))
    assert pick_worker(IMAGE, [exact]) is exact


def test_capacity_honours_max_concurrent_jobs() -> None:
    assert capacity_of(caps()) == 1
    assert capacity_of(caps(max_concurrent_jobs=3)) == 3
    assert capacity_of(caps(max_concurrent_jobs=0)) == 1
    two = FakeCandidate(1, capabilities=caps(max_concurrent_jobs=2), in_flight=1)
    assert pick_worker(IMAGE, [two]) is two
    assert pick_worker(IMAGE, [two], OfferRule.PER_CAPACITY) is two


def test_one_offer_per_worker_offers_only_to_idle_workers() -> None:
    rule = OfferRule.ONE_PER_WORKER
    assert capacity_of(caps(max_concurrent_jobs=3), rule) == 1
    assert capacity_of(caps(), rule) == 1
    holding = FakeCandidate(1, capabilities=caps(max_concurrent_jobs=2), in_flight=1)
    idle = FakeCandidate(2, capabilities=caps(max_concurrent_jobs=2))
    assert pick_worker(IMAGE, [holding], rule) is None
    assert pick_worker(IMAGE, [holding, idle], rule) is idle
    assert pick_worker(IMAGE, [holding, idle]) is holding  # per capacity: earliest wins


# --- auth ---------------------------------------------------------------------------------


def test_secrets_compare_by_hash() -> None:
    digest = sha256_hex("s3cret")
    assert is_sha256_hex(digest)
    assert not is_sha256_hex(digest.upper())
    assert secret_matches("s3cret", digest)
    assert not secret_matches("other", digest)
    assert not secret_matches("s3cret", None)


def test_bearer_and_admin_token() -> None:
    assert bearer_token({"authorization": "Bearer abc"}) == "abc"
    assert bearer_token({"authorization": "bearer  abc "}) == "abc"
    assert bearer_token({"authorization": "Basic abc"}) is None
    assert bearer_token({}) is None
    assert admin_token_matches(None, None)
    assert admin_token_matches("x", "x")
    assert not admin_token_matches(None, "x")
    assert not admin_token_matches("y", "x")


# --- store --------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    prepare_data_dir(tmp_path)
    opened = Store.open(tmp_path)
    yield opened
    opened.close()


def new_job(max_attempts: int = 3) -> NewJob:
    return NewJob(
        kind="image",
        model="synthetic",
        game_id="local",
        asset_name=None,
        task_json='{"kind":"image","prompt":"p"}',
        model_source_json='{"engine":"synthetic","files":[],"cliDefaults":'
        '{"cfgScale":1.0,"steps":1,"width":8,"height":8}}',
        vram_gb_estimate=1.0,
        max_attempts=max_attempts,
    )


def test_claim_is_compare_and_set(store: Store) -> None:
    job = store.jobs.insert(new_job())
    assert job.asset_name == job.id and job.status is JobStatus.QUEUED
    assert store.jobs.claim(job.id, "w-1")
    assert not store.jobs.claim(job.id, "w-2")
    claimed = store.jobs.get(job.id)
    assert claimed is not None and claimed.claimed_by == "w-1"


def test_release_counts_attempts_only_when_asked(store: Store) -> None:
    job = store.jobs.insert(new_job(max_attempts=2))
    store.jobs.claim(job.id, "w-1")
    released = store.jobs.release(job.id, "w-1", count_attempt=False)
    assert released is not None and released.status is JobStatus.QUEUED
    assert released.attempts == 0
    store.jobs.claim(job.id, "w-1")
    lost = store.jobs.release(job.id, "w-1", count_attempt=True)
    assert lost is not None and (lost.status, lost.attempts) == (JobStatus.QUEUED, 1)
    store.jobs.claim(job.id, "w-1")
    final = store.jobs.release(job.id, "w-1", count_attempt=True)
    assert final is not None and (final.status, final.attempts) == (JobStatus.FAILED, 2)


def test_outcomes_need_the_claimant(store: Store) -> None:
    job = store.jobs.insert(new_job())
    assert store.jobs.complete(job.id, "w-1", prompt="p", result_json="{}") is None
    store.jobs.claim(job.id, "w-1")
    assert store.jobs.fail(job.id, "w-2", "boom", retryable=True) is None
    done = store.jobs.complete(job.id, "w-1", prompt="p", result_json='{"a":1}')
    assert done is not None and done.status is JobStatus.DONE
    assert store.jobs.release(job.id, "w-1", count_attempt=False) is None
    assert store.jobs.fail_unofferable(job.id, "bad task") is None  # done is final
    assert not store.jobs.claim(job.id, "w-2")


def test_unofferable_job_fails_from_the_queue(store: Store) -> None:
    job = store.jobs.insert(new_job())
    failed = store.jobs.fail_unofferable(job.id, "stored task is invalid")
    assert failed is not None and (failed.status, failed.attempts) == (JobStatus.FAILED, 0)
    assert failed.finished_at is not None and failed.error == "stored task is invalid"


def test_restart_releases_orphaned_claims(tmp_path: Path) -> None:
    prepare_data_dir(tmp_path)
    first = Store.open(tmp_path)
    job = first.jobs.insert(new_job())
    first.jobs.claim(job.id, "w-1")
    first.close()
    second = Store.open(tmp_path)
    try:
        assert second.jobs.release_orphaned_claims() == 1
        back = second.jobs.get(job.id)
        assert back is not None and back.status is JobStatus.QUEUED and back.attempts == 0
    finally:
        second.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    prepare_data_dir(tmp_path)
    conn = open_database(tmp_path)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(StudioConfigError, match="schema version 99"):
        open_database(tmp_path)


def test_pending_request_dedups_on_install_id(store: Store) -> None:
    first = store.workers.upsert_pending_request("install-1", "a" * 64, "{}", "ua")
    again = store.workers.upsert_pending_request("install-1", "b" * 64, "{}", "ua")
    assert again.id == first.id and again.secret_hash == "b" * 64
    approved = store.workers.approve_request(first.id)
    assert approved is not None and approved.status == "approved"
    assert [w.id for w in store.workers.all()] == [approved.worker_id]
    fresh = store.workers.upsert_pending_request("install-1", "c" * 64, "{}", "ua")
    assert fresh.id != first.id


# --- session ------------------------------------------------------------------------------

SESSION_TABLE: dict[tuple[SessionState, SessionEvent], SessionState] = {
    (SessionState.AWAITING_HELLO, SessionEvent.WELCOME): SessionState.WELCOMED,
    (SessionState.AWAITING_HELLO, SessionEvent.CLOSE): SessionState.CLOSING,
    (SessionState.WELCOMED, SessionEvent.CLOSE): SessionState.CLOSING,
}


def test_session_table_is_exactly_the_planned_one() -> None:
    assert SESSION_TRANSITIONS == SESSION_TABLE
    assert SESSION_INITIAL is SessionState.AWAITING_HELLO


@pytest.mark.parametrize("pair", list(itertools.product(SessionState, SessionEvent)), ids=str)
def test_every_session_event_moves_by_the_table_or_raises(
    pair: tuple[SessionState, SessionEvent],
) -> None:
    state, event = pair
    life = StateMachine("session of w-1", SESSION_TRANSITIONS, state)
    target = SESSION_TABLE.get(pair)
    if target is None:
        with pytest.raises(IllegalTransition, match=f"event {event.value} is illegal"):
            life.apply(event)
        assert life.state is state
    else:
        assert life.apply(event) is target


def test_session_queues_error_then_close_and_drops_later_frames() -> None:
    session = WorkerSession("w-1", connected_seq=1, now=0.0)
    try:
        session.close_with_error("duplicate_worker", "replaced")
        session.send(HeartbeatAck())  # dropped: the session is closing
        session.close(1000, "again")  # no-op
        queued = [session.outbox.receive_nowait(), session.outbox.receive_nowait()]
        assert queued == [
            Error(code="duplicate_worker", message="replaced"),
            CloseRequest(4003, "replaced"),
        ]
        with pytest.raises(anyio.WouldBlock):
            session.outbox.receive_nowait()
        with pytest.raises(IllegalTransition, match="event welcome is illegal in state closing"):
            session.welcome(caps(), now=1.0)
        assert session.state is SessionState.CLOSING
    finally:
        session.close_streams()


def test_session_welcome_and_hold_off() -> None:
    session = WorkerSession("w-1", connected_seq=1, now=0.0)
    try:
        assert not session.accepts_offers
        session.welcome(caps(), now=2.0)
        assert session.accepts_offers and session.last_heartbeat == 2.0
        session.hold_off()
        assert session.held_off
        session.beat(caps(), now=3.0)
        assert not session.held_off
    finally:
        session.close_streams()


def test_close_reason_is_clipped_to_123_bytes() -> None:
    assert clip_close_reason("short") == "short"
    clipped = clip_close_reason("é" * 100)
    assert len(clipped.encode()) <= 123 and clipped.endswith("...")
