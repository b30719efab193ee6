"""Policy text -> `Program` (frozen syntax tree), or a `PolicyError` with line, column and caret.

The LALR parser runs with the `_Builder` as its transformer, so each rule becomes a node the moment
it is reduced: no parse tree is kept and nothing recurses, however deep the source nests. Each node
knows its depth; the builder stops the parse at the first node deeper than `Limits.max_nesting`,
which is what lets the (recursive) compiler trust the tree it gets.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import re
from importlib import resources
from typing import Any, TypeVar

import lark
from lark.lexer import PatternStr, Token

from rbee.errors import PolicyError
from rbee.policy import nodes as n
from rbee.policy.limits import INT_MAX, Limits

__all__ = ["check_text", "parse", "parser"]

# Characters that make source read differently from how it runs ("Trojan Source") or that no
# policy needs: bidirectional controls, zero-width marks, C0 controls other than tab and newlines.
_FORBIDDEN = re.compile(
    r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]"
)
_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}
_NOT_IN_LANGUAGE = {
    "while": "there are no loops: iterate with helpers such as filter(), map() or any()",
    "loop": "there are no loops: iterate with helpers such as filter(), map() or any()",
    "for": "there are no loops: iterate with helpers such as filter(), map() or any()",
    "import": "a policy cannot import anything",
    "switch": "use if / else if / else",
    "match": "use if / else if / else",
}
_TERMINAL_NAMES = {
    "NAME": "a name",
    "INT": "a number",
    "FLOAT": "a number",
    "STRING": "a string",
    "$END": "end of file",
}

_nesting_limit: contextvars.ContextVar[int] = contextvars.ContextVar("nesting_limit")


class _TooDeep(Exception):
    def __init__(self, pos: n.Pos) -> None:
        self.pos = pos


def _pos(token: Token) -> n.Pos:
    return (token.line or 1, token.column or 1)


def _depth(*children: Any) -> int:
    return 1 + max((c.depth for c in children if c is not None), default=0)


N = TypeVar("N")


def _checked(node: N) -> N:
    if node.depth > _nesting_limit.get():  # type: ignore[attr-defined]
        raise _TooDeep(node.pos)  # type: ignore[attr-defined]
    return node


class _Builder(lark.Transformer[Token, Any]):
    """Rule callbacks: children (tokens and already-built nodes) -> one node."""

    def start(self, c: list[n.FnDef]) -> tuple[n.FnDef, ...]:
        return tuple(c)

    def names(self, c: list[Token]) -> list[Token]:
        return c

    def args(self, c: list[n.Expr]) -> tuple[n.Expr, ...]:
        return tuple(c)

    def fn_def(self, c: list[Any]) -> n.FnDef:
        fn, name, params, body = c
        params = params or []
        return _checked(
            n.FnDef(
                _pos(fn),
                _depth(body),
                str(name),
                tuple(str(p) for p in params),
                tuple(_pos(p) for p in params),
                body,
            )
        )

    def block(self, c: list[Any]) -> n.Block:
        brace, *stmts, tail = c
        kept = tuple(s for s in stmts if s is not None)
        return _checked(n.Block(_pos(brace), _depth(*kept, tail), kept, tail))

    def let_stmt(self, c: list[Any]) -> n.Let:
        _, name, value = c
        return _checked(n.Let(_pos(name), _depth(value), str(name), value))

    def assign_stmt(self, c: list[Any]) -> n.Assign:
        name, _, value = c
        return _checked(n.Assign(_pos(name), _depth(value), str(name), value))

    def return_stmt(self, c: list[Any]) -> n.Return:
        kw, value = c
        return _checked(n.Return(_pos(kw), _depth(value), value))

    def if_stmt(self, c: list[Any]) -> n.If:
        branches = [(c[1], c[2])]
        i = 3
        while i + 1 < len(c) and isinstance(c[i + 1], Token) and c[i + 1].type == "IF":
            branches.append((c[i + 2], c[i + 3]))
            i += 4
        orelse = c[i + 1] if i + 1 < len(c) else None
        parts = [x for pair in branches for x in pair]
        return _checked(n.If(_pos(c[0]), _depth(*parts, orelse), tuple(branches), orelse))

    def expr_stmt(self, c: list[Any]) -> n.ExprStmt:
        return _checked(n.ExprStmt(c[0].pos, _depth(c[0]), c[0]))

    def empty_stmt(self, c: list[Any]) -> None:
        return None

    def closure(self, c: list[Any]) -> n.Lambda:
        pipe, params, body = c
        return _checked(n.Lambda(_pos(pipe), _depth(body), tuple(str(p) for p in params), body))

    def binary(self, c: list[Any]) -> n.Binary:
        left, op, right = c
        return _checked(n.Binary(_pos(op), _depth(left, right), str(op), left, right))

    def unary(self, c: list[Any]) -> n.Unary:
        op, operand = c
        return _checked(n.Unary(_pos(op), _depth(operand), str(op), operand))

    def method(self, c: list[Any]) -> n.Method:
        obj, name, args = c
        args = args or ()
        return _checked(n.Method(_pos(name), _depth(obj, *args), obj, str(name), args))

    def field(self, c: list[Any]) -> n.Field:
        obj, name = c
        return _checked(n.Field(_pos(name), _depth(obj), obj, str(name)))

    def index(self, c: list[Any]) -> n.Index:
        obj, bracket, idx = c
        return _checked(n.Index(_pos(bracket), _depth(obj, idx), obj, idx))

    def int_lit(self, c: list[Token]) -> n.Literal:
        value = int(str(c[0]).replace("_", ""))
        if value > INT_MAX:
            raise _BadLiteral(f"integer {c[0]} is too large (the limit is {INT_MAX})", _pos(c[0]))
        return n.Literal(_pos(c[0]), 1, value)

    def float_lit(self, c: list[Token]) -> n.Literal:
        return n.Literal(_pos(c[0]), 1, float(str(c[0]).replace("_", "")))

    def string_lit(self, c: list[Token]) -> n.Literal:
        raw = str(c[0])[1:-1]
        text = re.sub(r"\\(.)", lambda m: _ESCAPES[m.group(1)], raw)
        return n.Literal(_pos(c[0]), 1, text)

    def true_lit(self, c: list[Token]) -> n.Literal:
        return n.Literal(_pos(c[0]), 1, True)

    def false_lit(self, c: list[Token]) -> n.Literal:
        return n.Literal(_pos(c[0]), 1, False)

    def var(self, c: list[Token]) -> n.Var:
        return n.Var(_pos(c[0]), 1, str(c[0]))

    def call(self, c: list[Any]) -> n.Call:
        name, args = c
        args = args or ()
        return _checked(n.Call(_pos(name), _depth(*args), str(name), args))

    def array(self, c: list[Any]) -> n.ArrayLit:
        bracket, items = c
        items = items or ()
        return _checked(n.ArrayLit(_pos(bracket), _depth(*items), items))

    def paren(self, c: list[Any]) -> Any:
        # Parentheses make no node, but they do nest: count them so `((((...))))` is bounded too.
        inner = c[1]
        return _checked(dataclasses.replace(inner, depth=inner.depth + 1))


class _BadLiteral(Exception):
    def __init__(self, message: str, pos: n.Pos) -> None:
        self.message = message
        self.pos = pos


@functools.cache
def parser() -> lark.Lark:
    """The LALR parser, built from grammar.lark once per process."""
    grammar = resources.files("rbee.policy").joinpath("grammar.lark").read_text(encoding="utf-8")
    return lark.Lark(grammar, parser="lalr", transformer=_Builder(), maybe_placeholders=True)


def _describe_terminal(name: str) -> str:
    if name in _TERMINAL_NAMES:
        return _TERMINAL_NAMES[name]
    try:
        pattern = parser().get_terminal(name).pattern
    except KeyError:
        return name
    return f"'{pattern.value}'" if isinstance(pattern, PatternStr) else name


def _error(filename: str, source: str, message: str, pos: n.Pos | None) -> PolicyError:
    if pos is None:
        return PolicyError(message, filename=filename)
    lines = source.splitlines()
    line, column = pos
    text = lines[line - 1] if 0 < line <= len(lines) else None
    return PolicyError(message, filename=filename, line=line, column=column, source_line=text)


def _syntax_error(err: lark.exceptions.UnexpectedInput, source: str) -> tuple[str, n.Pos]:
    if isinstance(err, lark.exceptions.UnexpectedCharacters):
        char = source[err.pos_in_stream or 0]
        hint = f" (U+{ord(char):04X}: names and operators are ASCII)" if ord(char) > 127 else ""
        return f"syntax error: unexpected character {char!r}{hint}", (err.line, err.column)
    if isinstance(err, lark.exceptions.UnexpectedToken):
        token = err.token
        expected = sorted({_describe_terminal(t) for t in err.expected})
        wanted = ", ".join(expected[:8]) + (", ..." if len(expected) > 8 else "")
        if token.type == "$END":
            last = source.rstrip().splitlines() or [""]
            where = (len(last), len(last[-1]) + 1)
            return f"syntax error: unexpected end of file, expected {wanted}", where
        message = f"syntax error: unexpected {str(token)!r}, expected {wanted}"
        previous = getattr(err, "token_history", None) or []
        for word in [str(t) for t in previous[-1:]] + [str(token)]:
            if word in _NOT_IN_LANGUAGE:
                message += f" ('{word}' is not part of the language: {_NOT_IN_LANGUAGE[word]})"
                break
        return message, _pos(token)
    return f"syntax error: {err}", (getattr(err, "line", 1) or 1, getattr(err, "column", 1) or 1)


def check_text(source: str, filename: str, limits: Limits) -> None:
    """Refuse text over `Limits.max_source_bytes` or with a forbidden character (`PolicyError`).

    The first check on any policy text, DSL or YAML rules, before a parser sees it.
    """
    size = len(source.encode("utf-8", "surrogatepass"))
    if size > limits.max_source_bytes:
        raise PolicyError(
            f"source is {size} bytes, over the limit of {limits.max_source_bytes}",
            filename=filename,
        )
    bad = _FORBIDDEN.search(source)
    if bad:
        line = source.count("\n", 0, bad.start()) + 1
        column = bad.start() - (source.rfind("\n", 0, bad.start()) + 1) + 1
        raise _error(
            filename,
            source,
            f"character U+{ord(bad.group()):04X} is not allowed in a policy "
            "(control and bidirectional characters can make code read differently from how it runs)",
            (line, column),
        )


def parse(source: str, filename: str = "<policy>", limits: Limits | None = None) -> n.Program:
    """Parse ``source`` into a `Program`; every problem is a `PolicyError` naming the position."""
    limits = limits or Limits()
    check_text(source, filename, limits)
    token = _nesting_limit.set(limits.max_nesting)
    try:
        fns: tuple[n.FnDef, ...] = parser().parse(source)  # type: ignore[assignment]
    except _TooDeep as err:
        raise _error(
            filename,
            source,
            f"limit exceeded: nested more than {limits.max_nesting} levels deep",
            err.pos,
        ) from None
    except _BadLiteral as err:
        raise _error(filename, source, err.message, err.pos) from None
    except lark.exceptions.UnexpectedInput as err:
        message, pos = _syntax_error(err, source)
        raise _error(filename, source, message, pos) from None
    finally:
        _nesting_limit.reset(token)
    return n.Program(filename, source, fns)
