"""The syntax tree of a policy: frozen dataclasses, built by `rbee.policy.parse`.

Every node carries ``pos`` (1-based line and column, for error messages) and ``depth`` (the height
of the subtree, checked against `Limits.max_nesting` while parsing so that the compiler, which does
recurse, never meets a tree deeper than the limit).
"""

from __future__ import annotations

import dataclasses

__all__ = [
    "ArrayLit",
    "Assign",
    "Binary",
    "Block",
    "Call",
    "Expr",
    "ExprStmt",
    "Field",
    "FnDef",
    "If",
    "Index",
    "Lambda",
    "Let",
    "Literal",
    "Method",
    "Pos",
    "Program",
    "Return",
    "Stmt",
    "Unary",
    "Var",
]

Pos = tuple[int, int]


@dataclasses.dataclass(frozen=True, slots=True)
class Literal:
    pos: Pos
    depth: int
    value: int | float | str | bool


@dataclasses.dataclass(frozen=True, slots=True)
class ArrayLit:
    pos: Pos
    depth: int
    items: tuple[Expr, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Var:
    pos: Pos
    depth: int
    name: str


@dataclasses.dataclass(frozen=True, slots=True)
class Field:
    pos: Pos
    depth: int
    obj: Expr
    name: str


@dataclasses.dataclass(frozen=True, slots=True)
class Index:
    pos: Pos
    depth: int
    obj: Expr
    index: Expr


@dataclasses.dataclass(frozen=True, slots=True)
class Method:
    pos: Pos
    depth: int
    obj: Expr
    name: str
    args: tuple[Expr, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Call:
    pos: Pos
    depth: int
    name: str
    args: tuple[Expr, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Unary:
    pos: Pos
    depth: int
    op: str
    operand: Expr


@dataclasses.dataclass(frozen=True, slots=True)
class Binary:
    pos: Pos
    depth: int
    op: str
    left: Expr
    right: Expr


@dataclasses.dataclass(frozen=True, slots=True)
class Lambda:
    pos: Pos
    depth: int
    params: tuple[str, ...]
    body: Expr | Block


Expr = Literal | ArrayLit | Var | Field | Index | Method | Call | Unary | Binary | Lambda


@dataclasses.dataclass(frozen=True, slots=True)
class Let:
    pos: Pos
    depth: int
    name: str
    value: Expr


@dataclasses.dataclass(frozen=True, slots=True)
class Assign:
    pos: Pos
    depth: int
    name: str
    value: Expr


@dataclasses.dataclass(frozen=True, slots=True)
class Return:
    pos: Pos
    depth: int
    value: Expr | None


@dataclasses.dataclass(frozen=True, slots=True)
class If:
    pos: Pos
    depth: int
    branches: tuple[tuple[Expr, Block], ...]
    orelse: Block | None


@dataclasses.dataclass(frozen=True, slots=True)
class ExprStmt:
    pos: Pos
    depth: int
    expr: Expr


Stmt = Let | Assign | Return | If | ExprStmt


@dataclasses.dataclass(frozen=True, slots=True)
class Block:
    pos: Pos
    depth: int
    stmts: tuple[Stmt, ...]
    tail: Expr | None


@dataclasses.dataclass(frozen=True, slots=True)
class FnDef:
    pos: Pos
    depth: int
    name: str
    params: tuple[str, ...]
    params_pos: tuple[Pos, ...]
    body: Block


@dataclasses.dataclass(frozen=True, slots=True)
class Program:
    """A parsed policy file: its functions, and the text that error messages quote."""

    filename: str
    source: str
    fns: tuple[FnDef, ...]

    def line(self, number: int) -> str | None:
        """Source line ``number`` (1-based), for the caret under an error."""
        lines = self.source.splitlines()
        return lines[number - 1] if 0 < number <= len(lines) else None
