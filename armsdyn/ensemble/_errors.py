"""Errors and warnings of the ensemble engine."""

from __future__ import annotations

from armsdyn.errors import ArmsdynError, ModelError


class UnsupportedConstruct(ModelError):
    """A model uses a construct the ensemble engine cannot compile.

    Attributes
    ----------
    path : str
        The model file.
    variable : str
        The model's own name of the variable that uses the construct.
    construct : str
        The construct, as the model language names it (e.g. ``"DELAY N"``).
    """

    def __init__(self, path: object, variable: str, construct: str, detail: str = "") -> None:
        self.path = str(path)
        self.variable = variable
        self.construct = construct
        msg = f"{path}: variable {variable!r} uses {construct}, which the ensemble engine does not support"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)


class SampleError(ArmsdynError, ValueError):
    """Sampled parameters do not fit the model (unknown name, not a constant, bad shape)."""


class FallbackWarning(UserWarning):
    """The ensemble engine could not compile a model and ran it with PySD instead."""
