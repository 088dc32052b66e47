"""Render ``supervisor status``: the Rust worker's config lines (§8), then what the running
supervisor reports over the control socket (session, jobs, every slot)."""

from __future__ import annotations

from pathlib import Path

import msgspec

from supervisor.config import WorkerConfig
from supervisor.errors import UsageError
from supervisor.lane_identity import lane_view
from supervisor.ops.status_report import GpuView, LaneView, SlotView, StatusReport, UpdateView

LABEL_WIDTH = 20


def _line(label: str, value: object) -> str:
    return f"{label + ':':<{LABEL_WIDTH}}{value}"


def registration_text(cfg: WorkerConfig) -> str:
    if cfg.worker_id and cfg.auth_token:
        return f"approved as {cfg.worker_id}"
    if cfg.registration_request_id:
        return f"pending operator approval (request {cfg.registration_request_id})"
    return "not registered (will auto-register on next launch)"


def config_lines(cfg_path: Path, cfg: WorkerConfig) -> list[str]:
    lanes = [
        _line(f"registration {name}", registration_text(lane_view(cfg, name)))
        for name, table in sorted(cfg.lane.items())
        if table.install_id or table.registration_request_id or table.worker_id
    ]
    return [
        _line("config path", cfg_path),
        _line("api_base_url", cfg.api_base_url),
        _line("registration", registration_text(cfg)),
        *lanes,
        _line("vram_threshold_gb", cfg.vram_threshold_gb),
        _line("auto_start", str(cfg.auto_start).lower()),
        _line("models_root", cfg.models_root),
        _line("auto_update", str(cfg.auto_update_enabled).lower()),
        _line("update_interval", f"{cfg.auto_update_interval_secs}s"),
        _line("self_install", str(cfg.self_install).lower()),
        _line("telemetry", "on (telemetry_dsn)" if cfg.telemetry_dsn else "off unless SENTRY_DSN"),
    ]


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}MiB"


def live_lines(report: StatusReport) -> list[str]:
    ack = report.seconds_since_heartbeat_ack
    outcomes = ", ".join(f"{k}={v}" for k, v in sorted(report.job_outcomes.items())) or "none yet"
    lines = [
        _line("supervisor", f"running (pid {report.pid})"),
        _line("session", report.session + (f" as {report.worker_id}" if report.worker_id else "")),
        _line(
            "claiming", "paused" if report.paused else "draining" if report.shutting_down else "on"
        ),
        _line("last heartbeat ack", "never" if ack is None else f"{ack:.1f}s ago"),
        _line("reconnects", report.reconnects),
        _line("jobs", outcomes),
    ]
    if report.update is not None:
        lines.append(_line("update", update_text(report.update)))
    if len(report.lanes) > 1:
        lines.extend(_lane_lines(report.lanes))
    if report.job_failures:
        causes = ", ".join(f"{k}={v}" for k, v in sorted(report.job_failures.items()))
        lines.append(_line("failures by cause", causes))
    for job in report.jobs:
        progress = f" {job.step}/{job.total}" if job.total else ""
        lane = f" lane={job.lane}" if len(report.lanes) > 1 else ""
        lines.append(
            f"  job {job.job_id} {job.kind} model={job.model} slot={job.slot}{lane} "
            f"{job.phase}{progress} {job.running_s:.1f}s"
        )
    header = "  " + "".join(
        f"{title:<{width}}"
        for title, width in (
            ("SLOT", 24),
            ("STATE", 12),
            ("PID", 9),
            ("JOBS", 6),
            ("RESTARTS", 14),
            ("RSS", 10),
            ("VRAM", 10),
            ("JOB", 0),
        )
    )
    lines.append("slots:")
    lines.append(header)
    for s in report.slots:
        causes = ",".join(f"{k}={v}" for k, v in sorted(s.restart_causes.items()))
        restarts = f"{s.restarts}" + (f" ({causes})" if causes else "")
        state = s.state + (f" {s.parked_for_s:.0f}s" if s.parked_for_s is not None else "")
        lines.append(
            f"  {s.slot:<24}{state:<12}{s.pid or '-'!s:<9}{s.jobs_done:<6}{restarts:<14}"
            f"{_mib(s.rss_bytes):<10}{_mib(s.vram_bytes):<10}{s.job_id or '-'}"
        )
        lines.extend(_slot_detail(s))
    lines.extend(_gpu_lines(report))
    return lines


