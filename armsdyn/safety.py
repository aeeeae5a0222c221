"""Model files are untrusted data: keep their text from ever running as code.

PySD translates a model into a Python module and imports it. Two things in that
path could let a model file run code of its author's choosing:

* PySD's Vensim and XMILE translators call Python's ``eval`` on pieces of model
  text (lookup ranges, numbers, quoted strings). :func:`install_literal_eval`
  replaces that ``eval`` with a parser of Python literals, which reads numbers,
  strings and tuples of them and nothing else.
* Documentation and names are written into the generated module's source, a
  docstring for example, so text that closes the string escapes into code.
  :func:`check_model_text` refuses such text before PySD sees the file, naming
  the variable and the line.

As a last guard, :func:`check_translation` reads every generated module (at
translation and again at each load, so a tampered cache entry is caught too)
and refuses one that imports anything but PySD's own dependencies or reaches
for the interpreter's escape hatches (``eval``, ``open``, ``__import__``,
dunder attributes and the like).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

from armsdyn.errors import ModelError

# Characters that never belong in a model's names, units or documentation:
# C0 controls other than tab and line breaks.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_TRIPLE_QUOTE = '"""'
_NUMBER = r"[+-]?\s*(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)"
_POINT = rf"\(\s*{_NUMBER}\s*,\s*{_NUMBER}\s*\)"
# A Vensim lookup range: [(xmin,ymin)-(xmax,ymax)], optionally followed by reference points.
_LOOKUP_RANGE = re.compile(rf"\[\s*{_POINT}\s*-\s*{_POINT}\s*(?:,\s*{_POINT}\s*)*\]")
# Subscript range names and element names are written into generated code inside quotes.
_BAD_IN_SUBSCRIPT = re.compile(r"[\"'\\{}%]")
_SKETCH = "\\\\\\---///"


def check_model_text(path: Path) -> None:
    """Refuse a model file whose text could escape PySD's generated code.

    Parameters
    ----------
    path : pathlib.Path
        A Vensim (``.mdl``) or XMILE (``.xmile``, ``.stmx``) file.

    Raises
    ------
    ModelError
        Naming the file, the line, the variable and what is not allowed there.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        msg = f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})"
        raise ModelError(msg) from exc
    if path.suffix.lower() == ".mdl":
        _check_vensim(path, text)
    else:
        _check_xmile(path, text)


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _refuse(path: Path, line: int, where: str, what: str) -> None:
    msg = f"{path}:{line}: {where}: {what}; a model file may not contain text that could run as code"
    raise ModelError(msg)


def _check_vensim(path: Path, text: str) -> None:
    end = text.find(_SKETCH)
    equations = text if end < 0 else text[:end]
    header = re.match(r"\s*\{[^}\n]*\}", equations)  # the encoding line, e.g. {UTF-8}
    start = header.end() if header else 0
    equations = equations[start:]
    for chunk in equations.split("|"):
        offset = start + len(chunk) - len(chunk.lstrip())
        start += len(chunk) + 1
        if not chunk.strip():
            continue
        fields = chunk.split("~")
        definition = fields[0]
        name = _vensim_name(definition)
        where = f"variable {name!r}" if name else "an equation"
        line = _line(text, offset)
        found = _CONTROL.search(chunk)
        if found:
            _refuse(path, _line(text, offset + found.start()), where, f"control character {found.group()!r}")
        if _TRIPLE_QUOTE in chunk:
            at = offset + chunk.index(_TRIPLE_QUOTE)
            part = "its documentation" if len(fields) > 2 and _TRIPLE_QUOTE in fields[2] else "its text"
            _refuse(path, _line(text, at), where, f'{part} contains """ (three double quotes)')
        for bracket in re.finditer(r"\[[^\]]*\]", definition):
            body = re.sub(r"\\\s*\n", " ", bracket.group())  # Vensim's line continuation
            if "(" in body and not _LOOKUP_RANGE.fullmatch(body):
                _refuse(
                    path,
                    _line(text, offset + bracket.start()),
                    where,
                    f"lookup range {body!r} is not of the form [(xmin,ymin)-(xmax,ymax)] with numbers",
                )
        subscripts = re.match(r"\s*([^:=(\[~]+?)\s*:(?!=)(.*)", definition, re.S)
        if subscripts and not definition.lstrip().startswith(":"):
            elements = subscripts.group(2)
            if _FILE_SUBSCRIPT.match(elements):
                # A range read from a file: its arguments are file names and cells, checked with every
                # data-file argument when the model loads (armsdyn.model), and the names it reads too.
                elements = ""
            for item in (subscripts.group(1), *re.split(r"[,()\-]|->", elements)):
                if _BAD_IN_SUBSCRIPT.search(item.strip().strip('"')):
                    _refuse(path, line, where, f"subscript name {item.strip()!r} contains a quote, brace or backslash")


