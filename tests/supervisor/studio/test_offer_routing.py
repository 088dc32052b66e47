"""What the worker does with an offer (protocol.md §2.8 order, §9.1 routing and texts): one
decision naming the slot, typed causes, and whether a failure may be retried."""

from __future__ import annotations

import pytest

from protocol.studio import JobOfferClaim
from protocol.tasks import (
    AudioTtsTask,
    ChatMessage,
    ImageTask,
    LlmTask,
    ModelCliDefaults,
    ModelSource,
    Task,
)
from supervisor.pool.engine_pool import SlotView
from supervisor.studio.offer_routing import (
    REASON_PAUSED,
    REASON_SHUTTING_DOWN,
    OfferDecision,
    RefuseCause,
    RefuseOffer,
    RejectCause,
    RejectOffer,
    RunOn,
    WorkerFlags,
    fail_is_retryable,
    missing_engine_error,
    route_offer,
)

ALL = frozenset({"synthetic", "sdcpp", "llama"})
IMAGE = ImageTask(prompt="a fox")
LLM = LlmTask(messages=[ChatMessage(role="user", content="hi")])


def claim(source_engine: str, task: Task = IMAGE, model: str = "m.gguf") -> JobOfferClaim:
    return JobOfferClaim(
        job_id="job-1",
        game_id="g",
        asset_name="a",
        model=model,
        vram_gb_estimate=4.0,
        task=task,
        model_source=ModelSource(
            engine=source_engine,
            files=[],
            cli_defaults=ModelCliDefaults(cfg_scale=1.0, steps=8, width=512, height=512),
        ),
    )


def slots(configured: frozenset[str], free: int) -> list[SlotView]:
    """Two slots of every configured engine, the first ``free`` of each free."""
    return [
        SlotView(f"{engine}-gpu{i}-{i}", engine, i < free)
        for engine in sorted(configured)
        for i in range(2)
    ]


def decide(
    offer: JobOfferClaim,
    *,
    paused: bool = False,
    shutting_down: bool = False,
    configured: frozenset[str] = ALL,
    free: int = 1,
    poison: bool = False,
) -> OfferDecision:
    def is_poison(job_id: str) -> bool:
        return poison

    return route_offer(
        offer,
        worker=WorkerFlags(paused=paused, shutting_down=shutting_down),
        slots=slots(configured, free),
        is_poison=is_poison,
    )


def test_paused_rejects_with_code_paused() -> None:
    expected = RejectOffer(REASON_PAUSED, "paused", RejectCause.PAUSED)
    assert decide(claim("sd-cpp"), paused=True) == expected
    assert REASON_PAUSED == "worker paused by operator"


def test_shutting_down_rejects_with_code_paused_even_when_paused() -> None:
    expected = RejectOffer(REASON_SHUTTING_DOWN, "paused", RejectCause.SHUTTING_DOWN)
    assert decide(claim("sd-cpp"), shutting_down=True) == expected
    assert decide(claim("sd-cpp"), shutting_down=True, paused=True) == expected


def test_paused_wins_over_every_refusal_and_busy() -> None:
    offer = claim("onnx", task=LLM)
    decision = decide(offer, paused=True, configured=frozenset(), free=0, poison=True)
    assert decision == RejectOffer(REASON_PAUSED, "paused", RejectCause.PAUSED)


def test_missing_unknown_engine_is_refused_with_the_91_text() -> None:
    decision = decide(claim("onnx", model="lama-fp32"))
    assert isinstance(decision, RefuseOffer)
    assert decision.error.startswith(
        "no `onnx` engine compiled into this worker (model `lama-fp32` requires it). "
    )
    assert decision.error == missing_engine_error("onnx", "lama-fp32")
    assert "llama, sdcpp, synthetic" in decision.error


def test_known_but_unconfigured_engine_is_refused_with_an_install_hint() -> None:
    decision = decide(claim("sd-cpp"), configured=frozenset({"synthetic"}))
    assert decision == RefuseOffer(
        "no `sdcpp` engine compiled into this worker (model `m.gguf` requires it). "
        "Install it with `pip install 'studio-worker[sdcpp]'` and start the supervisor with "
        "`--engines sdcpp`.",
        RefuseCause.MISSING_ENGINE,
    )


def test_unknown_source_engine_routes_to_itself() -> None:
    decision = decide(claim("candle"))
    assert isinstance(decision, RefuseOffer)
    assert decision.error.startswith("no `candle` engine compiled into this worker")


@pytest.mark.parametrize(
    ("source", "task", "error"),
    [
        ("llama-cpp", IMAGE, "llama engine cannot serve image tasks"),
        ("sd-cpp", LLM, "sdcpp engine cannot serve llm tasks"),
        ("sd-cpp", AudioTtsTask(text="t"), "sdcpp engine cannot serve audio_tts tasks"),
    ],
)
def test_kind_the_engine_does_not_serve_is_refused(source: str, task: Task, error: str) -> None:
    assert decide(claim(source, task=task)) == RefuseOffer(error, RefuseCause.UNSUPPORTED_KIND)
    assert not fail_is_retryable(error, True)


