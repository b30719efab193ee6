"""Worker processes: spawn, watch, report, retire, and never leave one behind.

Each worker is ``rbee worker daemon ...`` run by the same executable as the hive (`rbee_command`).
Its stdout and stderr go to one pipe that the hive drains into a ring buffer (the tail sent with a
crash report) and a log file under the hive's state directory; the two announcement lines on that
pipe say where it listens and when its model is loaded.

Orphans: on SIGTERM/SIGINT the hive retires every worker; should the hive be SIGKILLed instead,
each worker gets SIGTERM from the kernel (`rbee.process.start`).
"""

from __future__ import annotations

import collections
import logging
import math
import os
import re
import signal
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec
import trio

from rbee import process
from rbee.errors import ApiError, NotFoundError, RbeeError, UsageError
from rbee.hive.telemetry import Gpus, ProcessStats
from rbee.log import kv
from rbee.models.store import MANIFEST, ModelStore, validate_name
from rbee.models.vram import VramNeed, gpu_precision, model_vram_required, no_room_message
from rbee.process import rbee_command
from rbee.wire.hive import SpawnRequest, WorkerRetired
from rbee.wire.queen import WorkerExited, WorkerState, WorkerStatus
from rbee.wire.worker import WorkerInfo

__all__ = ["Supervisor", "Worker", "validate_device"]

log = logging.getLogger(__name__)

TAIL_LINES = 200
REPORT_LINES = 40
_MAX_LINE = 2000
_LISTENING = re.compile(r"^rbee worker listening on (\S+)")
_READY = re.compile(r"^rbee worker ready\b.*?(?:\bprovider=(\S+))?$")
_DEVICE = re.compile(r"^(cpu|cuda:(\d+))$")


def validate_device(device: str, gpu_count: int) -> str:
    """``cpu`` or ``cuda:N`` with a GPU ``N`` that this host has; `UsageError` otherwise."""
    match = _DEVICE.match(device)
    if match is None:
        raise UsageError(f"invalid device {device!r}: use 'cpu' or 'cuda:N'")
    if match.group(2) is not None and int(match.group(2)) >= gpu_count:
        have = f"GPUs 0-{gpu_count - 1}" if gpu_count else "no NVIDIA GPU"
        raise UsageError(f"no device {device} on this host (it has {have})")
    return device


@dataclass(eq=False)
class Worker:
    """One worker process and what the hive knows about it."""

    id: str
    model: str
    device: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    slots_total: int
    slots_free: int
    state: WorkerState = "loading"
    url: str = ""
    exit_code: int | None = None
    retiring: bool = False
    pinned: bool = False
    provider: str = ""
    # The graph it was asked to run (None: its default).
    precision: str | None = None
    tail: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=TAIL_LINES)
    )
    settled: trio.Event = field(default_factory=trio.Event)
    exited: trio.Event = field(default_factory=trio.Event)
    output_done: trio.Event = field(default_factory=trio.Event)
    stats: ProcessStats = field(init=False)

    def __post_init__(self) -> None:
        self.stats = ProcessStats(self.popen.pid)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def ready(self) -> bool:
        return self.state in ("ready", "busy")

    def status(self, gpu: dict[int, tuple[float, float]]) -> WorkerStatus:
        sample = self.stats.sample()
        gpu_util, vram = gpu.get(self.pid, (0.0, 0.0))
        return WorkerStatus(
            id=self.id,
            pid=self.pid,
            model=self.model,
            device=self.device,
            url=self.url,
            state=self.state,
            slots_total=self.slots_total,
            slots_free=self.slots_free,
            cpu_pct=sample.cpu_pct,
            rss_mb=round(sample.rss_mb, 1),
            gpu_util_pct=gpu_util,
            vram_mb=round(vram, 1),
            uptime_s=round(sample.uptime_s, 3),
            provider=self.provider,
            pinned=self.pinned,
        )


