"""deploy/grafana and deploy/prometheus cannot drift from the code: every metric a dashboard
query or an alert rule names is one supervisor/ops/metrics.py exports (histograms through
their ``_bucket``/``_sum``/``_count`` series), every label they match, group or print is one
that series carries (``lane`` only on the per-lane session and job families), every label
value they match on is one the code can produce, the dashboard shows every exported metric
and filters the per-lane ones by its lane variable, and the crash-loop alert
leaves out the same restart causes the slot's own crash-loop guard does. The operator
guide lists every alert, and the troubleshooting sections they point to exist. The dashboard's
queries are valid PromQL by promtool's parser; the alert rules themselves are checked and
unit-tested by promtool in scripts/test (deploy/prometheus/alerts.test.yml)."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import yaml

from supervisor.gpu.health import GpuHealth
from supervisor.ops.metrics import JOB_OUTCOMES, RESTART_CAUSES, WorkerCollector
from supervisor.pool.engine_pool import EnginePool
from supervisor.pool.slot_state import SlotState
from supervisor.pool.verdict import NOT_CRASHES, LossCause
from supervisor.session_state import SessionPhase
from supervisor.studio.offer_routing import RefuseCause
from tests.test_docs import GUIDE, TROUBLESHOOTING, exported_metrics, table_after

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_PATH = ROOT / "deploy" / "grafana" / "studio-worker.json"
ALERTS_PATH = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS_PATH = ROOT / "deploy" / "prometheus" / "alerts.test.yml"

METRIC = re.compile(r"\bstudio_worker_\w+")
HISTOGRAM_PARTS = ("_bucket", "_sum", "_count")
# A selector's braces and the matchers inside them: name op "value".
SELECTOR = re.compile(r"\b(studio_worker_\w+)\s*\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
# Label values the code can produce, for the labels whose values are a closed set.
LABEL_VALUES: dict[tuple[str, str], frozenset[str]] = {
    ("studio_worker_jobs_total", "outcome"): frozenset(JOB_OUTCOMES),
    ("studio_worker_engine_restarts_total", "cause"): frozenset(RESTART_CAUSES),
    ("studio_worker_slot_state", "state"): frozenset(s.value for s in SlotState),
    ("studio_worker_gpu_health", "state"): frozenset(s.value for s in GpuHealth),
    ("studio_worker_session_phase", "phase"): frozenset(p.value for p in SessionPhase),
    # Open-ended (any failure cause), but the ones a query may name are these.
    ("studio_worker_job_failures_total", "reason"): frozenset(
        [*(c.value for c in LossCause), *(c.value for c in RefuseCause)]
    ),
}
# Labels Prometheus adds to every scraped series (the worker exports none of them).
TARGET_LABELS = frozenset({"instance", "job"})
# The families that carry `lane` (one studio identity each); slot, GPU and readiness series
# are the whole supervisor's and have none.
LANE_FAMILIES = frozenset(
    {
        "studio_worker_session_phase",
        "studio_worker_session_reconnects_total",
        "studio_worker_sessions_welcomed_total",
        "studio_worker_heartbeat_ack_age_seconds",
        "studio_worker_paused",
        "studio_worker_jobs_total",
        "studio_worker_jobs_running",
        "studio_worker_job_duration_seconds",
        "studio_worker_job_failures_total",
    }
)
# Grouping clauses: an aggregation's `by`/`without`, a binary operator's `on`/`ignoring`.
GROUPING = re.compile(r"\b(by|without|on|ignoring)\s*\(([^)]*)\)")
LABEL_VALUES_QUERY = re.compile(r"label_values\(\s*(\w+)\s*(?:\{[^}]*\})?\s*,\s*(\w+)\s*\)")
LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
ANNOTATION_LABEL = re.compile(r"\$labels\.(\w+)")
# Grafana variables, replaced by what Grafana would send to Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$instance": ".+", "$lane": ".*"}


@functools.cache
def family_labels() -> dict[str, frozenset[str]]:
    """Each exported metric (histograms as their family) -> the label names its series
    carry, from the collector itself: over no slots, no GPUs and no lanes it still makes
    every family, with its label names, and no samples."""
    pool = SimpleNamespace(slots=[], gpu=SimpleNamespace(readings={}, evictions={}, health={}))
    out = {}
    for family in WorkerCollector(cast(EnginePool, pool), []).collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        out[name] = frozenset(family._labelnames) | TARGET_LABELS
    return out


def series_labels(series: str) -> frozenset[str] | None:
    """The labels a series name a query may use carries (``le`` on a histogram's
    ``_bucket``); None for a name the code does not export."""
    families = family_labels()
    if series in families:
        return families[series]
    for part in HISTOGRAM_PARTS:
        family = series.removesuffix(part)
        if series.endswith(part) and family in families:
            return families[family] | ({"le"} if part == "_bucket" else set())
    return None


def known_series(text: str) -> list[tuple[str, frozenset[str]]]:
    """The exported series ``text`` names, each with its labels."""
    return [(m, labels) for m in METRIC.findall(text) if (labels := series_labels(m)) is not None]


def balanced(text: str) -> str:
    """The inside of the parenthesis ``text`` opens with."""
    depth = 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return text[1:i]
    return text[1:]


def grouping_clauses(expr: str) -> Iterator[tuple[str, list[str], str]]:
    """Each grouping clause: keyword, labels, and the text whose series it groups (the
    aggregation's argument after ``by``/``without``; for ``on``/``ignoring``, or an argument
    written before the clause, the whole expression)."""
    for match in GROUPING.finditer(expr):
        keyword, names = match.groups()
        labels = [name.strip() for name in names.split(",") if name.strip()]
        scope = expr
        rest = expr[match.end() :].lstrip()
        if keyword in ("by", "without") and rest.startswith("("):
            scope = balanced(rest)
        yield keyword, labels, scope


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD_PATH.read_text())
    return data


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def dashboard_queries(board: dict[str, Any]) -> list[str]:
    """Every PromQL expression of every panel."""
    return [t["expr"] for p in panels(board) for t in p.get("targets", [])]


def variable_queries(board: dict[str, Any]) -> list[str]:
    """The template variables' queries (``label_values(...)``, not PromQL)."""
    out = []
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            out.append(query["query"] if isinstance(query, dict) else query)
    return out


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS_PATH.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def metric_names(exprs: list[str]) -> set[str]:
    """Metric names the expressions use, histogram series folded into their family."""
    names = set()
    for name in (m for e in exprs for m in METRIC.findall(e)):
        for part in HISTOGRAM_PARTS:
            if name.endswith(part) and name.removesuffix(part) in exported_metrics():
                name = name.removesuffix(part)
        names.add(name)
    return names


