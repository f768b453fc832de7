"""Reading and writing Caffe's text and binary protobuf files, with errors that name file, line and field."""
from __future__ import annotations

import logging
import os
import re
import tempfile

from google.protobuf import message as _message
from google.protobuf import text_format

from .errors import PcnError, PrototxtError, did_you_mean

_UNKNOWN_FIELD = re.compile(r'has no field named "([^"]+)"')
log = logging.getLogger("pycaffe_norm")


_MESSAGE_TYPE = re.compile(r'Message type "([\w.]+)"')
_STRAY_BRACE = re.compile(r"Expected identifier or number, got \}\.$")


def _unknown_field_hint(detail: str, field: str) -> str:
    """A "did you mean" for a misspelt field of the message protobuf names, else the hint about Caffe forks."""
    from .proto import caffe_pb2

    m = _MESSAGE_TYPE.search(detail)
    names = []
    if m:
        try:
            names = [f.name for f in caffe_pb2.DESCRIPTOR.pool.FindMessageTypeByName(m.group(1)).fields]
        except KeyError:
            pass
    return did_you_mean(field, names) or (" (field %r is not in pcn's Caffe schema; it may come from a Caffe fork "
                                          "that pcn does not know)" % field)


def _read_bytes(path: str, what: str) -> bytes:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise PcnError("%s not found: %s" % (what, path))
    if os.path.isdir(path):
        raise PcnError("%s is a directory, not a file: %s" % (what, path))
    if not os.path.isfile(path):  # /dev/zero, a FIFO: reading it would never end
        raise PcnError("%s is not a regular file: %s" % (what, path))
    with open(path, "rb") as f:
        return f.read()


def parse_text(text: str, msg, source: str = "<string>"):
    """Parses prototxt ``text`` into ``msg``; a syntax error names source:line:column and the field.

    Protobuf's text format is tried first, so Caffe's files read exactly as Caffe reads them. Text it rejects is
    read again as MyCaffe's dialect (pycaffe_norm.dialect); when that fails too, protobuf's error is reported.
    """
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as e:
        strict_error = _strict_error(e, source)
    else:
        if _needs_dialect(text, msg):
            msg.Clear()
            _read_dialect(text, msg, source, None)
        return msg
    msg.Clear()
    _read_dialect(text, msg, source, strict_error)
    return msg


# A quoted string with a lone backslash (protobuf writes a backslash as two): MyCaffe's unescaped Windows path.
_BACKSLASH_STRING = re.compile(r'"[^"\n]*(?<!\\)\\(?![\\"\'])[^"\n]*"')


def _needs_dialect(text: str, msg) -> bool:
    """Whether text that protobuf read must be read again as MyCaffe's: a MyCaffe net with a quoted Windows path
    (MyCaffe does not escape backslashes), or a net mixing V1 'layers' with 'layer' entries (whose order only the
    dialect reader keeps)."""
    if msg.DESCRIPTOR.name != "NetParameter":
        return False
    if len(msg.layers) and len(msg.layer):
        return True
    return bool(_BACKSLASH_STRING.search(text)) and _is_mycaffe_message(msg)


def _is_mycaffe_message(msg) -> bool:
    from .upgrade import is_mycaffe

    return msg.DESCRIPTOR.name == "NetParameter" and is_mycaffe(msg)


def _read_dialect(text: str, msg, source: str, strict_error) -> None:
    from . import dialect
    from .upgrade import read_mycaffe_tree

    try:
        tree = dialect.parse_tree(text, source)
    except PrototxtError:
        if strict_error is None:
            raise
        raise strict_error from None
    if msg.DESCRIPTOR.name in ("NetParameter", "SolverParameter"):
        read_mycaffe_tree(tree, msg, source)
    else:
        problems = dialect.Problems(source)
        dialect.fill_message(msg, tree, problems, _no_extra_fields)
        problems.raise_if_any()
    log.info("%s: read as MyCaffe's prototxt dialect (protobuf's text format rejects it)", source)


def _no_extra_fields(msg, node, problems) -> None:
    problems.add(node, "%s has no field %r" % (msg.DESCRIPTOR.name, node.name))


def _strict_error(e, source: str) -> PrototxtError:
    """protobuf's ParseError as pcn's one-line error (source:line:column: what)."""
    line, col = e.GetLine(), e.GetColumn()
    detail = str(e)
    # protobuf prefixes the message with "line:col : "; keep only the explanation.
    detail = re.sub(r"^\d+:\d+ : ", "", detail)
    where = "%s:%s:%s" % (source, line, col) if line is not None else source
    m = _UNKNOWN_FIELD.search(detail)
    if m:
        detail += _unknown_field_hint(detail, m.group(1))
    elif _STRAY_BRACE.search(detail):
        detail = "a '}' that closes no open block (a stray '}', or one too many)"
    return PrototxtError("%s: %s" % (where, detail))


def read_text(path: str, msg, what: str = "prototxt file"):
    data = _read_bytes(path, what)
    return parse_text(_decode_text(data, os.fspath(path)), msg, os.fspath(path))


def _decode_text(data: bytes, path: str) -> str:
    """The file as UTF-8 text. Other bytes are allowed in comments (protobuf's text format skips comments without
    decoding them) and replaced there by U+FFFD; anywhere else the error names the byte, its line and column."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if b"\0" in data:
        raise PrototxtError("%s: not a text prototxt (is it a binary .caffemodel?)" % path)
    lines = []
    for number, line in enumerate(data.split(b"\n"), 1):
        try:
            lines.append(line.decode("utf-8"))
            continue
        except UnicodeDecodeError as e:
            bad = e.start
        comment = _comment_start(line)
        if comment is None or bad < comment:
            raise PrototxtError("%s:%d:%d: byte 0x%02x is not UTF-8 (outside comments a prototxt must be UTF-8 text)"
                                % (path, number, bad + 1, line[bad]))
        lines.append(line[:comment].decode("utf-8") + line[comment:].decode("utf-8", errors="replace"))
    return "\n".join(lines)


def _comment_start(line: bytes):
    """The index of the ``#`` that starts a comment in ``line`` (not one inside a quoted string), or None."""
    quote = None
    i = 0
    while i < len(line):
        c = line[i:i + 1]
        if quote is not None:
            if c == b"\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in (b'"', b"'"):
            quote = c
        elif c == b"#":
            return i
        i += 1
    return None


def read_binary(path: str, msg, what: str = "binary proto file"):
    data = _read_bytes(path, what)
    try:
        msg.ParseFromString(data)
    except _message.DecodeError as e:
        raise PcnError("%s: cannot decode as a binary %s (%s); is it a text prototxt or a truncated file?"
                       % (path, msg.DESCRIPTOR.name, e)) from None
    return msg


def atomic_write(path: str, data: bytes) -> None:
    """Writes ``data`` to ``path`` through a temporary file and a rename, so a crash never leaves half a file."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_" + os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_binary(path: str, msg) -> None:
    atomic_write(path, msg.SerializeToString())


def write_text(path: str, msg) -> None:
    atomic_write(path, text_format.MessageToString(msg).encode("utf-8"))
