"""pycaffe_norm: Caffe-compatible deep learning in Python, with pycaffe's API (``import pycaffe_norm as caffe``)."""
from .backend import set_device, set_mode_cpu, set_mode_gpu  # noqa: F401
from .blob import Blob  # noqa: F401
from .layers import Layer, layer_type_list  # noqa: F401
from .proto.caffe_pb2 import TEST, TRAIN  # noqa: F401
from .random import set_random_seed  # noqa: F401

__version__ = "0.1.0"

from . import coord_map, draw, io  # noqa: F401,E402
from .classifier import Classifier  # noqa: F401,E402
from .cli import init_log  # noqa: F401,E402
from .cli import log_info as log  # noqa: F401,E402
from .distributed import (  # noqa: F401,E402
    NCCL,
    Timer,
    set_multiprocess,
    set_solver_count,
    set_solver_rank,
    solver_count,
    solver_rank,
)
from .net import Net  # noqa: F401,E402
from .net_spec import NetSpec, params, to_proto  # noqa: F401,E402  (``layers`` is the package: see layers/__init__)
from .solvers import (  # noqa: F401,E402
    AdaDeltaSolver,
    AdaGradSolver,
    AdamSolver,
    NesterovSolver,
    RMSPropSolver,
    SGDSolver,
    get_solver,
)
