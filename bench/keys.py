"""The cost of the queen's key check and quota accounting per request, against the no-key path.

Usage: ``python bench/keys.py [--requests 100000] [--keys 10000] [--repeats 7]``

Each path runs what the queen's gate (`rbee.queen.auth.Gate`) does for one request, in the same
process and run, on a real key store (SQLite, ``--keys`` keys):

- ``no key (loopback)``: the baseline, a keyless loopback caller in home mode;
- ``admin token``: the constant-time comparison with the admin credentials;
- ``key, no quota``: SHA-256 of the key, the lookup by hash, the digest comparison, the expiry;
- ``key + quotas``: the same, then counting the request against requests, tokens and concurrent
  limits at admission, and correcting the tokens at the job's end.

Each figure is the median over ``--repeats`` runs of the mean time per request; the extra cost is
the difference with the baseline. Then the cost of the tenants' view that a policy file sees
(`Quotas.tenants`, made once each time the queue is pumped, only for a policy file), by the
number of tenants in use. Target: key check and quotas < 50 us a request.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from rbee.queen.auth import Gate
from rbee.queen.db import open_db
from rbee.queen.keys import KeyRecord, KeyStore, Limits
from rbee.queen.quotas import Quotas
from rbee.wire.queen import InferOperation, KeyCreate

SECRET = "s" * 43
TOKEN = "admin-token-" + "t" * 20


class Clock:
    """A clock that never reaches the end of a minute, so that no window resets mid-run."""

    now = 0.0

    def __call__(self) -> float:
        return self.now


def per_request_us(run: Callable[[], None], requests: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(requests):
            run()
        times.append((time.perf_counter() - started) / requests * 1e6)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    conn = open_db(":memory:")
    store = KeyStore(conn)
    with conn:
        for n in range(args.keys - 2):
            store.create(KeyCreate(name=f"k{n}", tenant=f"t{n % 100}"))
    plain, _ = store.create(KeyCreate(name="plain"))
    limited, _ = store.create(KeyCreate(name="limited", rpm=10**9, tpm=10**12, concurrent=10**6))
    gate = Gate(store, SECRET, token=TOKEN, quotas=Quotas(Clock()))
    request = InferOperation(model="m", prompt="hello there, how are you?", max_tokens=64)

    def path(authorization: str, host: str = "203.0.113.7") -> Callable[[], None]:
        def run() -> None:
            caller = gate.identify(authorization, host)
            gate.allow(caller, "client")
            ticket = gate.admit(caller, request)
            if ticket is not None:
                ticket.end(80)

        return run

    keyless = Gate(store, SECRET, quotas=Quotas(Clock()))

    def baseline() -> None:
        caller = keyless.identify("", "127.0.0.1")
        keyless.allow(caller, "client")
        keyless.admit(caller, request)

    paths = [
        ("no key (loopback)", baseline),
        ("admin token", path(f"Bearer {TOKEN}")),
        ("key, no quota", path(f"Bearer {plain}")),
        ("key + quotas", path(f"Bearer {limited}")),
    ]
    print(f"{args.keys} keys in the store, {args.requests} requests a run, {args.repeats} runs")
    base = 0.0
    for name, run in paths:
        us = per_request_us(run, args.requests, args.repeats)
        base = base or us
        extra = us - base
        print(f"  {name:<20} {us:7.2f} us/request   extra {extra:+7.2f} us   ({us / base:.1f}x)")

    print("tenants' view for a policy file, per pump of the queue:")
    for count in (10, 100, 1000):
        quotas = Quotas(Clock())
        for n in range(count):
            quotas.admit(KeyRecord(name=f"u{n}", hash="", tenant=f"t{n}", rpm=10**9), 10)
        limits = {f"t{n}": (10**9, 0, 0) for n in range(count)}

        def view(quotas: Quotas = quotas, limits: dict[str, Limits] = limits) -> None:
            quotas.tenants(limits)

        us = per_request_us(view, 100, args.repeats)
        print(f"  {count:>6} tenants in use   {us:9.1f} us")


if __name__ == "__main__":
    main()
