"""A grammar tree (``engines.gbnf``) as a Python regex, so tests can ask whether a grammar
admits a string without running llama.cpp (rules are inlined, so a recursive rule raises
``ValueError``), and a random walk through a grammar, so tests can ask whether everything
it writes is valid."""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from typing import assert_never

from engines.gbnf import Alt, Chars, Lit, Node, Ref, Rep, Seq


def to_regex(node: Node, rules: Mapping[str, Node] | None = None) -> re.Pattern[str]:
    return re.compile(_regex(node, rules or {}, ()), re.DOTALL)


def admits(node: Node, text: str, rules: Mapping[str, Node] | None = None) -> bool:
    return to_regex(node, rules).fullmatch(text) is not None


def _regex(node: Node, rules: Mapping[str, Node], seen: tuple[str, ...]) -> str:
    match node:
        case Lit(text):
            return re.escape(text)
        case Chars(ranges):
            return "[" + "".join(_range(low, high) for low, high in ranges) + "]"
        case Seq(items):
            return "".join(f"(?:{_regex(i, rules, seen)})" for i in items)
        case Alt(options):
            return "|".join(f"(?:{_regex(o, rules, seen)})" for o in options)
        case Rep(item, low, high):
            count = f"{{{low},}}" if high is None else f"{{{low},{high}}}"
            return f"(?:{_regex(item, rules, seen)}){count}"
        case Ref(name):
            if name in seen:
                raise ValueError(f"rule {name} is recursive")
            return f"(?:{_regex(rules[name], rules, (*seen, name))})"
        case _:
            assert_never(node)


def _range(low: int, high: int) -> str:
    return re.escape(chr(low)) if low == high else f"{re.escape(chr(low))}-{re.escape(chr(high))}"


def sample(
    node: Node, rules: Mapping[str, Node], rng: random.Random, *, max_repeat: int = 4
) -> str:
    """One random string the grammar admits; an open repetition stops at ``max_repeat``
    beyond its minimum. Recursive rules are followed (keep them shallow)."""
    match node:
        case Lit(text):
            return text
        case Chars(ranges):
            low, high = rng.choice(ranges)
            return chr(rng.randint(low, min(high, low + 200)))
        case Seq(items):
            return "".join(sample(i, rules, rng, max_repeat=max_repeat) for i in items)
        case Alt(options):
            return sample(rng.choice(options), rules, rng, max_repeat=max_repeat)
        case Rep(item, low, high):
            top = low + max_repeat if high is None else min(high, low + max_repeat)
            count = rng.randint(low, top)
            return "".join(sample(item, rules, rng, max_repeat=max_repeat) for _ in range(count))
        case Ref(name):
            return sample(rules[name], rules, rng, max_repeat=max_repeat)
        case _:
            assert_never(node)
