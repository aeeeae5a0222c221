"""Exceptions and warnings raised by armsdyn.

Every error a user can cause derives from :class:`ArmsdynError`, so the CLI can
report it in one line and exit with status 2 instead of showing a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ArmsdynError(Exception):
    """Base class of every error armsdyn raises about user input or files."""


class ConfigError(ArmsdynError, ValueError):
    """An experiment config file is malformed or names something that does not exist."""


class ModelError(ArmsdynError, ValueError):
    """A model file is missing, cannot be translated or cannot be run."""


class ResultsError(ArmsdynError, OSError):
    """A results folder cannot be written (exists, locked, or the disk failed)."""


class NumericalError(ArmsdynError, ArithmeticError):
    """A simulation produced non-finite values and the run was asked to stop at the first."""


class NumericalWarning(UserWarning):
    """A simulation produced non-finite values (overflow or NaN)."""


def did_you_mean(name: str, options: Iterable[str]) -> str:
    """Return a ``"; did you mean 'x'?"`` hint for a misspelt `name`, or ``""``.

    Matching ignores case and the space/underscore difference between Vensim
    names and Python-safe names.
    """
    options = list(options)

    def norm(s: str) -> str:
        return s.lower().replace("_", " ").strip()

    by_norm = {norm(o): o for o in options}
    close = difflib.get_close_matches(norm(name), list(by_norm), n=1, cutoff=0.6)
    return f"; did you mean {by_norm[close[0]]!r}?" if close else ""
