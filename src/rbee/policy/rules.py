"""YAML rules -> policy source: the declarative form of a scheduling policy.

A rules file is a list of ``rules``, each a ``condition`` and an ``action``; the first rule whose
condition holds decides, and ``default`` decides for a job no rule matched (docs/policies.md has
the vocabulary). `compile_rules` turns the text into the policy language; `load_rules` compiles
that into a `CompiledPolicy` whose errors, run-time errors and decision reasons all name lines and
columns of the YAML file, not of the generated source: every generated line remembers the YAML
node it came from, and the parsed tree's positions are mapped back before it is compiled.

YAML is read with PyYAML's composer (nodes carry their marks); anchors and aliases, tags other
than the plain ones, duplicate keys and unknown keys are refused.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable
from pathlib import PurePath
from typing import Any

import yaml

from rbee.errors import PolicyError
from rbee.policy import nodes as n
from rbee.policy.compile import ENTRY, CompiledPolicy, compile_program
from rbee.policy.limits import Limits
from rbee.policy.parse import check_text, parse

__all__ = ["RULES_SUFFIXES", "compile_rules", "is_rules_file", "load_rules"]

RULES_SUFFIXES = (".yaml", ".yml")

# Where generated text came from: YAML line and column (1-based), and whether the text is the
# user's own (an ``expr`` or ``select``), whose columns advance with the YAML's.
Origin = tuple[int, int, bool]
Frag = list[tuple[str, Origin]]
_NL: tuple[str, Origin] = ("\n", (0, 0, False))

_TOP = ("rules", "default", "description")
_RULE = ("name", "condition", "action")
_CONDITIONS = (
    "model",
    "model_contains",
    "model_starts_with",
    "priority",
    "tenant",
    "job_label",
    "prompt_tokens_over",
    "tokens_over",
    "tenant_over_quota",
    "tenant_quota_below",
    "free_slots_below",
    "hive_label",
    "expr",
    "any",
    "all",
    "not",
)
_ACTIONS = ("route", "spawn", "queue", "reject", "select")
_ROUTE = (
    "hive",
    "label",
    "device",
    "min_vram_mb",
    "min_vram_free_mb",
    "pick",
    "if_busy",
    "if_none",
)
_SPAWN = ("hive", "label", "device", "min_vram_free_mb", "pick", "prefer_model_files", "if_none")
_ROUTE_PICKS = ("least_loaded", "first", "most_vram_free", "round_robin")
_SPAWN_PICKS = ("least_loaded", "most_vram_free", "most_ram_free")
_PLACEHOLDERS = {"model": "job.model", "tenant": "job.tenant", "priority": "job.priority"}
_PLACEHOLDER = re.compile(r"\{([A-Za-z_]*)\}")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t"}
_PLAIN_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
}


def is_rules_file(filename: str | PurePath) -> bool:
    """Whether ``filename`` names a YAML rules file (by its suffix) rather than policy source."""
    return PurePath(filename).suffix.lower() in RULES_SUFFIXES


def compile_rules(text: str, filename: str = "<rules>", limits: Limits | None = None) -> str:
    """The policy source that the YAML rules in ``text`` compile to.

    A problem with the YAML or with a rule is a `PolicyError` at the YAML line and column. The
    result is checked only as far as the rules go: `load_rules` also parses and compiles it.
    """
    return _generate(text, filename, limits or Limits()).text()


def load_rules(
    text: str, filename: str = "<rules>", limits: Limits | None = None
) -> CompiledPolicy:
    """Compile YAML rules into a `CompiledPolicy`; every position it reports is in the YAML."""
    limits = limits or Limits()
    out = _generate(text, filename, limits)
    source = out.text()
    try:
        program = parse(source, filename, limits)
    except PolicyError as err:
        raise _moved(err, out, text) from None
    remapped = n.Program(filename, text, _remap(program.fns, out.where))
    return compile_program(remapped, limits)


def _moved(err: PolicyError, out: _Out, text: str) -> PolicyError:
    if err.line is None:
        return err
    line, column = out.where((err.line, err.column or 1))
    return _error(err.filename, text, err.message, line, column)


def _error(filename: str, text: str, message: str, line: int, column: int) -> PolicyError:
    lines = text.splitlines()
    shown = lines[line - 1] if 0 < line <= len(lines) else None
    return PolicyError(message, filename=filename, line=line, column=column, source_line=shown)


def _remap(value: Any, where: Callable[[n.Pos], n.Pos]) -> Any:
    """``value`` (nodes, tuples of nodes) with every position passed through ``where``."""
    if isinstance(value, tuple):
        return tuple(_remap(v, where) for v in value)
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        return value
    changes: dict[str, Any] = {}
    for field in dataclasses.fields(value):
        item = getattr(value, field.name)
        if field.name == "pos":
            changes["pos"] = where(item)
        elif field.name == "params_pos":
            changes["params_pos"] = tuple(where(p) for p in item)
        elif field.name != "depth":
            changes[field.name] = _remap(item, where)
    return dataclasses.replace(value, **changes)


class _Out:
    """Generated lines, each with the YAML origins of its pieces, column by column."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.spans: list[list[tuple[int, Origin]]] = []

    def line(self, indent: int, frag: Frag) -> None:
        self.lines.append(" " * indent)
        self.spans.append([])
        for piece, origin in frag:
            if piece == "\n":
                self.lines.append("")
                self.spans.append([])
                continue
            self.spans[-1].append((len(self.lines[-1]) + 1, origin))
            self.lines[-1] += piece

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"

    def where(self, pos: n.Pos) -> n.Pos:
        """The YAML position of generated position ``pos``."""
        line, column = pos
        spans = self.spans[min(max(line, 1), len(self.spans)) - 1] if self.spans else []
        if not spans:
            return (1, 1)
        start, (y_line, y_col, exact) = spans[0]
        for s, origin in spans:
            if s <= column:
                start, (y_line, y_col, exact) = s, origin
        return (y_line, y_col + column - start) if exact else (y_line, y_col)