def unknown_label_values(exprs: list[str]) -> list[str]:
    """Matchers on a closed label that name a value the code never produces (``=``,
    ``!=``) or match none of them (``=~``, ``!~``: each alternative must be a value)."""
    problems = []
    for expr in exprs:
        for metric, body in SELECTOR.findall(expr):
            for label, op, value in MATCHER.findall(body):
                known = LABEL_VALUES.get((metric, label))
                if known is None:
                    continue
                wanted = value.split("|") if op in ("=~", "!~") else [value]
                problems += [
                    f"{metric}{{{label}{op}{value!r}}}: {w!r} is not one of {sorted(known)}"
                    for w in wanted
                    if not any(re.fullmatch(w, k) for k in known)
                ]
    return problems


def unknown_labels(exprs: list[str]) -> list[str]:
    """Labels a query matches or groups by that the series it names do not carry: a
    matcher's label must be on its selector's series, a grouping label on every series the
    clause groups (target labels ``instance`` and ``job`` are on all of them)."""
    problems = []
    for expr in exprs:
        for metric, body in SELECTOR.findall(expr):
            have = series_labels(metric)
            if have is None:
                continue  # not exported: the metric-name checks report it
            problems += [
                f"{metric}{{{label}{op}{value!r}}}: {metric} has no label {label!r} "
                f"(only {sorted(have)})"
                for label, op, value in MATCHER.findall(body)
                if label not in have
            ]
        for keyword, labels, scope in grouping_clauses(expr):
            problems += [
                f"{keyword} ({label}) in {expr!r}: {metric} has no label {label!r}"
                for label in labels
                for metric, have in known_series(scope)
                if label not in have
            ]
    return problems


