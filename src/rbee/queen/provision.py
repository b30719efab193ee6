"""Workers on demand: start them on hives when a policy says `Spawn`, retire them when idle.

`Hives` is the queen's `rbee.queen.dispatcher.Provisioner`. A spawn looks the hive up in the
registry, installs the model from the queen's own store first when the hive lacks it (the default
model excepted: a worker imports it on first use), makes room when the host is short of memory,
and asks the hive to start the worker, waiting until it is ready (a worker that fails to start is
an error with its last log lines). The ready worker goes into the registry at once, so that the
job need not wait for the hive's next heartbeat.

`Hives.keep_alive` retires every worker idle longer than ``queen.keep_alive_s``. Memory pressure
is judged at spawn time from the hive's last heartbeat: below `LOW_RAM_FRACTION` of its RAM free,
the idle workers of the least recently used model on that hive are retired first.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence

import httpx
import trio

from rbee.errors import ApiError, ModelNotFoundError, NotFoundError, RbeeError, UsageError
from rbee.hive.client import HiveClient
from rbee.log import kv
from rbee.models import DEFAULT_MODEL, default_precision
from rbee.models.store import ModelStore, validate_name
from rbee.queen.registry import Registry
from rbee.wire.hive import QUEEN_STORE, PullEvent, SpawnRequest, WorkerRetired

__all__ = ["LOW_RAM_FRACTION", "Hives"]

log = logging.getLogger(__name__)

LOW_RAM_FRACTION = 0.10
KEEP_ALIVE_TICK_S = 1.0


class Hives:
    """Reaches the hives the registry knows, for spawning, retiring, and the cluster routes.

    ``control`` carries short calls (its timeouts bound them); ``transfer`` the long ones (a
    pull's stream, a spawn that waits for the model to load). Hives pull the queen's ``store``
    from the queen they report to (`QUEEN_STORE`). ``before_retire`` runs
    before a worker is retired (the queen closes its idle connections, which the worker would
    otherwise wait out).
    """

    def __init__(
        self,
        registry: Registry,
        control: httpx.AsyncClient,
        transfer: httpx.AsyncClient,
        *,
        token: str = "",
        store: ModelStore | None = None,
        keep_alive_s: float = 600.0,
    ) -> None:
        self.registry = registry
        self.control = control
        self.transfer = transfer
        # The token to call a hive with (the queen's daemon gives the one each hive reports with).
        self.token_for: Callable[[str], str] = lambda hive: token
        self.store = store
        self.keep_alive_s = keep_alive_s
        self.before_retire: Callable[[], Awaitable[None]] | None = None
        self._retiring: set[str] = set()

    # --- lookups ---------------------------------------------------------------------------

    def client(self, hive: str, *, long: bool = False) -> HiveClient:
        """A client for the online hive ``hive``; `NotFoundError` (404) when there is none."""
        record = self.registry.hive(hive)
        if record is None:
            known = ", ".join(sorted(h.heartbeat.hive for h in self.registry.hives())) or "none"
            raise NotFoundError(f"no hive named {hive!r} (known hives: {known})")
        if not record.online:
            raise ApiError(f"hive {hive} is offline (no heartbeat for a while)", 409)
        http = self.transfer if long else self.control
        return HiveClient(record.heartbeat.url, http, self.token_for(hive))

    def worker_hive(self, worker_id: str) -> str:
        """The hive running ``worker_id``; `NotFoundError` when no hive reports it."""
        record = self.registry.get(worker_id)
        if record is None:
            raise NotFoundError(f"no worker {worker_id!r} (see 'rbee worker list')")
        return record.hive

    # --- the Provisioner -------------------------------------------------------------------

    async def spawn(self, hive: str, model: str, device: str) -> None:
        """Start a worker for ``model`` on ``hive``; return once the hive has started it."""
        client = self.client(hive, long=True)
        record = self.registry.hive(hive)
        assert record is not None
        if model not in record.heartbeat.models and model != DEFAULT_MODEL:
            # The graph the worker runs, not every one the store has (a GPU host needs fp16).
            async for _ in self.pull(hive, model, [default_precision(device)]):
                pass
        await self.relieve_pressure(hive)
        status = await client.spawn(SpawnRequest(model=model, device=device, wait=True))
        self.registry.add_worker(hive, status)

    def provides(self, model: str) -> bool:
        """Whether a spawn can install ``model`` on a hive that lacks it: the queen's store has
        it, or it is the default model (a worker imports that on first use)."""
        if model == DEFAULT_MODEL:
            return True
        try:
            return self.store is not None and self.store.has(model)
        except UsageError:  # not a valid store name: no store has it
            return False

    def check_pull(self, hive: str, model: str, precisions: Sequence[str] = ()) -> HiveClient:
        """A client for ``hive`` if ``model`` can be pulled there from the queen's store, with
        the graphs ``precisions`` (empty: all it has)."""
        client = self.client(hive, long=True)
        validate_name(model)
        if self.store is None or not self.store.has(model):
            raise ModelNotFoundError(
                f"model {model!r} is neither on hive {hive} nor in the queen's store: import it "
                "on the queen's host ('rbee model import FILE.gguf') or on the hive"
            )
        self.store.get(model).with_precisions(precisions)
        return client

    async def pull(
        self, hive: str, model: str, precisions: Sequence[str] = ()
    ) -> AsyncGenerator[PullEvent, None]:
        """Install ``model`` on ``hive`` from the queen's own store (the graphs ``precisions``;
        empty: all); yield the hive's progress."""
        client = self.check_pull(hive, model, precisions)
        async for event in client.pull(model, QUEEN_STORE, precisions):
            yield event

    async def retire(self, worker_id: str) -> WorkerRetired:
        """Retire one worker through its hive and forget it."""
        if worker_id in self._retiring:
            raise ApiError(f"worker {worker_id} is already being retired", 409)
        hive = self.worker_hive(worker_id)
        client = self.client(hive, long=True)
        self._retiring.add(worker_id)
        try:
            self.registry.mark_stopping(worker_id)
            if self.before_retire is not None:
                await self.before_retire()
            retired = await client.retire(worker_id)
            self.registry.remove_worker(worker_id)
        finally:
            self._retiring.discard(worker_id)
        return retired

    # --- making room -----------------------------------------------------------------------

    def under_pressure(self, hive: str) -> bool:
        """Whether ``hive``'s host last reported less than `LOW_RAM_FRACTION` of its RAM free."""
        record = self.registry.hive(hive)
        if record is None:
            return False
        host = record.heartbeat.host
        return host.ram_total_mb > 0 and host.ram_free_mb < LOW_RAM_FRACTION * host.ram_total_mb

    async def relieve_pressure(self, hive: str) -> list[str]:
        """On a hive short of memory, retire the idle workers of its least recently used model."""
        if not self.under_pressure(hive):
            return []
        order = self.registry.eviction_order(hive)
        if not order:
            return []
        victims = [w.id for w in order[0]]
        log.warning(
            "hive low on memory; retiring idle workers of the least recently used model",
            extra=kv(hive=hive, model=order[0][0].status.model, workers=",".join(victims)),
        )
        async with trio.open_nursery() as nursery:
            for worker_id in victims:
                nursery.start_soon(self._retire_quietly, worker_id, "memory pressure")
        return victims

    async def keep_alive(self) -> None:
        """Retire workers idle longer than ``keep_alive_s``, forever (checks every second)."""
        async with trio.open_nursery() as nursery:
            while True:
                for worker in self.registry.idle_longer_than(self.keep_alive_s):
                    if worker.id not in self._retiring:
                        nursery.start_soon(self._retire_quietly, worker.id, "idle")
                await trio.sleep(min(KEEP_ALIVE_TICK_S, self.keep_alive_s / 4))

    async def _retire_quietly(self, worker_id: str, why: str) -> None:
        try:
            await self.retire(worker_id)
        except RbeeError as err:
            log.warning(
                "could not retire worker", extra=kv(worker=worker_id, reason=why, error=str(err))
            )
