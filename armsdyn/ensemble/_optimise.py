"""Loop-invariant hoisting and common-subexpression elimination for generated code.

Works on the Python syntax trees of the statements :mod:`armsdyn.ensemble._compiler`
generates. Only whole subtrees are moved or shared, so every value is still
computed by the same operations on the same operands in the same order: results
are identical to the unoptimised code, bit for bit.

- A subtree that reads nothing the time loop assigns (only constants, values
  fixed at initialisation, ``dt``) is computed once before the loop.
- A subtree that occurs more than once among the per-step statements is
  computed once per step, into a temporary, just before its first use.
"""

from __future__ import annotations

import ast
from collections import Counter

# Names the loop itself assigns or that change every iteration.
_LOOP_NAMES = frozenset({"t", "i", "k", "TS", "SV", "O", "last"})
# Calls whose results are fresh mutable buffers: never hoisted or shared.
_FRESH = frozenset({"empty_like", "copy", "empty", "zeros"})


def _assigned(statements: list[ast.stmt]) -> set[str]:
    names: set[str] = set()
    for stmt in statements:
        for node in ast.walk(stmt):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store):
                base = node.value
                while isinstance(base, ast.Subscript):
                    base = base.value
                if isinstance(base, ast.Name):
                    names.add(base.id)
    return names


def _trivial(node: ast.AST) -> bool:
    if isinstance(node, ast.Name | ast.Constant):
        return True
    if isinstance(node, ast.UnaryOp) and isinstance(node.operand, ast.Constant):
        return True
    return isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)  # np.pi, np.inf


def _fresh_buffer(node: ast.AST) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            func = sub.func
            if isinstance(func, ast.Attribute) and func.attr in _FRESH:
                return True
    return False


def _reads(node: ast.AST) -> set[str]:
    names = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load):
            names.add(sub.id)
    return names


def _candidate(node: ast.AST) -> bool:
    return isinstance(node, ast.BinOp | ast.UnaryOp | ast.Call | ast.Compare | ast.BoolOp) and not _trivial(node)


class _Hoist(ast.NodeTransformer):
    """Replaces maximal loop-invariant subtrees by names of values computed before the loop."""

    def __init__(self, variant: set[str], hoisted: dict[str, str]) -> None:
        self.variant = variant
        self.hoisted = hoisted  # dump -> name

    def generic_visit(self, node: ast.AST) -> ast.AST:
        if isinstance(node, ast.expr) and _candidate(node) and self._invariant(node):
            return ast.Name(self._name(node), ast.Load())
        return super().generic_visit(node)

    def _invariant(self, node: ast.AST) -> bool:
        if _fresh_buffer(node):
            return False
        return not any(isinstance(s, ast.Subscript) for s in ast.walk(node)) and not (_reads(node) & self.variant)

    def _name(self, node: ast.expr) -> str:
        key = ast.unparse(node)
        if key not in self.hoisted:
            self.hoisted[key] = f"_c{len(self.hoisted)}"
        return self.hoisted[key]


class _Share(ast.NodeTransformer):
    """Replaces repeated subtrees by temporaries computed at their first use."""

    def __init__(self, counts: Counter[str], temps: dict[str, str], prefix: str) -> None:
        self.counts = counts
        self.temps = temps  # key -> name
        self.prefix = prefix
        self.emitted: list[tuple[str, str]] = []

    def generic_visit(self, node: ast.AST) -> ast.AST:
        if isinstance(node, ast.expr) and _candidate(node) and not _fresh_buffer(node):
            key = ast.unparse(node)
            if self.counts[key] > 1:
                if key not in self.temps:
                    inner = super().generic_visit(node)
                    name = f"{self.prefix}{len(self.temps)}"
                    self.temps[key] = name
                    self.emitted.append((name, ast.unparse(inner)))
                return ast.Name(self.temps[key], ast.Load())
        return super().generic_visit(node)


def _count(trees: list[ast.expr]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.expr) and _candidate(node):
                counts[ast.unparse(node)] += 1
    return counts


def optimise_loop(
    per_step: list[tuple[str, str]],
    per_save: list[tuple[str, str]],
    updates: list[str],
    variant: frozenset[str] = frozenset(),
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, str]], list[str]]:
    """Hoist invariant subexpressions out of the time loop and share repeated ones.

    Parameters
    ----------
    per_step, per_save : list of (name, expression)
        Assignments computed every step and at saved times only.
    updates : list of str
        Statements that advance the states.
    variant : set of str
        Further names that change during the loop (states updated outside `updates`).

    Returns
    -------
    hoisted, per_step, per_save, updates
        ``hoisted`` are ``(name, expression)`` to compute before the loop, in order.
    """
    step_exprs = [ast.parse(text, mode="eval").body for _, text in per_step]
    save_exprs = [ast.parse(text, mode="eval").body for _, text in per_save]
    update_stmts = [ast.parse(line).body[0] for line in updates]
    changing = {name for name, _ in per_step} | {name for name, _ in per_save} | _assigned(update_stmts)
    changing |= _LOOP_NAMES | variant
    hoisted: dict[str, str] = {}
    hoist = _Hoist(changing, hoisted)
    step_exprs = [hoist.visit(e) for e in step_exprs]
    save_exprs = [hoist.visit(e) for e in save_exprs]
    new_updates = []
    for stmt in update_stmts:
        if isinstance(stmt, ast.Assign):
            stmt.value = hoist.visit(stmt.value)
        new_updates.append(ast.unparse(stmt))
    counts = _count(step_exprs + save_exprs)
    temps: dict[str, str] = {}
    out_step: list[tuple[str, str]] = []
    share = _Share(counts, temps, "_e")
    for (name, _), expr in zip(per_step, step_exprs, strict=True):
        new = share.visit(expr)
        out_step += share.emitted
        share.emitted = []
        out_step.append((name, ast.unparse(new)))
    out_save: list[tuple[str, str]] = []
    for (name, _), expr in zip(per_save, save_exprs, strict=True):
        new = share.visit(expr)
        out_save += share.emitted
        share.emitted = []
        out_save.append((name, ast.unparse(new)))
    return [(name, key) for key, name in hoisted.items()], out_step, out_save, new_updates
