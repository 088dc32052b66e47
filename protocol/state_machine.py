"""The one state-machine idiom of the project: states and events as Enums, the legal moves
in a table, and a ``StateMachine`` that applies an event or raises and changes nothing.

Both ends use it (the worker's slots, session and registration; the local studio's jobs
and sessions), which is why it lives here at the bottom of the tree: pure, no I/O, no
clock, no import of anything but the standard library. Each machine's table is a plain
``{(state, event): next_state}`` dict in the module that owns the machine, and
``tests/test_docs.py`` checks the docs' state diagrams against those tables.

A machine never decides anything: the code that owns it (a pure core, a store) decides
which event happened and applies it; an event the table does not list is a bug in that
code, so ``apply`` raises ``IllegalTransition`` instead of guessing.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Generic, TypeVar

S = TypeVar("S", bound=enum.Enum)
E = TypeVar("E", bound=enum.Enum)

Table = Mapping[tuple[S, E], S]


class IllegalTransition(RuntimeError):
    """An event the table does not allow in the current state; nothing was changed."""

    def __init__(self, machine: str, state: enum.Enum, event: enum.Enum) -> None:
        super().__init__(f"{machine}: event {event.value} is illegal in state {state.value}")
        self.machine = machine
        self.state = state
        self.event = event


class StateMachine(Generic[S, E]):
    """The current state of one machine, moved only along ``table``."""

    def __init__(self, name: str, table: Table[S, E], initial: S) -> None:
        self.name = name
        self.table = table
        self.state = initial

    def allows(self, event: E) -> bool:
        return (self.state, event) in self.table

    def apply(self, event: E) -> S:
        nxt = self.table.get((self.state, event))
        if nxt is None:
            raise IllegalTransition(self.name, self.state, event)
        self.state = nxt
        return nxt


def edges(table: Table[S, E]) -> set[tuple[str, str, str]]:
    """``(state, next state, event)`` values of every legal move, for docs and tests."""
    return {(s.value, nxt.value, e.value) for (s, e), nxt in table.items()}