class Supervisor:
    """Every worker of this hive; `run` owns their tasks and stops them all when it ends."""

    def __init__(
        self,
        *,
        hive: str,
        store: ModelStore,
        state_dir: Path,
        gpus: Gpus,
        default_model: str | None = None,
        command: Sequence[str] | None = None,
        worker_host: str = "127.0.0.1",
        advertise_host: str | None = None,
        default_slots: int = 4,
        default_precision: str = "int4",
        ready_timeout_s: float = 120.0,
        stop_grace_s: float = 10.0,
        token: str = "",
    ) -> None:
        self.hive = hive
        self.store = store
        self.gpus = gpus
        self.default_model = default_model
        self.command = list(command) if command is not None else rbee_command()
        self.worker_host = worker_host
        self.advertise_host = advertise_host
        self.default_slots = default_slots
        self.default_precision = default_precision
        self.ready_timeout_s = ready_timeout_s
        self.stop_grace_s = stop_grace_s
        # Workers take the hive's token through the environment, so that `ps` never shows it.
        self._env = {**os.environ, "RBEE_WORKER_TOKEN": token} if token else None
        self.log_dir = state_dir / "logs"
        self.workers: dict[str, Worker] = {}
        send, self.exits = trio.open_memory_channel[WorkerExited](math.inf)
        self._exits_send = send
        self._nursery: trio.Nursery | None = None
        self._info = msgspec.json.Decoder(WorkerInfo)
        self._needs: dict[tuple[str, int, str | None], tuple[int, VramNeed | None]] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the workers' tasks until cancelled; whatever still runs then is killed."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            for worker in self.workers.values():
                process.kill(worker.popen)
                worker.popen.wait()
            self.workers.clear()

    # Spawning

    def check_spawn(self, req: SpawnRequest) -> None:
        """Refuse an unknown model or device, or a GPU without room, before anything starts.

        `UsageError` for a bad device, 404 for a model not in the store, 409 when the GPU's free
        VRAM is less than the model's estimated need (`rbee.models.vram`).
        """
        validate_device(req.device, self.gpus.count)
        validate_name(req.model)
        if not self.store.has(req.model) and req.model != self.default_model:
            raise NotFoundError(
                f"model {req.model!r} is not on hive {self.hive}; pull it first "
                "(POST /v1/models/pull) or import it with 'rbee model import'"
            )
        if req.precision is not None and self.store.has(req.model):
            self.store.get(req.model).with_precisions([req.precision])
        if req.device.startswith("cuda:"):
            slots = req.slots or self.default_slots
            self._check_room(req.model, req.device, slots, req.precision)

    def _check_room(self, model: str, device: str, slots: int, precision: str | None) -> None:
        need = self.vram_need(model, slots, precision)
        index = int(device.partition(":")[2])
        gpu = next((g for g in self.gpus.telemetry() if g.index == index), None)
        if need is None or gpu is None:
            return
        # Workers still loading on the GPU have not taken all their memory yet: count them in full.
        promised = sum(
            n.total_mb
            for w in self.workers.values()
            if w.device == device
            and w.state == "loading"
            and (n := self.vram_need(w.model, w.slots_total, w.precision)) is not None
        )
        free = gpu.vram_total_mb - gpu.vram_used_mb - promised
        if need.total_mb > free:
            message = no_room_message(need, device, free)
            if promised:
                message += f" ({promised:.0f} MB of it are promised to workers still loading)"
            raise ApiError(f"hive {self.hive}: {message}", 409)

    def vram_need(
        self, model: str, slots: int | None = None, precision: str | None = None
    ) -> VramNeed | None:
        """The estimated VRAM of a GPU worker for ``model`` running ``precision`` (None: the one
        a GPU worker picks); None when the model is not in the store or cannot be read.

        Kept until the model's manifest changes, so that heartbeats do not re-read graphs.
        """
        slots = slots or self.default_slots
        path = self.store.dir(model) / MANIFEST
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            return None
        cached = self._needs.get((model, slots, precision))
        if cached is not None and cached[0] == stamp:
            return cached[1]
        need: VramNeed | None
        try:
            manifest = self.store.get(model)
            need = model_vram_required(
                self.store.dir(model),
                manifest,
                precision=precision or gpu_precision(manifest, self.default_precision),
                slots=slots,
            )
        except RbeeError as err:
            log.warning("no VRAM estimate", extra=kv(model=model, error=str(err)))
            need = None
        self._needs[(model, slots, precision)] = (stamp, need)
        return need

    def spawn(self, req: SpawnRequest) -> Worker:
        """Start a worker; it answers at once with state ``loading``."""
        if self._nursery is None:
            raise ApiError("the hive is shutting down", 503)
        self.check_spawn(req)
        worker_id = f"w-{uuid.uuid4().hex[:12]}"
        slots = req.slots or self.default_slots
        argv = [
            *self.command,
            "worker",
            "daemon",
            "--model",
            req.model,
            "--models-dir",
            str(self.store.root),
            "--host",
            self.worker_host,
            "--port",
            "0",
            "--device",
            req.device,
            "--slots",
            str(slots),
        ]
        if req.threads is not None:
            argv += ["--threads", str(req.threads)]
        if req.precision is not None:
            argv += ["--precision", req.precision]
        log_path = self.log_dir / f"{worker_id}.log"
        popen = process.start(argv, env=self._env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert popen.stdout is not None
        output = trio.lowlevel.FdStream(os.dup(popen.stdout.fileno()))
        popen.stdout.close()
        worker = Worker(
            id=worker_id,
            model=req.model,
            device=req.device,
            popen=popen,
            log_path=log_path,
            slots_total=slots,
            slots_free=slots,
            pinned=req.pinned,
            precision=req.precision,
        )
        self.workers[worker_id] = worker
        log.info(
            "worker started",
            extra=kv(worker=worker_id, pid=popen.pid, model=req.model, device=req.device),
        )
        self._nursery.start_soon(self._watch, worker, output)
        return worker

    async def wait_ready(self, worker: Worker) -> None:
        """Return once ``worker`` is ready; `ApiError` with its log tail if it failed instead."""
        await worker.settled.wait()
        if not worker.ready:
            tail = " | ".join(list(worker.tail)[-5:])
            raise ApiError(
                f"worker {worker.id} ({worker.model}) failed to start "
                f"(exit code {worker.exit_code}): {tail}",
                502,
            )

    # Watching

    async def _watch(self, worker: Worker, output: trio.lowlevel.FdStream) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_output, worker, output)
            nursery.start_soon(self._ready_deadline, worker)
            code = await process.wait(worker.popen)
            worker.exit_code = code
            # The last lines usually say why it died; give the pipe a moment to drain.
            with trio.move_on_after(0.3):
                await worker.output_done.wait()
            nursery.cancel_scope.cancel()
        self.workers.pop(worker.id, None)
        worker.exited.set()
        worker.settled.set()
        if worker.retiring:
            log.info("worker stopped", extra=kv(worker=worker.id, exit_code=code))
            return
        log.warning(
            "worker exited",
            extra=kv(worker=worker.id, model=worker.model, exit_code=code, log=worker.log_path),
        )
        self._exits_send.send_nowait(
            WorkerExited(
                hive=self.hive,
                worker_id=worker.id,
                model=worker.model,
                exit_code=code,
                log_tail=list(worker.tail)[-REPORT_LINES:],
            )
        )

    async def _read_output(self, worker: Worker, output: trio.lowlevel.FdStream) -> None:
        pending = b""
        try:
            with worker.log_path.open("ab") as logfile:
                async with output:
                    while data := await output.receive_some(65536):
                        logfile.write(data)
                        logfile.flush()
                        *lines, pending = (pending + data).split(b"\n")
                        for raw in lines:
                            self._line(worker, raw.decode("utf-8", "replace").rstrip("\r"))
                if pending:
                    self._line(worker, pending.decode("utf-8", "replace"))
        finally:
            worker.output_done.set()

    def _line(self, worker: Worker, line: str) -> None:
        worker.tail.append(line[:_MAX_LINE])
        if not worker.url and (match := _LISTENING.match(line)):
            worker.url = self._advertised(match.group(1))
        elif (match := _READY.match(line)) and worker.state == "loading":
            worker.state = "ready"
            worker.provider = match.group(1) or ""
            worker.settled.set()
            log.info("worker ready", extra=kv(worker=worker.id, url=worker.url))

    def _advertised(self, url: str) -> str:
        """The worker's URL as others reach it (a wildcard bind is replaced by the hive's host)."""
        parsed = httpx.URL(url)
        if self.advertise_host and parsed.host in ("0.0.0.0", "::"):
            return str(parsed.copy_with(host=self.advertise_host))
        return url

    async def _ready_deadline(self, worker: Worker) -> None:
        with trio.move_on_after(self.ready_timeout_s):
            await worker.settled.wait()
            return
        worker.tail.append(f"rbee hive: worker not ready after {self.ready_timeout_s:g} s")
        log.warning("worker not ready in time", extra=kv(worker=worker.id))
        process.kill(worker.popen)

    # Retiring

    async def retire(self, worker_id: str) -> WorkerRetired:
        """SIGTERM, up to the grace period, then SIGKILL; return once the process is gone."""
        worker = self.get(worker_id)
        if not worker.retiring:
            worker.retiring = True
            worker.state = "stopping"
            process.send_signal(worker.popen, signal.SIGTERM)
        # The watcher reaps the process; retiring waits for it to have seen the end.
        killed = await process.wait_or_kill(
            worker.popen,
            self.stop_grace_s,
            what="worker",
            exited=worker.exited.wait,
            fields={"worker": worker.id},
        )
        return WorkerRetired(id=worker.id, exit_code=worker.exit_code, killed=killed)

    async def retire_all(self) -> None:
        async with trio.open_nursery() as nursery:
            for worker_id in list(self.workers):
                nursery.start_soon(self.retire, worker_id)

    def get(self, worker_id: str) -> Worker:
        worker = self.workers.get(worker_id)
        if worker is None:
            raise NotFoundError(f"no worker {worker_id!r} on hive {self.hive}")
        return worker

    # Telemetry

    async def refresh_slots(self, client: httpx.AsyncClient) -> None:
        """Ask every ready worker for its free slots (``GET /v1/info``); busy when none is free."""
        async with trio.open_nursery() as nursery:
            for worker in list(self.workers.values()):
                if worker.ready and worker.url:
                    nursery.start_soon(self._refresh_one, client, worker)

    async def _refresh_one(self, client: httpx.AsyncClient, worker: Worker) -> None:
        try:
            response = await client.get(f"{worker.url}/v1/info")
            info = self._info.decode(response.content) if response.is_success else None
        except (httpx.HTTPError, msgspec.DecodeError):
            return
        if info is None or not worker.ready:
            return
        worker.slots_total = info.slots_total
        worker.slots_free = info.slots_free
        worker.state = "busy" if info.slots_free == 0 else "ready"

    def statuses(self) -> list[WorkerStatus]:
        gpu = self.gpus.per_process()
        return [w.status(gpu) for w in self.workers.values()]

    def models_in_use(self, model: str) -> list[str]:
        return [w.id for w in self.workers.values() if w.model == model]
