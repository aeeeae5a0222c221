"""Dimensional consistency of a model's equations (``armsdyn check --units``).

Every variable's units string (Vensim's ``Dmnl``, ``1/Year``, ``units/Year``,
``money/units``; PySD has already split off the ``[min, max]`` range) is parsed
with pint in a registry where every word is a base dimension of its own. Each
equation's dimensions are then inferred from PySD's abstract syntax:

* ``+``, ``-``, comparisons, MIN/MAX and IF THEN ELSE need equal dimensions
  (a bare number fits anything, as in Vensim);
* ``*`` and ``/`` combine dimensions; ``^`` needs a dimensionless number exponent;
* EXP, LN and LOG need a dimensionless argument;
* SMOOTH and DELAY keep their input's units; STEP keeps its height's, RAMP is
  its slope times time, PULSE is dimensionless;
* INTEG: the stock's units are the flow's units times the model's time unit
  (the units of TIME STEP).

A variable whose inferred dimensions differ from its declared units, and any
operation on unlike quantities, is reported as a :class:`UnitIssue`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from armsdyn.errors import ModelError
from armsdyn.model import parse_model

DIMENSIONLESS_WORDS = frozenset({"dmnl", "dimensionless", "fraction", "percent", "1"})
_WORD = re.compile(r"[A-Za-z_$][A-Za-z_0-9$]*")


class _Number:
    """A bare number: dimensionless in * and /, and accepted beside any quantity in + and -."""

    def __repr__(self) -> str:
        return "number"


NUMBER = _Number()


@dataclass(frozen=True)
class UnitIssue:
    """One dimensional inconsistency: the variable, its equation, and the two dimensions that disagree."""

    variable: str
    equation: str
    left: str
    right: str
    problem: str

    def __str__(self) -> str:
        return f"{self.variable}: {self.problem}: [{self.left}] vs [{self.right}] in  {self.variable} = {self.equation}"


def _identifier(name: str) -> str:
    return re.sub(r"\W+", "_", name.strip().lower()).strip("_")


@cache
def _registry() -> Any:
    import pint  # third-party, loaded only when units are checked

    return pint.UnitRegistry(None)


def parse_units(text: str) -> Any | None:
    """The pint unit of a Vensim units string, or None when the variable declares none.

    Every word not known yet becomes a new base dimension (``arms``, ``money``,
    ``Year``); ``Dmnl`` is dimensionless. A trailing ``[min, max]`` range is ignored.

    Raises
    ------
    ModelError
        If the string is not a product, quotient or power of words and numbers.
    """
    text = text.split("[", 1)[0].strip()
    if not text:
        return None
    ureg = _registry()
    if text.lower() in DIMENSIONLESS_WORDS:
        return ureg.dimensionless
    safe = text
    for word in sorted(set(_WORD.findall(text)), key=len, reverse=True):
        if word.lower() in DIMENSIONLESS_WORDS:
            safe = re.sub(rf"\b{re.escape(word)}\b", "1", safe)
            continue
        name = "u_" + word.replace("$", "_dollar")
        if name not in ureg:
            ureg.define(f"{name} = [{name}]")
        safe = re.sub(rf"(?<![\w$]){re.escape(word)}(?![\w$])", name, safe)
    try:
        return ureg.parse_units(safe)
    except Exception as exc:
        msg = f"cannot read units {text!r}: {exc}"
        raise ModelError(msg) from exc


def show(unit: Any) -> str:
    """A unit as Vensim would write it (``Dmnl`` for dimensionless)."""
    if unit is NUMBER:
        return "number"
    if unit is None:
        return "?"
    text = str(unit).replace("u_", "").replace("_dollar", "$").replace(" ", "")
    return text if text and text != "dimensionless" else "Dmnl"


def _equations(path: Path) -> dict[str, str]:
    """Each variable's equation text as written in a ``.mdl`` file (identifier -> text)."""
    if path.suffix.lower() != ".mdl":
        return {}
    text = path.read_text(encoding="utf-8", errors="replace")
    text = text.split("\\\\\\---///", 1)[0].replace("{UTF-8}", "")
    found: dict[str, list[str]] = {}
    for chunk in text.split("|"):
        body = chunk.split("~", 1)[0].replace("\\\n", " ")
        if "=" not in body:
            continue
        lhs, rhs = body.split("=", 1)
        name = _identifier(lhs.split("[", 1)[0].split("(", 1)[0])
        found.setdefault(name, []).append(" ".join(rhs.split()))
    return {k: "; ".join(v) for k, v in found.items()}


class _Checker:
    def __init__(self, units: dict[str, Any], time_unit: Any) -> None:
        self.units = units
        self.time = time_unit
        self.problems: list[tuple[str, Any, Any]] = []

    def flag(self, problem: str, a: Any, b: Any) -> None:
        self.problems.append((problem, a, b))

    def same(self, problem: str, values: list[Any]) -> Any:
        """The common dimensions of values that must agree (numbers and unknowns fit anything)."""
        known = [v for v in values if v is not None and v is not NUMBER]
        for other in known[1:]:
            if other != known[0]:
                self.flag(problem, known[0], other)
        if any(v is None for v in values):
            return None  # an unchecked operand (a lookup, a variable without units) hides the result
        return known[0] if known else NUMBER

    def need_dimensionless(self, problem: str, value: Any) -> None:
        if value is not None and value is not NUMBER and value != _registry().dimensionless:
            self.flag(problem, value, _registry().dimensionless)

    @staticmethod
    def mul(a: Any, b: Any, divide: bool = False) -> Any:
        if a is None or b is None:
            return None
        if a is NUMBER and b is NUMBER:
            return NUMBER
        one = _registry().dimensionless
        a = one if a is NUMBER else a
        b = one if b is NUMBER else b
        return a / b if divide else a * b

    def infer(self, node: Any) -> Any:  # one case per syntax node
        kind = type(node).__name__
        if isinstance(node, bool | int | float):
            return NUMBER
        if kind == "ReferenceStructure":
            ref = node.reference
            if ref == "time":
                return self.time
            return self.units.get(ref)
        if kind == "ArithmeticStructure":
            return self.arithmetic(node.operators, list(node.arguments))
        if kind == "LogicStructure":
            args = [self.infer(a) for a in node.arguments]
            if any(op in {"<", ">", "<=", ">=", "=", "<>"} for op in node.operators):
                self.same("comparison of unlike quantities", args)
            return NUMBER
        if kind == "IntegStructure":
            flow = self.infer(node.flow)
            initial = self.infer(node.initial)
            stock = self.mul(flow, self.time)
            return self.same("INTEG's initial value and flow x time differ", [stock, initial])
        if kind in {"SmoothStructure", "SmoothNStructure", "TrendStructure"}:
            value = self.infer(node.input)
            if kind != "TrendStructure":
                self.same("SMOOTH's initial value differs from its input", [value, self.infer(node.initial)])
            return value if kind != "TrendStructure" else self.mul(value, self.time, divide=True)
        if kind in {"DelayStructure", "DelayNStructure", "DelayFixedStructure"}:
            value = self.infer(node.input)
            self.same("DELAY's initial value differs from its input", [value, self.infer(node.initial)])
            return value
        if kind == "InitialStructure":
            return self.infer(node.initial)
        if kind == "CallStructure":
            return self.call(node)
        return None  # lookups, data, GET functions: not checked

    def arithmetic(self, operators: list[str], arguments: list[Any]) -> Any:
        if len(operators) == len(arguments):  # a leading unary minus: -x keeps x's dimensions
            operators = operators[1:]
        value = self.infer(arguments[0])
        for op, arg in zip(operators, arguments[1:], strict=True):
            if op == "^":
                self.need_dimensionless("exponent with dimensions", self.infer(arg))
                if value is None or value is NUMBER:
                    continue
                if isinstance(arg, int | float):
                    value = value**arg
                elif value != _registry().dimensionless:
                    self.flag("power of a quantity with dimensions to a variable exponent", value, NUMBER)
                    value = None
                continue
            other = self.infer(arg)
            if op in {"+", "-"}:
                value = self.same(f"'{op}' of unlike quantities", [value, other])
            elif op in {"*", "/"}:
                value = self.mul(value, other, divide=op == "/")
            else:
                value = None
        return value

    def call(self, node: Any) -> Any:  # one case per function
        name = getattr(node.function, "reference", "")
        args = list(node.arguments)
        if name in {"max", "min"}:
            return self.same(f"{name.upper()} of unlike quantities", [self.infer(a) for a in args])
        if name == "if_then_else":
            self.infer(args[0])
            return self.same("IF THEN ELSE branches differ", [self.infer(a) for a in args[1:]])
        if name in {"exp", "ln", "log"}:
            for a in args:
                self.need_dimensionless(f"{name.upper()} of a quantity with dimensions", self.infer(a))
            return _registry().dimensionless
        if name in {"xidz", "zidz"}:
            ratio = self.mul(self.infer(args[0]), self.infer(args[1]), divide=True)
            if name == "xidz":
                return self.same("XIDZ's fallback differs from the ratio", [ratio, self.infer(args[2])])
            return ratio
        if name == "step":
            self.same("STEP time is not in the time unit", [self.infer(args[1]), self.time])
            return self.infer(args[0])
        if name == "ramp":
            for a in args[1:]:
                self.same("RAMP time is not in the time unit", [self.infer(a), self.time])
            return self.mul(self.infer(args[0]), self.time)
        if name in {"pulse", "pulse_train"}:
            for a in args[:2]:
                self.same("PULSE time is not in the time unit", [self.infer(a), self.time])
            return _registry().dimensionless
        if name in {"abs", "integer", "sum", "prod", "vmax", "vmin", "modulo"}:
            value = self.infer(args[0])
            return value if name != "prod" else None
        if name == "sqrt":
            value = self.infer(args[0])
            return value**0.5 if value is not None and value is not NUMBER else value
        if name in self.units:  # a lookup called with its input
            return self.units[name]
        return None


