"""`Program` -> `CompiledPolicy`: every node becomes a Python closure, once; evaluations reuse them.

Variables are resolved at compile time to a slot in a frame (a Python list: slot 0 holds the
enclosing closure's frame), so a name lookup is one or two list indexings. Blocks and closure
calls charge the `Meter` with the static size of the code they are about to run; helpers charge
per element. Statements return `_CONT` unless they executed a ``return``, in which case they return
the value, which is how ``return`` leaves nested blocks without an exception.

Names are checked here: unknown variables, functions, methods and fields are `PolicyError`s with a
suggestion, so ``rbee policy check`` catches them before the queen ever runs the policy.
"""

from __future__ import annotations

import dataclasses
import difflib
import threading
from collections.abc import Callable
from operator import itemgetter
from typing import Any

from rbee.decisions import (
    Decision,
    Queue,
    Reject,
    Route,
    Spawn,
    default_device,
    model_vram_mb,
)
from rbee.errors import PolicyError
from rbee.policy import nodes as n
from rbee.policy.helpers import FIELDS, FUNCTIONS, METHODS, Site, equal, fields_of
from rbee.policy.limits import INT_MAX, Limits
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
from rbee.wire.queen import JobView, Snapshot, WorkerView

__all__ = ["ENTRY", "CompiledPolicy", "RunStats", "compile_program"]

ENTRY = "schedule_job"
ENTRY_PARAMS = ("job", "workers", "hives")

Frame = list[Any]
Ev = Callable[[Frame], Any]


class _Cont:
    """The "no return yet" marker a statement gives back; no script can produce it."""

    __slots__ = ()


_CONT = _Cont()


@dataclasses.dataclass(frozen=True)
class RunStats:
    """What the last evaluation cost, by the evaluator's own count and clock."""

    operations: int
    elapsed_ms: float


class _Scope:
    """Compile-time view of one function or closure: its slots and the names in scope."""

    def __init__(self, parent: _Scope | None, params: tuple[str, ...]) -> None:
        self.parent = parent
        self.blocks: list[dict[str, int]] = [{p: i + 1 for i, p in enumerate(params)}]
        self.size = 1 + len(params)

    def declare(self, name: str) -> int:
        slot = self.size
        self.size += 1
        self.blocks[-1][name] = slot
        return slot

    def lookup(self, name: str) -> tuple[int, int] | None:
        scope: _Scope | None = self
        depth = 0
        while scope is not None:
            for block in reversed(scope.blocks):
                if name in block:
                    return depth, block[name]
            scope, depth = scope.parent, depth + 1
        return None

    def visible(self) -> list[str]:
        names: list[str] = []
        scope: _Scope | None = self
        while scope is not None:
            names.extend(name for block in scope.blocks for name in block)
            scope = scope.parent
        return names


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _cost(node: Any) -> int:
    """Static size of an expression: what evaluating it once costs, closures' bodies excluded."""
    if node is None:
        return 0
    if isinstance(node, n.Lambda):
        return 1
    if isinstance(node, (n.Literal, n.Var)):
        return 1
    if isinstance(node, n.ArrayLit):
        return 1 + sum(_cost(i) for i in node.items)
    if isinstance(node, n.Field):
        return 1 + _cost(node.obj)
    if isinstance(node, n.Index):
        return 1 + _cost(node.obj) + _cost(node.index)
    if isinstance(node, n.Method):
        return 1 + _cost(node.obj) + sum(_cost(a) for a in node.args)
    if isinstance(node, n.Call):
        return 1 + sum(_cost(a) for a in node.args)
    if isinstance(node, n.Unary):
        return 1 + _cost(node.operand)
    if isinstance(node, n.Binary):
        return 1 + _cost(node.left) + _cost(node.right)
    return 1


def _stmt_cost(stmt: n.Stmt) -> int:
    if isinstance(stmt, n.If):
        return 1 + sum(_cost(cond) for cond, _ in stmt.branches)
    if isinstance(stmt, n.ExprStmt):
        return 1 + _cost(stmt.expr)
    return 1 + _cost(stmt.value)


