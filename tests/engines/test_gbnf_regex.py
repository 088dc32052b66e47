"""``pattern`` as a grammar: everything it writes is JSON string text whose decoded string
Python's ``re.search`` (what the validator runs) accepts; the strings a pattern is meant for
are admitted; what the grammar cannot express is refused by name."""

from __future__ import annotations

import json
import random
import re

import pytest

from engines.gbnf_regex import PatternError, pattern_node
from tests.engines.gbnf_oracle import admits, sample

PATTERNS = [
    r"^[a-z]{3}-[0-9]{2,4}$",
    r"^(red|green|blue)+$",
    r"^\d+(\.\d{1,2})?$",
    r"^[A-Z][a-z]*( [A-Z][a-z]*)*$",
    r"^\w+@\w+\.(com|org)$",
    r"^x{2}y{,2}z{1,}$",
    r"^(?:ab|cd)?e$",
    r"^(?P<n>q)r$",
    r"^\u00e9\x41\t$",
    r"^[^\d\s]{1,5}$",
    r'^[^"]*$',
    r"^a.c$",
    r"^[\s]\S\D\W$",
    r"^[-+]?\d*$",
    r"^[]a]\]$",
    r"^a+?b*?$",
    r"^\+\(\)\[\]\{\}\.\*\?\|\\$",
    r"^\0\n$",
    r"^a|b$",
    r"abc",
    r"^start",
    r"end$",
    r"",
    r"^ok{$",
]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_everything_the_grammar_writes_matches(pattern: str) -> None:
    node = pattern_node(pattern)
    rng = random.Random(pattern)
    for _ in range(300):
        text = sample(node, {}, rng)
        decoded = json.loads(f'"{text}"')
        assert re.search(pattern, decoded), (pattern, text)


@pytest.mark.parametrize(
    ("pattern", "strings"),
    [
        (r"^[a-z]{3}-[0-9]{2,4}$", ["abc-12", "xyz-1234"]),
        (r"^(red|green|blue)+$", ["red", "bluegreenred"]),
        (r"^\d+(\.\d{1,2})?$", ["0", "12.5", "3.14"]),
        (r"^\w+@\w+\.(com|org)$", ["me@example.org"]),
        (r'^"[^"]*"$', ['\\"quoted\\"']),  # JSON text: a quote is written \"
        (r"^a\\b$", ["a\\\\b"]),
        (r"^\t$", ["\\t"]),
        (r"abc", ["abc", "xxabcyy", "new\\nline abc"]),
        (r"^é+$", ["ééé"]),
    ],
)
def test_the_strings_a_pattern_is_for_are_admitted(pattern: str, strings: list[str]) -> None:
    node = pattern_node(pattern)
    for text in strings:
        assert admits(node, text), (pattern, text)


def test_a_negation_never_admits_what_python_puts_in_the_class() -> None:
    node = pattern_node(r"^[^\d]$")
    assert not admits(node, "\u0663"), "an Arabic-Indic digit is \\d for Python"
    assert not admits(node, "7")
    assert admits(node, "x")
    assert not admits(pattern_node(r"^\D$"), "\u0663")


@pytest.mark.parametrize(
    ("pattern", "what"),
    [
        (r"^(?=a)a$", "lookahead"),
        (r"^(?!a)b$", "lookahead"),
        (r"^(?<=a)b$", "lookbehind"),
        (r"^(?<!a)b$", "lookbehind"),
        (r"^(a)\1$", "backreference"),
        (r"\bword\b", "word boundary"),
        (r"^a++$", "possessive quantifier"),
        (r"^(?>a)$", "atomic group"),
        (r"(?i)abc", "`(?` group or flag"),
        (r"a^b", "`^` anywhere but the start or end"),
        (r"^(a$)", "`$` anywhere but the start or end"),
        (r"\Aabc", "`\\A`"),
        (r"^[^\s\S]$", "a character class that matches nothing"),
    ],
)
def test_what_a_grammar_cannot_express_is_refused_by_name(pattern: str, what: str) -> None:
    with pytest.raises(PatternError) as err:
        pattern_node(pattern)
    assert what in str(err.value)
    assert f"of /{pattern}/) is not supported" in str(err.value)
