"""Who may call the queen, and what each caller may do: the queen's gate.

A caller sends ``Authorization: Bearer <credential>``, one of:

- the admin token: ``queen.token`` (``--token``) or the cluster secret (`rbee.queen.keys`; a
  keeper on the queen's host reads it from the data directory). Everything, key management
  included.
- a hive's token of its current generation (`rbee.queen.keys.HiveTokens`; an older one, replaced
  at an upgrade, is a 401 saying so): the hive routes only (its own heartbeat, its workers'
  exits, the model store). The queen calls a hive and its workers with the token the hive
  reports with (`Credentials`).
- an API key (``rbee key create``): the client routes (the jobs API, the OpenAI-compatible API,
  ``/v1/models``), within the key's models and quotas; its jobs belong to its tenant.

With none (or one that is none of these, as ``api_key="unused"`` in an OpenAI client), a caller
from a loopback address is let in as admin in home mode when ``queen.loopback_keyless`` is on
(the default) and no ``queen.token`` is set, which is what a queen on 127.0.0.1 always did;
anyone else gets a 401. The hive routes are never keyless: no call without a credential
registers a hive or a worker. An unknown, revoked or expired ``rbee_`` key is a 401 everywhere. In platform mode (``--platform``) every
caller needs a credential, loopback too. So key management needs the admin token, or a
loopback caller of a home-mode queen without a token.

The web page (``/ui``) sends the same credentials from a cookie (`SESSION_COOKIE`, HttpOnly and
SameSite=Strict, set by ``POST /ui/login``); `credential` reads the header first, then the cookie.
A state-changing request that carries no ``Authorization`` header is refused when a browser marks
it as sent from another site (`cross_site`): that is the one way a page elsewhere could act with
this queen's cookie, or as a keyless loopback caller (a browser cannot add the header to a
cross-site request without a CORS preflight, which the queen never grants).

The check is a dict lookup by the key's SHA-256 and a constant-time comparison of the digests;
the fast routes (`rbee.queen.fast_routes`) and the quart app go through the same `Gate`.
"""

from __future__ import annotations

import dataclasses
import functools
import hmac
import time
import urllib.parse
from typing import Literal

from quart import g

from rbee.config import is_loopback
from rbee.errors import AuthError, ForbiddenError
from rbee.queen.dispatcher import Dispatcher
from rbee.queen.jobs import Job
from rbee.queen.keys import HIVE_PREFIX, KEY_PREFIX, HiveTokens, KeyRecord, KeyStore, key_hash
from rbee.queen.quotas import Quotas, Ticket
from rbee.wire.queen import HiveHeartbeat, JobRequest
from rbee.wire.worker import prompt_chars

__all__ = [
    "ADMIN",
    "LOCAL",
    "SESSION_COOKIE",
    "Caller",
    "Credentials",
    "Gate",
    "RouteClass",
    "bearer",
    "caller",
    "credential",
    "cross_site",
    "route_class",
]

CallerKind = Literal["admin", "local", "hive", "key"]
RouteClass = Literal["open", "hive", "client", "admin"]

SESSION_COOKIE = "rbee_session"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_NO_KEY = "missing API key or token: send 'Authorization: Bearer <key>' (see 'rbee key create')"


@dataclasses.dataclass(frozen=True, slots=True)
class Caller:
    """Who a request comes from: ``key`` for a key's caller, ``hive`` the hive's name."""

    kind: CallerKind
    tenant: str = ""
    key: KeyRecord | None = None
    hive: str = ""


ADMIN = Caller("admin")
# A keyless loopback caller of a home-mode queen: an admin, except that it speaks for no hive.
LOCAL = Caller("local")

# Parsing an address costs microseconds, and a queen hears from few distinct ones.
_loopback = functools.lru_cache(maxsize=4096)(is_loopback)


def bearer(authorization: str) -> str:
    """The credential in an ``Authorization: Bearer ...`` header ("" for none)."""
    return authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""