class _Compiler:
    def __init__(self, program: n.Program, meter: Meter) -> None:
        self.program = program
        self.meter = meter
        self.limits = meter.limits
        self.fns: dict[str, n.FnDef] = {}
        self.compiled: dict[str, Callable[[list[Any]], Any]] = {}

    def error(self, message: str, pos: n.Pos) -> PolicyError:
        line, column = pos
        return PolicyError(
            message,
            filename=self.program.filename,
            line=line,
            column=column,
            source_line=self.program.line(line),
        )

    # --- functions ----------------------------------------------------------------------------

    def program_entry(self) -> tuple[Callable[[list[Any]], Any], tuple[str, ...], n.FnDef]:
        for fn in self.program.fns:
            if fn.name in self.fns:
                raise self.error(f"name error: fn {fn.name} is defined twice", fn.pos)
            if fn.name in FUNCTIONS:
                raise self.error(
                    f"name error: fn {fn.name} would hide the built-in {fn.name}()", fn.pos
                )
            self._check_params(fn.params, fn.params_pos or (fn.pos,) * len(fn.params), fn.pos)
            self.fns[fn.name] = fn
        entry = self.fns.get(ENTRY)
        if entry is None:
            raise self.error(
                f"name error: a policy must define fn {ENTRY}(job, workers) or "
                f"fn {ENTRY}(job, workers, hives)",
                (1, 1),
            )
        for name, pos in zip(entry.params, entry.params_pos, strict=True):
            if name not in ENTRY_PARAMS:
                raise self.error(
                    f"name error: {ENTRY}'s parameters are named from job, workers, hives "
                    f"(they are passed by name), not {name!r}",
                    pos,
                )
        for fn in self.program.fns:
            self.compiled[fn.name] = self.function(fn)
        return self.compiled[ENTRY], entry.params, entry

    def _check_params(self, params: tuple[str, ...], where: tuple[n.Pos, ...], pos: n.Pos) -> None:
        seen: set[str] = set()
        for name, p in zip(params, where, strict=False):
            self._check_name(name, p)
            if name in seen:
                raise self.error(f"name error: parameter {name!r} appears twice", p)
            seen.add(name)

    def _check_name(self, name: str, pos: n.Pos) -> None:
        if name.startswith("_"):
            raise self.error(f"name error: names cannot start with '_' ({name!r})", pos)

    def function(self, fn: n.FnDef) -> Callable[[list[Any]], Any]:
        scope = _Scope(None, fn.params)
        body = self.block(fn.body, scope, result=True)
        size, nparams = scope.size, len(fn.params)
        padding = [None] * (size - 1 - nparams)

        def invoke(args: list[Any]) -> Any:
            result = body([None, *args, *padding])
            return None if result is _CONT else result

        return invoke

    # --- statements ---------------------------------------------------------------------------

    def block(self, block: n.Block, scope: _Scope, *, result: bool) -> Ev:
        scope.blocks.append({})
        stmts: list[Ev] = []
        for i, stmt in enumerate(block.stmts):
            last = i == len(block.stmts) - 1 and block.tail is None
            stmts.append(self.stmt(stmt, scope, result=result and last))
        tail = self.expr(block.tail, scope) if block.tail is not None else None
        scope.blocks.pop()
        cost = sum(_stmt_cost(s) for s in block.stmts) + _cost(block.tail) + 1
        meter, pos = self.meter, block.pos
        body = tuple(stmts)

        if tail is not None and result:
            value = tail

            def run_with_value(f: Frame) -> Any:
                meter.ops += cost
                if meter.ops > meter.next_check:
                    meter.tick(pos)
                for s in body:
                    r = s(f)
                    if r is not _CONT:
                        return r
                return value(f)

            return run_with_value

        if tail is not None:
            body = (*body, self._discard(tail))

        def run(f: Frame) -> Any:
            meter.ops += cost
            if meter.ops > meter.next_check:
                meter.tick(pos)
            for s in body:
                r = s(f)
                if r is not _CONT:
                    return r
            return _CONT

        return run

    @staticmethod
    def _discard(ev: Ev) -> Ev:
        def run(f: Frame) -> Any:
            ev(f)
            return _CONT

        return run

    def stmt(self, stmt: n.Stmt, scope: _Scope, *, result: bool) -> Ev:
        if isinstance(stmt, n.Let):
            self._check_name(stmt.name, stmt.pos)
            value = self.expr(stmt.value, scope)
            slot = scope.declare(stmt.name)

            def let(f: Frame) -> Any:
                f[slot] = value(f)
                return _CONT

            return let
        if isinstance(stmt, n.Assign):
            found = scope.lookup(stmt.name)
            if found is None:
                raise self.error(
                    f"name error: cannot assign to {stmt.name!r}: declare it first with let"
                    + _suggest(stmt.name, scope.visible()),
                    stmt.pos,
                )
            if found[0] != 0:
                raise self.error(
                    f"name error: a closure cannot assign to {stmt.name!r} of the code around it",
                    stmt.pos,
                )
            value, slot = self.expr(stmt.value, scope), found[1]

            def assign(f: Frame) -> Any:
                f[slot] = value(f)
                return _CONT

            return assign
        if isinstance(stmt, n.Return):
            meter, pos = self.meter, stmt.pos
            if stmt.value is None:

                def return_nothing(f: Frame) -> Any:
                    meter.returned_at = pos
                    return None

                return return_nothing
            value = self.expr(stmt.value, scope)

            def return_value(f: Frame) -> Any:
                v = value(f)
                meter.returned_at = pos
                return v

            return return_value
        if isinstance(stmt, n.If):
            return self.if_stmt(stmt, scope, result=result)
        return self._discard(self.expr(stmt.expr, scope))

    def if_stmt(self, stmt: n.If, scope: _Scope, *, result: bool) -> Ev:
        branches = tuple(
            (self.expr(cond, scope), self.block(body, scope, result=result), cond.pos)
            for cond, body in stmt.branches
        )
        orelse = self.block(stmt.orelse, scope, result=result) if stmt.orelse else None

        def run(f: Frame) -> Any:
            for cond, body, pos in branches:
                c = cond(f)
                if c is True:
                    return body(f)
                if c is not False:
                    raise ScriptError(
                        f"type error: an if condition must be a bool, got {type_name(c)}", pos
                    )
            return orelse(f) if orelse is not None else _CONT

        return run

    # --- expressions --------------------------------------------------------------------------

    def expr(self, node: n.Expr, scope: _Scope) -> Ev:
        method = getattr(self, f"_{type(node).__name__.lower()}")
        ev: Ev = method(node, scope)
        return ev

    def _literal(self, node: n.Literal, scope: _Scope) -> Ev:
        value = node.value
        return lambda f: value

    def _arraylit(self, node: n.ArrayLit, scope: _Scope) -> Ev:
        items = tuple(self.expr(i, scope) for i in node.items)
        return lambda f: [i(f) for i in items]

    def _var(self, node: n.Var, scope: _Scope) -> Ev:
        found = scope.lookup(node.name)
        if found is None:
            hint = _suggest(node.name, scope.visible())
            if node.name in self.fns or node.name in FUNCTIONS:
                hint = f" ({node.name} is a function: call it with ())"
            raise self.error(f"name error: unknown name {node.name!r}{hint}", node.pos)
        depth, slot = found
        if depth == 0:
            return itemgetter(slot)
        if depth == 1:
            return lambda f: f[0][slot]

        def deep(f: Frame) -> Any:
            for _ in range(depth):
                f = f[0]
            return f[slot]

        return deep

    def _field(self, node: n.Field, scope: _Scope) -> Ev:
        table = FIELDS.get(node.name)
        if table is None:
            raise self.error(
                f"name error: no object has a field {node.name!r}"
                + _suggest(node.name, list(FIELDS)),
                node.pos,
            )
        obj, name, pos = self.expr(node.obj, scope), node.name, node.pos

        def run(f: Frame) -> Any:
            o = obj(f)
            getter = table.get(type(o))
            if getter is None:
                raise _no_field(o, name, pos)
            return getter(o)

        return run

    def _index(self, node: n.Index, scope: _Scope) -> Ev:
        obj, index, pos = self.expr(node.obj, scope), self.expr(node.index, scope), node.pos

        def run(f: Frame) -> Any:
            o, i = obj(f), index(f)
            if type(o) is dict:
                if type(i) is not str:
                    raise ScriptError(
                        f"type error: labels are looked up by string, got {type_name(i)}", pos
                    )
                return o.get(i, "")
            if isinstance(o, (list, tuple)):
                if type(i) is not int:
                    raise ScriptError(
                        f"type error: a list index must be a whole number, got {type_name(i)}", pos
                    )
                if -len(o) <= i < len(o):
                    return o[i]
                raise ScriptError(
                    f"value error: index {i} is out of range for a list of {len(o)}", pos
                )
            if type(o) is Nothing:
                raise ScriptError(f"value error: cannot index nothing: {o.origin}", pos)
            raise ScriptError(f"type error: cannot index {type_name(o)}", pos)

        return run

    def _method(self, node: n.Method, scope: _Scope) -> Ev:
        table = METHODS.get(node.name)
        if table is None:
            raise self.error(
                f"name error: unknown method {node.name}()" + _suggest(node.name, list(METHODS)),
                node.pos,
            )
        counts = {c for _, low, high in table.values() for c in range(low, high + 1)}
        if len(node.args) not in counts:
            raise self.error(
                f"type error: {node.name}() takes {_arity(counts)}, not {len(node.args)}", node.pos
            )
        obj = self.expr(node.obj, scope)
        args = tuple(self.expr(a, scope) for a in node.args)
        site, name, pos = Site(node.name, node.pos, self.meter), node.name, node.pos

        def dispatch(o: Any, argc: int) -> Callable[..., Any]:
            entry = table.get(type(o))
            if entry is None:
                if type(o) is Nothing:
                    raise ScriptError(
                        f"value error: cannot call {name}() on nothing: {o.origin}", pos
                    )
                raise ScriptError(f"type error: {type_name(o)} has no method {name}()", pos)
            impl, low, high = entry
            if not low <= argc <= high:
                raise ScriptError(
                    f"type error: {name}() on {type_name(o)} takes {_arity(set(range(low, high + 1)))}",
                    pos,
                )
            return impl

        if not args:
            return lambda f: (lambda o: dispatch(o, 0)(site, o))(obj(f))
        if len(args) == 1:
            (a0,) = args

            def run1(f: Frame) -> Any:
                o = obj(f)
                return dispatch(o, 1)(site, o, a0(f))

            return run1

        def run(f: Frame) -> Any:
            o = obj(f)
            return dispatch(o, len(args))(site, o, *[a(f) for a in args])

        return run

    def _call(self, node: n.Call, scope: _Scope) -> Ev:
        args = tuple(self.expr(a, scope) for a in node.args)
        if node.name in self.fns:
            return self._user_call(node, args)
        if node.name not in FUNCTIONS:
            known = list(FUNCTIONS) + list(self.fns)
            raise self.error(
                f"name error: unknown function {node.name}()" + _suggest(node.name, known), node.pos
            )
        impl, low, high = FUNCTIONS[node.name]
        if not low <= len(args) <= high:
            raise self.error(
                f"type error: {node.name}() takes {_arity(set(range(low, high + 1)))}, not {len(args)}",
                node.pos,
            )
        site = Site(node.name, node.pos, self.meter)
        return lambda f: impl(site, *[a(f) for a in args])

    def _user_call(self, node: n.Call, args: tuple[Ev, ...]) -> Ev:
        fn = self.fns[node.name]
        if len(args) != len(fn.params):
            raise self.error(
                f"type error: {fn.name}() takes {len(fn.params)} argument(s), not {len(args)}",
                node.pos,
            )
        compiled, meter, pos, name = self.compiled, self.meter, node.pos, node.name
        max_depth = self.limits.max_call_depth

        def run(f: Frame) -> Any:
            values = [a(f) for a in args]
            meter.depth += 1
            if meter.depth > max_depth:
                raise ScriptError(
                    f"limit exceeded: calls nested more than {max_depth} deep (in {name}())", pos
                )
            meter.ops += 1
            if meter.ops > meter.next_check:
                meter.tick(pos)
            result = compiled[name](values)
            meter.depth -= 1
            return result

        return run

    def _unary(self, node: n.Unary, scope: _Scope) -> Ev:
        operand, pos = self.expr(node.operand, scope), node.pos
        if node.op == "!":

            def not_(f: Frame) -> Any:
                v = operand(f)
                if v is True:
                    return False
                if v is False:
                    return True
                raise ScriptError(f"type error: ! needs a bool, got {type_name(v)}", pos)

            return not_

        def neg(f: Frame) -> Any:
            v = operand(f)
            if type(v) is int or type(v) is float:
                return -v
            raise ScriptError(f"type error: - needs a number, got {type_name(v)}", pos)

        return neg

    def _binary(self, node: n.Binary, scope: _Scope) -> Ev:
        left, right = self.expr(node.left, scope), self.expr(node.right, scope)
        op, pos = node.op, node.pos
        if op in ("&&", "||"):
            return _logic(op, left, right, pos)
        if op in ("==", "!="):
            negate = op == "!="

            def eq(f: Frame) -> Any:
                a, b = left(f), right(f)
                try:
                    return equal(a, b) is not negate
                except TypeError:
                    raise ScriptError(
                        "type error: lists cannot be compared with == or !=", pos
                    ) from None

            return eq
        if op in ("<", "<=", ">", ">="):
            return _compare(op, left, right, pos)
        return _arith(op, left, right, pos, self.meter)

    def _lambda(self, node: n.Lambda, scope: _Scope) -> Ev:
        inner = _Scope(scope, node.params)
        self._check_params(node.params, (node.pos,) * len(node.params), node.pos)
        body: Ev
        if isinstance(node.body, n.Block):
            block = self.block(node.body, inner, result=True)

            def block_value(f: Frame) -> Any:
                r = block(f)
                return None if r is _CONT else r

            body, cost = block_value, 1
        else:
            body = self.expr(node.body, inner)
            cost = _cost(node.body)
        padding = [None] * (inner.size - 1 - len(node.params))
        meter, pos, arity = self.meter, node.pos, len(node.params)

        if arity == 1:

            def make1(f: Frame) -> Closure:
                def call(x: Any) -> Any:
                    meter.ops += cost
                    if meter.ops > meter.next_check:
                        meter.tick(pos)
                    return body([f, x, *padding])

                return Closure(call, 1)

            return make1

        def make(f: Frame) -> Closure:
            def call(*xs: Any) -> Any:
                meter.ops += cost
                if meter.ops > meter.next_check:
                    meter.tick(pos)
                return body([f, *xs, *padding])

            return Closure(call, arity)

        return make


