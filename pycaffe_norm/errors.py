"""Errors a user can act on. The CLI prints them as one line and exits with status 2."""


class PcnError(Exception):
    """Base class of errors caused by the user's files or arguments (not by a bug in pcn)."""


class PrototxtError(PcnError):
    """A prototxt file that cannot be parsed: names file, line, column and field."""


class NetError(PcnError):
    """A net definition that cannot be built (unknown layer type, missing bottom, bad shapes)."""


class ShapeError(NetError):
    """A blob shape that does not fit a layer: names the layer and both shapes."""


class DivergenceError(PcnError):
    """Training produced a non-finite loss or parameter: names the iteration and the first layer affected."""