_FILE_SUBSCRIPT = re.compile(r"\s*GET\s+(?:DIRECT|XLS)\s+SUBSCRIPT\s*\(", re.IGNORECASE)


def _vensim_name(definition: str) -> str:
    found = re.match(r'\s*(?:"([^"]*)"|([^=(\[:~<]+))', definition)
    if not found:
        return ""
    return " ".join((found.group(1) or found.group(2) or "").split())


def _check_xmile(path: Path, text: str) -> None:
    from lxml import etree  # PySD's own XML library

    # Entities are not expanded and nothing is fetched; undeclared prefixes
    # (common in files saved by Stella) are tolerated as PySD tolerates them.
    parser = etree.XMLParser(recover=True, resolve_entities=False, no_network=True, huge_tree=False)
    try:
        root = etree.fromstring(text.encode("utf-8"), parser=parser)
    except etree.XMLSyntaxError as exc:
        msg = f"{path}:{exc.lineno}: not a well-formed XMILE (XML) file: {exc.msg}"
        raise ModelError(msg) from exc
    if root is None:
        msg = f"{path}: not an XMILE (XML) file"
        raise ModelError(msg)

    def refuse(element: Any, owner: str, what: str) -> None:
        who = f"variable {owner!r}" if owner else f"element <{_tag(element)}>"
        _refuse(path, element.sourceline or 0, who, what)

    def visit(element: Any, owner: str) -> None:
        if not isinstance(element.tag, str):  # comments and processing instructions
            return
        tag = _tag(element)
        name = element.get("name")
        if name is not None and tag not in ("dim", "elem"):
            owner = name
        for key, value in [("text", element.text or ""), *element.attrib.items()]:
            if _TRIPLE_QUOTE in value or _CONTROL.search(value):
                what = '"""' if _TRIPLE_QUOTE in value else "a control character"
                part = f"<{tag}>" if key == "text" else f"attribute {key!r} of <{tag}>"
                refuse(element, owner, f"{part} contains {what}")
        if tag in ("dim", "elem") and name is not None and _BAD_IN_SUBSCRIPT.search(name):
            refuse(element, owner, f"subscript name {name!r} contains a quote, brace or backslash")
        if tag in ("xscale", "yscale"):
            for key in ("min", "max"):
                if not re.fullmatch(rf"\s*{_NUMBER}\s*", element.get(key, "0")):
                    refuse(element, owner, f"<{tag}> {key}={element.get(key)!r} is not a number")
        if tag in ("xpts", "ypts"):
            for item in (element.text or "").split(element.get("sep", ",")):
                if item.strip() and not re.fullmatch(rf"\s*{_NUMBER}\s*", item):
                    refuse(element, owner, f"<{tag}> holds {item.strip()!r}, not a number")
        for child in element:
            visit(child, owner)

    visit(root, "")


def _tag(element: Any) -> str:
    return str(element.tag).rsplit("}", 1)[-1].rsplit(":", 1)[-1]


# --------------------------------------------------------------------------- PySD's eval


