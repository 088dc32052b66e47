"""One error tree, one exit-code table: the tree drawn in supervisor/errors.py is the classes
(names, parents, exit codes), no module defines a WorkerError of its own, the table covers
every code, and the systemd unit's RestartPreventExitStatus= comes from it."""

from __future__ import annotations

import re
from pathlib import Path

from supervisor import errors
from supervisor.cli.service_unit import SYSTEM_CONFIG_PATH, ServiceSpec, render_unit
from supervisor.exit_codes import EXIT_CODES, ExitCode, restart_prevent_exit_statuses

ROOT = Path(__file__).resolve().parents[3]
TREE_LINE = re.compile(r"^(?P<indent>[ │├└─]*)(?P<name>[A-Z]\w+)\s+(?P<code>\d)\s{2,}\S")


def drawn_tree() -> dict[str, tuple[str | None, int]]:
    """``{class: (parent, exit code)}`` from the drawing in errors.py's docstring."""
    assert errors.__doc__ is not None
    found: dict[str, tuple[str | None, int]] = {}
    stack: list[tuple[int, str]] = []  # (depth, name) of the open ancestors
    for line in errors.__doc__.splitlines():
        if line.strip().startswith("WorkerError"):
            stack = [(0, "WorkerError")]
            continue
        match = TREE_LINE.match(line)
        if not match or not stack:
            continue
        depth = len(match["indent"])
        while stack and stack[-1][0] >= depth:
            stack.pop()
        found[match["name"]] = (stack[-1][1] if stack else None, int(match["code"]))
        stack.append((depth, match["name"]))
    return found


def error_classes() -> dict[str, type[errors.WorkerError]]:
    out: dict[str, type[errors.WorkerError]] = {}
    todo: list[type[errors.WorkerError]] = [errors.WorkerError]
    while todo:
        cls = todo.pop()
        if cls.__module__ == "supervisor.errors" and cls is not errors.WorkerError:
            out[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return out


def test_the_drawn_tree_is_the_classes():
    drawn = drawn_tree()
    classes = error_classes()
    assert set(drawn) == set(classes)
    for name, (parent, code) in drawn.items():
        cls = classes[name]
        assert parent in {b.__name__ for b in cls.__bases__}, (name, parent)
        assert cls.exit_code == code, (name, cls.exit_code, code)
    assert errors.WorkerError.exit_code is ExitCode.FAILED


def test_no_module_defines_a_worker_error_of_its_own():
    """Every error that can reach the CLI lives in supervisor/errors.py."""
    names = "|".join(["WorkerError", *error_classes()])
    subclassing = re.compile(rf"^class (\w+)\([^)]*\b({names})\b", re.M)
    found = [
        (str(path.relative_to(ROOT)), m.group(1))
        for path in sorted((ROOT / "supervisor").rglob("*.py"))
        if path.name != "errors.py"
        for m in subclassing.finditer(path.read_text())
    ]
    assert found == []


def test_classes_named_by_the_brief_are_in_the_tree():
    classes = error_classes()
    for name in ("SupervisorNotRunning", "StartupError", "LocalStudioError", "SlotSpecError"):
        assert name in classes
    assert issubclass(errors.SlotSpecError, ValueError)  # callers may still catch ValueError
    assert issubclass(errors.GpuReadError, errors.GpuError)
    assert errors.DeviceIndexError.exit_code is ExitCode.USAGE


def test_the_table_covers_every_code_and_says_what_to_do():
    assert set(EXIT_CODES) == set(ExitCode)
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 4, 5, 6]
    for info in EXIT_CODES.values():
        assert info.meaning and info.action
    assert not EXIT_CODES[ExitCode.OK].systemd_restarts  # a clean exit is not a failure


def test_restart_prevent_exit_status_comes_from_the_table():
    codes = restart_prevent_exit_statuses()
    assert codes == tuple(
        int(c) for c, i in EXIT_CODES.items() if c is not ExitCode.OK and not i.systemd_restarts
    )
    assert codes == (2, 3)  # usage/config and auth need the operator; the rest is retried
    unit = render_unit(ServiceSpec("system", Path("/opt/sw/bin/supervisor"), SYSTEM_CONFIG_PATH))
    assert f"RestartPreventExitStatus={' '.join(map(str, codes))}\n" in unit
