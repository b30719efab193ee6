"""`PolicyHost`: the queen's handle on a policy file, with hot reload.

The queen schedules through the host like through any `Scheduler`; a run-time `PolicyError`
propagates, and the queen's dispatcher answers it with its fallback (a built-in policy or a reject),
counts it in ``/metrics`` and shows it in ``rbee status`` — the same for every scheduler.
``reload_if_changed`` re-reads the file when its mtime, size or content changed and swaps the
policy only if the new text compiles; a locked host (platform mode) never reloads. A file named
``*.yaml`` or ``*.yml`` holds YAML rules (`rbee.policy.rules`) and is reloaded the same way.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import trio

from rbee.decisions import Decision
from rbee.errors import PolicyError
from rbee.log import kv
from rbee.policy.compile import CompiledPolicy, compile_program
from rbee.policy.limits import Limits
from rbee.policy.parse import parse
from rbee.policy.rules import is_rules_file, load_rules
from rbee.wire.queen import JobView, PolicyStatus, Snapshot

__all__ = ["PolicyHost", "PolicyStatus", "load_file", "load_source"]

log = logging.getLogger("rbee.policy")


def load_source(
    source: str, filename: str = "<policy>", limits: Limits | None = None
) -> CompiledPolicy:
    """Parse and compile policy text; any problem is a `PolicyError` with position and caret.

    A ``filename`` ending in ``.yaml`` or ``.yml`` marks the text as YAML rules
    (`rbee.policy.rules`), which are compiled to the policy language first; their errors point at
    the YAML.
    """
    if is_rules_file(filename):
        return load_rules(source, filename, limits)
    return compile_program(parse(source, filename, limits), limits)


def load_file(path: Path, limits: Limits | None = None) -> CompiledPolicy:
    """Read, parse and compile the policy at ``path``."""
    return load_source(_read(path), str(path), limits)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError("policy file not found", filename=str(path)) from None
    except (OSError, UnicodeDecodeError) as err:
        raise PolicyError(f"cannot read policy file: {err}", filename=str(path)) from None


def _first_line(err: PolicyError) -> str:
    return str(err).splitlines()[0]


class PolicyHost:
    """A policy file behind the `Scheduler` interface, with hot reload.

    The constructor loads the file and raises `PolicyError` if it does not compile: a queen should
    not start on a broken policy.
    """

    def __init__(
        self,
        path: Path,
        *,
        limits: Limits | None = None,
        locked: bool = False,
    ) -> None:
        self.path = path
        self.limits = limits or Limits()
        self.locked = locked
        text = _read(path)
        self.policy = load_source(text, str(path), self.limits)
        self._digest = hashlib.sha256(text.encode()).digest()
        self._stat = self._stat_key()
        self.loaded_at = time.time()
        self.reloads = 0
        self.reload_error: str | None = None

    @property
    def name(self) -> str:
        return self.policy.name

    def schedule(self, job: JobView, snapshot: Snapshot) -> Decision:
        """The current policy's decision; a run-time `PolicyError` propagates to the queen."""
        return self.policy.schedule(job, snapshot)

    def _stat_key(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def reload_if_changed(self) -> PolicyError | None:
        """Reload when the file changed; return the error if the new text does not compile.

        The running policy stays in place on any error (unreadable file, syntax, names). A locked
        host returns None without looking.
        """
        if self.locked:
            return None
        key = self._stat_key()
        if key == self._stat and key is not None:
            return None
        try:
            text = _read(self.path)
        except PolicyError as err:
            return self._reload_failed(err)
        self._stat = key
        digest = hashlib.sha256(text.encode()).digest()
        if digest == self._digest:
            return None
        try:
            policy = load_source(text, str(self.path), self.limits)
        except PolicyError as err:
            self._digest = digest
            return self._reload_failed(err)
        self.policy, self._digest = policy, digest
        self.loaded_at = time.time()
        self.reloads += 1
        self.reload_error = None
        log.info("policy reloaded", extra=kv(path=self.path))
        return None

    def _reload_failed(self, err: PolicyError) -> PolicyError:
        if _first_line(err) != self.reload_error:
            log.warning(
                "policy not reloaded, keeping the running one", extra=kv(error=_first_line(err))
            )
        self.reload_error = _first_line(err)
        return err

    async def watch(self, interval_s: float = 1.0) -> None:
        """Check the file every ``interval_s`` seconds until cancelled (run it in the queen's nursery)."""
        if self.locked:
            return
        while True:
            await trio.sleep(interval_s)
            self.reload_if_changed()

    def status(self) -> PolicyStatus:
        return PolicyStatus(
            path=str(self.path),
            policy=self.name,
            locked=self.locked,
            loaded_at=self.loaded_at,
            reloads=self.reloads,
            reload_error=self.reload_error,
        )