def _literal(text: str, *_: object) -> object:
    """Stand-in for ``eval`` in PySD's translators: Python literals only."""
    try:
        return ast.literal_eval(text.strip() if isinstance(text, str) else text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        msg = f"model text {str(text)[:80]!r} is not a number, string or tuple of them"
        raise ModelError(msg) from exc


def install_literal_eval() -> None:
    """Make PySD's Vensim and XMILE translators read model text as literals, never as code.

    The translators look ``eval`` up among their module's globals before the
    builtins, so a module-level ``eval`` replaces it for every call.
    """
    from pysd.translators.vensim import vensim_element
    from pysd.translators.xmile import xmile_element

    for module in (vensim_element, xmile_element):
        module.eval = _literal


# --------------------------------------------------------------------------- generated code

# Top-level packages PySD's generated modules import.
_IMPORTS = frozenset({"pathlib", "numpy", "xarray", "pysd", "scipy", "pandas"})
# Builtins that give access to files, the interpreter or arbitrary code.
_FORBIDDEN_NAMES = frozenset(
    {
        "eval",
        "exec",
        "compile",
        "open",
        "getattr",
        "setattr",
        "delattr",
        "globals",
        "locals",
        "vars",
        "breakpoint",
        "input",
        "help",
        "exit",
        "quit",
        "memoryview",
        "type",
        "object",
        "super",
    }
)
# numpy and pandas readers that unpickle or reach the file system or the C level.
_FORBIDDEN_ATTRIBUTES = frozenset(
    {"load", "loads", "system", "popen", "ctypeslib", "f2py", "read_pickle", "fromfile", "memmap", "lib"}
    # Writing, moving or removing files: a translation only reads (the data files a model names).
    # An escaped string in generated code once reached pathlib.Path.write_text this way.
    | {"write_text", "write_bytes", "unlink", "rmdir", "touch", "mkdir", "chmod", "chown", "symlink_to"}
    | {"hardlink_to", "rmtree", "remove", "removedirs", "tofile", "save", "savez", "savez_compressed"}
    | {"savetxt", "to_csv", "to_pickle", "to_netcdf", "to_excel", "to_parquet", "to_json", "to_hdf"}
    | {"to_feather", "to_sql", "kill", "fork", "startfile"}
)
_ALLOWED_DUNDERS = frozenset({"__file__", "__pysd_version__", "__data"})


def check_translation(source: Path, model: Path) -> None:
    """Refuse a generated module that does anything a PySD translation never does.

    Parameters
    ----------
    source : pathlib.Path
        The generated Python module.
    model : pathlib.Path
        The model file it was translated from (for the message).

    Raises
    ------
    ModelError
        If the module does not parse, imports an unexpected package, or uses a
        forbidden name or attribute.
    """
    try:
        tree = ast.parse(source.read_bytes(), filename=str(source))
    except (SyntaxError, ValueError, OSError) as exc:
        msg = f"{model}: the translated model {source} is unreadable or not valid Python ({exc})"
        raise ModelError(msg) from exc
    for node in ast.walk(tree):
        problem = _forbidden(node)
        if problem:
            msg = (
                f"{model}: the translated model {source} {problem} (line {getattr(node, 'lineno', '?')}); "
                "it was not run. A PySD translation never does this: the model file or the cache entry "
                "may have been tampered with"
            )
            raise ModelError(msg)


def _forbidden(node: ast.AST) -> str | None:
    if isinstance(node, ast.Import):
        bad = [a.name for a in node.names if a.name.split(".")[0] not in _IMPORTS]
        return f"imports {', '.join(bad)}" if bad else None
    if isinstance(node, ast.ImportFrom):
        module = node.module or ""
        return f"imports from {module or '.'}" if node.level or module.split(".")[0] not in _IMPORTS else None
    if isinstance(node, ast.Name) and (
        node.id in _FORBIDDEN_NAMES or (node.id.startswith("__") and node.id not in _ALLOWED_DUNDERS)
    ):
        return f"uses the name {node.id!r}"
    if isinstance(node, ast.Attribute) and (node.attr.startswith("__") or node.attr in _FORBIDDEN_ATTRIBUTES):
        return f"uses the attribute {node.attr!r}"
    if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name in _FORBIDDEN_NAMES:
        return f"redefines {node.name!r}"
    if isinstance(node, ast.Global | ast.Nonlocal | ast.ClassDef | ast.AsyncFunctionDef):
        return f"contains a {type(node).__name__} statement"
    return None
