"""The grammar tree and its pieces as languages: number ranges are exactly the numbers in
range, dates exactly the calendar dates, JSON characters decode to themselves; and the text
rendered from them is accepted by llama.cpp's own grammar parser."""

from __future__ import annotations

import datetime
import json
import random
from collections.abc import Iterator
from decimal import Decimal

import llama_cpp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engines.gbnf import (
    EMPTY,
    Alt,
    Chars,
    Grammar,
    Lit,
    Node,
    Rep,
    alt,
    chars,
    lit,
    opt,
    render,
    rep,
    rules_text,
    seq,
)
from engines.gbnf_json import FORMATS, STRING_CHAR, UNIVERSE, json_chars
from engines.gbnf_numbers import Bound, decimal_range, integer_range
from tests.engines.gbnf_oracle import admits, sample, to_regex
from tests.support.models.tiny_llama import cached_tiny_llama


@pytest.fixture(scope="module")
def vocab() -> Iterator[llama_cpp.llama_vocab_p]:
    """The tiny model's vocabulary: what llama.cpp parses a grammar against."""
    model = llama_cpp.Llama(str(cached_tiny_llama()), vocab_only=True, verbose=False)
    try:
        yield llama_cpp.llama_model_get_vocab(model.model)
    finally:
        model.close()


def parses(vocab: llama_cpp.llama_vocab_p, text: str) -> bool:
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, text.encode(), b"root")
    if not sampler:
        return False
    llama_cpp.llama_sampler_free(sampler)
    return True


# --- the tree -------------------------------------------------------------------------------


def test_constructors_simplify() -> None:
    assert seq(lit("a"), EMPTY, lit("b"), seq(lit("c"), chars("0-9"))) == seq(
        lit("abc"), chars("0-9")
    )
    assert seq() == EMPTY
    assert alt(lit("x"), EMPTY) == Rep(lit("x"), 0, 1)
    assert alt(lit("x"), lit("x")) == lit("x")
    assert alt(chars("a-c"), chars("b-f"), lit("z")) == Alt((Chars(((97, 102),)), lit("z")))
    assert rep(lit("x"), 1, 1) == lit("x")
    assert rep(lit("x"), 0, 0) == EMPTY
    with pytest.raises(ValueError, match="at least one option"):
        alt()
    with pytest.raises(ValueError, match="not a character or a range"):
        chars("abc")


def test_rendering_escapes_what_llama_cpp_would_misread(vocab: llama_cpp.llama_vocab_p) -> None:
    tricky = alt(
        lit('say "hi"\\\n\t\x01é'),
        chars("-", "^", "]", "[", "\\", '"', (0x1F600, 0x1F64F), (0, 0x1F)),
        rep(lit("ab"), 2, None),
        rep(seq(lit("x"), opt(lit("y"))), 0, 3),
    )
    text = render(tricky)
    assert text.startswith('"say \\"hi\\"\\\\\\n\\t\\x01é" | [')
    assert '("ab"){2,}' in text and '("x" "y"?){0,3}' in text
    assert parses(vocab, f"root ::= {text}\n")


def test_rules_are_named_once_and_uniquely() -> None:
    grammar = Grammar()
    first = grammar.rule("a b", lit("x"))
    assert grammar.rule("other", lit("x")) == first, "an identical body reuses its rule"
    second = grammar.rule("a b", lit("y"))
    assert (first.name, second.name) == ("a-b", "a-b-1")
    reserved = grammar.reserve("loop")
    with pytest.raises(ValueError, match="never defined"):
        grammar.with_root(first)
    grammar.define(reserved, alt(lit("."), seq(lit("("), first, lit(")"))))
    rules = grammar.with_root(first)
    assert list(rules) == ["root", "a-b", "a-b-1", "loop"]
    assert rules_text(rules).splitlines()[0] == "root ::= a-b"


# --- numbers --------------------------------------------------------------------------------

bounds = st.one_of(st.none(), st.integers(-2000, 2000))


@settings(max_examples=150, deadline=None)
@given(bounds, bounds)
def test_integer_ranges_are_exactly_the_integers_in_range(
    low: int | None, high: int | None
) -> None:
    if low is not None and high is not None and low > high:
        low, high = high, low
    pattern = to_regex(integer_range(low, high))
    for n in range(-2600, 2600):
        inside = (low is None or n >= low) and (high is None or n <= high)
        assert (pattern.fullmatch(str(n)) is not None) == inside, n
    assert pattern.fullmatch("007") is None and pattern.fullmatch("-0") is None


def test_integer_ranges_keep_llama_cpps_digit_cap() -> None:
    unbounded = to_regex(integer_range(3, None))
    assert unbounded.fullmatch("9" * 16) and not unbounded.fullmatch("1" + "0" * 16)
    huge = to_regex(integer_range(10**20, 10**20 + 5))
    assert huge.fullmatch(str(10**20 + 5)) and not huge.fullmatch(str(10**20 + 6))


decimal_bounds = st.one_of(
    st.none(),
    st.builds(
        Bound,
        st.builds(
            lambda n, d: Decimal(n) / d, st.integers(-400, 400), st.sampled_from([1, 4, 100])
        ),
        st.booleans(),
    ),
)
# Integers, one to three fraction digits and trailing zeros, around and on typical bounds.
DECIMALS = sorted(
    {f"{i}{f}" for i in range(-6, 7) for f in ("", ".0", ".5", ".25", ".250", ".05", ".75", ".999")}
    | {f"-0{f}" for f in (".5", ".25", ".001")}
)


@settings(max_examples=300, deadline=None)
@given(decimal_bounds, decimal_bounds)
def test_decimal_ranges_are_exactly_the_decimals_in_range(
    low: Bound | None, high: Bound | None
) -> None:
    if low is not None and high is not None:
        if low.value > high.value:
            low, high = high, low
        if low.value == high.value and (low.exclusive or high.exclusive):
            return  # nothing fits: the converter refuses such bounds
    pattern = to_regex(decimal_range(low, high))
    for text in DECIMALS:
        value = Decimal(text)
        inside = (
            low is None or value > low.value or (value == low.value and not low.exclusive)
        ) and (high is None or value < high.value or (value == high.value and not high.exclusive))
        assert (pattern.fullmatch(text) is not None) == inside, text


def test_the_fraction_is_compared_with_the_bounds_digits() -> None:
    pattern = to_regex(decimal_range(Bound(Decimal("0.2"), True), Bound(Decimal("0.75"))))
    for text in ("0.21", "0.2000001", "0.5", "0.7499", "0.75", "0.750"):
        assert pattern.fullmatch(text), text
    for text in ("0.2", "0.20", "0.19", "0.7501", "0.8", "1", "0", "1e-1"):
        assert not pattern.fullmatch(text), text


# --- JSON pieces ----------------------------------------------------------------------------


def test_dates_are_exactly_the_calendar_dates() -> None:
    pattern = to_regex(FORMATS["date"])
    years = [0, 1, 4, 99, 100, 400, 1900, 1999, 2000, 2023, 2024, 2100, 9996, 9999]
    for year in years:
        for month in range(14):
            for day in range(33):
                text = f"{year:04d}-{month:02d}-{day:02d}"
                try:
                    datetime.date.fromisoformat(text)
                    real = True
                except ValueError:
                    real = False
                assert (pattern.fullmatch(text) is not None) == real, text


def test_time_date_time_and_uuid_formats() -> None:
    assert admits(FORMATS["time"], "23:59:59.123+05:30")
    assert admits(FORMATS["time"], "00:00:00Z")
    assert not admits(FORMATS["time"], "24:00:00Z") and not admits(FORMATS["time"], "12:00:00")
    assert admits(FORMATS["date-time"], "2024-02-29T12:30:00Z")
    assert not admits(FORMATS["date-time"], "2023-02-29T12:30:00Z")
    assert admits(FORMATS["uuid"], "123e4567-e89b-12d3-a456-426614174000")


def test_a_string_character_is_one_decoded_character() -> None:
    rng = random.Random(5)
    for _ in range(2000):
        text = sample(STRING_CHAR, {}, rng)
        decoded = json.loads(f'"{text}"')
        assert len(decoded) == 1, text
        decoded.encode("utf-8")  # never a lone surrogate
    for refused in ("\n", "\x00", '"', "\\", "\\ud800", "\\x41"):
        assert not admits(STRING_CHAR, refused), refused


@pytest.mark.parametrize(
    "ranges",
    [((0x41, 0x41),), ((0x22, 0x22), (0x5C, 0x5C)), ((0, 0x7F),), UNIVERSE, ((0x0A, 0x0D),)],
)
def test_json_chars_writes_each_character_as_json_needs(
    ranges: tuple[tuple[int, int], ...],
) -> None:
    node = json_chars(ranges)
    assert node is not None
    pattern = to_regex(node)
    for low, high in ranges:
        for cp in list(range(low, min(high, low + 300) + 1)):
            if 0xD800 <= cp <= 0xDFFF:
                continue
            text = json.dumps(chr(cp), ensure_ascii=False)[1:-1]
            assert pattern.fullmatch(text), hex(cp)
    rng = random.Random(3)
    for _ in range(300):
        (decoded,) = json.loads(f'"{sample(node, {}, rng)}"')
        assert any(low <= ord(decoded) <= high for low, high in ranges)
    assert json_chars(()) is None


def test_literals_render_as_themselves(vocab: llama_cpp.llama_vocab_p) -> None:
    node: Node = seq(lit("{"), FORMATS["date-time"], lit("}"))
    assert parses(vocab, rules_text({"root": node}))
    assert isinstance(lit("x"), Lit)