def _arity(counts: set[int]) -> str:
    low, high = min(counts), max(counts)
    if low == high:
        return f"{low} argument(s)"
    return f"{low} to {high} arguments"


def _no_field(o: Any, name: str, pos: n.Pos) -> ScriptError:
    if type(o) is Nothing:
        return ScriptError(f"value error: cannot read .{name} of nothing: {o.origin}", pos)
    have = fields_of(o)
    listing = f" (it has: {', '.join(have)})" if have else ""
    return ScriptError(f"type error: {type_name(o)} has no field {name!r}{listing}", pos)


def _logic(op: str, left: Ev, right: Ev, pos: n.Pos) -> Ev:
    def check(v: Any) -> bool:
        if v is True or v is False:
            return v
        raise ScriptError(f"type error: {op} needs bools, got {type_name(v)}", pos)

    if op == "&&":
        return lambda f: check(left(f)) and check(right(f))
    return lambda f: check(left(f)) or check(right(f))


def _compare(op: str, left: Ev, right: Ev, pos: n.Pos) -> Ev:
    import operator

    fn = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}[op]

    def run(f: Frame) -> Any:
        a, b = left(f), right(f)
        ta, tb = type(a), type(b)
        if (ta is int or ta is float) and (tb is int or tb is float):
            return fn(a, b)
        if ta is str and tb is str:
            return fn(a, b)
        raise ScriptError(f"type error: cannot compare {type_name(a)} {op} {type_name(b)}", pos)

    return run


