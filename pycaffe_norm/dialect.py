"""MyCaffe's prototxt dialect: a tolerant reader for the text MyCaffe writes and reads.

MyCaffe's own reader (RawProto) splits lines at blanks and treats every value as text, so its files hold what
protobuf's text format rejects: unquoted strings (``lr_policy: step``), Windows paths in which a backslash is a
path separator and not an escape (``source: C:\\ProgramData\\x``), bare enum names where the schema has a string
and quoted ones where it has an enum, ``True``/``False``. This module reads such text into a tree of
:class:`Node` (name, value, children, line and column), then fills a protobuf message from the tree by the
schema: each value is converted to what its field expects. Fields the schema lacks are handed to a callback, so the
caller (pycaffe_norm.upgrade) can map, ignore or refuse each one and report all problems at once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional

from google.protobuf import descriptor as _descriptor

from .errors import PrototxtError

_FD = _descriptor.FieldDescriptor
_INT_RANGES = {
    _FD.TYPE_INT32: (-2 ** 31, 2 ** 31 - 1), _FD.TYPE_SINT32: (-2 ** 31, 2 ** 31 - 1),
    _FD.TYPE_SFIXED32: (-2 ** 31, 2 ** 31 - 1), _FD.TYPE_INT64: (-2 ** 63, 2 ** 63 - 1),
    _FD.TYPE_SINT64: (-2 ** 63, 2 ** 63 - 1), _FD.TYPE_SFIXED64: (-2 ** 63, 2 ** 63 - 1),
    _FD.TYPE_UINT32: (0, 2 ** 32 - 1), _FD.TYPE_FIXED32: (0, 2 ** 32 - 1),
    _FD.TYPE_UINT64: (0, 2 ** 64 - 1), _FD.TYPE_FIXED64: (0, 2 ** 64 - 1),
}
_FLOAT_TYPES = (_FD.TYPE_FLOAT, _FD.TYPE_DOUBLE)
_TRUE = {"true", "t", "1", "yes"}
_FALSE = {"false", "f", "0", "no"}
_PUNCT = "{}<>[]:,;"


@dataclass
class Node:
    """One ``name: value`` or ``name { ... }`` entry, with where it was written."""

    name: str
    line: int
    column: int
    value: Optional[str] = None      # the text of a scalar value (quotes removed)
    quoted: bool = False
    children: Optional[List["Node"]] = None   # a block's entries; None for a scalar
    values: Optional[List[tuple]] = None      # ``name: [a, b]`` list syntax: (text, quoted) pairs

    def find(self, name: str) -> Optional["Node"]:
        for child in self.children or ():
            if child.name == name:
                return child
        return None


@dataclass
class _Token:
    kind: str      # "word", "string", or the punctuation character itself
    text: str
    line: int
    column: int


@dataclass
class Problems:
    """What a dialect read found wrong; reported all together in one line."""

    source: str
    items: List[str] = field(default_factory=list)

    def add(self, node: Node, text: str) -> None:
        self.items.append("%s:%d:%d: %s" % (self.source, node.line, node.column, text))

    def raise_if_any(self) -> None:
        if self.items:
            raise PrototxtError("; ".join(self.items))


def _tokens(text: str, source: str) -> List[_Token]:
    out: List[_Token] = []
    i, n, line, line_start = 0, len(text), 1, 0
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            line_start = i + 1
            i += 1
        elif c.isspace():
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in "\"'":
            # MyCaffe's strings: no escapes (a backslash is a Windows path separator); one line at most.
            end = text.find(c, i + 1)
            newline = text.find("\n", i + 1)
            if end < 0 or (0 <= newline < end):
                raise PrototxtError("%s:%d:%d: string value not closed on its line"
                                    % (source, line, i - line_start + 1))
            out.append(_Token("string", text[i + 1:end], line, i - line_start + 1))
            i = end + 1
        elif c in _PUNCT:
            out.append(_Token(c, c, line, i - line_start + 1))
            i += 1
        else:
            start = i
            value_position = bool(out) and out[-1].kind == ":"
            while i < n and not text[i].isspace() and text[i] not in "{}#\"'" and (
                    value_position or text[i] not in _PUNCT):
                i += 1
            word = text[start:i]
            if value_position and word.endswith(("]", ",", ";")) and len(word) > 1:
                i -= 1   # a list or separator right after a bare value: "[1, 2]" or "a;"
                word = word[:-1]
            out.append(_Token("word", word, line, start - line_start + 1))
    return out


def parse_tree(text: str, source: str = "<string>") -> List[Node]:
    """The entries of ``text`` as a tree; a syntax error names source:line:column."""
    toks = _tokens(text, source)
    pos = 0

    def fail(tok: Optional[_Token], what: str) -> PrototxtError:
        if tok is None:
            last = toks[-1] if toks else _Token("", "", 1, 1)
            return PrototxtError("%s:%d:%d: %s, found the end of the file" % (source, last.line, last.column, what))
        return PrototxtError("%s:%d:%d: %s, found %r" % (source, tok.line, tok.column, what, tok.text))

    def peek() -> Optional[_Token]:
        return toks[pos] if pos < len(toks) else None

    def block(closing: Optional[str]) -> List[Node]:
        nonlocal pos
        nodes: List[Node] = []
        while True:
            tok = peek()
            if tok is None:
                if closing is None:
                    return nodes
                raise fail(None, "expected %r to close the block" % closing)
            if closing is not None and tok.kind == closing:
                pos += 1
                return nodes
            if tok.kind in (",", ";"):
                pos += 1
                continue
            if tok.kind != "word" or not (tok.text[:1].isalpha() or tok.text[:1] == "_"):
                raise fail(tok, "expected a field name")
            pos += 1
            node = Node(tok.text, tok.line, tok.column)
            nxt = peek()
            colon = nxt is not None and nxt.kind == ":"
            if colon:
                pos += 1
                nxt = peek()
            if nxt is not None and nxt.kind in ("{", "<"):
                pos += 1
                node.children = block("}" if nxt.kind == "{" else ">")
            elif not colon:
                raise fail(nxt, "expected ':' or '{' after %r" % node.name)
            elif nxt is not None and nxt.kind == "[":
                pos += 1
                node.values = []
                while True:
                    item = peek()
                    if item is not None and item.kind == "]":
                        pos += 1
                        break
                    if item is None or item.kind not in ("word", "string"):
                        raise fail(item, "expected a value or ']' in the list of %r" % node.name)
                    node.values.append((item.text, item.kind == "string"))
                    pos += 1
                    sep = peek()
                    if sep is not None and sep.kind == ",":
                        pos += 1
            elif nxt is not None and nxt.kind in ("word", "string"):
                pos += 1
                node.value, node.quoted = nxt.text, nxt.kind == "string"
                # protobuf joins adjacent string literals
                while node.quoted and peek() is not None and peek().kind == "string":
                    node.value += peek().text
                    pos += 1
            else:
                raise fail(nxt, "expected a value for %r" % node.name)
            nodes.append(node)

    return block(None)


# ----------------------------------------------------------------------------------------------------
# tree -> message
# ----------------------------------------------------------------------------------------------------

# Called for a field the schema lacks: (message, node, problems). It maps, ignores or records a problem.
UnknownFieldHandler = Callable[[object, Node, Problems], None]


def _scalar(fd, text: str, quoted: bool) -> object:
    """``text`` converted for field ``fd``; ValueError with the reason when it cannot be."""
    t = fd.type
    if t == _FD.TYPE_STRING:
        return text
    if t == _FD.TYPE_BYTES:
        return text.encode("utf-8")
    if t == _FD.TYPE_BOOL:
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError("expects true or false")
    if t == _FD.TYPE_ENUM:
        enum = fd.enum_type
        if text in enum.values_by_name:
            return enum.values_by_name[text].number
        for name, value in enum.values_by_name.items():
            if name.lower() == text.lower():
                return value.number
        try:
            number = int(text)
        except ValueError:
            number = None
        if number is not None and number in enum.values_by_number:
            return number
        raise ValueError("expects one of %s" % ", ".join(v.name for v in enum.values))
    if quoted:
        raise ValueError("expects a number, not a quoted string")
    if t in _FLOAT_TYPES:
        low = text.lower().rstrip("f") if not text.lower().startswith(("inf", "-inf", "nan")) else text.lower()
        try:
            value = float(low)
        except ValueError:
            raise ValueError("expects a number") from None
        if t == _FD.TYPE_FLOAT and math.isfinite(value) and abs(value) > 3.4028235e38:
            raise ValueError("is out of float range")
        return value
    try:
        value = int(text, 0) if text.lower().startswith(("0x", "-0x")) else int(text)
    except ValueError:
        raise ValueError("expects an integer") from None
    lo, hi = _INT_RANGES.get(t, (-2 ** 63, 2 ** 64 - 1))
    if not lo <= value <= hi:
        raise ValueError("is out of range [%d, %d]" % (lo, hi))
    return value


def fill_message(msg, nodes: List[Node], problems: Problems, on_unknown: UnknownFieldHandler) -> None:
    """Sets ``msg``'s fields from ``nodes`` by its schema; what cannot be set is recorded in ``problems``."""
    fields = msg.DESCRIPTOR.fields_by_name
    seen = set()
    for node in nodes:
        fd = fields.get(node.name)
        if fd is None:
            on_unknown(msg, node, problems)
            continue
        repeated = _is_repeated(fd)
        if not repeated and node.name in seen:
            problems.add(node, "%s.%s given more than once" % (msg.DESCRIPTOR.name, node.name))
            continue
        seen.add(node.name)
        if fd.message_type is not None:
            if node.children is None:
                problems.add(node, "%s.%s is a block { ... }, not a value" % (msg.DESCRIPTOR.name, node.name))
                continue
            sub = getattr(msg, node.name).add() if repeated else getattr(msg, node.name)
            sub.SetInParent()
            fill_message(sub, node.children, problems, on_unknown)
            continue
        if node.children is not None:
            problems.add(node, "%s.%s takes a value, not a block" % (msg.DESCRIPTOR.name, node.name))
            continue
        items = node.values if node.values is not None else [(node.value, node.quoted)]
        if node.values is not None and not repeated:
            problems.add(node, "%s.%s takes one value, not a list" % (msg.DESCRIPTOR.name, node.name))
            continue
        for text, quoted in items:
            try:
                value = _scalar(fd, text, quoted)
            except ValueError as e:
                problems.add(node, "%s.%s: %r %s" % (msg.DESCRIPTOR.name, node.name, text, e))
                continue
            if repeated:
                getattr(msg, node.name).append(value)
            else:
                setattr(msg, node.name, value)


def _is_repeated(fd) -> bool:
    return fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED
