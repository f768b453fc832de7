"""Solvers: the training loop and Caffe's six update rules."""
from __future__ import annotations

from ..errors import PcnError
from ..proto import caffe_pb2
from .sgd_solvers import (  # noqa: F401
    SOLVERS,
    AdaDeltaSolver,
    AdaGradSolver,
    AdamSolver,
    NesterovSolver,
    RMSPropSolver,
    SGDSolver,
)
from .solver import Solver, read_solver_param  # noqa: F401


def get_solver(solver) -> Solver:
    """The solver that the prototxt's ``type`` (or legacy ``solver_type``) names (pycaffe's ``caffe.get_solver``)."""
    param = solver if isinstance(solver, caffe_pb2.SolverParameter) else read_solver_param(solver)
    cls = SOLVERS.get(param.type)
    if cls is None:
        raise PcnError("solver: unknown type %r (known: %s)" % (param.type, ", ".join(SOLVERS)))
    return cls(solver, param)
