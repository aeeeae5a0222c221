"""Public names a package imports from their modules on first use (PEP 562)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(package: str, modules: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of `package`.

    Parameters
    ----------
    package : str
        The package's name (its ``__name__``), already in ``sys.modules``.
    modules : mapping
        Public name to the submodule it lives in: ``package.NAME`` is ``package.<module>.NAME``.

    Returns
    -------
    tuple of callables
        ``(__getattr__, __dir__)``: a name is imported from its module on first access and kept
        in the package's namespace, so importing the package costs none of its modules' imports.
    """
    namespace = vars(sys.modules[package])

    def __getattr__(name: str) -> Any:
        module = modules.get(name)
        if module is None:
            # Not a public name: a submodule not yet imported ("from armsdyn import figures") is
            # found by the import system after this AttributeError.
            msg = f"module {package!r} has no attribute {name!r}"
            raise AttributeError(msg)
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *modules})

    return __getattr__, __dir__