def unknown_result_labels(expr: str, labels: list[str]) -> list[str]:
    """Labels a legend or an alert annotation prints that the query's result cannot have:
    each must be a target label or carried by a series the query names, kept by every
    ``by (...)`` and dropped by no ``without (...)``."""
    carried = set(TARGET_LABELS).union(*(have for _, have in known_series(expr)))
    clauses = list(grouping_clauses(expr))
    return [
        f"{{{{{label}}}}} of {expr!r}"
        for label in labels
        if label not in carried
        or any(k == "by" and label not in kept for k, kept, _ in clauses)
        or any(k == "without" and label in dropped for k, dropped, _ in clauses)
    ]


def test_dashboard_queries_use_exported_metrics():
    board = dashboard()
    used = metric_names(dashboard_queries(board) + variable_queries(board))
    assert used, "no studio_worker_ metric found in the dashboard"
    renamed = used - exported_metrics()
    assert not renamed, f"the dashboard queries metrics the code does not export: {renamed}"


def test_dashboard_shows_every_exported_metric():
    missing = exported_metrics() - metric_names(dashboard_queries(dashboard()))
    assert not missing, f"add a panel to deploy/grafana/studio-worker.json for {missing}"


def test_alert_rules_use_exported_metrics():
    used = metric_names([rule["expr"] for rule in alert_rules()])
    assert used
    renamed = used - exported_metrics()
    assert not renamed, f"alerts.yml queries metrics the code does not export: {renamed}"


def test_label_values_are_ones_the_code_produces():
    exprs = dashboard_queries(dashboard()) + [rule["expr"] for rule in alert_rules()]
    assert unknown_label_values(exprs) == []


def test_the_label_check_catches_a_renamed_value():
    """The check above is not vacuous: a value the code never uses is reported."""
    bad = [
        'studio_worker_jobs_total{outcome="failed"}',
        'studio_worker_gpu_health{state=~"suspect|broken"}',
    ]
    assert len(unknown_label_values(bad)) == 2
    assert unknown_label_values(['studio_worker_jobs_total{outcome=~"failed_.*"}']) == []


def test_lane_is_a_label_of_the_per_lane_families_only():
    """The collector is where the label names come from: it exports every metric the
    source names, and ``lane`` exactly on the per-lane session and job families."""
    families = family_labels()
    assert set(families) == exported_metrics()
    assert {name for name, labels in families.items() if "lane" in labels} == LANE_FAMILIES


def test_labels_are_ones_the_series_carry():
    board = dashboard()
    exprs = dashboard_queries(board) + [rule["expr"] for rule in alert_rules()]
    assert unknown_labels(exprs) == []
    for query in variable_queries(board):
        for metric, label in LABEL_VALUES_QUERY.findall(query):
            assert label in (series_labels(metric) or ()), f"{query}: no {label!r} on {metric}"


def test_legends_and_annotations_print_labels_the_result_has():
    problems = [
        problem
        for panel in panels(dashboard())
        for target in panel.get("targets", [])
        for problem in unknown_result_labels(
            target["expr"], LEGEND_LABEL.findall(target.get("legendFormat", ""))
        )
    ]
    for rule in alert_rules():
        printed = ANNOTATION_LABEL.findall(" ".join(rule["annotations"].values()))
        problems += [f"{rule['alert']}: {p}" for p in unknown_result_labels(rule["expr"], printed)]
    assert problems == []


def test_the_label_name_check_catches_a_label_a_series_lacks():
    """Not vacuous: `lane` on a slot, GPU or readiness series is reported, as is a
    per-lane label on the wrong family; the per-lane families take it."""
    bad = [
        'studio_worker_slot_state{instance=~"$instance", lane=~"$lane"} == 1',
        "sum by (lane, cause) (increase(studio_worker_engine_restarts_total[5m]))",
        'studio_worker_ready{lane="main"}',
        'sum by (lane) (studio_worker_gpu_health{state="healthy"})',
        'studio_worker_jobs_total{slot="sdcpp-gpu0-0"}',
        'studio_worker_model_load_seconds_sum{lane="gpu0"}',
    ]
    assert [len(unknown_labels([expr])) for expr in bad] == [1] * len(bad)
    good = [
        'studio_worker_heartbeat_ack_age_seconds{instance="w1:9464", lane="gpu1"} > 30',
        'sum by (instance, job, lane) (rate(studio_worker_jobs_total{outcome="done"}[5m]))',
        "histogram_quantile(0.5, sum by (le, lane)"
        ' (rate(studio_worker_job_duration_seconds_bucket{lane=~"gpu.*"}[5m])))',
        'max by (instance, job, lane) (studio_worker_session_phase{phase="welcomed"}) == 0'
        " and on (instance, job) studio_worker_ready == 1",
    ]
    assert unknown_labels(good) == []
    # lane: not on the series; slot: on it, but summed away; cause: kept.
    printed = unknown_result_labels(bad[1], ["lane", "cause", "slot"])
    assert printed == [f"{{{{{label}}}}} of {bad[1]!r}" for label in ("lane", "slot")]
    assert unknown_result_labels("studio_worker_slot_state == 1", ["lane"]) != []
    assert unknown_result_labels(good[1], ["instance", "lane"]) == []


