"""Solvers: the training loop, Caffe's six update rules and MyCaffe's AdamW."""
from __future__ import annotations

from typing import Optional

from ..errors import PcnError
from ..proto import caffe_pb2
from .sgd_solvers import (  # noqa: F401
    SOLVERS,
    AdaDeltaSolver,
    AdaGradSolver,
    AdamSolver,
    AdamWSolver,
    NesterovSolver,
    RMSPropSolver,
    SGDSolver,
)
from .solver import Solver, read_solver_param  # noqa: F401


def get_solver(solver, param: Optional[caffe_pb2.SolverParameter] = None) -> Solver:
    """The solver that the prototxt's ``type`` (or legacy ``solver_type``) names (pycaffe's ``caffe.get_solver``).

    ``param``: the prototxt's parameters already read (and changed, as pcn train's --level/--stage do); paths in
    it are still resolved against the prototxt ``solver``."""
    if param is None:
        param = solver if isinstance(solver, caffe_pb2.SolverParameter) else read_solver_param(solver)
    cls = SOLVERS.get(param.type)
    if cls is None:
        raise PcnError("solver: unknown type %r (known: %s)" % (param.type, ", ".join(SOLVERS)))
    return cls(solver, param)
