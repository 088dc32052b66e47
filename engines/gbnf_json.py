"""The JSON pieces of a schema grammar: string characters, numbers, the string formats that
are enforced, and any JSON value.

A string character is what JSON allows inside quotes, and nothing a decoder would refuse: no
raw control characters (llama.cpp's own rule lets a raw newline through, which ``json.loads``
rejects) and no ``\\u`` escape of a lone surrogate, so one grammar character is one decoded
character and ``minLength``/``maxLength`` count right. ``date`` admits calendar dates only
(no February 30, February 29 in leap years alone, no year 0000), as ``jsonschema``'s format
checker demands. Pure: trees only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from engines.gbnf import (
    Chars,
    Grammar,
    Node,
    Ref,
    alt,
    chars,
    lit,
    normalize,
    one_of,
    opt,
    rep,
    seq,
)
from engines.gbnf_numbers import DIGIT, MAX_FRACTION_DIGITS, MAX_INT_DIGITS

Ranges = tuple[tuple[int, int], ...]

SPACE: Final = opt(lit(" "))  # one optional space between tokens: no runaway whitespace
UNIVERSE: Final[Ranges] = ((0, 0xD7FF), (0xE000, 0x10FFFF))  # every code point but surrogates
# Code points a JSON string may hold as they are: not ", not \, no control character.
_RAW: Final[Ranges] = ((0x20, 0x21), (0x23, 0x5B), (0x5D, 0xD7FF), (0xE000, 0x10FFFF))
_SHORT_ESCAPES: Final = {
    0x22: '\\"',
    0x5C: "\\\\",
    0x08: "\\b",
    0x0C: "\\f",
    0x0A: "\\n",
    0x0D: "\\r",
    0x09: "\\t",
}
HEX: Final = chars("0-9", "a-f", "A-F")
_ESCAPED: Final[Ranges] = ((0, 0x1F), (0x22, 0x22), (0x5C, 0x5C))
_ANY_CONTROL: Final = seq(lit("\\u00"), one_of("01"), HEX)
_NOT_SURROGATE: Final = alt(
    seq(chars("0-9", "a-c", "A-C"), rep(HEX, 3, 3)),
    seq(one_of("dD"), chars("0-7"), rep(HEX, 2, 2)),
    seq(one_of("efEF"), rep(HEX, 3, 3)),
)
STRING_CHAR: Final = alt(
    Chars(_RAW),
    seq(
        lit("\\"),
        alt(one_of('"\\/bfnrt'), seq(lit("u"), _NOT_SURROGATE)),
    ),
)

INTEGRAL: Final = alt(lit("0"), seq(chars("1-9"), rep(DIGIT, 0, MAX_INT_DIGITS - 1)))
INTEGER: Final = seq(opt(lit("-")), INTEGRAL)
NUMBER: Final = seq(
    INTEGER,
    opt(seq(lit("."), rep(DIGIT, 1, MAX_FRACTION_DIGITS))),
    opt(seq(one_of("eE"), opt(one_of("+-")), INTEGRAL)),
)
BOOLEAN: Final = alt(lit("true"), lit("false"))
NULL: Final = lit("null")


def json_chars(ranges: Ranges) -> Node | None:
    """The JSON string text for one character out of ``ranges``: the character itself where
    JSON allows it raw, its escape where it must be escaped; None when the set is empty."""
    ranges = normalize(list(ranges))
    raw = _intersect(ranges, _RAW)
    single = len(raw) == 1 and raw[0][0] == raw[0][1]
    options: list[Node] = [lit(chr(raw[0][0])) if single else Chars(raw)] if raw else []
    escaped = [cp for lo, hi in _intersect(ranges, _ESCAPED) for cp in range(lo, hi + 1)]
    if any(lo <= 0 and hi >= 0x1F for lo, hi in ranges):
        options.append(_ANY_CONTROL)  # all 32 at once, not one option each
        escaped = [cp for cp in escaped if cp > 0x1F or cp in _SHORT_ESCAPES]
    options += [lit(_SHORT_ESCAPES.get(cp, f"\\u{cp:04x}")) for cp in escaped]
    return alt(*options) if options else None


def _intersect(a: Ranges, b: Ranges) -> Ranges:
    out = [(max(lo, lo2), min(hi, hi2)) for lo, hi in a for lo2, hi2 in b]
    return normalize([r for r in out if r[0] <= r[1]])


# --- formats --------------------------------------------------------------------------------


def _date() -> Node:
    two = rep(DIGIT, 2, 2)
    year = alt(
        seq(lit("000"), chars("1-9")),
        seq(lit("00"), chars("1-9"), DIGIT),
        seq(lit("0"), chars("1-9"), two),
        seq(chars("1-9"), rep(DIGIT, 3, 3)),
    )
    # Two-digit multiples of 4 but 00: a leap year ends in one, or is one followed by 00.
    by_four = alt(
        seq(lit("0"), one_of("48")),
        seq(one_of("2468"), one_of("048")),
        seq(one_of("13579"), one_of("26")),
    )
    day28 = alt(seq(lit("0"), chars("1-9")), seq(lit("1"), DIGIT), seq(lit("2"), chars("0-8")))
    day30 = alt(day28, lit("29"), lit("30"))
    month31 = alt(seq(lit("0"), one_of("13578")), seq(lit("1"), one_of("02")))
    month30 = alt(seq(lit("0"), one_of("469")), lit("11"))
    in_year = alt(
        seq(month31, lit("-"), alt(day30, lit("31"))),
        seq(month30, lit("-"), day30),
        seq(lit("02-"), day28),
    )
    leap = alt(seq(two, by_four), seq(by_four, lit("00")))
    return alt(seq(year, lit("-"), in_year), seq(leap, lit("-02-29")))


def _time() -> Node:
    hour = alt(seq(one_of("01"), DIGIT), seq(lit("2"), chars("0-3")))
    minute = seq(chars("0-5"), DIGIT)
    fraction = opt(seq(lit("."), rep(DIGIT, 1, 3)))
    offset = alt(lit("Z"), seq(one_of("+-"), hour, lit(":"), minute))
    return seq(hour, lit(":"), minute, lit(":"), minute, fraction, offset)


def _uuid() -> Node:
    groups = [rep(HEX, n, n) for n in (8, 4, 4, 4, 12)]
    return seq(groups[0], *(seq(lit("-"), g) for g in groups[1:]))


DATE: Final = _date()
FORMATS: Final[dict[str, Node]] = {
    "date": DATE,
    "time": _time(),
    "date-time": seq(DATE, lit("T"), _time()),
    "uuid": _uuid(),
}


def quoted(content: Node) -> Node:
    """A JSON string whose text between the quotes is ``content``, then optional space."""
    return seq(lit('"'), content, lit('"'), SPACE)


@dataclass(frozen=True)
class AnyJson:
    """The rules of an unconstrained value, and of the object and string inside it."""

    value: Ref
    object: Ref
    string: Ref


def any_json(grammar: Grammar) -> AnyJson:
    """Define the rules for any JSON value (recursive: objects and arrays hold values)."""
    value, obj, arr = grammar.reserve("value"), grammar.reserve("object"), grammar.reserve("array")
    string = grammar.rule("string", quoted(rep(grammar.rule("char", STRING_CHAR), 0, None)))
    comma = seq(lit(","), SPACE)
    member = seq(string, lit(":"), SPACE, Ref(value))
    members = opt(seq(member, rep(seq(comma, member), 0, None)))
    elements = opt(seq(Ref(value), rep(seq(comma, Ref(value)), 0, None)))
    grammar.define(obj, seq(lit("{"), SPACE, members, lit("}"), SPACE))
    grammar.define(arr, seq(lit("["), SPACE, elements, lit("]"), SPACE))
    scalars = [seq(NUMBER, SPACE), seq(BOOLEAN, SPACE), seq(NULL, SPACE)]
    grammar.define(value, alt(Ref(obj), Ref(arr), string, *scalars))
    return AnyJson(Ref(value), Ref(obj), string)
