"""The docs cannot drift from the code: the state diagrams in docs/architecture.md are the
transition tables, the IPC list is the two unions, the operator guide lists every config
key with its real default and every metric the collector exports, and the log lines it
quotes still exist in the source."""

from __future__ import annotations

import io
import re
import tokenize
import typing
from pathlib import Path
from typing import Any

import msgspec
import pytest

from localstudio import jobs as studio_jobs
from localstudio import session as studio_session
from protocol import ipc
from protocol.state_machine import edges as table_edges
from supervisor import session_state
from supervisor.config import WorkerConfig
from supervisor.exit_codes import EXIT_CODES
from supervisor.gpu import health as gpu_health
from supervisor.pool import slot_state
from supervisor.studio import registration_state

ROOT = Path(__file__).resolve().parent.parent
ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text()
GUIDE = (ROOT / "docs" / "operator-guide.md").read_text()
TROUBLESHOOTING = (ROOT / "docs" / "troubleshooting.md").read_text()

EDGE = re.compile(r"^\s*(\w+) --> (\w+) : (\w+)\s*$")
INITIAL = re.compile(r"^\s*\[\*\] --> (\w+)\s*$")


def mermaid_block(text: str, marker: str) -> str:
    blocks = re.findall(r"```mermaid\n(.*?)```", text, flags=re.S)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"one mermaid block must name {marker}"
    return found[0]


def diagram(block: str) -> tuple[str, set[tuple[str, str, str]]]:
    initial = [m.group(1) for line in block.splitlines() if (m := INITIAL.match(line))]
    assert len(initial) == 1
    edges = {m.groups() for line in block.splitlines() if (m := EDGE.match(line))}
    return initial[0], edges  # type: ignore[return-value]


def test_slot_diagram_is_the_transition_table():
    initial, edges = diagram(
        mermaid_block(ARCHITECTURE, "supervisor/pool/slot_state.py TRANSITIONS")
    )
    table = {(s.value, nxt.value, e.value) for (s, e), nxt in slot_state.TRANSITIONS.items()}
    assert edges == table
    assert initial == slot_state.INITIAL.value


def test_registration_diagram_is_the_transition_table():
    block = mermaid_block(ARCHITECTURE, "supervisor/studio/registration_state.py TRANSITIONS")
    initial, edges = diagram(block)
    assert edges == table_edges(registration_state.TRANSITIONS)
    assert initial == registration_state.RegistrationPhase.PRISTINE.value


def test_gpu_health_diagram_is_the_transition_table():
    block = mermaid_block(ARCHITECTURE, "supervisor/gpu/health.py TRANSITIONS")
    initial, edges = diagram(block)
    assert edges == table_edges(gpu_health.TRANSITIONS)
    assert initial == gpu_health.INITIAL.value


def test_session_diagram_is_the_transition_table():
    block = mermaid_block(ARCHITECTURE, "supervisor/session_state.py TRANSITIONS")
    initial, edges = diagram(block)
    assert edges == table_edges(session_state.TRANSITIONS)
    assert initial == session_state.INITIAL.value


def test_local_studio_job_diagram_is_the_transition_table():
    initial, edges = diagram(mermaid_block(ARCHITECTURE, "localstudio/jobs.py TRANSITIONS"))
    assert edges == table_edges(studio_jobs.TRANSITIONS)
    assert initial == studio_jobs.INITIAL.value


def test_local_studio_session_diagram_is_the_transition_table():
    initial, edges = diagram(mermaid_block(ARCHITECTURE, "localstudio/session.py TRANSITIONS"))
    assert edges == table_edges(studio_session.TRANSITIONS)
    assert initial == studio_session.INITIAL.value


def table_after(text: str, heading: str) -> list[list[str]]:
    """Rows (cells, stripped) of the first Markdown table after the line ``heading``."""
    lines = text[text.index(heading) :].splitlines()[1:]
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows


def struct_tags(union: Any) -> set[tuple[str, str]]:
    return {(cls.__name__, cls.__struct_config__.tag) for cls in typing.get_args(union)}


@pytest.mark.parametrize(
    ("heading", "union"),
    [
        ("Host -> supervisor (`HostMessage`):", ipc.HostMessage),
        ("Supervisor -> host (`SupervisorMessage`):", ipc.SupervisorMessage),
    ],
)
def test_ipc_lists_are_the_unions(heading, union):
    rows = table_after(ARCHITECTURE, heading)
    documented = {(row[0].strip("`"), row[1].strip("`")) for row in rows}
    assert documented == struct_tags(union)


