"""The pure LLM rules (engines.llm_core) and chat-template rendering (engines.chat_template):
protocol.md §9.5 and the Rust worker's llm_core.rs / chat_template.rs tests."""

from __future__ import annotations

import pytest

from engines.chat_template import merge_kwargs, render_chat
from engines.errors import EngineError
from engines.llm_core import (
    DEFAULT_CONTEXT_SIZE,
    StopHold,
    TokenText,
    chat_messages,
    completion_json,
    effective_context,
    finish_for,
    pick_gguf,
    plan_budget,
    should_add_bos,
    split_reasoning,
)
from protocol.tasks import ChatMessage, LlmTask, ModelFile

# --- budget and context ---------------------------------------------------------------------


def test_budget_is_max_tokens_when_it_fits() -> None:
    assert plan_budget(100, 50, 2048) == 50


def test_budget_is_clamped_to_the_room_left_in_the_context() -> None:
    assert plan_budget(2000, 100, 2048) == 48


@pytest.mark.parametrize("prompt_tokens", [2048, 3000])
def test_a_prompt_that_fills_the_context_is_refused(prompt_tokens: int) -> None:
    with pytest.raises(EngineError) as err:
        plan_budget(prompt_tokens, 10, 2048)
    assert str(err.value) == (
        f"prompt is {prompt_tokens} tokens but the context holds 2048; "
        "raise contextSize or shorten the prompt"
    )
    assert err.value.retryable


@pytest.mark.parametrize("max_tokens", [0, -5])
def test_a_zero_budget_still_generates_one_token(max_tokens: int) -> None:
    assert plan_budget(10, max_tokens, 2048) == 1


def test_context_is_the_configured_size_capped_by_training() -> None:
    assert effective_context(32768, 262144) == 32768
    assert effective_context(None, 262144) == DEFAULT_CONTEXT_SIZE == 8192
    assert effective_context(32768, 4096) == 4096
    assert effective_context(None, 2048) == 2048
    assert effective_context(32768, 0) == 32768, "unknown training size"
    assert effective_context(0, 0) == DEFAULT_CONTEXT_SIZE, "non-positive counts as unset"


# --- messages, BOS, finish --------------------------------------------------------------------


def test_the_system_prompt_leads_the_messages() -> None:
    task = LlmTask([ChatMessage("user", "hi"), ChatMessage("assistant", "yo")], system="be brief")
    assert chat_messages(task) == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
    ]
    assert chat_messages(LlmTask([ChatMessage("user", "hi")])) == [
        {"role": "user", "content": "hi"}
    ]


def test_an_empty_system_prompt_is_still_a_system_message() -> None:
    assert chat_messages(LlmTask([], system=""))[0] == {"role": "system", "content": ""}


def test_bos_is_added_only_when_the_model_wants_it_and_the_template_did_not() -> None:
    assert should_add_bos(True, "hello", "<s>")
    assert not should_add_bos(True, "<s>hello", "<s>")
    assert not should_add_bos(False, "hello", "<s>")
    assert should_add_bos(True, "hello", ""), "an empty BOS text never matches"


def test_finish_is_length_only_when_the_budget_ran_out_without_an_end() -> None:
    assert finish_for(50, 50, hit_end=False) == "length"
    assert finish_for(12, 50, hit_end=True) == "stop"
    assert finish_for(50, 50, hit_end=True) == "stop", "an end token on the last step"


# --- reasoning and the result JSON ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "content", "reasoning"),
    [
        ('<think>\nhmm\n</think>\n\n{"a":1}', '{"a":1}', "hmm"),
        ("  plain  ", "plain", None),
        ("still thinking</think>", "", "still thinking"),
        ("<think>\n\n</think>\n\nanswer", "answer", ""),
        ("a</think>b</think>c", "b</think>c", "a"),
        ("<think>unfinished", "<think>unfinished", None),
    ],
)
def test_reasoning_is_split_from_the_answer(text: str, content: str, reasoning: str | None) -> None:
    assert split_reasoning(text) == (content, reasoning)


