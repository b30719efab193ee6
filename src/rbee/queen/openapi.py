"""The queen's OpenAPI document (``GET /openapi.json``), made from its route table and wire types.

`ROUTES` says, for each route, what it takes and answers: its body's wire type, its answer's
status and wire type, whether it can answer with an SSE stream, its query parameters. `document`
walks the app's own route table (``url_map``) and describes every rule with its entry, the
schemas coming from the `msgspec` structs themselves (`msgspec.json.schema_components`), so that
the document cannot drift from what the routes decode and encode. Every error is an
`rbee.wire.ErrorBody`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import msgspec
from quart_trio import QuartTrio

from rbee import __version__, wire
from rbee.models.store import Manifest
from rbee.wire import hive as wh
from rbee.wire import hosts as wo
from rbee.wire import openai as oa
from rbee.wire import queen as wq
from rbee.wire import ui as wu
from rbee.wire.worker import Health

__all__ = ["ROUTES", "Query", "Route", "document", "missing_routes"]

_REF = "#/components/schemas/{name}"
_PARAM = re.compile(r"<(?:[a-z]+:)?([a-z_]+)>")
_NAME_SCHEMA = {"type": "string", "pattern": wire.NAME_PATTERN}


@dataclasses.dataclass(frozen=True)
class Query:
    """A query parameter: its name, JSON schema and what it does."""

    name: str
    schema: dict[str, Any]
    description: str


@dataclasses.dataclass(frozen=True)
class Route:
    """What one route takes and answers.

    ``body``: the request's wire type; ``answer``: the wire type of the ``status`` answer (and
    of the ``also`` ones), or ``media`` for one that is not JSON; ``stream``: it can answer 200
    with an SSE stream instead (``Accept: text/event-stream``, ``stream: true``, or always when
    there is no ``answer``).
    """

    summary: str
    answer: Any = None
    body: Any = None
    status: int = 200
    also: tuple[int, ...] = ()
    stream: bool = False
    media: str | None = None
    query: tuple[Query, ...] = ()


def _int_query(name: str, low: int, high: int, what: str) -> Query:
    return Query(name, {"type": "integer", "minimum": low, "maximum": high}, what)


_STREAM = "an SSE stream of `data:` events, ending with [DONE], [ERROR] <message> or [CANCELLED]"

ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "/health"): Route("Liveness, open to every caller", Health),
    ("GET", "/openapi.json"): Route("This document", dict[str, Any]),
    ("GET", "/metrics"): Route("Prometheus metrics", media="text/plain"),
    ("POST", "/v1/heartbeat"): Route("A hive's report", body=wq.HiveHeartbeat, status=204),
    ("POST", "/v1/workers/{worker_id}/exited"): Route(
        "A hive reports a worker that ended", body=wq.WorkerExited, status=204
    ),
    ("POST", "/v1/jobs"): Route(
        "Submit a job (its stream at once with Accept: text/event-stream)",
        wq.JobAccepted,
        body=wq.JobRequest,
        status=202,
        stream=True,
    ),
    ("GET", "/v1/jobs"): Route(
        "Recent jobs, newest first",
        wq.JobList,
        query=(
            Query("state", {"enum": ["queued", "running", "completed", "failed", "cancelled"]}, ""),
            _int_query("limit", 1, 10_000, "how many"),
        ),
    ),
    ("GET", "/v1/jobs/{job_id}"): Route("One job's record", wq.JobInfo),
    ("GET", "/v1/jobs/{job_id}/stream"): Route(f"The job's stream: {_STREAM}", stream=True),
    ("DELETE", "/v1/jobs/{job_id}"): Route("Cancel a job; its record once it ended", wq.JobInfo),
    ("GET", "/v1/decisions"): Route(
        "The last scheduling decisions",
        wq.DecisionList,
        query=(_int_query("last", 1, 10_000, "how many"), Query("job_id", {"type": "string"}, "")),
    ),
    ("GET", "/v1/status"): Route("The queen's status", wq.QueenStatus),
    ("POST", "/v1/keys"): Route("Create an API key", wq.KeyCreated, body=wq.KeyCreate, status=201),
    ("GET", "/v1/keys"): Route("Every API key (never the keys themselves)", wq.KeyList),
    ("DELETE", "/v1/keys/{name}"): Route("Revoke an API key", wq.KeyInfo),
    ("GET", "/v1/models"): Route("The models served or stored (OpenAI)", oa.ModelList),
    ("POST", "/v1/chat/completions"): Route(
        "A chat completion (OpenAI); streamed when stream is true",
        oa.ChatCompletion,
        body=oa.ChatCompletionRequest,
        stream=True,
    ),
    ("POST", "/v1/completions"): Route(
        "A text completion (OpenAI); streamed when stream is true",
        oa.Completion,
        body=oa.CompletionRequest,
        stream=True,
    ),
    ("GET", "/v1/hives"): Route("Every hive heard from", wq.HiveList),
    ("POST", "/v1/hives"): Route(
        "Register a hive reached over SSH", wo.HostHive, body=wo.HiveAdd, status=201
    ),
    ("GET", "/v1/hives/{name}"): Route("A hive reached over SSH", wo.HostHive),
    ("DELETE", "/v1/hives/{name}"): Route("Stop and forget a hive", wo.HiveStopped),
    ("POST", "/v1/hives/{name}/trust"): Route(
        "Trust a hive's SSH host key", wo.HostKeyInfo, body=wo.HiveTrust
    ),
    ("POST", "/v1/hives/{name}/start"): Route(
        "Push rbee to the host and start its hive", wo.HiveStarted, stream=True
    ),
    ("POST", "/v1/hives/{name}/upgrade"): Route(
        "Push a new rbee and restart the hive", wo.HiveStarted, stream=True
    ),
    ("POST", "/v1/hives/{name}/stop"): Route("Stop a hive", wo.HiveStopped),
    ("GET", "/v1/hives/{name}/logs"): Route(
        "A hive's log (followed as a stream with follow=true)",
        wo.HiveLogs,
        stream=True,
        query=(
            _int_query("lines", 1, 10_000, "how many of the last lines"),
            Query("follow", {"enum": ["0", "1", "true", "false"]}, "keep streaming new lines"),
        ),
    ),
    ("GET", "/v1/hives/{name}/models"): Route("The models in a hive's store", wh.ModelList),
    ("DELETE", "/v1/hives/{name}/models/{model}"): Route(
        "Remove a model from a hive's store", wh.ModelRemoved
    ),
    ("POST", "/v1/hives/{name}/models/pull"): Route(
        f"Install a model from the queen's store on a hive: {_STREAM}",
        body=wq.ModelPullRequest,
        stream=True,
    ),
    ("GET", "/v1/workers"): Route("Every worker", wq.WorkerEntryList),
    ("POST", "/v1/workers"): Route(
        "Start a worker on a hive (201 once ready with wait, else 202)",
        wq.WorkerStatus,
        body=wq.WorkerSpawn,
        status=202,
        also=(201,),
    ),
    ("DELETE", "/v1/workers/{worker_id}"): Route("Retire a worker", wh.WorkerRetired),
    ("GET", "/v1/store/models"): Route("The queen's model store", list[Manifest]),
    ("GET", "/v1/store/models/{name}"): Route("One model's manifest", Manifest),
    ("GET", "/v1/store/models/{name}/files/{filename}"): Route(
        "One file of a model (Range requests answer 206)", media="application/octet-stream"
    ),
    # The web page (rbee.queen.ui) and the routes only it uses.
    ("GET", "/ui"): Route("The web page", media="text/html"),
    ("GET", "/ui/{name}"): Route(
        "One of the web page's files (scripts, stylesheet)", media="text/javascript"
    ),
    ("POST", "/ui/login"): Route(
        "Sign the page in with a key: sets its HttpOnly session cookie",
        wu.UiSession,
        body=wu.UiLogin,
    ),
    ("POST", "/ui/logout"): Route("Clear the page's session cookie", status=204),
    ("GET", "/ui/session"): Route(
        "Who the page speaks as (kind none: not signed in)", wu.UiSession
    ),
    ("GET", "/v1/ui/events"): Route(
        f"The overview once a second (Overview events): {_STREAM}", stream=True
    ),
    ("GET", "/v1/workers/{worker_id}/log"): Route("The last lines of a worker's log", wh.WorkerLog),
    ("POST", "/v1/hives/{name}/models/import"): Route(
        f"Import a GGUF file on a hive's host: {_STREAM}", body=wu.ModelImport, stream=True
    ),
    ("GET", "/v1/policy"): Route(
        "The running policy (a file's source, or a built-in's name)", wu.PolicySource
    ),
    ("POST", "/v1/policy/check"): Route(
        "Whether a draft compiles, or where and why not", wu.PolicyCheck, body=wu.PolicyDraft
    ),
    ("POST", "/v1/policy/compile"): Route(
        "A draft in the policy language (YAML rules compiled)",
        wu.PolicyCompiled,
        body=wu.PolicyDraft,
    ),
    ("POST", "/v1/policy/preview"): Route(
        "A draft's and the running policy's decisions on sample jobs, on the live cluster",
        wu.PolicyPreview,
        body=wu.PolicyPreviewRequest,
    ),
    ("POST", "/v1/policy/replay"): Route(
        "A draft on the last logged decisions' jobs and snapshots",
        wu.PolicyReplay,
        body=wu.PolicyReplayRequest,
    ),
    ("POST", "/v1/policy/apply"): Route(
        "Make a draft the queen's policy (403 when it is locked)",
        wq.PolicyStatus,
        body=wu.PolicyDraft,
    ),
}


def _rules(app: QuartTrio) -> list[tuple[str, str]]:
    """(method, OpenAPI path) of every route ``app`` serves."""
    found = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = _PARAM.sub(r"{\1}", rule.rule)
        found += [(m, path) for m in sorted(rule.methods or ()) if m not in ("HEAD", "OPTIONS")]
    return found


def missing_routes(app: QuartTrio) -> list[tuple[str, str]]:
    """The routes of ``app`` that `ROUTES` does not describe."""
    return [key for key in _rules(app) if key not in ROUTES]


def document(app: QuartTrio) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app``'s routes."""
    described = [(key, ROUTES[key]) for key in _rules(app) if key in ROUTES]
    types: list[Any] = [wire.ErrorBody]
    for _, route in described:
        types += [t for t in (route.body, route.answer) if t is not None]
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    schema_of = dict(zip(map(id, types), schemas, strict=True))
    error = {"application/json": {"schema": schema_of[id(wire.ErrorBody)]}}
    paths: dict[str, dict[str, Any]] = {}
    for (method, path), route in described:
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": f"{method.lower()}{_PARAM_ID.sub('_', path)}".rstrip("_"),
            "responses": _answers(route, schema_of)
            | {"default": {"description": "an error", "content": error}},
        }
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": _NAME_SCHEMA}
            for name in re.findall(r"{([a-z_]+)}", path)
        ]
        parameters += [
            {"name": q.name, "in": "query", "required": False, "schema": q.schema}
            | ({"description": q.description} if q.description else {})
            for q in route.query
        ]
        if parameters:
            operation["parameters"] = parameters
        if route.body is not None:
            content = {"application/json": {"schema": schema_of[id(route.body)]}}
            operation["requestBody"] = {"required": True, "content": content}
        paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "rbee queen", "version": __version__},
        "paths": paths,
        "components": {"schemas": components},
    }


_PARAM_ID = re.compile(r"[^A-Za-z0-9]+")


def _answers(route: Route, schema_of: dict[int, Any]) -> dict[str, Any]:
    if route.status == 204:
        return {"204": {"description": "done, no body"}}
    content: dict[str, Any] = {}
    if route.answer is not None:
        content["application/json"] = {"schema": schema_of[id(route.answer)]}
    if route.media is not None:
        content[route.media] = {"schema": {"type": "string"}}
    answers: dict[str, Any] = {
        str(s): {"description": route.summary, "content": dict(content)}
        for s in (*route.also, route.status)
    }
    if route.stream:
        ok = answers.setdefault("200", {"description": _STREAM, "content": {}})
        ok["content"]["text/event-stream"] = {}
    return answers
