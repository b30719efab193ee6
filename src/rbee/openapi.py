"""A daemon's OpenAPI document (``GET /openapi.json``), made from its route table and wire types.

Each daemon has a table (`Routes`) saying, for each route, what it takes and answers: its body's
wire type, its answer's status and wire type, whether it can answer with an SSE stream, its query
parameters. `document` walks the app's own route table (``url_map``) and describes every rule with
its entry, the schemas coming from the `msgspec` structs themselves
(`msgspec.json.schema_components`), so that the document cannot drift from what the routes decode
and encode. Every error is an `rbee.wire.ErrorBody`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import msgspec
from quart import Response
from quart_trio import QuartTrio

from rbee import __version__, wire
from rbee.models.store import Manifest
from rbee.wire.worker import Health

__all__ = [
    "COMMON",
    "STORE",
    "STREAM",
    "Query",
    "Route",
    "Routes",
    "add_route",
    "document",
    "int_query",
    "missing_routes",
]

_REF = "#/components/schemas/{name}"
_PARAM = re.compile(r"<(?:[a-z]+:)?([a-z_]+)>")
_PARAM_ID = re.compile(r"[^A-Za-z0-9]+")
_NAME_SCHEMA = {"type": "string", "pattern": wire.NAME_PATTERN}

STREAM = "an SSE stream of `data:` events, ending with [DONE], [ERROR] <message> or [CANCELLED]"


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


Routes = dict[tuple[str, str], Route]
"""A daemon's route table: (method, OpenAPI path) to what the route takes and answers."""


def _common() -> Routes:
    return {
        ("GET", "/health"): Route("Liveness, open to every caller", Health),
        ("GET", "/openapi.json"): Route("This document", dict[str, Any]),
    }


def _store() -> Routes:
    return {
        ("GET", "/v1/store/models"): Route("The models in the store", list[Manifest]),
        ("GET", "/v1/store/models/{name}"): Route("One model's manifest", Manifest),
        ("GET", "/v1/store/models/{name}/files/{filename}"): Route(
            "One file of a model (Range requests answer 206)", media="application/octet-stream"
        ),
    }


COMMON: Routes = _common()
"""The routes every daemon serves: ``/health`` and this document."""
STORE: Routes = _store()
"""The routes of a model store served read-only (`rbee.models.http.store_blueprint`)."""


def int_query(name: str, low: int, high: int, what: str) -> Query:
    """An integer query parameter from ``low`` to ``high``."""
    return Query(name, {"type": "integer", "minimum": low, "maximum": high}, what)


def _rules(app: QuartTrio) -> list[tuple[str, str]]:
    """(method, OpenAPI path) of every route ``app`` serves."""
    found = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = _PARAM.sub(r"{\1}", rule.rule)
        found += [(m, path) for m in sorted(rule.methods or ()) if m not in ("HEAD", "OPTIONS")]
    return found


def missing_routes(app: QuartTrio, routes: Routes) -> list[tuple[str, str]]:
    """The routes of ``app`` that ``routes`` does not describe."""
    return [key for key in _rules(app) if key not in routes]


def document(app: QuartTrio, routes: Routes, title: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app``'s routes, as ``routes`` describes them."""
    described = [(key, routes[key]) for key in _rules(app) if key in routes]
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
        "info": {"title": title, "version": __version__},
        "paths": paths,
        "components": {"schemas": components},
    }


def add_route(app: QuartTrio, routes: Routes, title: str) -> None:
    """Serve ``app``'s document at ``GET /openapi.json``.

    It is made at the first request, so that routes added to ``app`` after this call are in it.
    """
    built: list[bytes] = []

    @app.get("/openapi.json")
    async def openapi_document() -> Response:
        if not built:
            built.append(wire.encode(document(app, routes, title)))
        return Response(built[0], mimetype="application/json")


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
        ok = answers.setdefault("200", {"description": STREAM, "content": {}})
        ok["content"]["text/event-stream"] = {}
    return answers
