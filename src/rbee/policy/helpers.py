"""Everything a script can call or read: fields, methods and functions, in fixed tables.

Fields map a Python type to a getter for each documented name; methods map a name to an
implementation per receiver type; functions are the free calls (``reject``, ``spawn``, ``min``...).
The compiler checks names against these tables at compile time (so ``rbee policy check`` catches a
typo) and the evaluator dispatches on the receiver's exact type at run time. Every helper that walks
a list charges the meter for each element, and the worker and hive filters note how many they kept,
which becomes the decision's reasons.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any

from rbee.decisions import Queue, Reject, Spawn, best_fit, gpu_free_mb, model_vram_mb
from rbee.policy.limits import INT_MAX
from rbee.policy.nodes import Pos
from rbee.policy.runtime import (
    Closure,
    Gpus,
    Hives,
    Meter,
    Nothing,
    ScriptError,
    Workers,
    type_name,
)
from rbee.wire.queen import GpuTelemetry, HiveView, JobView, TenantView, WorkerView

__all__ = ["FIELDS", "FUNCTIONS", "METHODS", "Site", "equal", "order_key"]


class Site:
    """One call site of a helper: where it is (for errors and reasons) and its own state."""

    __slots__ = ("counter", "meter", "name", "pos")

    def __init__(self, name: str, pos: Pos, meter: Meter) -> None:
        self.name = name
        self.pos = pos
        self.meter = meter
        self.counter = 0  # round_robin's position, kept across evaluations of this policy

    def error(self, message: str) -> ScriptError:
        return ScriptError(message, self.pos)

    @property
    def where(self) -> str:
        return f"{self.name}() at line {self.pos[0]}"


Impl = Callable[..., Any]

# --- fields -----------------------------------------------------------------------------------


def _load(w: WorkerView) -> float:
    return (w.slots_total - w.slots_free) / w.slots_total if w.slots_total > 0 else 1.0


_WORKER_FIELDS: dict[str, Callable[[Any], Any]] = {
    name: attrgetter(name)
    for name in (
        "id",
        "hive",
        "model",
        "device",
        "state",
        "slots_total",
        "slots_free",
        "cpu_pct",
        "rss_mb",
        "gpu_util_pct",
        "vram_mb",
        "total_vram_mb",
        "vram_free_mb",
        "uptime_s",
        "labels",
    )
} | {"load": _load, "slots_used": lambda w: w.slots_total - w.slots_free}

_HIVE_FIELDS: dict[str, Callable[[Any], Any]] = {
    name: attrgetter(name)
    for name in ("name", "labels", "ram_free_mb", "vram_free_mb", "models", "workers")
} | {
    "gpus": lambda h: Gpus(h.gpus),
    "gpu_count": lambda h: len(h.gpus),
    "vram_total_mb": lambda h: float(sum(g.vram_total_mb for g in h.gpus)),
}

_GPU_FIELDS: dict[str, Callable[[Any], Any]] = {
    name: attrgetter(name)
    for name in ("index", "name", "util_pct", "vram_total_mb", "vram_used_mb")
} | {
    "device": lambda g: f"cuda:{g.index}",
    "vram_free_mb": lambda g: g.vram_total_mb - g.vram_used_mb,
    "power_w": lambda g: g.power_w if g.power_w is not None else 0.0,
    "temperature_c": lambda g: g.temperature_c if g.temperature_c is not None else 0.0,
}

_JOB_FIELDS: dict[str, Callable[[Any], Any]] = {
    name: attrgetter(name)
    for name in ("id", "model", "priority", "prompt_tokens", "max_tokens", "tenant", "labels")
}

_TENANT_FIELDS: dict[str, Callable[[Any], Any]] = {
    name: attrgetter(name)
    for name in ("name", "requests", "tokens", "concurrent", "rpm", "tpm", "max_concurrent")
}

# name -> {receiver type -> getter}: the compiler rejects a name in none of them.
FIELDS: dict[str, dict[type, Callable[[Any], Any]]] = {}
for _type, _table in (
    (WorkerView, _WORKER_FIELDS),
    (HiveView, _HIVE_FIELDS),
    (GpuTelemetry, _GPU_FIELDS),
    (JobView, _JOB_FIELDS),
    (TenantView, _TENANT_FIELDS),
):
    for _name, _getter in _table.items():
        FIELDS.setdefault(_name, {})[_type] = _getter


def fields_of(value: object) -> list[str]:
    """The field names ``value`` has, for "unknown field" messages."""
    return sorted(name for name, table in FIELDS.items() if type(value) in table)


# --- shared checks ----------------------------------------------------------------------------


def _num(site: Site, value: Any, what: str) -> int | float:
    if type(value) is int or type(value) is float:
        return value
    raise site.error(f"type error: {site.name}() needs a number for {what}, got {type_name(value)}")


def _str(site: Site, value: Any, what: str) -> str:
    if type(value) is str:
        return value
    raise site.error(f"type error: {site.name}() needs a string for {what}, got {type_name(value)}")


def _fn(site: Site, value: Any, arity: int) -> Callable[..., Any]:
    if type(value) is not Closure:
        example = "|w| ..." if arity == 1 else "|acc, x| ..."
        raise site.error(
            f"type error: {site.name}() needs a closure like {example}, got {type_name(value)}"
        )
    if value.arity != arity:
        raise site.error(
            f"type error: {site.name}() calls its closure with {arity} argument(s), "
            f"but it takes {value.arity}"
        )
    return value.fn


def _bool(site: Site, value: Any) -> bool:
    if value is True or value is False:
        return value
    raise site.error(
        f"type error: {site.name}()'s closure must give a bool, got {type_name(value)}"
    )


def order_key(site: Site, keys: Sequence[Any]) -> None:
    """Keys that min_by/max_by/sort_by compare must be all numbers or all strings."""
    kinds = {
        "number" if type(k) in (int, float) else "string" if type(k) is str else "" for k in keys
    }
    if "" in kinds or len(kinds) > 1:
        bad = next((k for k in keys if type(k) not in (int, float, str)), keys[0] if keys else None)
        raise site.error(
            f"type error: {site.name}()'s key must give numbers or strings (all the same), "
            f"got {type_name(bad)}" + (" and others" if len(kinds) > 1 else "")
        )


def _like(source: Sequence[Any], items: list[Any], site: Site | None = None) -> Any:
    """A filtered or sorted copy keeps the worker/hive tag of its source."""
    if site is not None:
        site.meter.alloc(len(items), site.pos)
    if type(source) is Workers:
        return Workers(items)
    if type(source) is Hives:
        return Hives(items)
    if type(source) is Gpus:
        return Gpus(items)
    return items


def _kept(site: Site, source: Sequence[Any], kept: Sequence[Any]) -> None:
    if type(source) is Workers:
        site.meter.note(
            f"line {site.pos[0]}: {site.name}() kept {len(kept)} of {len(source)} workers"
        )
    elif type(source) is Hives:
        site.meter.note(
            f"line {site.pos[0]}: {site.name}() kept {len(kept)} of {len(source)} hives"
        )
    elif type(source) is Gpus:
        site.meter.note(f"line {site.pos[0]}: {site.name}() kept {len(kept)} of {len(source)} GPUs")


def _chose(site: Site, chosen: Any) -> Any:
    if type(chosen) is WorkerView:
        site.meter.note(f"line {site.pos[0]}: {site.name}() chose worker {chosen.id}")
    elif type(chosen) is HiveView:
        site.meter.note(f"line {site.pos[0]}: {site.name}() chose hive {chosen.name}")
    elif type(chosen) is GpuTelemetry:
        site.meter.note(f"line {site.pos[0]}: {site.name}() chose GPU cuda:{chosen.index}")
    return chosen


def _empty(site: Site) -> Nothing:
    return Nothing(f"{site.where} found nothing: the list was empty")


def equal(a: Any, b: Any) -> bool:
    """``==``: numbers compare across int/float, other types only with their own kind."""
    ta, tb = type(a), type(b)
    if ta in (int, float) and tb in (int, float):
        return bool(a == b)
    if ta is not tb:
        return False
    if isinstance(a, (list, tuple)):
        raise TypeError("lists")
    return bool(a == b)


# --- list helpers (any list) ------------------------------------------------------------------


def _len(site: Site, r: Any) -> int:
    return len(r)


def _is_empty(site: Site, r: Any) -> bool:
    return len(r) == 0


def _first(site: Site, r: Sequence[Any]) -> Any:
    return _chose(site, r[0]) if r else _empty(site)


def _last(site: Site, r: Sequence[Any]) -> Any:
    return _chose(site, r[-1]) if r else _empty(site)


def _filter(site: Site, r: Sequence[Any], pred: Any) -> Any:
    f = _fn(site, pred, 1)
    site.meter.charge(len(r), site.pos)
    out = []
    for x in r:
        keep = f(x)
        if keep is True:
            out.append(x)
        elif keep is not False:
            _bool(site, keep)
    _kept(site, r, out)
    return _like(r, out, site)


def _map(site: Site, r: Sequence[Any], fn: Any) -> list[Any]:
    f = _fn(site, fn, 1)
    site.meter.charge(len(r), site.pos)
    site.meter.alloc(len(r), site.pos)
    return [f(x) for x in r]


def _reduce(site: Site, r: Sequence[Any], fn: Any, init: Any) -> Any:
    f = _fn(site, fn, 2)
    site.meter.charge(len(r), site.pos)
    acc = init
    for x in r:
        acc = f(acc, x)
    return acc


def _any(site: Site, r: Sequence[Any], pred: Any) -> bool:
    f = _fn(site, pred, 1)
    site.meter.charge(len(r), site.pos)
    return any(_bool(site, f(x)) for x in r)


def _all(site: Site, r: Sequence[Any], pred: Any) -> bool:
    f = _fn(site, pred, 1)
    site.meter.charge(len(r), site.pos)
    return all(_bool(site, f(x)) for x in r)


def _count(site: Site, r: Sequence[Any], pred: Any) -> int:
    f = _fn(site, pred, 1)
    site.meter.charge(len(r), site.pos)
    return sum(1 for x in r if _bool(site, f(x)))


def _keys(site: Site, r: Sequence[Any], key: Any) -> list[Any]:
    f = _fn(site, key, 1)
    site.meter.charge(len(r), site.pos)
    keys = [f(x) for x in r]
    order_key(site, keys)
    return keys


def _min_by(site: Site, r: Sequence[Any], key: Any) -> Any:
    if not r:
        return _empty(site)
    keys = _keys(site, r, key)
    return _chose(site, r[min(range(len(r)), key=keys.__getitem__)])


def _max_by(site: Site, r: Sequence[Any], key: Any) -> Any:
    if not r:
        return _empty(site)
    keys = _keys(site, r, key)
    return _chose(site, r[max(range(len(r)), key=keys.__getitem__)])


def _sort_by(site: Site, r: Sequence[Any], key: Any) -> Any:
    keys = _keys(site, r, key)
    site.meter.charge(len(r), site.pos)
    order = sorted(range(len(r)), key=keys.__getitem__)
    return _like(r, [r[i] for i in order], site)


def _contains_item(site: Site, r: Sequence[Any], item: Any) -> bool:
    if isinstance(item, (list, tuple)):
        raise site.error("type error: contains() looks for a single value, not a list")
    site.meter.charge(len(r), site.pos)
    try:
        return any(equal(item, x) for x in r)
    except TypeError:
        return False


def _take(site: Site, r: Sequence[Any], count: Any) -> Any:
    if type(count) is not int or count < 0:
        raise site.error(f"type error: take() needs a whole number >= 0, got {count!r}")
    return _like(r, list(r[:count]), site)


def _sum(site: Site, r: Sequence[Any]) -> int | float:
    site.meter.charge(len(r), site.pos)
    total: int | float = 0
    for x in r:
        total += _num(site, x, "every element")
    if type(total) is int and abs(total) > INT_MAX:
        raise site.error("value error: arithmetic overflow in sum()")
    return total


# --- worker and hive helpers ------------------------------------------------------------------


def _keep(site: Site, r: Any, test: Callable[[Any], bool]) -> Any:
    site.meter.charge(len(r), site.pos)
    out = [x for x in r if test(x)]
    _kept(site, r, out)
    return _like(r, out, site)


def _idle(site: Site, r: Workers) -> Workers:
    return _keep(site, r, lambda w: w.state == "ready" and w.slots_free >= w.slots_total)  # type: ignore[no-any-return]


def _available(site: Site, r: Workers) -> Workers:
    return _keep(site, r, lambda w: w.state in ("ready", "busy") and w.slots_free > 0)  # type: ignore[no-any-return]


def _ready(site: Site, r: Workers) -> Workers:
    return _keep(site, r, lambda w: w.state in ("ready", "busy"))  # type: ignore[no-any-return]


def _with_model(site: Site, r: Any, model: Any) -> Any:
    m = _str(site, model, "the model")
    if type(r) is Hives:
        return _keep(site, r, lambda h: m in h.models)
    return _keep(site, r, lambda w: w.model == m)


def _with_capacity(site: Site, r: Any, vram_mb: Any) -> Any:
    need = _num(site, vram_mb, "the VRAM in MB")
    if type(r) is Gpus:
        return _keep(site, r, lambda g: gpu_free_mb(g) >= need)
    return _keep(site, r, lambda x: x.vram_free_mb >= need)


def _with_gpu_room(site: Site, r: Hives, vram_mb: Any) -> Hives:
    need = _num(site, vram_mb, "the VRAM in MB")
    return _keep(site, r, lambda h: any(gpu_free_mb(g) >= need for g in h.gpus))  # type: ignore[no-any-return]


def _best_fit(site: Site, r: Any, vram_mb: Any) -> Any:
    """Pack: the GPU (or the hive whose GPU) with the least free VRAM that still holds ``mb``."""
    need = _num(site, vram_mb, "the VRAM in MB")
    site.meter.charge(len(r), site.pos)
    if type(r) is Gpus:
        fits = [g for g in r if gpu_free_mb(g) >= need]
        return _chose(site, min(fits, key=gpu_free_mb)) if fits else _empty(site)
    slack = {h.name: gpu_free_mb(g) for h in r if (g := best_fit(h, need)) is not None}
    fitting = [h for h in r if h.name in slack]
    return _chose(site, min(fitting, key=lambda h: slack[h.name])) if fitting else _empty(site)


def _with_label(site: Site, r: Any, key: Any, value: Any) -> Any:
    k, v = _str(site, key, "the label"), _str(site, value, "the value")
    return _keep(site, r, lambda x: x.labels.get(k) == v)


def _on_hive(site: Site, r: Workers, hive: Any) -> Workers:
    name = hive.name if type(hive) is HiveView else _str(site, hive, "the hive")
    return _keep(site, r, lambda w: w.hive == name)  # type: ignore[no-any-return]


def _pick(
    site: Site, r: Sequence[Any], choose: Callable[..., Any], key: Callable[[Any], Any]
) -> Any:
    if not r:
        return _empty(site)
    site.meter.charge(len(r), site.pos)
    return _chose(site, choose(r, key=key))


def _least_loaded_workers(site: Site, r: Workers) -> Any:
    return _pick(site, r, min, lambda w: (_load(w), w.cpu_pct))


def _least_loaded_hives(site: Site, r: Hives) -> Any:
    return _pick(site, r, min, lambda h: (h.workers, -h.vram_free_mb, -h.ram_free_mb))


def _most_vram_free(site: Site, r: Any) -> Any:
    if type(r) is Gpus:
        return _pick(site, r, max, gpu_free_mb)
    return _pick(site, r, max, attrgetter("vram_free_mb"))


def _most_ram_free(site: Site, r: Hives) -> Any:
    return _pick(site, r, max, attrgetter("ram_free_mb"))


def _round_robin(site: Site, r: Workers) -> Any:
    if not r:
        return _empty(site)
    site.meter.charge(len(r), site.pos)
    ordered = sorted(r, key=attrgetter("id"))
    chosen = ordered[site.counter % len(ordered)]
    site.counter += 1
    return _chose(site, chosen)


def _hive_get(site: Site, r: Hives, name: Any) -> Any:
    wanted = _str(site, name, "the hive name")
    site.meter.charge(len(r), site.pos)
    for h in r:
        if h.name == wanted:
            return h
    return Nothing(f"{site.where}: no hive named {wanted!r}")


# --- strings, numbers, label maps -------------------------------------------------------------


def _str_contains(site: Site, s: str, part: Any) -> bool:
    return _str(site, part, "the text") in s


def _starts_with(site: Site, s: str, part: Any) -> bool:
    return s.startswith(_str(site, part, "the prefix"))


def _ends_with(site: Site, s: str, part: Any) -> bool:
    return s.endswith(_str(site, part, "the suffix"))


def _to_number(site: Site, s: str) -> int | float:
    text = s.strip()
    try:
        value = float(text)
    except ValueError:
        raise site.error(f"value error: {s[:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise site.error(f"value error: {s[:40]!r} is not a finite number")
    return int(value) if value.is_integer() and abs(value) <= INT_MAX and "." not in text else value


def _to_string(site: Site, value: Any) -> str:
    if type(value) is bool:
        return "true" if value else "false"
    return str(value)


def _copied(site: Site, s: str) -> str:
    site.meter.alloc(len(s) // 16, site.pos)
    return s


def _map_contains(site: Site, m: dict[str, str], key: Any) -> bool:
    return _str(site, key, "the key") in m


def _map_get(site: Site, m: dict[str, str], key: Any, default: Any = "") -> Any:
    return m.get(_str(site, key, "the key"), default)


def _map_keys(site: Site, m: dict[str, str]) -> list[str]:
    return sorted(m)


# name -> {receiver type -> (implementation, min args, max args)}
METHODS: dict[str, dict[type, tuple[Impl, int, int]]] = {}

_LISTS: tuple[type, ...] = (list, tuple, Workers, Hives, Gpus)


def _register(
    name: str, types: Sequence[type], impl: Impl, low: int, high: int | None = None
) -> None:
    for t in types:
        METHODS.setdefault(name, {})[t] = (impl, low, low if high is None else high)


for _name, _impl, _argc in (
    ("len", _len, 0),
    ("is_empty", _is_empty, 0),
    ("first", _first, 0),
    ("last", _last, 0),
    ("filter", _filter, 1),
    ("map", _map, 1),
    ("reduce", _reduce, 2),
    ("any", _any, 1),
    ("all", _all, 1),
    ("count", _count, 1),
    ("min_by", _min_by, 1),
    ("max_by", _max_by, 1),
    ("sort_by", _sort_by, 1),
    ("contains", _contains_item, 1),
    ("take", _take, 1),
    ("sum", _sum, 0),
):
    _register(_name, _LISTS, _impl, _argc)

_register("idle", [Workers], _idle, 0)
_register("available", [Workers], _available, 0)
_register("ready", [Workers], _ready, 0)
_register("on_hive", [Workers], _on_hive, 1)
_register("round_robin", [Workers], _round_robin, 0)
_register("with_model", [Workers, Hives], _with_model, 1)
_register("with_capacity", [Workers, Hives, Gpus], _with_capacity, 1)
_register("with_gpu_room", [Hives], _with_gpu_room, 1)
_register("best_fit", [Hives, Gpus], _best_fit, 1)
_register("with_label", [Workers, Hives], _with_label, 2)
_register("most_vram_free", [Workers, Hives, Gpus], _most_vram_free, 0)
_register("least_loaded", [Workers], _least_loaded_workers, 0)
_register("least_loaded", [Hives], _least_loaded_hives, 0)
_register("most_ram_free", [Hives], _most_ram_free, 0)
_register("get", [Hives], _hive_get, 1)

_register("len", [str, dict], _len, 0)
_register("is_empty", [str, dict], _is_empty, 0)
_register("contains", [str], _str_contains, 1)
_register("starts_with", [str], _starts_with, 1)
_register("ends_with", [str], _ends_with, 1)
_register("to_lower", [str], lambda site, s: _copied(site, s).lower(), 0)
_register("to_upper", [str], lambda site, s: _copied(site, s).upper(), 0)
_register("to_number", [str], _to_number, 0)
_register("to_string", [str, int, float, bool], _to_string, 0)
_register("contains", [dict], _map_contains, 1)
_register("get", [dict], _map_get, 1, 2)
_register("keys", [dict], _map_keys, 0)


# --- free functions ---------------------------------------------------------------------------


def _reject(site: Site, reason: Any) -> Reject:
    return Reject(_str(site, reason, "the reason"))


def _queue(site: Site, reason: Any = "queued by policy") -> Queue:
    return Queue((_str(site, reason, "the reason"),))


def _spawn(site: Site, hive: Any, model: Any, device: Any = "") -> Spawn:
    if type(hive) is HiveView:
        name = hive.name
    elif type(hive) is str:
        name = hive
    else:
        raise site.error(f"type error: spawn() needs a hive or a hive name, got {type_name(hive)}")
    if type(device) is GpuTelemetry:
        device = f"cuda:{device.index}"
    return Spawn(name, _str(site, model, "the model"), _str(site, device, "the device"))


def _model_vram_required(site: Site, model: Any, hive: Any = None) -> float:
    """The model's estimated VRAM in MB: ``hive``'s own estimate, else the largest reported."""
    name = _str(site, model, "the model")
    if hive is not None and type(hive) is not HiveView:
        raise site.error(f"type error: model_vram_required() needs a hive, got {type_name(hive)}")
    return model_vram_mb(site.meter.hives, name, hive)


def _min(site: Site, a: Any, b: Any) -> Any:
    return min(_num(site, a, "its first argument"), _num(site, b, "its second argument"))


def _max(site: Site, a: Any, b: Any) -> Any:
    return max(_num(site, a, "its first argument"), _num(site, b, "its second argument"))


def _abs(site: Site, a: Any) -> Any:
    return abs(_num(site, a, "its argument"))


def _floor(site: Site, a: Any) -> int:
    return math.floor(_num(site, a, "its argument"))


def _round(site: Site, a: Any) -> int:
    return round(_num(site, a, "its argument"))


def _range(site: Site, start: Any, stop: Any) -> list[int]:
    if type(start) is not int or type(stop) is not int:
        raise site.error("type error: range() needs two whole numbers")
    size = max(stop - start, 0)
    limit = site.meter.limits.max_array_len
    if size > limit:
        raise site.error(
            f"limit exceeded: range() of {size} numbers is over the list limit of {limit}"
        )
    site.meter.charge(size, site.pos)
    site.meter.alloc(size, site.pos)
    return list(range(start, stop))


def _tenant(site: Site, name: Any) -> TenantView:
    """The tenant's usage this minute; one without keys (or quotas) has none."""
    tenant = _str(site, name, "the tenant")
    return site.meter.tenants.get(tenant) or TenantView(name=tenant)