def default_text(name: str, value: object) -> str:
    if name == "models_root":
        return "~/models"  # the default is the home of whoever runs it
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    if value == {}:
        return "none"
    return repr(value)


def test_every_config_key_is_documented_with_its_default():
    rows = table_after(GUIDE, "## Config reference")
    documented = {row[0].strip("`"): row[1].strip("`") for row in rows}
    cfg = WorkerConfig()
    expected = {
        name: default_text(name, getattr(cfg, name)) for name in WorkerConfig.__struct_fields__
    }
    assert documented == expected
    assert list(documented) == list(WorkerConfig.__struct_fields__)  # the file's order
    assert msgspec.structs.fields(WorkerConfig)  # (the struct is what the file holds)


def exported_metrics() -> set[str]:
    """Metric names as Prometheus shows them, from the collector's source."""
    source = (ROOT / "supervisor" / "ops" / "metrics.py").read_text()
    found = re.findall(r'(Counter|Gauge|Histogram)MetricFamily\(\s*f"\{PREFIX\}_(\w+)"', source)
    assert len(found) >= 15
    return {
        f"studio_worker_{name}" + ("_total" if kind == "Counter" else "") for kind, name in found
    }


def test_every_metric_is_documented():
    rows = table_after(GUIDE, "Slot series carry the labels")
    documented = {row[0].strip("`") for row in rows}
    assert documented == exported_metrics()


def source_strings() -> str:
    """Every string literal in supervisor/ and engines/, adjacent literals joined (so a
    message split over two source lines reads as one), quotes and prefixes removed."""
    out: list[str] = []
    for path in sorted([*ROOT.glob("supervisor/**/*.py"), *ROOT.glob("engines/*.py")]):
        current: list[str] = []
        tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
        for tok in tokens:
            if tok.type == tokenize.STRING:
                body = tok.string.lstrip("rbfuRBFU")
                quote = body[:3] if body[:3] in ('"""', "'''") else body[0]
                current.append(body[len(quote) : -len(quote)])
            elif tok.type in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT):
                continue
            elif current:
                out.append("".join(current))
                current = []
    return "\n".join(out)


PLACEHOLDER = re.compile(r"<[^<>]+>")


CODE_SPAN = re.compile(r"(`+)(.+?)\1")


def quoted_log_texts() -> list[str]:
    """The code spans of the first column (``double`` spans may hold `single` ticks)."""
    rows = table_after(GUIDE, "## What the logs mean")
    return [m.group(2).strip() for row in rows for m in CODE_SPAN.finditer(row[0])]


def test_quoted_log_lines_exist_in_the_code():
    strings = source_strings()
    texts = quoted_log_texts()
    assert len(texts) >= 20
    missing = []
    for text in texts:
        for piece in PLACEHOLDER.split(text):
            piece = piece.strip()
            if len(piece) >= 8 and piece not in strings:
                missing.append((text, piece))
    assert not missing, missing


def test_troubleshooting_metrics_and_logs_are_real():
    metrics = exported_metrics()
    used = set(re.findall(r"studio_worker_\w+", TROUBLESHOOTING + GUIDE))
    histogram_parts = {f"{m}_{p}" for m in metrics for p in ("bucket", "sum", "count")}
    assert used <= metrics | histogram_parts, used - metrics - histogram_parts


def test_exit_code_table_is_exit_codes_py():
    """Every code, its name, meaning, action and restart column, in the table's order."""
    rows = table_after(GUIDE, "## Exit codes")
    documented = [
        (int(code), name.strip("`"), meaning, action, restarts)
        for code, name, meaning, action, restarts in rows
    ]
    expected = [
        (int(c), c.name, i.meaning, i.action, "yes" if i.systemd_restarts else "no")
        for c, i in EXIT_CODES.items()
    ]
    assert documented == expected


def test_troubleshooting_error_lines_exist_in_the_code():
    """The ``error:`` texts troubleshooting quotes are still what the code says."""
    strings = source_strings()
    rows = table_after(TROUBLESHOOTING, "## Errors on the command line")
    texts = [m.group(2).strip() for row in rows for m in CODE_SPAN.finditer(row[0])]
    assert len(texts) >= 15
    missing = [
        (text, piece.strip())
        for text in texts
        for piece in PLACEHOLDER.split(text)
        if len(piece.strip()) >= 8 and piece.strip() not in strings
    ]
    assert not missing, missing
