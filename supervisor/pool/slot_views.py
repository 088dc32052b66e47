"""The read-only face of an engine slot: what status, metrics, routing and the GPU governor
read of it. The facts live in the slot's pure core (``slot_core``), its pin and its current
host process; ``slot.Slot`` is the driver that changes them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from protocol import ipc
from supervisor.gpu.facts import GpuDevice
from supervisor.pool.host_process import ExitInfo, HostProcess
from supervisor.pool.slot_core import SlotCore
from supervisor.pool.slot_spec import SlotSpec
from supervisor.pool.slot_state import SlotState
from supervisor.pool.verdict import LossCause


@dataclass(frozen=True)
class Pin:
    """The GPU a slot's hosts run on, and the environment that pins them there."""

    device: GpuDevice
    env: tuple[tuple[str, str], ...]
    simulated: bool


class SlotViews:
    spec: SlotSpec
    core: SlotCore
    pin: Pin | None
    host: HostProcess | None

    # --- views (the core holds the facts) -----------------------------------------------------

    @property
    def slot_id(self) -> str:
        return self.spec.slot_id

    @property
    def engine(self) -> str:
        return self.spec.engine

    @property
    def state(self) -> SlotState:
        return self.core.state

    @property
    def is_free(self) -> bool:
        return self.core.is_free

    @property
    def is_serving(self) -> bool:
        return self.core.is_serving

    @property
    def ready_info(self) -> ipc.Ready | None:
        return self.core.ready

    @property
    def last_heartbeat(self) -> ipc.HostHeartbeat | None:
        return self.core.last_heartbeat

    @property
    def job_id(self) -> str | None:
        return self.core.job.job_id if self.core.job is not None else None

    @property
    def generation(self) -> int:
        return self.core.generation

    @property
    def jobs_done(self) -> int:
        return self.core.jobs_done

    @property
    def restarts(self) -> int:
        return self.core.restarts

    @property
    def restart_causes(self) -> Counter[LossCause]:
        return self.core.restart_causes

    @property
    def last_exit(self) -> str | None:
        return self.core.last_exit

    @property
    def parked_until(self) -> float | None:
        return self.core.parked_until

    @property
    def pid(self) -> int | None:
        return self.host.pid if self.host is not None and self.host.exit is None else None

    def exit_info(self) -> ExitInfo | None:
        return self.host.exit if self.host is not None else None

    # --- what the GPU governor needs (GovernedSlot) ---------------------------------------------

    @property
    def device_index(self) -> int | None:
        return self.pin.device.index if self.pin is not None else None

    @property
    def is_idle(self) -> bool:
        return self.core.is_idle
