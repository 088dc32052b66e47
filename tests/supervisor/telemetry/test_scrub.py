"""The scrubber alone: every secret, credential and prompt leaves as a placeholder."""

from __future__ import annotations

from supervisor.telemetry.scrub import PROMPT, REDACTED, Scrubber, prompt_fragments

TOKEN = "tok-0123456789abcdef"
PROMPT_TEXT = "a lighthouse keeper's diary\nwritten in purple ink at midnight"


def scrubber(*prompts: str) -> Scrubber:
    return Scrubber(lambda: {TOKEN, "short"}, lambda: list(prompts))


def test_secrets_and_credentials_in_text_are_redacted() -> None:
    text = (
        f"401 for {TOKEN}; GET https://user:pa55@studio.example/x; Authorization: Bearer abcdef123"
    )
    out = scrubber().text(text)
    assert TOKEN not in out and "pa55" not in out and "abcdef123" not in out
    assert out.count(REDACTED) == 3
    assert "https://[redacted]@studio.example/x" in out


def test_short_secrets_are_not_hunted_inside_words() -> None:
    assert scrubber().text("shortcut") == "shortcut"


def test_a_prompt_is_replaced_whole_and_by_its_lines() -> None:
    s = scrubber(PROMPT_TEXT)
    assert s.text(f"generating: {PROMPT_TEXT}") == f"generating: {PROMPT}"
    # An engine that echoes one line of the prompt.
    assert s.text("line: written in purple ink at midnight") == f"line: {PROMPT}"
    assert sorted(prompt_fragments("short\nand a line long enough")) == [
        "and a line long enough",
        "short\nand a line long enough",
    ]


def test_a_short_prompt_goes_only_where_it_is_a_whole_value() -> None:
    s = scrubber("e", "in snow\na fox running through the birches")
    event = {
        "event_id": "2a85f8f5f69b4803af6cd56cbe685d4a",
        "level": "error",
        "release": "studio-worker@0.5.0",
        "logentry": {"formatted": "the engine failed"},
        "contexts": {"trace": {"trace_id": "dac5f0c5e16b4e11"}},
        "extra": {"tail": ["e", "in snow", "context: in snow and ice"]},
    }
    out = s.value(event)
    assert out["event_id"] == event["event_id"] and out["level"] == "error"
    assert out["release"] == event["release"] and out["contexts"] == event["contexts"]
    assert out["logentry"] == {"formatted": "the engine failed"}
    assert out["extra"]["tail"] == [PROMPT, PROMPT, "context: in snow and ice"]


def test_query_strings_of_urls_are_cut() -> None:
    text = "GET https://bucket.example/m.gguf?X-Amz-Signature=abc123&token=t0k failed"
    assert scrubber().text(text) == f"GET https://bucket.example/m.gguf?{REDACTED} failed"


def test_values_under_secret_looking_keys_go_whole_and_nesting_is_walked() -> None:
    event = {
        "request": {"headers": {"Authorization": "Basic Zm9vOmJhcg==", "Accept": "*/*"}},
        "extra": {"auth_token": "anything", "note": [f"has {TOKEN}", 3, None]},
        "tags": {"worker_id": "w-1"},
    }
    out = scrubber().value(event)
    assert out["request"]["headers"] == {"Authorization": REDACTED, "Accept": "*/*"}
    assert out["extra"] == {"auth_token": REDACTED, "note": [f"has {REDACTED}", 3, None]}
    assert out["tags"] == {"worker_id": "w-1"}