def credential(authorization: str, cookie: str | None) -> str:
    """The ``Authorization`` header to identify a caller by: the header, else the page's cookie."""
    if authorization or not cookie:
        return authorization
    return f"Bearer {cookie}"


def cross_site(
    method: str, authorization: str, fetch_site: str | None, origin: str | None, host: str | None
) -> bool:
    """Whether a state-changing request without ``Authorization`` comes from another site.

    ``fetch_site`` is the browser's ``Sec-Fetch-Site``; older browsers send only ``Origin``,
    compared with the request's ``Host``. A client that is no browser sends neither.
    """
    if method in _SAFE_METHODS or authorization:
        return False
    if fetch_site is not None:
        return fetch_site not in ("same-origin", "none")
    if origin is None:
        return False
    return urllib.parse.urlsplit(origin).netloc != (host or "")


def caller() -> Caller:
    """Who sent the request a quart route is answering (the queen's app sets it first)."""
    found: Caller = g.caller
    return found


def route_class(method: str, path: str) -> RouteClass:
    """Which callers a route is for (see the module docstring)."""
    if path in ("/health", "/openapi.json", "/ui") or path.startswith("/ui/"):
        return "open"
    if path in ("/v1/heartbeat", "/v1/store") or path.startswith("/v1/store/"):
        return "hive"
    if method == "POST" and path.startswith("/v1/workers/") and path.endswith("/exited"):
        return "hive"
    if path.startswith("/v1/jobs") or path in _CLIENT_PATHS:
        return "client"
    return "admin"


_CLIENT_PATHS = frozenset({"/v1/models", "/v1/chat/completions", "/v1/completions"})