def test_completion_json_is_openai_shaped_with_real_counts() -> None:
    value = completion_json("m", "<think>x</think>answer", 9649, 133, "stop", 2549)
    assert value == {
        "object": "chat.completion",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "answer", "reasoning_content": "x"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9649, "completion_tokens": 133, "total_tokens": 9782},
        "elapsed_ms": 2549,
    }


def test_completion_json_omits_absent_reasoning() -> None:
    value = completion_json("m", "answer", 1, 1, "length", 1)
    assert "reasoning_content" not in value["choices"][0]["message"]
    assert value["choices"][0]["finish_reason"] == "length"
    assert value["elapsed_ms"] == 1


def test_a_structured_answer_is_kept_whole() -> None:
    text = ' {"note": "a</think>b"} '
    message = completion_json("m", text, 1, 1, "stop", 1, structured=True)["choices"][0]["message"]
    assert message == {"role": "assistant", "content": '{"note": "a</think>b"}'}


# --- token bytes to text ----------------------------------------------------------------------


def test_a_character_split_across_tokens_waits_for_its_last_byte() -> None:
    text = TokenText()
    wave = "🌊".encode()
    assert text.push(b"sea " + wave[:1]) == "sea "
    assert text.push(wave[1:3]) == ""
    assert text.push(wave[3:] + b"!") == "🌊!"
    assert text.finish() == 0


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_a_character_cut_by_the_budget_is_dropped_and_counted(cut: int) -> None:
    text = TokenText()
    got = text.push("three emoji: 🌊🌪".encode()[: len("three emoji: 🌊".encode()) + cut])
    assert got == "three emoji: 🌊"
    assert text.finish() == cut
    assert text.push("é".encode()) == "é", "a finished decoder starts clean"


def test_bytes_that_can_never_be_a_character_stay_visible() -> None:
    text = TokenText()
    assert text.push(b"a\xe2b\xff") == "a\ufffdb\ufffd"
    assert text.finish() == 0


# --- picking the GGUF -------------------------------------------------------------------------


def _file(role: str, filename: str) -> ModelFile:
    return ModelFile(role=role, url=f"https://example.test/{filename}", filename=filename)


def test_the_model_role_gguf_wins_over_an_earlier_gguf() -> None:
    files = [_file("text-encoder", "mmproj.gguf"), _file("model", "Main.GGUF")]
    assert pick_gguf(files) is files[1]


def test_without_a_model_role_gguf_the_first_gguf_is_used() -> None:
    files = [_file("model", "weights.bin"), _file("lora", "a.gguf"), _file("vae", "b.gguf")]
    assert pick_gguf(files) is files[1]


def test_no_gguf_picks_nothing() -> None:
    assert pick_gguf([_file("model", "weights.safetensors")]) is None
    assert pick_gguf([]) is None


# --- stop strings -----------------------------------------------------------------------------


def _drain(hold: StopHold, pieces: list[str]) -> str:
    return "".join(hold.push(p) for p in pieces)


def test_stop_hold_releases_text_that_cannot_start_a_stop() -> None:
    hold = StopHold(["</s>"])
    assert hold.push("hello ") == "hello "
    assert hold.push("world") == "world"
    assert hold.finish() == ""
    assert not hold.stopped


def test_stop_hold_never_leaks_a_stop_split_across_pieces() -> None:
    hold = StopHold(["END"])
    assert hold.push("one E") == "one "
    assert hold.push("N") == ""
    assert hold.push("D two") == ""
    assert hold.stopped
    assert hold.finish() == ""
    assert hold.text == "one "


def test_stop_hold_releases_a_false_start_once_it_cannot_match() -> None:
    hold = StopHold(["END"])
    assert hold.push("EN") == ""
    assert hold.push("x") == "ENx"
    assert hold.push("E") == ""
    assert hold.finish() == "E"
    assert hold.text == "ENxE"


def test_stop_hold_cuts_at_the_earliest_of_several_stops() -> None:
    hold = StopHold(["bb", "a"])
    assert _drain(hold, ["xxb", "ba"]) == "xx"
    assert hold.text == "xx"


def test_stop_hold_ignores_pieces_after_a_stop() -> None:
    hold = StopHold(["."])
    assert hold.push("done. more") == "done"
    assert hold.push("ignored") == ""
    assert hold.text == "done"


def test_stop_hold_without_stops_holds_nothing() -> None:
    for stops in (None, [], [""]):
        hold = StopHold(stops)
        assert hold.push("a") == "a"
        assert hold.push("é") == "é"
        assert not hold.stopped


def test_stop_hold_keeps_multibyte_characters_whole() -> None:
    hold = StopHold(["xyz"])
    assert hold.push("ééé") + hold.finish() == "ééé"


def test_a_stop_at_the_very_start_leaves_nothing() -> None:
    hold = StopHold(["<|"])
    assert _drain(hold, ["<", "|im_end|>"]) == ""
    assert hold.stopped
    assert hold.text == ""


# --- chat templates ---------------------------------------------------------------------------

QWEN_LIKE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content"
    " + '<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}{%- if enable_thinking is defined and enable_thinking"
    " is true %}{{- '<think>\\n' }}{%- else %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
MESSAGES = [
    {"role": "system", "content": "Answer in JSON."},
    {"role": "user", "content": "hi"},
]


def _render(template: str, kwargs: dict[str, object] | None = None) -> str:
    return render_chat(template, MESSAGES, kwargs or {}, bos_token="<s>", eos_token="</s>")


def test_renders_messages_and_the_generation_prompt() -> None:
    assert _render(QWEN_LIKE) == (
        "<|im_start|>system\nAnswer in JSON.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_kwargs_reach_the_template() -> None:
    assert _render(QWEN_LIKE, {"enable_thinking": True}).endswith(
        "<|im_start|>assistant\n<think>\n"
    )


def test_standard_variables_win_over_kwargs() -> None:
    out = _render("{{ bos_token }}{{ add_generation_prompt }}", {"bos_token": "X", "x": 1})
    assert out == "<s>True"


def test_bos_and_eos_tokens_are_available() -> None:
    out = _render("{{ bos_token }}{{ messages[0].content }}{{ eos_token }}")
    assert out == "<s>Answer in JSON.</s>"


def test_python_string_methods_work() -> None:
    out = _render(
        "{% if messages[1].content.startswith('h') %}{{ messages[1].content.upper() }}"
        "{{ ' x '.strip() }}{{ 'a,b'.split(',') | join('-') }}{{ 'ab'.replace('b', 'c') }}"
        "{% endif %}"
    )
    assert out == "HIxa-bac"


def test_hugging_face_helpers_work() -> None:
    out = _render(
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
        "{{ m | tojson }}{% endfor %}{% generation %}!{% endgeneration %}"
        "{{ strftime_now('%Y') | length }}"
    )
    assert out == '{"role": "system", "content": "Answer in JSON."}!4'


def test_tojson_keeps_unicode_and_key_order() -> None:
    out = render_chat("{{ {'z': 'é', 'a': 1} | tojson }}", [], {}, bos_token="", eos_token="")
    assert out == '{"z": "é", "a": 1}'


def test_raise_exception_becomes_a_named_error() -> None:
    with pytest.raises(EngineError) as err:
        _render("{{ raise_exception('System role not supported') }}")
    assert str(err.value) == "chat template: System role not supported"


@pytest.mark.parametrize(
    "template",
    [
        "{% for %}",  # syntax
        "{{ messages[0].content + 1 }}",  # type error while rendering
        "{{ messages.append(1) }}",  # the sandbox refuses mutation
        "{{ ''.__class__.__mro__ }}",  # the sandbox refuses internals
    ],
)
def test_a_broken_template_is_a_named_error(template: str) -> None:
    with pytest.raises(EngineError) as err:
        _render(template)
    assert str(err.value).startswith("chat template: ")


def test_request_kwargs_override_model_defaults() -> None:
    merged = merge_kwargs({"enable_thinking": False, "a": 1}, {"enable_thinking": True})
    assert merged == {"enable_thinking": True, "a": 1}
    assert merge_kwargs(None, None) == {}
    assert merge_kwargs({"a": 1}, None) == {"a": 1}
    assert merge_kwargs(None, {"b": 2}) == {"b": 2}