def _q(text: str) -> str:
    """``text`` as a policy string literal."""
    return '"' + "".join(_ESCAPES.get(c, c) for c in text) + '"'


def _origin(node: yaml.Node) -> Origin:
    return (node.start_mark.line + 1, node.start_mark.column + 1, False)


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag.endswith(":null"):
        return "nothing"
    return f"{node.tag.rsplit(':', 1)[-1]} {node.value!r}"


@dataclasses.dataclass
class _Rule:
    """What the actions of one rule need to know about it."""

    label: str  # how reasons name it: rule "name", rule 3, or the default
    last: bool  # the default: nothing comes after it, so `next` is refused


class _Generator:
    """One rules file -> `_Out`: checks every node on the way and names its position on error."""

    def __init__(self, text: str, filename: str, limits: Limits) -> None:
        self.text = text
        self.filename = filename
        self.limits = limits
        self.out = _Out()
        self.counter = 0
        self.constructor = yaml.SafeLoader("")

    # --- errors and YAML nodes ----------------------------------------------------------------

    def error(self, message: str, node: yaml.Node | yaml.Mark) -> PolicyError:
        mark = node if isinstance(node, yaml.Mark) else node.start_mark
        return _error(self.filename, self.text, message, mark.line + 1, mark.column + 1)

    def fields(
        self, node: yaml.Node, allowed: tuple[str, ...], what: str
    ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """The keys of mapping ``node`` -> (key node, value node); unknown and repeated keys fail."""
        if not isinstance(node, yaml.MappingNode):
            raise self.error(f"type error: {what} must be a mapping, not {_kind(node)}", node)
        found: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key, value in node.value:
            name = self.scalar(key, f"a key of {what}")
            if name in found:
                raise self.error(f"syntax error: {name!r} is given twice in {what}", key)
            if name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                known = ", ".join(allowed)
                raise self.error(
                    f"name error: unknown key {name!r} in {what}{hint}; known: {known}", key
                )
            found[name] = (key, value)
        return found

    def scalar(self, node: yaml.Node, what: str) -> str:
        """The text of a scalar as written (``no`` stays ``"no"``, ``1.5`` stays ``"1.5"``)."""
        if not isinstance(node, yaml.ScalarNode) or node.tag.endswith(":null"):
            raise self.error(f"type error: {what} must be a string, not {_kind(node)}", node)
        return str(node.value)

    def texts(self, node: yaml.Node, what: str) -> list[str]:
        """A string, or a non-empty list of strings."""
        if isinstance(node, yaml.SequenceNode):
            if not node.value:
                raise self.error(f"value error: {what} is an empty list", node)
            return [self.scalar(item, what) for item in node.value]
        return [self.scalar(node, what)]

    def value(self, node: yaml.Node) -> Any:
        return self.constructor.construct_object(node, deep=True)

    def number(self, node: yaml.Node, what: str, *, whole: bool = False) -> str:
        """A number of 0 or more, as a policy literal."""
        value = self.value(node) if isinstance(node, yaml.ScalarNode) else None
        if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
            wanted = "a whole number" if whole else "a number"
            raise self.error(f"type error: {what} must be {wanted}, not {_kind(node)}", node)
        if not 0 <= value < float("inf"):
            raise self.error(f"value error: {what} must be 0 or more, not {node.value}", node)
        if isinstance(value, int):
            return str(value)
        # The language writes a fraction as digits, a point and digits: no exponent.
        return f"{value:.1f}" if value.is_integer() else f"{value:.12f}".rstrip("0")

    def boolean(self, node: yaml.Node, what: str) -> bool:
        value = self.value(node) if isinstance(node, yaml.ScalarNode) else None
        if not isinstance(value, bool):
            raise self.error(f"type error: {what} must be true or false, not {_kind(node)}", node)
        return value

    def choice(self, node: yaml.Node, what: str, choices: tuple[str, ...]) -> str:
        value = self.scalar(node, what)
        if value not in choices:
            raise self.error(
                f"value error: {what} must be one of {', '.join(choices)}, not {value!r}", node
            )
        return value

    def labels(self, node: yaml.Node, what: str) -> list[tuple[str, str]]:
        if not isinstance(node, yaml.MappingNode) or not node.value:
            raise self.error(f"type error: {what} must be a mapping of label names to values", node)
        pairs = [
            (self.scalar(k, f"a label name in {what}"), self.scalar(v, f"a label value in {what}"))
            for k, v in node.value
        ]
        names = [k for k, _ in pairs]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise self.error(
                    f"syntax error: label {name!r} is given twice in {what}", node.value[i][0]
                )
        return pairs

    def embedded(self, node: yaml.Node, what: str) -> Frag:
        """The user's own policy expression in scalar ``node``, checked to be one expression."""
        text = self.scalar(node, what)
        if not isinstance(node, yaml.ScalarNode):  # scalar() refused it already
            raise self.error(f"type error: {what} must be a string", node)
        frag = self._embedded_pieces(node, text)
        probe = _Out()
        probe.line(
            0, [("fn probe(job, workers, hives) { (", _origin(node)), *frag, (") }", _origin(node))]
        )
        try:
            program = parse(probe.text(), self.filename, self.limits)
        except PolicyError as err:
            raise _moved(err, probe, self.text) from None
        body = program.fns[0].body if len(program.fns) == 1 else None
        if body is None or body.stmts or body.tail is None:
            raise self.error(f"syntax error: {what} must be one expression", node)
        return [("(", _origin(node)), *frag, (")", _origin(node))]

    def _embedded_pieces(self, node: yaml.ScalarNode, text: str) -> Frag:
        mark = node.start_mark
        lines = text.split("\n")
        if (
            node.style in (None, "", "'", '"')
            and len(lines) == 1
            and node.end_mark.line == mark.line
        ):
            shift = 0 if node.style in (None, "") else 1
            return [(text, (mark.line + 1, mark.column + 1 + shift, True))]
        if node.style == "|":
            source = self.text.splitlines()
            frag: Frag = []
            for i, piece in enumerate(lines):
                if i:
                    frag.append(_NL)
                y = mark.line + 2 + i
                row = source[y - 1] if y <= len(source) else ""
                indent = len(row) - len(row.lstrip(" ")) - (len(piece) - len(piece.lstrip(" ")))
                frag.append((piece, (y, indent + 1, True)))
            return frag
        frag = []
        for i, piece in enumerate(lines):
            if i:
                frag.append(_NL)
            frag.append((piece, _origin(node)))
        return frag

    # --- the file -----------------------------------------------------------------------------

    def generate(self) -> _Out:
        root = self.compose()
        top = self.fields(root, _TOP, "the rules file")
        if "rules" not in top:
            raise self.error("name error: the rules file needs 'rules' (a list of rules)", root)
        key, rules = top["rules"]
        if not isinstance(rules, yaml.SequenceNode):
            raise self.error(f"type error: 'rules' must be a list, not {_kind(rules)}", rules)
        head = _origin(root)
        name = self.safe(PurePath(self.filename).name)
        self.out.line(
            0, [(f"// Compiled from {name} by rbee: edit the rules, not this file.", head)]
        )
        if "description" in top:
            for row in self.scalar(top["description"][1], "'description'").splitlines():
                self.out.line(
                    0, [(f"// {self.safe(row)}".rstrip(), _origin(top["description"][1]))]
                )
        self.out.line(0, [(f"fn {ENTRY}(job, workers, hives) {{", head)])
        for i, rule in enumerate(rules.value, 1):
            self.rule(rule, i)
        if "default" in top:
            dkey, action = top["default"]
            self.out.line(4, [(f"// the default (line {dkey.start_mark.line + 1})", _origin(dkey))])
            self.action(action, 4, _Rule("the default", last=True))
        else:
            self.out.line(
                4, [("// no default given: the least loaded worker for the model", _origin(key))]
            )
            self.route(None, _origin(key), 4, _Rule("the default", last=True))
        self.out.line(0, [("}", head)])
        return self.out

    def compose(self) -> yaml.Node:
        check_text(self.text, self.filename, self.limits)
        try:
            root = yaml.compose(self.text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark or err.context_mark
            message = f"syntax error: {err.problem or err.context}"
            if mark is None:
                raise PolicyError(message, filename=self.filename) from None
            raise self.error(message, mark) from None
        except yaml.reader.ReaderError as err:
            before = self.text[: err.position]
            line, column = before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1
            message = f"syntax error: character U+{err.character:04X} is not allowed in YAML"
            raise _error(self.filename, self.text, message, line, column) from None
        except RecursionError:
            raise PolicyError(
                "limit exceeded: the YAML is nested too deeply", filename=self.filename
            ) from None
        if root is None:
            raise PolicyError(
                "name error: the rules file is empty: it needs 'rules'", filename=self.filename
            )
        self.check_tree(root)
        return root

    def check_tree(self, root: yaml.Node) -> None:
        """Refuse aliases (a node met twice) and explicit tags, before anything walks the tree.

        Iterative, and it stops at the first repeat, so an alias bomb costs no more than its size.
        """
        seen: set[int] = set()
        stack = [root]
        while stack:
            node = stack.pop()
            if id(node) in seen:
                raise self.error(
                    "syntax error: anchors and aliases are not supported in rules", node
                )
            seen.add(id(node))
            if node.tag.startswith("!"):
                raise self.error(
                    f"syntax error: YAML reads {node.tag} as a tag: quote a value that starts "
                    "with '!'",
                    node,
                )
            if node.tag not in _PLAIN_TAGS:
                raise self.error(f"syntax error: tag {node.tag} is not supported in rules", node)
            if isinstance(node, yaml.MappingNode):
                stack.extend(x for pair in node.value for x in pair)
            elif isinstance(node, yaml.SequenceNode):
                stack.extend(node.value)

    @staticmethod
    def safe(text: str) -> str:
        """``text`` for a line comment."""
        return " ".join(text.split())

    def rule(self, node: yaml.Node, index: int) -> None:
        where = f"rule {index}"
        found = self.fields(node, _RULE, where)
        for needed in ("condition", "action"):
            if needed not in found:
                raise self.error(f"name error: {where} needs {needed!r}", node)
        name = self.scalar(found["name"][1], f"the name of {where}") if "name" in found else None
        label = f'rule "{name}"' if name else where
        title = f"rule {index}" + (f' "{name}"' if name else "")
        self.out.line(
            4, [(f"// {self.safe(title)} (line {node.start_mark.line + 1})", _origin(node))]
        )
        rule = _Rule(label, last=False)
        condition = found["condition"][1]
        if isinstance(condition, yaml.ScalarNode) and self.value(condition) is True:
            self.action(found["action"][1], 4, rule)
            return
        frag, _ = self.condition(condition, where, depth=1)
        self.out.line(4, [("if ", _origin(condition)), *frag, (" {", _origin(condition))])
        self.action(found["action"][1], 8, rule)
        self.out.line(4, [("}", _origin(condition))])

    # --- conditions ---------------------------------------------------------------------------

    def condition(self, node: yaml.Node, where: str, depth: int) -> tuple[Frag, int]:
        """``node`` as a policy expression and its precedence (1 ``||``, 2 ``&&``, 3 tighter)."""
        if depth > self.limits.max_nesting:
            raise self.error(
                f"limit exceeded: conditions nested more than {self.limits.max_nesting} deep", node
            )
        if isinstance(node, yaml.ScalarNode) and isinstance(self.value(node), bool):
            return [(str(self.value(node)).lower(), _origin(node))], 3
        found = self.fields(node, _CONDITIONS, f"the condition of {where}")
        if not found:
            raise self.error(
                f"value error: the condition of {where} is empty (write `true` to match every job)",
                node,
            )
        parts = [self.test(name, key, value, where, depth) for name, (key, value) in found.items()]
        return _join(parts, " && ", 2, _origin(node))

    def test(
        self, name: str, key: yaml.Node, value: yaml.Node, where: str, depth: int
    ) -> tuple[Frag, int]:
        at = _origin(key)
        what = f"{name!r} in {where}"

        def one(text: str, prec: int = 3) -> tuple[Frag, int]:
            return [(text, at)], prec

        if name in ("model", "tenant"):
            items = self.texts(value, what)
            if len(items) == 1:
                return one(f"job.{name} == {_q(items[0])}")
            return one(f"[{', '.join(_q(t) for t in items)}].contains(job.{name})")
        if name in ("model_contains", "model_starts_with"):
            items = self.texts(value, what)
            if name == "model_contains":
                tests = [f"job.model.to_lower().contains({_q(t.lower())})" for t in items]
            else:
                tests = [f"job.model.starts_with({_q(t)})" for t in items]
            return one(" || ".join(tests), 1 if len(tests) > 1 else 3)
        if name == "priority":
            return one(f"job.priority == {_q(self.choice(value, what, ('interactive', 'batch')))}")
        if name == "job_label":
            pairs = self.labels(value, what)
            tests = [f"job.labels[{_q(k)}] == {_q(v)}" for k, v in pairs]
            return one(" && ".join(tests), 2 if len(tests) > 1 else 3)
        if name == "hive_label":
            chain = "".join(f".with_label({_q(k)}, {_q(v)})" for k, v in self.labels(value, what))
            return one(f"!hives{chain}.is_empty()")
        if name == "prompt_tokens_over":
            return one(f"job.prompt_tokens > {self.number(value, what, whole=True)}")
        if name == "tokens_over":
            return one(
                f"job.prompt_tokens + job.max_tokens > {self.number(value, what, whole=True)}"
            )
        if name == "tenant_over_quota":
            negate = "" if self.boolean(value, what) else "!"
            return one(f"{negate}tenant_over_quota(job.tenant)")
        if name == "tenant_quota_below":
            share = self.number(value, what)
            if float(share) > 1:
                raise self.error(
                    f"value error: {what} is a share from 0 to 1, not {value.value}", value
                )
            return one(f"tenant_remaining_quota(job.tenant) < {share}")
        if name == "free_slots_below":
            count = self.number(value, what, whole=True)
            return one(
                f"workers.with_model(job.model).available().map(|w| w.slots_free).sum() < {count}"
            )
        if name == "expr":
            return self.embedded(value, what), 3
        if name == "not":
            frag, prec = self.condition(value, where, depth + 1)
            return [("!", at), *_paren(frag, prec < 3, at)], 3
        conditions: list[yaml.Node] = value.value if isinstance(value, yaml.SequenceNode) else []
        if not conditions:
            raise self.error(f"type error: {what} must be a non-empty list of conditions", value)
        parts = [self.condition(item, where, depth + 1) for item in conditions]
        return _join(parts, " || " if name == "any" else " && ", 1 if name == "any" else 2, at)

    # --- actions ------------------------------------------------------------------------------

    def action(self, node: yaml.Node, indent: int, rule: _Rule) -> None:
        """Emit the statements of an action: each path returns, or goes on where `next` says."""
        if isinstance(node, yaml.ScalarNode):
            kind = self.choice(node, "an action", _ACTIONS[:4])
            self.emit_action(kind, None, _origin(node), indent, rule)
            return
        found = self.fields(node, _ACTIONS, f"the action of {rule.label}")
        if len(found) != 1:
            raise self.error(
                f"value error: an action is exactly one of {', '.join(_ACTIONS)}, here {len(found)}",
                node,
            )
        ((kind, (key, value)),) = found.items()
        self.emit_action(kind, value, _origin(key), indent, rule)

    def emit_action(
        self, kind: str, value: yaml.Node | None, at: Origin, indent: int, rule: _Rule
    ) -> None:
        if kind in ("queue", "reject"):
            reason = (
                self.reason(value, rule, kind)
                if value is not None and not value.tag.endswith(":null")
                else None
            )
            if reason is None:
                default = "queued by " if kind == "queue" else "rejected by "
                reason = [(_q(default + rule.label), at)]
            self.out.line(indent, [(f"return {kind}(", at), *reason, (");", at)])
        elif kind == "select":
            if value is None:
                raise self.error_at("type error: 'select' needs a policy expression", at)
            self.out.line(
                indent,
                [("return ", at), *self.embedded(value, f"'select' in {rule.label}"), (";", at)],
            )
        elif kind == "route":
            self.route(value, at, indent, rule)
        else:
            self.spawn(value, at, indent, rule)

    def error_at(self, message: str, at: Origin) -> PolicyError:
        return _error(self.filename, self.text, message, at[0], at[1])

    def reason(self, node: yaml.Node, rule: _Rule, kind: str) -> Frag:
        """A reason with ``{model}``, ``{tenant}``, ``{priority}`` and ``{rule}`` filled in."""
        text = self.scalar(node, f"the {kind} reason of {rule.label}")
        at = _origin(node)
        parts: list[str] = []
        literal, last = "", 0
        for m in _PLACEHOLDER.finditer(text):
            name = m.group(1)
            if name not in (*_PLACEHOLDERS, "rule"):
                raise self.error(
                    f"name error: unknown placeholder {{{name}}} in the reason; known: "
                    "{model}, {tenant}, {priority}, {rule}",
                    node,
                )
            literal += text[last : m.start()]
            last = m.end()
            if name == "rule":
                literal += rule.label
                continue
            if literal:
                parts.append(_q(literal))
            parts.append(_PLACEHOLDERS[name])
            literal = ""
        literal += text[last:]
        if literal or not parts:
            parts.append(_q(literal))
        return [(" + ".join(parts), at)]

    def options(
        self, node: yaml.Node | None, allowed: tuple[str, ...], what: str
    ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if node is None or (isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")):
            return {}
        return self.fields(node, allowed, what)

    def fresh(self) -> int:
        self.counter += 1
        return self.counter

    def route(self, node: yaml.Node | None, at: Origin, indent: int, rule: _Rule) -> None:
        """The least loaded (or ``pick``) free worker for the job's model among those kept."""
        opts = self.options(node, _ROUTE, f"'route' in {rule.label}")
        chain = self.route_chain(opts)
        pick = (
            self.choice(opts["pick"][1], "'pick' of 'route'", _ROUTE_PICKS)
            if "pick" in opts
            else "least_loaded"
        )
        i = self.fresh()
        pool, free = f"pool{i}", f"free{i}"
        self.out.line(indent, [(f"let {pool} = {''.join(chain)};", at)])
        self.out.line(indent, [(f"let {free} = {pool}.available();", at)])
        self.out.line(indent, [(f"if !{free}.is_empty() {{", at)])
        self.out.line(indent + 4, [(f"return {free}.{pick}();", at)])
        self.out.line(indent, [("}", at)])
        matching = f" that matches {rule.label}" if len(chain) > 1 else ""
        busy = f'queue("every worker for " + job.model + {_q(matching + " is busy")})'
        none = (
            f'reject("no worker for " + job.model + {_q(" matches " + rule.label)})'
            if len(chain) > 1
            else 'reject("no worker serves " + job.model)'
        )
        self.route_fallbacks(opts, pool, (busy, none), at, indent, rule)

    def route_fallbacks(
        self,
        opts: dict[str, tuple[yaml.Node, yaml.Node]],
        pool: str,
        defaults: tuple[str, str],
        at: Origin,
        indent: int,
        rule: _Rule,
    ) -> None:
        """What a route does when the kept workers are all busy, or when none was kept."""
        busy, none = opts.get("if_busy"), opts.get("if_none")
        busy_next = busy is not None and self.is_next(busy[1])
        none_next = none is not None and self.is_next(none[1])
        for given, is_next in ((busy, busy_next), (none, none_next)):
            if is_next and given is not None:
                self.check_next(given[1], rule)
        if busy_next and none_next:
            return
        if not busy_next:
            self.out.line(indent, [(f"if !{pool}.is_empty() {{", at)])
            self.fallback(busy, defaults[0], at, indent + 4, rule)
            self.out.line(indent, [("}", at)])
        if busy_next:
            # Busy goes on to the next rule, so "none kept" needs its own test.
            self.out.line(indent, [(f"if {pool}.is_empty() {{", at)])
            self.fallback(none, defaults[1], at, indent + 4, rule)
            self.out.line(indent, [("}", at)])
        elif not none_next:
            self.fallback(none, defaults[1], at, indent, rule)

    def route_chain(self, opts: dict[str, tuple[yaml.Node, yaml.Node]]) -> list[str]:
        """The workers a route keeps, as a chain of filters on ``workers``."""
        chain = ["workers.with_model(job.model)"]
        if "hive" in opts:
            hives = self.texts(opts["hive"][1], "'hive' of 'route'")
            chain.append(
                f".on_hive({_q(hives[0])})"
                if len(hives) == 1
                else f".filter(|w| [{', '.join(_q(h) for h in hives)}].contains(w.hive))"
            )
        if "label" in opts:
            chain += [
                f".with_label({_q(k)}, {_q(v)})"
                for k, v in self.labels(opts["label"][1], "'label' of 'route'")
            ]
        if "device" in opts:
            chain.append(
                f".filter(|w| w.device.starts_with({_q(self.scalar(opts['device'][1], 'the device'))}))"
            )
        if "min_vram_mb" in opts:
            chain.append(
                f".filter(|w| w.total_vram_mb >= {self.number(opts['min_vram_mb'][1], 'min_vram_mb')})"
            )
        if "min_vram_free_mb" in opts:
            chain.append(
                f".with_capacity({self.number(opts['min_vram_free_mb'][1], 'min_vram_free_mb')})"
            )
        return chain

    def is_next(self, node: yaml.Node) -> bool:
        return isinstance(node, yaml.ScalarNode) and node.value == "next"

    def check_next(self, node: yaml.Node | None, rule: _Rule) -> None:
        if rule.last and node is not None:
            raise self.error("value error: 'next' in the default: no rule comes after it", node)

    def fallback(
        self,
        given: tuple[yaml.Node, yaml.Node] | None,
        default: str,
        at: Origin,
        indent: int,
        rule: _Rule,
    ) -> None:
        if given is None:
            self.out.line(indent, [(f"return {default};", at)])
            return
        self.action(given[1], indent, rule)

    def spawn(self, node: yaml.Node | None, at: Origin, indent: int, rule: _Rule) -> None:
        """A new worker for the job's model on the least loaded (or ``pick``) hive kept."""
        opts = self.options(node, _SPAWN, f"'spawn' in {rule.label}")
        chain = ["hives"]
        if "hive" in opts:
            names = self.texts(opts["hive"][1], "'hive' of 'spawn'")
            chain.append(f".filter(|h| [{', '.join(_q(h) for h in names)}].contains(h.name))")
        if "label" in opts:
            chain += [
                f".with_label({_q(k)}, {_q(v)})"
                for k, v in self.labels(opts["label"][1], "'label' of 'spawn'")
            ]
        if "min_vram_free_mb" in opts:
            chain.append(
                f".with_capacity({self.number(opts['min_vram_free_mb'][1], 'min_vram_free_mb')})"
            )
        pick = (
            self.choice(opts["pick"][1], "'pick' of 'spawn'", _SPAWN_PICKS)
            if "pick" in opts
            else "least_loaded"
        )
        prefer = (
            self.boolean(opts["prefer_model_files"][1], "prefer_model_files")
            if "prefer_model_files" in opts
            else True
        )
        device = f", {_q(self.scalar(opts['device'][1], 'the device'))}" if "device" in opts else ""
        i = self.fresh()
        hosts, having = f"hosts{i}", f"having{i}"
        self.out.line(indent, [(f"let {hosts} = {''.join(chain)};", at)])
        self.out.line(indent, [(f"if !{hosts}.is_empty() {{", at)])
        if prefer:
            self.out.line(indent + 4, [(f"let {having} = {hosts}.with_model(job.model);", at)])
            self.out.line(indent + 4, [(f"if !{having}.is_empty() {{", at)])
            self.out.line(
                indent + 8, [(f"return spawn({having}.{pick}(), job.model{device});", at)]
            )
            self.out.line(indent + 4, [("}", at)])
        self.out.line(indent + 4, [(f"return spawn({hosts}.{pick}(), job.model{device});", at)])
        self.out.line(indent, [("}", at)])
        none = opts.get("if_none")
        if none is not None and self.is_next(none[1]):
            self.check_next(none[1], rule)
            return
        default = (
            f"reject({_q('no online hive matches ' + rule.label + ' to start ')} + job.model)"
            if len(chain) > 1
            else 'reject("no hive is online to start " + job.model)'
        )
        self.fallback(none, default, at, indent, rule)


def _paren(frag: Frag, needed: bool, at: Origin) -> Frag:
    return [("(", at), *frag, (")", at)] if needed else frag


def _join(parts: list[tuple[Frag, int]], op: str, prec: int, at: Origin) -> tuple[Frag, int]:
    if len(parts) == 1:
        return parts[0]
    out: Frag = []
    for i, (frag, p) in enumerate(parts):
        if i:
            out.append((op, at))
        # `&&` inside `||` needs no parentheses, but reads better with them.
        out += _paren(frag, p not in (3, prec), at)
    return out, prec


def _generate(text: str, filename: str, limits: Limits) -> _Out:
    return _Generator(text, filename, limits).generate()
