"""Logging set-up: quiet by default, ``-v`` for info, ``-vv`` for debug.

Daemons log one ``key=value`` line per event so that logs can be grepped and parsed; pass the
fields as ``extra={"kv": {...}}``.
"""

from __future__ import annotations

import logging
import sys
import time

__all__ = ["KeyValueFormatter", "configure", "kv"]


def _quote(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=info logger=rbee.queen msg="..." key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields: dict[str, object] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields.update(getattr(record, "kv", {}))
        line = " ".join(f"{k}={_quote(v)}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def kv(**fields: object) -> dict[str, dict[str, object]]:
    """``log.info("worker ready", extra=kv(worker=w, port=p))``."""
    return {"kv": fields}


def configure(verbosity: int) -> None:
    """Route rbee's loggers to stderr at a level set by the number of ``-v`` flags."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger("rbee")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # Libraries stay at warning even at -vv unless debugging them is the point.
    for noisy in ("hypercorn", "httpx", "httpcore", "asyncssh", "quart"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbosity >= 3 else logging.WARNING)
