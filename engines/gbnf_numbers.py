"""Grammars for JSON numbers within bounds: integers over digit ranges, decimals exactly.

An integer range becomes alternatives over digit positions, one per number of digits (the
idea of llama.cpp's ``_build_min_max_int``, written anew): ``[1, 5]`` is ``[1-5]``, ``[17, 342]``
is ``1[7-9] | [2-9][0-9] | [1-2][0-9][0-9] | 3[0-3][0-9] | 34[0-2]``. A decimal range is its
integer part over the same digit ranges plus, at the two edge integers, a fraction compared
digit by digit with the bound's fraction, so ``maximum: 4.25`` admits ``4.2`` and ``4.25`` but
not ``4.3``. Everything admitted is in range (bounds are compared as exact decimals); what
is left out is only the exponent form (``1e3``), leading zeros and more than
``MAX_INT_DIGITS`` / ``MAX_FRACTION_DIGITS`` digits. Pure: trees only, no schema, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from typing import Final

from engines.gbnf import EMPTY, Node, alt, chars, lit, opt, rep, seq

MAX_INT_DIGITS: Final = 16  # as llama.cpp's own JSON grammar: keeps a model from running on
MAX_FRACTION_DIGITS: Final = 15
DIGIT: Final = chars("0-9")
ANY_FRACTION: Final = opt(seq(lit("."), rep(DIGIT, 1, MAX_FRACTION_DIGITS)))


@dataclass(frozen=True)
class Bound:
    """One side of a range: ``minimum``/``maximum`` or, ``exclusive``, their exclusive forms."""

    value: Decimal
    exclusive: bool = False


def integer_range(low: int | None, high: int | None) -> Node:
    """JSON integers in ``[low, high]`` (``None``: unbounded on that side); ``low <= high``."""
    if low is not None and high is not None and low > high:
        raise ValueError(f"empty integer range [{low}, {high}]")
    options: list[Node] = []
    if low is None or low < 0:
        magnitude_low = 1 if high is None or high >= 0 else -high
        options.append(seq(lit("-"), _naturals(magnitude_low, None if low is None else -low)))
    if high is None or high >= 0:
        options.append(_naturals(0 if low is None else max(low, 0), high))
    return alt(*options)


def _naturals(low: int, high: int | None) -> Node:
    """Non-negative integers in ``[low, high]`` without leading zeros."""
    options: list[Node] = []
    widest = len(str(low if high is None else high))
    for width in range(len(str(low)), widest + 1):
        first, last = (10 ** (width - 1) if width > 1 else 0), 10**width - 1
        lo, hi = max(low, first), last if high is None else min(high, last)
        if lo <= hi:
            options.append(_same_width(str(lo), str(hi)))
    if high is None and widest < MAX_INT_DIGITS:
        options.append(seq(chars("1-9"), rep(DIGIT, widest, MAX_INT_DIGITS - 1)))
    return alt(*options)


def _same_width(low: str, high: str) -> Node:
    """Digit strings of one width between ``low`` and ``high`` (as numbers), inclusive."""
    if low == high:
        return lit(low)
    if low[0] == high[0]:
        return seq(lit(low[0]), _same_width(low[1:], high[1:]))
    rest = len(low) - 1
    first, last = int(low[0]), int(high[0])
    options: list[Node] = []
    if low[1:] != "0" * rest:  # the first digit's own numbers start above ...000
        options.append(seq(lit(low[0]), _same_width(low[1:], "9" * rest)))
        first += 1
    tail = None
    if high[1:] != "9" * rest:  # and the last digit's end below ...999
        tail = seq(lit(high[0]), _same_width("0" * rest, high[1:]))
        last -= 1
    if first <= last:
        options.append(seq(_digits(first, last), rep(DIGIT, rest, rest)))
    if tail is not None:
        options.append(tail)
    return alt(*options)


def _digits(first: int, last: int) -> Node:
    return lit(str(first)) if first == last else chars(f"{first}-{last}")


# --- decimals -------------------------------------------------------------------------------


def decimal_range(low: Bound | None, high: Bound | None) -> Node:
    """JSON numbers, without exponent, within the bounds; the bounds must admit a value."""
    options: list[Node] = []
    if low is None or low.value < 0:  # negative values, written "-" and their magnitude
        above_zero = Bound(Decimal(0), exclusive=True)
        if high is not None and high.value < 0:
            magnitude_low = Bound(-high.value, high.exclusive)
        else:
            magnitude_low = above_zero
        magnitude_high = None if low is None else Bound(-low.value, low.exclusive)
        options.append(seq(lit("-"), _magnitudes(magnitude_low, magnitude_high)))
    if high is None or high.value > 0 or (high.value == 0 and not high.exclusive):
        zero = Bound(Decimal(0))
        options.append(_magnitudes(low if low is not None and low.value >= 0 else zero, high))
    return alt(*options)


def _magnitudes(low: Bound, high: Bound | None) -> Node:
    """Non-negative decimals within the bounds: whole units strictly inside take any
    fraction, the edge integers one compared with the bound."""
    low_int, low_fraction = _split(low.value)
    lower = _Side(low_fraction, low.exclusive)
    if high is None:
        inside = seq(_naturals(low_int + 1, None), ANY_FRACTION)
        return alt(inside, *_edge(low_int, lower, None))
    high_int, high_fraction = _split(high.value)
    upper = _Side(high_fraction, high.exclusive)
    if high_int == low_int:
        return alt(*_edge(low_int, lower, upper))
    options = _edge(low_int, lower, None)
    if low_int + 1 <= high_int - 1:
        options.append(seq(_naturals(low_int + 1, high_int - 1), ANY_FRACTION))
    return alt(*options, *_edge(high_int, None, upper))


def _edge(integer: int, lower: _Side | None, upper: _Side | None) -> list[Node]:
    """``integer`` with the fractions the sides allow: one option, or none when none fits."""
    fraction = _Fractions(lower, upper).node()
    return [] if fraction is None else [seq(lit(str(integer)), fraction)]


def _split(value: Decimal) -> tuple[int, str]:
    """(integer part, fraction digits without trailing zeros) of a non-negative decimal."""
    whole = value.to_integral_value(rounding=ROUND_FLOOR)
    fraction = format(value - whole, "f").partition(".")[2].rstrip("0")
    return int(whole), fraction


@dataclass(frozen=True)
class _Side:
    digits: str  # the bound's fraction digits, no trailing zeros
    exclusive: bool


# While reading fraction digits, each side is either still equal to the bound's digits read so
# far (the rest of the bound's digits, "" once they are used up: zeros follow) or decided
# (None: the fraction is already above a lower bound or below an upper one).
_State = tuple[str | None, str | None]


class _Fractions:
    """The ``.digits`` allowed after an edge integer: ``node()`` is the optional fraction
    (``EMPTY`` allowed when the integer itself is in range), or None when nothing fits."""

    def __init__(self, lower: _Side | None, upper: _Side | None) -> None:
        self._lower_exclusive = lower is not None and lower.exclusive
        self._upper_exclusive = upper is not None and upper.exclusive
        self._start = self._settle(
            (
                lower.digits if lower is not None else None,
                upper.digits if upper is not None else None,
            )
        )

    def node(self) -> Node | None:
        options: list[Node] = [EMPTY] if self._accepts(self._start) else []
        more = self._more(self._start)
        if more is not None:
            options.append(seq(lit("."), more))
        return alt(*options) if options else None

    def _accepts(self, state: _State) -> bool:
        """Whether stopping here keeps both sides satisfied."""
        lower, upper = state
        lower_ok = lower is None or (lower == "" and not self._lower_exclusive)
        upper_ok = upper is None or upper != "" or not self._upper_exclusive
        return lower_ok and upper_ok

    def _more(self, state: _State) -> Node | None:
        """One or more digits from ``state`` that end in an accepting state."""
        if state == (None, None):
            return rep(DIGIT, 1, MAX_FRACTION_DIGITS)
        options: list[Node] = []
        loops = False
        for first, last, after in self._steps(state):
            if after == state:  # only "0" past a bound's last digit: a run of zeros
                loops = True
                continue
            follow: list[Node] = [EMPTY] if self._accepts(after) else []
            more = self._more(after)
            if more is not None:
                follow.append(more)
            if follow:
                options.append(seq(_digits(first, last), alt(*follow)))
        if not loops:
            return alt(*options) if options else None
        zeros = lit("0")
        looped = [rep(zeros, 1, MAX_FRACTION_DIGITS)] if self._accepts(state) else []
        if options:
            looped.append(seq(rep(zeros, 0, MAX_FRACTION_DIGITS), alt(*options)))
        return alt(*looped) if looped else None

    def _steps(self, state: _State) -> list[tuple[int, int, _State]]:
        """(first digit, last digit, next state) for runs of digits leading to one state."""
        runs: list[tuple[int, int, _State]] = []
        for digit in range(10):
            after = _step(state, digit)
            if after is None:  # below a lower bound or above an upper one
                continue
            after = self._settle(after)
            if runs and runs[-1][2] == after and runs[-1][1] == digit - 1:
                runs[-1] = (runs[-1][0], digit, after)
            else:
                runs.append((digit, digit, after))
        return runs

    def _settle(self, state: _State) -> _State:
        """An inclusive lower bound whose digits are used up is met whatever follows."""
        lower, upper = state
        return (None if lower == "" and not self._lower_exclusive else lower), upper


def _step(state: _State, digit: int) -> _State | None:
    lower, upper = state
    if lower is not None:
        bound = int(lower[0]) if lower else 0
        if digit < bound:
            return None
        lower = lower[1:] if digit == bound else None
    if upper is not None:
        bound = int(upper[0]) if upper else 0
        if digit > bound:
            return None
        upper = upper[1:] if digit == bound else None
    return lower, upper