def check_units(path: str | Path) -> list[UnitIssue]:
    """Dimensional inconsistencies in a model file's equations, in file order.

    Variables without declared units, lookups and data are not checked; their
    uses fit anything.

    Raises
    ------
    ModelError
        If the model cannot be parsed or a units string cannot be read.
    """
    path = Path(path)
    abstract = parse_model(path)
    elements = [e for s in abstract.sections for e in s.elements]
    units: dict[str, Any] = {}
    for element in elements:
        try:
            units[_identifier(element.name)] = parse_units(element.units or "")
        except ModelError as exc:
            msg = f"{path}: variable {element.name!r}: {exc}"
            raise ModelError(msg) from exc
    time_unit = units.get("time_step") or units.get("time") or parse_units("Year")
    units.setdefault("time", time_unit)
    texts = _equations(path)
    issues: list[UnitIssue] = []
    for element in elements:
        name = _identifier(element.name)
        declared = units.get(name)
        for component in element.components:
            if component.type == "Lookup" or type(component.ast).__name__ in {"LookupsStructure", "DataStructure"}:
                continue
            checker = _Checker(units, time_unit)
            inferred = checker.infer(component.ast)
            if declared is not None and inferred is not None and inferred is not NUMBER and inferred != declared:
                checker.flag("declared units differ from the equation's", declared, inferred)
            equation = texts.get(name) or repr(component.ast)
            for problem, a, b in checker.problems:
                issue = UnitIssue(element.name, equation, show(a), show(b), problem)
                if issue not in issues:
                    issues.append(issue)
    return issues