def test_missing_engine_checked_before_the_kind() -> None:
    decision = decide(claim("llama-cpp", task=IMAGE), configured=frozenset({"synthetic"}))
    assert isinstance(decision, RefuseOffer)
    assert decision.error.startswith("no `llama` engine")


def test_poison_job_is_refused() -> None:
    decision = decide(claim("sd-cpp"), poison=True)
    assert isinstance(decision, RefuseOffer)
    assert "job job-1" in decision.error
    assert "twice" in decision.error
    assert decision.cause is RefuseCause.POISON


def test_kind_checked_before_poison_and_poison_before_busy() -> None:
    kind = decide(claim("llama-cpp", task=IMAGE), poison=True, free=0)
    assert kind == RefuseOffer(
        "llama engine cannot serve image tasks", RefuseCause.UNSUPPORTED_KIND
    )
    poison = decide(claim("sd-cpp"), poison=True, free=0)
    assert isinstance(poison, RefuseOffer)


def test_no_free_slot_is_busy() -> None:
    decision = decide(claim("sd-cpp"), free=0, configured=frozenset({"sdcpp"}))
    assert decision == RejectOffer(
        "worker already has an in-flight job on every sdcpp slot", "busy", RejectCause.BUSY
    )


def test_free_slots_of_other_engines_do_not_count() -> None:
    views = [SlotView("llama-0", "llama", True), SlotView("sdcpp-0", "sdcpp", False)]
    decision = route_offer(
        claim("sd-cpp"),
        worker=WorkerFlags(paused=False, shutting_down=False),
        slots=views,
        is_poison=lambda job_id: False,
    )
    assert isinstance(decision, RejectOffer) and decision.cause is RejectCause.BUSY


def test_the_decision_names_the_free_slot() -> None:
    views = [
        SlotView("sdcpp-gpu0-0", "sdcpp", False),
        SlotView("llama-gpu0-0", "llama", True),
        SlotView("sdcpp-gpu1-1", "sdcpp", True),
    ]
    decision = route_offer(
        claim("sd-cpp"),
        worker=WorkerFlags(paused=False, shutting_down=False),
        slots=views,
        is_poison=lambda job_id: False,
    )
    assert decision == RunOn("sdcpp-gpu1-1", "sdcpp")


@pytest.mark.parametrize(
    ("source", "task", "engine"),
    [
        ("sd-cpp", IMAGE, "sdcpp"),
        ("llama-cpp", LLM, "llama"),
        ("synthetic", IMAGE, "synthetic"),
        ("synthetic", AudioTtsTask(text="t"), "synthetic"),
    ],
)
def test_otherwise_run_on_the_routed_engine(source: str, task: Task, engine: str) -> None:
    decision = decide(claim(source, task=task), free=2)
    assert isinstance(decision, RunOn) and decision.engine == engine
    assert decision.slot_id.startswith(f"{engine}-")


def test_never_falls_back_to_synthetic() -> None:
    decision = decide(claim("sd-cpp"), configured=frozenset({"synthetic"}))
    assert isinstance(decision, RefuseOffer)


@pytest.mark.parametrize(
    ("error", "retryable", "expected"),
    [
        ("network timeout", True, True),
        ("download failed: 404", True, True),
        ("context overflow", True, True),
        ("sdcpp engine cannot serve audio_tts tasks", True, False),
        ("anything", False, False),
        ("llama engine cannot serve image tasks", False, False),
    ],
)
def test_fail_is_retryable(error: str, retryable: bool, expected: bool) -> None:
    assert fail_is_retryable(error, retryable) is expected


def test_an_engine_only_another_lane_serves_is_rejected_without_a_code() -> None:
    offer = claim("sd-cpp")
    lane_slots = slots(frozenset({"synthetic"}), free=1)
    decision = route_offer(
        offer,
        worker=WorkerFlags(paused=False, shutting_down=False),
        slots=lane_slots,
        is_poison=lambda _: False,
        elsewhere=frozenset({"sdcpp"}),
    )
    assert decision == RejectOffer(
        "this lane has no sdcpp slot; another lane of this machine serves sdcpp",
        None,
        RejectCause.OTHER_LANE,
    )
    # An engine no lane serves is still refused for good, lanes or not.
    decision = route_offer(
        claim("llama", task=LLM),
        worker=WorkerFlags(paused=False, shutting_down=False),
        slots=lane_slots,
        is_poison=lambda _: False,
        elsewhere=frozenset({"sdcpp"}),
    )
    assert isinstance(decision, RefuseOffer)
    assert decision.cause is RefuseCause.MISSING_ENGINE
