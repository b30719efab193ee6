"""A daemon's OpenAPI document checked against its route table, and schemathesis against a live
daemon: generated requests for every route of its OpenAPI document
get no 5xx and no traceback, and every answer conforms to the document.

Hypothesis runs derandomized with a bounded number of examples per route, so the run is the same
every time and takes seconds.
"""

from __future__ import annotations

from typing import Any

import hypothesis
import schemathesis
from schemathesis import checks
from schemathesis.core.result import Ok

from rbee.openapi import Routes

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


def operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    """(method, path) of every operation of ``doc``."""
    return {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}


def check_document(doc: dict[str, Any], routes: Routes, schemas: set[str]) -> None:
    """``doc`` lists exactly the routes of ``routes``, each with a summary and an error answer,
    and has at least ``schemas`` among its components."""
    # The document walks the app's route table, so every route served is in it; each is one the
    # table describes, and the table describes no route that is not served.
    assert operations(doc) == set(routes)
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["summary"], (method, path)
            assert "default" in op["responses"]
    assert schemas <= set(doc["components"]["schemas"])


def fuzz(
    url: str, doc: dict[str, Any], skip: set[tuple[str, str]], examples: int = 12
) -> list[str]:
    """Run every operation of ``doc`` but those in ``skip`` against ``url``; those that were run."""
    schema = schemathesis.openapi.from_dict(doc)
    ran = []
    for result in schema.get_all_operations():
        # A route the document describes in a way schemathesis cannot read fails the test here.
        assert isinstance(result, Ok), result
        operation = result.ok()
        if (operation.method.upper(), operation.path) in skip:
            continue

        @hypothesis.settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(hypothesis.HealthCheck),
            phases=[hypothesis.Phase.generate],
        )
        @hypothesis.given(case=operation.as_strategy())
        def run(case: schemathesis.Case[Any]) -> None:
            response = case.call(base_url=url, timeout=10)
            assert b"Traceback (most recent" not in response.content, response.content[:400]
            case.validate_response(response, checks=CHECKS)

        run()
        ran.append(f"{operation.method.upper()} {operation.path}")
    return ran
