"""Ensemble engine: run many parameter samples of a model at once, vectorised with numpy.

PySD runs one parameter set at a time, with Python calls per variable per time
step. This engine compiles a model parsed by PySD (its *abstract model*, so
Vensim and XMILE files alike) into one Python function of numpy expressions
that advances every sample of a chunk together, with PySD's semantics:
initialisation order, Euler update order, saving times, and the arithmetic of
its stateful objects and built-in functions. Results agree with PySD's to
rounding.

Public API::

    from armsdyn.ensemble import compile_model, run_ensemble

    model = compile_model("models/richardson.mdl")
    ds = model.run({"defence coefficient k": ks, "grievance g": gs})  # Dataset (run, time)
    ds = run_ensemble("models/richardson.mdl", samples, workers=4)     # across processes

Two backends generate the code from the same compiled graph (see
:data:`BACKENDS`): ``numpy`` (whole-chunk array statements) and ``numba``
(machine code that advances blocks of samples with SIMD instructions, several
times faster; needs the optional numba package). ``compile_model(path, backend="auto")`` picks numba when it
is installed and supports the model.

Subscripted models compile in both backends (numpy: arrays over the elements;
numba: one scalar per element, see ``_expand``). A construct the engine cannot compile raises
:class:`UnsupportedConstruct` from :func:`compile_model`; :func:`run_ensemble`
then falls back to PySD (one run per sample) with a :class:`FallbackWarning`.
"""

from armsdyn.ensemble._engine import (
    BACKENDS,
    DEFAULT_CHUNK_SIZE,
    CompiledModel,
    RateFunction,
    TimeGrid,
    compile_model,
)
from armsdyn.ensemble._errors import FallbackWarning, SampleError, UnsupportedConstruct
from armsdyn.ensemble._parallel import choose_workers, run_ensemble

__all__ = [
    "BACKENDS",
    "DEFAULT_CHUNK_SIZE",
    "CompiledModel",
    "FallbackWarning",
    "RateFunction",
    "SampleError",
    "TimeGrid",
    "UnsupportedConstruct",
    "choose_workers",
    "compile_model",
    "run_ensemble",
]
