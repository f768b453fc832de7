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


def did_you_mean(word: str, choices) -> str:
    """``' (did you mean 'X'?)'`` for the choice closest to a misspelt ``word`` (case and underscores aside), or
    ``''`` when none is close: appended to "unknown type/field" errors instead of listing every choice."""
    import difflib

    def key(text: str) -> str:
        return text.lower().replace("_", "")

    by_key = {}
    for choice in choices:
        by_key.setdefault(key(choice), choice)
    close = difflib.get_close_matches(key(word), list(by_key), n=1, cutoff=0.75)
    return " (did you mean %r?)" % by_key[close[0]] if close else ""