class Gate:
    """Identifies callers, checks what they may do, and counts keys' quotas.

    ``hive_tokens`` holds the hives' token generations (default: in memory, under ``secret``).
    """

    def __init__(
        self,
        keys: KeyStore,
        secret: str,
        *,
        token: str = "",
        loopback_keyless: bool = True,
        platform: bool = False,
        quotas: Quotas | None = None,
        hive_tokens: HiveTokens | None = None,
    ) -> None:
        self.keys = keys
        self.secret = secret
        self.hive_tokens = hive_tokens or HiveTokens(secret)
        self.quotas = quotas or Quotas()
        self.credentials = Credentials(token)
        self._admin = [t.encode() for t in (token, secret) if t]
        self._keyless = loopback_keyless and not platform and not token
        # A key's `Caller`, made once (a frozen dataclass costs more to build than to look up).
        self._callers: dict[str, Caller] = {}

    def identify(self, authorization: str, client_host: str | None) -> Caller:
        """The caller behind an ``Authorization`` header; `AuthError` if it is nobody."""
        given = bearer(authorization)
        if given.startswith(KEY_PREFIX):
            return self._key(given)
        if given.startswith(HIVE_PREFIX):
            hive = self.hive_tokens.hive(given)
            if hive is not None:
                return Caller("hive", hive=hive)
        if given:
            encoded = given.encode()
            # Every admin credential is compared: the time taken does not say which one matched.
            matched = [hmac.compare_digest(encoded, admin) for admin in self._admin]
            if any(matched):
                return ADMIN
        # OpenAI's clients always send some key: on keyless loopback, one that is no rbee key
        # counts as none.
        if self._keyless and client_host is not None and _loopback(client_host):
            return LOCAL
        if not given:
            raise AuthError(_NO_KEY)
        raise AuthError("invalid API key: not a key, hive token or admin token this queen knows")

    def _key(self, given: str) -> Caller:
        digest = key_hash(given)
        record = self.keys.by_hash.get(digest)
        if record is None or not hmac.compare_digest(record.hash, digest):
            raise AuthError("invalid API key: unknown or revoked")
        if record.expires_at is not None and time.time() >= record.expires_at:
            raise AuthError(f"API key {record.name!r} has expired")
        known = self._callers.get(digest)
        if known is None or known.key is not record:
            known = self._callers[digest] = Caller("key", tenant=record.tenant, key=record)
        return known

    def allow(self, caller: Caller, route: RouteClass) -> None:
        """Refuse ``caller`` a route it may not call (`ForbiddenError`)."""
        if route == "open" or caller.kind == "admin":
            return
        if route == "hive" and caller.kind == "hive":
            return
        if route == "client" and caller.kind == "key":
            return
        if caller.kind == "local":
            if route != "hive":
                return
            # Registering a hive or a worker starts work on its say: never without a credential.
            raise AuthError(
                "a hive must send its token (or the queen's) to report: send 'Authorization: "
                "Bearer <token>'"
            )
        what = "an API key" if caller.kind == "key" else f"hive {caller.hive}'s token"
        raise ForbiddenError(f"{what} may not call this route", "admin_only")

    def check_hive(self, caller: Caller, hive: str) -> None:
        """A hive's token speaks only for its own hive."""
        if caller.kind == "hive" and caller.hive != hive:
            raise ForbiddenError(
                f"hive {caller.hive}'s token may not speak for hive {hive}", "wrong_hive"
            )

    def admit(self, caller: Caller, request: JobRequest) -> Ticket | None:
        """Check a key's models and count the request against its quotas."""
        key = caller.key
        if key is None:
            return None
        if key.models and request.model not in key.models:
            raise ForbiddenError(
                f"API key {key.name!r} may not use model {request.model!r} "
                f"(it may use: {', '.join(sorted(key.models))})",
                "model_not_allowed",
            )
        if not (key.rpm or key.tpm or key.concurrent):
            return None
        tokens = prompt_chars(request.prompt, request.messages) // 4 + request.max_tokens
        return self.quotas.admit(key, tokens)

    def submit(self, dispatcher: Dispatcher, caller: Caller, request: JobRequest) -> Job:
        """`Dispatcher.submit` for ``caller``: its tenant's job, within its key's limits."""
        ticket = self.admit(caller, request)
        try:
            job = dispatcher.submit(request, tenant=caller.tenant)
        except BaseException:
            if ticket is not None:
                ticket.end(0)
            raise
        if ticket is not None:
            job.on_end = ticket.end
        return job


class Credentials:
    """The token the queen calls each hive and its workers with: the one that hive reports with.

    A hive the queen started locally reports with the token the queen gave it, a hive started
    by hand with its own or the queen's admin token; its workers take the hive's token (the hive
    passes it on), so that is the one they get. ``default`` serves a hive not heard from yet.
    """

    def __init__(self, default: str = "") -> None:
        self.default = default
        self._hive: dict[str, str] = {}
        self._workers: dict[str, set[tuple[str, int]]] = {}
        self._host: dict[tuple[str, int], str] = {}

    def heard(self, heartbeat: HiveHeartbeat, token: str) -> None:
        """Hive ``heartbeat.hive`` reported with ``token``: use it for the hive and its workers."""
        self._hive[heartbeat.hive] = token
        hosts = {key for w in heartbeat.workers if (key := host_port(w.url)) is not None}
        for gone in self._workers.get(heartbeat.hive, set()) - hosts:
            self._host.pop(gone, None)
        self._workers[heartbeat.hive] = hosts
        for key in hosts:
            self._host[key] = token

    def hive(self, name: str) -> str:
        return self._hive.get(name, self.default)

    def worker(self, key: tuple[str, int]) -> str:
        """The token for the worker at ``(host, port)``."""
        return self._host.get(key, self.default)


def host_port(url: str) -> tuple[str, int] | None:
    """``(host, port)`` of an ``http://host:port`` URL, as the queen's worker pool keys them."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname is None:
        return None
    return (parts.hostname, parts.port or 80)
