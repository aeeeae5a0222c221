"""Predicates over metrics: the conditions of a claim, parsed without ever running code.

A predicate is a comparison (or several joined by ``and``, ``or``, ``not``)
over metric columns and model constants named as in the model and the metrics
table, with numbers, ``+ - * /``, unary minus and parentheses::

    dampening efficiency A < 0.5
    breakout time A < 2 * procurement time A
    not (treaty status == "defection") and insecurity reduction vs baseline A > 0.1

Names may contain spaces and hyphens (``determinant ab-kl``); they are matched
case-insensitively, the longest known name first. A text metric (``treaty
status``) may only be compared with ``==`` or ``!=`` to a quoted string.

Parsing: the known names are replaced by placeholders, the result is parsed by
:func:`ast.parse` in ``eval`` mode, and every node must be one of a short
whitelist (comparisons, boolean and arithmetic operators, numbers, strings,
placeholders). Anything else (attribute access, calls, subscripts, lambdas,
comprehensions, ``**``) is refused with a :class:`~armsdyn.errors.ConfigError`;
an unknown name is refused with the closest known name and the list of allowed
names. Nothing is ever passed to ``eval`` or ``exec``: :meth:`Predicate.evaluate`
walks the checked tree itself, with numpy arrays (one value per run).

Undefined values (NaN, e.g. the breakout time of a treaty that never broke
down) follow Kleene's three-valued logic: a comparison with NaN is undefined,
``False and undefined`` is false, ``True or undefined`` is true. A claim holds
in a run only where its predicate is true.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np

from armsdyn.errors import ConfigError, did_you_mean

#: Longest predicate text accepted (characters).
MAX_LENGTH = 2000

_KEYWORDS = frozenset({"and", "or", "not"})
_PLACEHOLDER = re.compile(r"^_n(\d+)_$")
_STRING = re.compile(r"\"[^\"]*\"|'[^']*'")
_WORD = re.compile(r"(?<![\w.])[A-Za-z_]\w*")

_COMPARE = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}

#: What a refused node is called in the error message.
_FORBIDDEN = {
    ast.Attribute: "attribute access ('.')",
    ast.Call: "function calls",
    ast.Subscript: "subscripts ('[...]')",
    ast.Lambda: "lambda",
    ast.IfExp: "conditional expressions (if/else)",
    ast.NamedExpr: "assignment (':=')",
    ast.Starred: "starred expressions",
    ast.JoinedStr: "f-strings",
    ast.Dict: "dicts",
    ast.List: "lists",
    ast.Tuple: "tuples",
    ast.Set: "sets",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.Pow: "'**'",
    ast.Mod: "'%'",
    ast.FloorDiv: "'//'",
    ast.MatMult: "'@'",
    ast.BitAnd: "'&' (write 'and')",
    ast.BitOr: "'|' (write 'or')",
    ast.BitXor: "'^'",
    ast.LShift: "'<<'",
    ast.RShift: "'>>'",
    ast.Invert: "'~' (write 'not')",
    ast.Is: "'is' (write '==')",
    ast.IsNot: "'is not' (write '!=')",
    ast.In: "'in'",
    ast.NotIn: "'not in'",
}


class PredicateError(ConfigError):
    """A predicate that cannot be parsed: unknown names, forbidden syntax, mixed types."""


@dataclass(frozen=True)
class Predicate:
    """A checked predicate.

    Attributes
    ----------
    text : str
        As written.
    names : tuple of str
        The names it refers to (canonical spelling), in order of first use.
    """

    text: str
    names: tuple[str, ...]
    _tree: ast.Expression
    _slots: tuple[str, ...]

    def evaluate(self, values: Mapping[str, Any]) -> np.ndarray:
        """Truth per run: 1.0 true, 0.0 false, NaN undefined.

        Parameters
        ----------
        values : mapping of str to array-like
            Every name in :attr:`names` to one value per run (or a scalar).
        """
        missing = [n for n in self.names if n not in values]
        if missing:
            msg = f"predicate {self.text!r}: no values for {', '.join(map(repr, missing))}"
            raise KeyError(msg)
        out = _Evaluator(self._slots, values).visit(self._tree.body)
        return np.asarray(out, dtype=float)

    def holds(self, values: Mapping[str, Any]) -> np.ndarray:
        """Boolean per run: true only where the predicate is true (undefined counts as not holding)."""
        return self.evaluate(values) == 1.0


def parse_predicate(
    text: str, allowed: Iterable[str], *, text_names: Iterable[str] = (), where: str = "predicate"
) -> Predicate:
    """Parse and check a predicate.

    Parameters
    ----------
    text : str
        The predicate.
    allowed : iterable of str
        Names it may use (metric columns, constants).
    text_names : iterable of str
        Those of `allowed` whose values are text (compared with ``==``/``!=`` only).
    where : str
        Prefix of error messages (e.g. the config key).

    Raises
    ------
    PredicateError
        Naming what is wrong and what is allowed.
    """
    allowed = list(dict.fromkeys(allowed))
    texts = {n.casefold() for n in text_names}
    if not isinstance(text, str) or not text.strip():
        raise PredicateError(f"{where}: is empty; write a comparison such as 'dampening efficiency A < 0.5'")
    if len(text) > MAX_LENGTH:
        raise PredicateError(f"{where}: is {len(text)} characters long; at most {MAX_LENGTH} are allowed")
    if re.search(r"(?<![\w.])_n\d+_(?!\w)", text):
        raise PredicateError(f"{where}: {text!r}: names of the form _n<number>_ are reserved")
    substituted, slots = _substitute(text, allowed)
    try:
        tree = ast.parse(substituted.strip(), mode="eval")
    except SyntaxError as exc:
        _raise_unknown(substituted, slots, allowed, where)
        raise PredicateError(f"{where}: {text!r} is not a valid predicate ({exc.msg})") from None
    except (RecursionError, MemoryError, ValueError):
        raise PredicateError(f"{where}: {text!r} is nested too deeply or holds a null character") from None
    checker = _Checker(slots, texts, allowed, where, text)
    kind = checker.visit(tree.body)
    if kind != "bool":
        raise PredicateError(
            f"{where}: {text!r} is not a condition; compare values, e.g. 'dampening efficiency A < 0.5'"
        )
    used = tuple(dict.fromkeys(slots[i] for i in checker.used))
    return Predicate(text=text, names=used, _tree=tree, _slots=tuple(slots))


def _normal(name: str) -> str:
    return " ".join(name.split()).casefold()


def _substitute(text: str, allowed: list[str]) -> tuple[str, list[str]]:
    """Replace known names (outside string literals) by placeholders ``_n<i>_``."""
    canonical: dict[str, str] = {}
    for name in allowed:
        canonical.setdefault(_normal(name), name)
    ordered = sorted(canonical, key=len, reverse=True)
    slots: list[str] = []
    index: dict[str, int] = {}
    if ordered:
        alternatives = "|".join(r"\s+".join(map(re.escape, n.split(" "))) for n in ordered)
        pattern = re.compile(rf"(?<![\w.])(?:{alternatives})(?!\w)", re.IGNORECASE)
    else:
        pattern = None

    def replace(match: re.Match[str]) -> str:
        name = canonical[_normal(match.group(0))]
        if name not in index:
            index[name] = len(slots)
            slots.append(name)
        return f"_n{index[name]}_"

    parts, last = [], 0
    for literal in _STRING.finditer(text):
        chunk = text[last : literal.start()]
        parts.append(pattern.sub(replace, chunk) if pattern else chunk)
        parts.append(literal.group(0))
        last = literal.end()
    chunk = text[last:]
    parts.append(pattern.sub(replace, chunk) if pattern else chunk)
    return "".join(parts), slots


def _unknown_phrases(substituted: str) -> list[str]:
    """Runs of words that are neither known names nor keywords (outside string literals)."""
    phrases: list[str] = []
    for chunk in _STRING.split(substituted):
        current: list[str] = []
        end = -1
        for word in _WORD.finditer(chunk):
            w = word.group(0)
            known = w in _KEYWORDS or _PLACEHOLDER.match(w)
            joined = current and not known and chunk[end : word.start()].strip(" \t-") == ""
            if joined:
                current.append(chunk[end : word.start()] + w)
            else:
                if current:
                    phrases.append("".join(current))
                current = [] if known else [w]
            end = word.end()
        if current:
            phrases.append("".join(current))
    return phrases


def _raise_unknown(substituted: str, slots: list[str], allowed: list[str], where: str) -> None:
    phrases = _unknown_phrases(substituted)
    if not phrases:
        return
    name = phrases[0]
    listing = ", ".join(allowed) if allowed else "none"
    raise PredicateError(f"{where}: unknown name {name!r}{did_you_mean(name, allowed)} (allowed names: {listing})")


class _Checker(ast.NodeVisitor):
    """Refuses every node outside the whitelist and infers types: 'num', 'text' or 'bool'."""

    def __init__(self, slots: list[str], texts: set[str], allowed: list[str], where: str, text: str) -> None:
        self.slots, self.texts, self.allowed, self.where, self.text = slots, texts, allowed, where, text
        self.used: list[int] = []

    def fail(self, what: str) -> NoReturn:
        raise PredicateError(f"{self.where}: {self.text!r}: {what}")

    def generic_visit(self, node: ast.AST) -> str:
        what = _FORBIDDEN.get(type(node), f"{type(node).__name__} expressions")
        self.fail(f"{what} not allowed; a predicate uses names, numbers, + - * /, comparisons, and/or/not")
        raise AssertionError  # pragma: no cover - fail raised

    def visit_Name(self, node: ast.Name) -> str:
        found = _PLACEHOLDER.match(node.id)
        if found is None:
            listing = ", ".join(self.allowed) if self.allowed else "none"
            self.fail(f"unknown name {node.id!r}{did_you_mean(node.id, self.allowed)} (allowed names: {listing})")
        i = int(found.group(1))
        self.used.append(i)
        return "text" if _normal(self.slots[i]) in self.texts else "num"

    def visit_Constant(self, node: ast.Constant) -> str:
        if isinstance(node.value, bool) or not isinstance(node.value, int | float | str):
            self.fail(f"the constant {node.value!r} is not allowed; use numbers and quoted strings")
        return "text" if isinstance(node.value, str) else "num"

    def visit_UnaryOp(self, node: ast.UnaryOp) -> str:
        kind = self.visit(node.operand)
        if isinstance(node.op, ast.Not):
            if kind != "bool":
                self.fail("'not' applies to a condition, e.g. 'not (x < 1)'")
            return "bool"
        if not isinstance(node.op, ast.USub | ast.UAdd):
            self.generic_visit(node.op)
        if kind != "num":
            self.fail("a sign applies to a number")
        return "num"

    def visit_BinOp(self, node: ast.BinOp) -> str:
        if type(node.op) not in _ARITHMETIC:
            self.generic_visit(node.op)
        kinds = (self.visit(node.left), self.visit(node.right))
        if kinds != ("num", "num"):
            self.fail("arithmetic (+ - * /) applies to numbers only")
        return "num"

    def visit_BoolOp(self, node: ast.BoolOp) -> str:
        if any(self.visit(v) != "bool" for v in node.values):
            self.fail("'and'/'or' join conditions (comparisons), e.g. 'x < 1 and y > 2'")
        return "bool"

    def visit_Compare(self, node: ast.Compare) -> str:
        kinds = [self.visit(node.left), *(self.visit(c) for c in node.comparators)]
        for op, left, right in zip(node.ops, kinds, kinds[1:], strict=False):
            if type(op) not in _COMPARE:
                self.generic_visit(op)
            if "bool" in (left, right):
                self.fail("a comparison compares values, not conditions; use and/or to join conditions")
            if left != right:
                self.fail("a text metric is compared with a quoted string, and a number with a number")
            if left == "text" and not isinstance(op, ast.Eq | ast.NotEq):
                self.fail("text is compared with == or != only")
        return "bool"


def _and(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.where((a == 0) | (b == 0), 0.0, np.where(np.isnan(a) | np.isnan(b), np.nan, 1.0))


def _or(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.where((a == 1) | (b == 1), 1.0, np.where(np.isnan(a) | np.isnan(b), np.nan, 0.0))


class _Evaluator(ast.NodeVisitor):
    """Evaluates a tree :class:`_Checker` accepted, over numpy arrays."""

    def __init__(self, slots: tuple[str, ...], values: Mapping[str, Any]) -> None:
        self.slots, self.values = slots, values

    def generic_visit(self, node: ast.AST) -> Any:  # pragma: no cover - the checker refused it
        raise AssertionError(type(node).__name__)

    def visit_Name(self, node: ast.Name) -> Any:
        value = np.asarray(self.values[self.slots[int(node.id[2:-1])]])
        return value if value.dtype.kind in "USO" else value.astype(float)

    def visit_Constant(self, node: ast.Constant) -> Any:
        value = node.value
        assert isinstance(value, int | float | str)  # the checker let only these through
        return value if isinstance(value, str) else float(value)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> Any:
        value = self.visit(node.operand)
        if isinstance(node.op, ast.Not):
            return 1.0 - np.asarray(value, dtype=float)
        return -value if isinstance(node.op, ast.USub) else +value

    def visit_BinOp(self, node: ast.BinOp) -> Any:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return _ARITHMETIC[type(node.op)](self.visit(node.left), self.visit(node.right))

    def visit_BoolOp(self, node: ast.BoolOp) -> Any:
        combine = _and if isinstance(node.op, ast.And) else _or
        result = np.asarray(self.visit(node.values[0]), dtype=float)
        for value in node.values[1:]:
            result = combine(result, np.asarray(self.visit(value), dtype=float))
        return result

    def visit_Compare(self, node: ast.Compare) -> Any:
        operands = [self.visit(node.left), *(self.visit(c) for c in node.comparators)]
        result: Any = 1.0
        for op, left, right in zip(node.ops, operands, operands[1:], strict=False):
            if isinstance(left, str) or np.asarray(left).dtype.kind in "USO":
                step = np.asarray(_COMPARE[type(op)](np.asarray(left, dtype=str), np.asarray(right, dtype=str)), float)
            else:
                left_a, right_a = np.asarray(left, dtype=float), np.asarray(right, dtype=float)
                with np.errstate(invalid="ignore"):
                    truth = _COMPARE[type(op)](left_a, right_a).astype(float)
                step = np.where(np.isnan(left_a) | np.isnan(right_a), np.nan, truth)
            result = _and(np.asarray(result, dtype=float), step)
        return result