def _arith(op: str, left: Ev, right: Ev, pos: n.Pos, meter: Meter) -> Ev:
    max_str, max_list = meter.limits.max_string_len, meter.limits.max_array_len

    def fail(a: Any, b: Any) -> ScriptError:
        return ScriptError(f"type error: cannot compute {type_name(a)} {op} {type_name(b)}", pos)

    def overflow() -> ScriptError:
        return ScriptError(f"value error: arithmetic overflow in {op}", pos)

    if op == "+":

        def add(f: Frame) -> Any:
            a, b = left(f), right(f)
            ta, tb = type(a), type(b)
            if (ta is int or ta is float) and (tb is int or tb is float):
                v = a + b
                if type(v) is int and not -INT_MAX <= v <= INT_MAX:
                    raise overflow()
                return v
            if ta is str and tb is str:
                if len(a) + len(b) > max_str:
                    raise ScriptError(
                        f"limit exceeded: string of {len(a) + len(b)} characters is over the "
                        f"limit of {max_str}",
                        pos,
                    )
                meter.alloc((len(a) + len(b)) // 16, pos)
                return a + b
            if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
                if len(a) + len(b) > max_list:
                    raise ScriptError(
                        f"limit exceeded: list of {len(a) + len(b)} elements is over the limit "
                        f"of {max_list}",
                        pos,
                    )
                meter.alloc(len(a) + len(b), pos)
                items = [*a, *b]
                if ta is tb and ta in (Workers, Hives, Gpus):
                    return ta(items)
                return items
            raise fail(a, b)

        return add

    def numbers(f: Frame) -> tuple[Any, Any]:
        a, b = left(f), right(f)
        ta, tb = type(a), type(b)
        if (ta is int or ta is float) and (tb is int or tb is float):
            return a, b
        raise fail(a, b)

    if op == "-":

        def sub(f: Frame) -> Any:
            a, b = numbers(f)
            v = a - b
            if type(v) is int and not -INT_MAX <= v <= INT_MAX:
                raise overflow()
            return v

        return sub
    if op == "*":

        def mul(f: Frame) -> Any:
            a, b = numbers(f)
            v = a * b
            if type(v) is int and not -INT_MAX <= v <= INT_MAX:
                raise overflow()
            return v

        return mul

    def div(f: Frame) -> Any:
        a, b = numbers(f)
        if b == 0:
            raise ScriptError(f"value error: division by zero in {op}", pos)
        return a / b if op == "/" else a % b

    return div


class CompiledPolicy:
    """A compiled policy file: a `rbee.decisions.Scheduler`.

    ``schedule`` raises `PolicyError` when the script fails (type error, limit, bad result); the
    queen's `rbee.policy.PolicyHost` turns that into its fallback. Evaluations are serialized by a
    lock: the closures share one `Meter`.
    """

    def __init__(self, program: n.Program, limits: Limits | None = None) -> None:
        self.program = program
        self.limits = limits or Limits()
        self._meter = Meter(self.limits)
        self._entry, self._params, self._fn = _Compiler(program, self._meter).program_entry()
        self._lock = threading.Lock()
        self.last_run: RunStats | None = None

    @property
    def name(self) -> str:
        return self.program.filename.rsplit("/", 1)[-1]

    @property
    def source(self) -> str:
        return self.program.source

    def schedule(self, job: JobView, snapshot: Snapshot) -> Decision:
        """Run ``schedule_job`` for ``job`` on ``snapshot``; a failure is a `PolicyError`."""
        values = {"job": job, "workers": Workers(snapshot.workers), "hives": Hives(snapshot.hives)}
        args = [values[p] for p in self._params]
        with self._lock:
            meter = self._meter
            meter.reset()
            meter.tenants = {t.name: t for t in snapshot.tenants}
            meter.hives = snapshot.hives
            meter.returned_at = self._fn.pos
            try:
                result = self._entry(args)
                return self._decide(result, snapshot, meter)
            except ScriptError as err:
                raise self._error(err.message, err.pos) from None
            except RecursionError:
                raise self._error(
                    "limit exceeded: evaluation nested too deeply for the interpreter "
                    "(lower max_call_depth or max_nesting)",
                    None,
                ) from None
            except PolicyError:
                raise
            except Exception as err:  # a bug in a helper must not take the queen down
                raise self._error(f"internal error: {type(err).__name__}: {err}", None) from None
            finally:
                self.last_run = RunStats(meter.ops, meter.elapsed_ms())

    def _error(self, message: str, pos: n.Pos | None) -> PolicyError:
        if pos is None:
            return PolicyError(message, filename=self.program.filename)
        return PolicyError(
            message,
            filename=self.program.filename,
            line=pos[0],
            column=pos[1],
            source_line=self.program.line(pos[0]),
        )

    def _decide(self, value: Any, snapshot: Snapshot, meter: Meter) -> Decision:
        pos = meter.returned_at
        trace = tuple(meter.trace)
        line = f"line {pos[0]}"
        kind = type(value)
        if kind is WorkerView:
            if not any(w is value for w in snapshot.workers):
                raise ScriptError(
                    "result error: returned a worker that is not in the workers list", pos
                )
            return Route(value.id, (*trace, f"{self.name} chose worker {value.id} ({line})"))
        if kind is Reject:
            return Reject(value.reason, (*trace, f"{self.name} rejected: {value.reason} ({line})"))
        if kind is Queue:
            return Queue((*trace, *(f"{self.name} queued: {r} ({line})" for r in value.reasons)))
        if kind is Spawn:
            return self._spawn(value, snapshot, trace, pos)
        if kind is Nothing:
            raise ScriptError(f"result error: {ENTRY} returned nothing: {value.origin}", pos)
        if value is None:
            raise ScriptError(
                f"result error: {ENTRY} ended without returning a worker, reject(...), "
                "spawn(...) or queue()",
                pos,
            )
        raise ScriptError(
            f"result error: {ENTRY} must return a worker, reject(reason), spawn(hive, model) or "
            f"queue(), not {type_name(value)}",
            pos,
        )

    def _spawn(self, value: Spawn, snapshot: Snapshot, trace: tuple[str, ...], pos: n.Pos) -> Spawn:
        hive = next((h for h in snapshot.hives if h.name == value.hive), None)
        if hive is None:
            raise ScriptError(
                f"result error: spawn() names hive {value.hive!r}, which is not online", pos
            )
        device = value.device or default_device(
            hive, model_vram_mb(snapshot.hives, value.model, hive)
        )
        if device != "cpu" and device not in {f"cuda:{g.index}" for g in hive.gpus}:
            raise ScriptError(
                f"result error: spawn() names device {device!r}, which hive {hive.name} does not "
                "have",
                pos,
            )
        reason = f"{self.name} spawns {value.model} on hive {hive.name} ({device}) (line {pos[0]})"
        return Spawn(hive.name, value.model, device, (*trace, reason))


def compile_program(program: n.Program, limits: Limits | None = None) -> CompiledPolicy:
    """Compile a parsed program; name and arity errors are `PolicyError`s."""
    return CompiledPolicy(program, limits)