def test_crash_loop_alert_ignores_the_causes_the_guard_ignores():
    """Restarts that are no crash never park a slot (verdict.NOT_CRASHES); the alert must
    not call them a crash loop either, and must count every other restart cause."""
    (rule,) = [r for r in alert_rules() if r["alert"] == "StudioWorkerSlotCrashLooping"]
    (excluded,) = re.findall(r'cause!~"([^"]*)"', rule["expr"])
    ignored = {c.value for c in NOT_CRASHES} & set(RESTART_CAUSES)
    assert set(excluded.split("|")) == ignored


def test_every_alert_is_unit_tested_and_explained():
    tests = yaml.safe_load(ALERT_TESTS_PATH.read_text())
    assert tests["rule_files"] == [ALERTS_PATH.name]
    tested = {
        case["alertname"]
        for group in tests["tests"]
        for case in group["alert_rule_test"]
        if case["exp_alerts"]
    }
    for rule in alert_rules():
        assert rule["alert"] in tested, f"{rule['alert']} never fires in alerts.test.yml"
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_guide_lists_every_alert_with_its_severity():
    rows = table_after(GUIDE, "### Dashboard and alerts")
    documented = [(name.strip("`"), severity) for name, severity, *_ in rows]
    assert documented == [(r["alert"], r["labels"]["severity"]) for r in alert_rules()]


def test_alerts_point_to_troubleshooting_sections_that_exist():
    headings = re.findall(r"^## (.+)$", TROUBLESHOOTING, flags=re.M)
    pointers = [
        (rule["alert"], rest)
        for rule in alert_rules()
        for rest in rule["annotations"]["description"].split("troubleshooting: ")[1:]
    ]
    assert pointers, "no alert points to troubleshooting"
    for alert, rest in pointers:
        assert any(rest.startswith(h) for h in headings), f"{alert}: no section {rest!r}"


def test_dashboard_is_a_grafana_model_on_the_datasource_variable():
    board = dashboard()
    assert board["uid"] == "studio-worker"
    assert isinstance(board["schemaVersion"], int)
    names = [v["name"] for v in board["templating"]["list"]]
    assert names == ["datasource", "instance", "lane"]
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(board):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert '$instance"' in target["expr"], f"{panel['title']}: not filtered by worker"


def test_dashboard_filters_per_lane_series_by_the_lane_variable():
    """The lane variable lists the lanes (any of them, or all) and every selector of a
    per-lane family in a panel applies it."""
    board = dashboard()
    (lane,) = [v for v in board["templating"]["list"] if v["name"] == "lane"]
    assert lane["query"]["query"] == "label_values(studio_worker_session_phase, lane)"
    assert lane["multi"] and lane["includeAll"]
    unfiltered = [
        f"{panel['title']}: {metric}{{{body}}}"
        for panel in panels(board)
        for target in panel.get("targets", [])
        for metric, body in SELECTOR.findall(target["expr"])
        if "lane" in (series_labels(metric) or ()) and 'lane=~"$lane"' not in body
    ]
    assert unfiltered == []
    per_lane = [
        target["legendFormat"]
        for panel in panels(board)
        if panel["title"] in ("Session phase", "Heartbeat ack age")
        for target in panel["targets"]
    ]
    assert per_lane and all("{{lane}}" in legend for legend in per_lane)


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed: ./scripts/install installs it as root on Debian "
            "(apt-get install prometheus); elsewhere put Prometheus's promtool on PATH"
        )
    return path


def test_dashboard_queries_parse_as_promql(tmp_path):
    """Each query, with Grafana's variables filled in, as a recording rule that promtool's
    PromQL parser must accept."""
    queries = dashboard_queries(dashboard())
    rules = []
    for i, expr in enumerate(queries):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"unknown Grafana variable in {expr}"
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool(), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout
