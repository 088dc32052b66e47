"""The studio's orchestrator: live sessions, worker frames, offers and job outcomes.

Everything here runs synchronously on the event loop, between awaits, so the in-memory
reservation of a worker slot and the database compare-and-set claim happen together and
two triggers can never double-offer one slot. ``pump`` is the only place offers are made;
it runs after every event that can free a slot or a job (submit, heartbeat, completion,
failure, reject, a session ending), which also gives the studio's self-heal: an idle
worker's heartbeat picks up anything queued. It never awaits and never touches a socket:
frames go into a session's outbox.

Decisions the real studio leaves open (see also the module docs of ``jobs``):
- a session that ends while holding an *accepted* job counts an attempt (the job may be
  what killed the worker); an offer it never answered is requeued as it was;
- a newer connection for the same worker inherits the older one's accepted jobs (same
  worker, same token: a reconnect after a half-open socket) and the older one is closed
  4003; unanswered offers of the older one are requeued;
- revoking a worker (the operator) releases what its session holds exactly as a session
  that ends does, then closes it ``auth_failed``/4001; its token is dead from then on;
- while the server shuts down, sessions end without releasing anything: the restart
  puts every orphaned claim back in the queue without counting an attempt;
- how many jobs one worker holds at once is the ``OfferRule`` (``selection``): up to its
  ``maxConcurrentJobs`` by default, or the cloud studio's one offer per worker. Under
  both, a transient reject (``busy``/``paused``) requeues the job and holds that worker
  off until its next heartbeat or completion, as the cloud studio's idle-heartbeat
  self-heal does (flows.md §6): an immediate re-offer would spin.
"""

from __future__ import annotations

import itertools
import logging
from typing import Final, assert_never

import anyio
import msgspec

from localstudio.auth import mint_token, secret_matches, sha256_hex
from localstudio.errors import ProtocolViolationError
from localstudio.jobs import is_transient_reject
from localstudio.records import JobRecord, NewJob
from localstudio.schema import utc_now
from localstudio.selection import JobNeeds, OfferRule, has_free_capacity, pick_worker
from localstudio.session import SessionState, WorkerSession
from localstudio.store import Store
from protocol.studio import (
    ERROR_AUTH_FAILED,
    ERROR_DUPLICATE_WORKER,
    ERROR_PROTOCOL_VIOLATION,
    Accept,
    CloseCode,
    CompleteAck,
    CompleteJson,
    Fail,
    FailAck,
    Heartbeat,
    HeartbeatAck,
    Hello,
    JobOfferClaim,
    LogBatch,
    Offer,
    ReadyForMore,
    Reject,
    Welcome,
    WorkerInbound,
    encode_json,
)
from protocol.tasks import ModelSource, Task

log = logging.getLogger("localstudio")

REVOKED_MESSAGE: Final = "token revoked by the studio operator"

_task_decoder = msgspec.json.Decoder(Task)
_source_decoder = msgspec.json.Decoder(ModelSource)


class Dispatcher:
    """Live sessions plus the offer pipeline over one ``Store``."""

    def __init__(self, store: Store, offer_rule: OfferRule = OfferRule.PER_CAPACITY) -> None:
        self._jobs = store.jobs
        self._workers = store.workers
        self._logs = store.logs
        self._offer_rule = offer_rule
        self._sessions: dict[str, WorkerSession] = {}
        self._seq = itertools.count(1)
        self._changed = anyio.Event()
        self._closing = False

    # --- sessions -------------------------------------------------------------------------

    def token_valid(self, worker_id: str, token: str) -> bool:
        worker = self._workers.get(worker_id)
        return worker is not None and secret_matches(token, worker.token_hash)

    def session_of(self, worker_id: str) -> WorkerSession | None:
        return self._sessions.get(worker_id)

    def open_session(self, worker_id: str) -> WorkerSession:
        """Register a new connection; an older one for the same worker is closed 4003."""
        session = WorkerSession(worker_id, next(self._seq), anyio.current_time())
        older = self._sessions.get(worker_id)
        self._sessions[worker_id] = session
        if older is not None:
            for job_id, accepted in older.held.items():
                if accepted:
                    session.held[job_id] = True
                else:
                    self._jobs.release(job_id, worker_id, count_attempt=False)
            older.held.clear()
            older.close_with_error(
                ERROR_DUPLICATE_WORKER, "another connection for this worker replaced this one"
            )
            log.warning("worker %s connected again; closing its older session", worker_id)
            self._notify()
            self.pump()  # its unanswered offers are back in the queue
        log.info("worker %s connected (session %d)", worker_id, session.connected_seq)
        return session

    def end_session(self, session: WorkerSession) -> None:
        """The socket is gone: forget the session and release what it held."""
        if self._sessions.get(session.worker_id) is session:
            del self._sessions[session.worker_id]
        session.close(CloseCode.NORMAL, "session ended")  # no-op when already closing
        held, session.held = session.held, {}
        log.info("worker %s disconnected holding %d job(s)", session.worker_id, len(held))
        self._release_held(session.worker_id, held)

    def revoke(self, worker_id: str) -> bool:
        """The operator takes the worker's token away; False for an unknown worker.

        The stored hash becomes that of a fresh token nobody is given, so the old one fails
        the upgrade (401), a hello (``auth_failed``) and an upload. A live session is
        forgotten at once, its jobs released as when a session ends, and it is closed with
        ``error{auth_failed}`` + 4001, what the worker reads as "re-register".
        """
        if self._workers.get(worker_id) is None:
            return False
        self._workers.set_token(worker_id, sha256_hex(mint_token()))
        session = self._sessions.pop(worker_id, None)
        held: dict[str, bool] = {}
        if session is not None:
            held, session.held = session.held, {}
            session.close_with_error(ERROR_AUTH_FAILED, REVOKED_MESSAGE)
        log.warning(
            "worker %s revoked by the operator: token replaced, %s, %d job(s) released",
            worker_id,
            "session closed" if session is not None else "no session",
            len(held),
        )
        self._release_held(worker_id, held)
        return True

    def _release_held(self, worker_id: str, held: dict[str, bool]) -> None:
        """Requeue what a gone session held: an unanswered offer as it was, an accepted job
        with an attempt counted. Nothing while the server shuts down (see the module doc)."""
        if self._closing:
            return
        for job_id, accepted in held.items():
            error = "worker session ended while running the job" if accepted else None
            self._jobs.release(job_id, worker_id, count_attempt=accepted, error=error)
        self._notify()
        self.pump()

    @property
    def closing(self) -> bool:
        return self._closing

    def shut_down(self) -> None:
        """From now on sessions end without releasing claims and nothing is offered;
        long polls are woken so they answer now."""
        self._closing = True
        self._notify()

    # --- frames from a worker ---------------------------------------------------------------

    def handle_frame(self, session: WorkerSession, frame: WorkerInbound) -> None:
        """Apply one decoded frame; a violation closes the session with 4002."""
        try:
            if session.state is SessionState.AWAITING_HELLO:
                if not isinstance(frame, Hello):
                    raise ProtocolViolationError("session not authenticated")
                self._hello(session, frame)
                return
            self._after_welcome(session, frame)
        except ProtocolViolationError as exc:
            self.refuse(session, str(exc))

    def refuse(self, session: WorkerSession, message: str) -> None:
        """Answer garbage or a forbidden frame: ``error{protocol_violation}`` + close 4002."""
        log.warning("worker %s: protocol violation: %s", session.worker_id, message)
        session.close_with_error(ERROR_PROTOCOL_VIOLATION, message)

    def _after_welcome(self, session: WorkerSession, frame: WorkerInbound) -> None:
        match frame:
            case Hello():
                raise ProtocolViolationError("hello sent twice")
            case Heartbeat():
                self._heartbeat(session, frame)
            case Accept():
                self._accept(session, frame)
            case Reject():
                self._reject(session, frame)
            case CompleteJson():
                self._complete_json(session, frame)
            case Fail():
                self._fail(session, frame)
            case LogBatch():
                self._logs.insert(session.worker_id, frame.entries)
            case ReadyForMore():
                pass  # never sent by current workers; the next offer is server-driven
            case _:
                assert_never(frame)

    def _hello(self, session: WorkerSession, frame: Hello) -> None:
        if not self.token_valid(session.worker_id, frame.auth_token):
            log.warning("worker %s: hello with a wrong auth token", session.worker_id)
            session.close_with_error(ERROR_AUTH_FAILED, "invalid auth token")
            return
        session.welcome(frame.capabilities, anyio.current_time())
        self._workers.record_heartbeat(session.worker_id, encode_json(frame.capabilities).decode())
        session.send(Welcome(worker_id=session.worker_id, server_time=utc_now()))

    def _heartbeat(self, session: WorkerSession, frame: Heartbeat) -> None:
        session.beat(frame.capabilities, anyio.current_time())
        self._workers.record_heartbeat(session.worker_id, encode_json(frame.capabilities).decode())
        session.send(HeartbeatAck())
        self.pump()

    def _held(self, session: WorkerSession, frame_type: str, job_id: str) -> None:
        if job_id not in session.held:
            raise ProtocolViolationError(f"{frame_type} for unknown jobId {job_id}")

    def _accept(self, session: WorkerSession, frame: Accept) -> None:
        self._held(session, "accept", frame.job_id)
        session.held[frame.job_id] = True
        self._jobs.mark_accepted(frame.job_id, session.worker_id)
        log.info("worker %s accepted %s", session.worker_id, frame.job_id)
        self._notify()

    def _reject(self, session: WorkerSession, frame: Reject) -> None:
        if session.held.pop(frame.job_id, None) is None:
            log.warning(
                "worker %s rejected %s, which it does not hold", session.worker_id, frame.job_id
            )
            return
        if is_transient_reject(frame.code, frame.reason):
            self._jobs.release(frame.job_id, session.worker_id, count_attempt=False)
            session.hold_off()
        else:
            error = f"rejected by {session.worker_id}: {frame.reason}"
            self._jobs.release(frame.job_id, session.worker_id, count_attempt=False, error=error)
            session.decline(frame.job_id)
        log.info("worker %s rejected %s: %s", session.worker_id, frame.job_id, frame.reason)
        self._notify()
        self.pump()

    def _complete_json(self, session: WorkerSession, frame: CompleteJson) -> None:
        self._held(session, "completeJson", frame.job_id)
        result = encode_json(frame.result).decode()
        done = self._jobs.complete(
            frame.job_id, session.worker_id, prompt=frame.prompt, result_json=result
        )
        if done is None:
            raise ProtocolViolationError(f"completeJson for job {frame.job_id}, not claimed by you")
        self._finished(session, frame.job_id)
        session.send(CompleteAck(job_id=frame.job_id))
        log.info("worker %s completed %s (json)", session.worker_id, frame.job_id)
        self.pump()

    def _fail(self, session: WorkerSession, frame: Fail) -> None:
        self._held(session, "fail", frame.job_id)
        job = self._jobs.fail(
            frame.job_id, session.worker_id, frame.error, retryable=frame.retryable
        )
        self._finished(session, frame.job_id)
        session.send(FailAck(job_id=frame.job_id))
        status = job.status.value if job is not None else "unknown"
        log.info(
            "worker %s failed %s -> %s: %s", session.worker_id, frame.job_id, status, frame.error
        )
        self.pump()

    def _finished(self, session: WorkerSession, job_id: str) -> None:
        session.held.pop(job_id, None)
        session.resume_offers()
        self._notify()

    # --- HTTP-driven events -----------------------------------------------------------------

    def submit(self, new: NewJob) -> JobRecord:
        job = self._jobs.insert(new)
        log.info("job %s queued (%s, model %s)", job.id, job.kind, job.model)
        self._notify()
        self.pump()
        return self._jobs.get(job.id) or job

    def complete_upload(
        self, worker_id: str, job_id: str, asset_path: str, prompt: str | None
    ) -> JobRecord | None:
        """The multipart upload landed: done, unless the claim moved meanwhile (None)."""
        done = self._jobs.complete(job_id, worker_id, prompt=prompt, asset_path=asset_path)
        if done is None:
            return None
        session = self._sessions.get(worker_id)
        if session is not None:
            self._finished(session, job_id)
        else:
            self._notify()
        log.info("worker %s completed %s (upload %s)", worker_id, job_id, asset_path)
        self.pump()
        return done

    async def wait_for_change(self, timeout_s: float) -> None:
        """Return when any job changed, or after ``timeout_s``; callers re-read and loop."""
        with anyio.move_on_after(timeout_s):
            await self._changed.wait()

    # --- offers -------------------------------------------------------------------------------

    def pump(self) -> None:
        """Offer queued jobs, oldest first, to the earliest connected eligible sessions."""
        if self._closing:
            return
        rule = self._offer_rule
        sessions = [s for s in self._sessions.values() if has_free_capacity(s, rule)]
        offered = False
        for job in self._jobs.queued() if sessions else ():
            needs = JobNeeds(job.id, job.kind, job.vram_gb_estimate)
            session = pick_worker(needs, sessions, rule)
            if session is None:
                continue
            offered = self._offer(job, session) or offered
            sessions = [s for s in sessions if has_free_capacity(s, rule)]
            if not sessions:
                break
        if offered:
            self._notify()

    def _offer(self, job: JobRecord, session: WorkerSession) -> bool:
        try:
            claim = JobOfferClaim(
                job_id=job.id,
                game_id=job.game_id,
                asset_name=job.asset_name,
                model=job.model,
                vram_gb_estimate=job.vram_gb_estimate,
                task=_task_decoder.decode(job.task_json),
                model_source=_source_decoder.decode(job.model_source_json),
            )
        except msgspec.DecodeError as exc:
            log.error("job %s cannot be offered: %s", job.id, exc)
            self._jobs.fail_unofferable(job.id, f"stored task or modelSource is invalid: {exc}")
            return True
        session.held[job.id] = False  # reserve the slot before the database CAS
        if not self._jobs.claim(job.id, session.worker_id):
            del session.held[job.id]
            return False
        session.send(Offer(claim=claim))
        log.info("offered %s to %s", job.id, session.worker_id)
        return True

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