def _remaining(t: TenantView) -> float:
    """The fraction left of the tenant's tightest limit (1.0 with no limit)."""
    pairs = ((t.requests, t.rpm), (t.tokens, t.tpm), (t.concurrent, t.max_concurrent))
    left = [max(limit - used, 0) / limit for used, limit in pairs if limit > 0]
    return min(left, default=1.0)


def _tenant_usage(site: Site, name: Any) -> TenantView:
    return _tenant(site, name)


def _tenant_over_quota(site: Site, name: Any) -> bool:
    return _remaining(_tenant(site, name)) <= 0.0


def _tenant_remaining_quota(site: Site, name: Any) -> float:
    return _remaining(_tenant(site, name))


# name -> (implementation, min args, max args)
FUNCTIONS: dict[str, tuple[Impl, int, int]] = {
    "reject": (_reject, 1, 1),
    "queue": (_queue, 0, 1),
    "spawn": (_spawn, 2, 3),
    "model_vram_required": (_model_vram_required, 1, 2),
    "min": (_min, 2, 2),
    "max": (_max, 2, 2),
    "abs": (_abs, 1, 1),
    "floor": (_floor, 1, 1),
    "round": (_round, 1, 1),
    "range": (_range, 2, 2),
    "tenant_usage": (_tenant_usage, 1, 1),
    "tenant_over_quota": (_tenant_over_quota, 1, 1),
    "tenant_remaining_quota": (_tenant_remaining_quota, 1, 1),
}