def update_text(u: UpdateView) -> str:
    """``0.5.1 available (report only ...)``, ``up to date (0.5.0, checked 12s ago)``..."""
    if not u.checking and u.newest is None:
        return f"{u.installed}; checks off (auto_update_enabled = false)"
    if u.error is not None and u.newest is None:
        return f"{u.installed}; last check failed: {u.error}"
    if u.newest is None:
        return f"{u.installed}; not checked yet"
    ago = f", checked {u.checked_s_ago:.0f}s ago" if u.checked_s_ago is not None else ""
    failed = f"; last check failed: {u.error}" if u.error is not None else ""
    if not u.available:
        return f"up to date ({u.installed}{ago}){failed}"
    note = f"; {u.note}" if u.note else ""
    return f"{u.newest} available (running {u.installed}{ago}){note}{failed}"


def _lane_lines(lanes: list[LaneView]) -> list[str]:
    lines = ["lanes:"]
    for lane in lanes:
        who = f" as {lane.worker_id}" if lane.worker_id else ""
        ack = lane.seconds_since_heartbeat_ack
        state = "paused" if lane.paused else "on"
        lines.append(
            f"  {lane.name:<8}{lane.session}{who}, claiming {state}, heartbeat ack "
            f"{'never' if ack is None else f'{ack:.1f}s ago'}, reconnects {lane.reconnects}, "
            f"slots {', '.join(lane.slots)}"
        )
        if lane.ended:
            lines.append(f"  {'':<8}stopped: {lane.ended}")
    return lines


def _gib(value: int) -> str:
    return f"{value / 2**30:.1f}GiB"


def _slot_detail(s: SlotView) -> list[str]:
    pad = f"  {'':<24}"
    lines = []
    if s.gpu_uuid:
        lines.append(f"{pad}on gpu {s.gpu}: {s.gpu_name} {s.gpu_uuid}")
    if s.models:
        loaded = ", ".join(f"{m.load_key} ({_gib(m.size_bytes)})" for m in s.models)
        lines.append(f"{pad}loaded: {loaded}")
    if s.last_exit:
        lines.append(f"{pad}last exit: {s.last_exit}")
    return lines


def _gpu_lines(report: StatusReport) -> list[str]:
    if not report.gpus:
        return [_line("gpus", "none found (no NVIDIA driver or simulation)")]
    lines = [f"gpus: ({report.gpu_source})"]
    for g in report.gpus:
        lines.append(_gpu_line(g))
    return lines


def _gpu_line(g: GpuView) -> str:
    return (
        f"  gpu {g.index}: {g.health} {g.name} {g.uuid} total {_gib(g.total_bytes)}, "
        f"used {_gib(g.used_bytes)}, free {_gib(g.free_bytes)}, evictions {g.evictions}"
    )


def only_lane(report: StatusReport, name: str) -> StatusReport:
    """The report as one lane sees it (``status --lane NAME``): its session, jobs, slots.
    Raises UsageError for a lane the supervisor does not run."""
    chosen = [lane for lane in report.lanes if lane.name == name]
    if not chosen:
        known = ", ".join(lane.name for lane in report.lanes)
        raise UsageError(f"no lane `{name}` in the running supervisor; the lanes are {known}")
    lane = chosen[0]
    return msgspec.structs.replace(
        report,
        worker_id=lane.worker_id,
        session=lane.session,
        paused=lane.paused,
        seconds_since_heartbeat_ack=lane.seconds_since_heartbeat_ack,
        reconnects=lane.reconnects,
        job_outcomes=lane.job_outcomes,
        job_failures=lane.job_failures,
        jobs=[job for job in report.jobs if job.lane == name],
        slots=[slot for slot in report.slots if slot.slot in lane.slots],
        lanes=[lane],
    )


def render_status(cfg_path: Path, cfg: WorkerConfig, report: StatusReport | None) -> str:
    lines = config_lines(cfg_path, cfg)
    if report is None:
        lines.append(_line("supervisor", "not running"))
    else:
        lines.extend(live_lines(report))
    return "\n".join(lines)
