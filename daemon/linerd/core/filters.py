"""containerd's list-filter language (the ``filters`` field of the v1 List RPCs).

Grammar (as accepted by containerd's ``filters`` package)::

    filters   := selector ("," selector)*
    selector  := fieldpath [operator value]
    fieldpath := field ("." field)*
    field     := '"'-quoted | [A-Za-z0-9_]+
    operator  := "==" | "!=" | "~="
    value     := quoted | bare
    bare      := first char not one of `, . / | "`, then any printable non-space chars but `,`

Quoted strings use Go escapes (``\\a \\b \\f \\n \\r \\t \\v \\\\``, the delimiter itself,
``\\NNN`` octal, ``\\xHH``, ``\\uHHHH``, ``\\UHHHHHHHH``). Field components must use ``"``;
values may also be quoted with ``/.../`` or ``|...|``, but only after ``~=``.

Semantics: a selector without operator tests that the field is present; ``==`` requires the
field to be present and equal; ``!=`` and ``~=`` compare an absent field as ``""``; ``~=``
is an unanchored regexp search (Python ``re``, compiled at parse time). Selectors in one
string are ANDed; :func:`parse_all` ORs several strings.

Differences from containerd: whitespace is tolerated between any two tokens (containerd
rejects it before ``,``/``.`` and at the end), an invalid regexp is a syntax error (containerd
silently matches nothing), and error positions count characters, not UTF-8 bytes.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "ALWAYS",
    "Adaptor",
    "AllOf",
    "AnyOf",
    "Filter",
    "FilterSyntaxError",
    "Operator",
    "Selector",
    "dict_adaptor",
    "parse",
    "parse_all",
]

Adaptor = Callable[[Sequence[str]], str | None]
"""Maps a field path to its value, or ``None`` if the field is absent."""


class FilterSyntaxError(ValueError):
    """A filter string could not be parsed; ``pos`` is a character offset into ``expr``."""

    def __init__(self, expr: str, pos: int, msg: str) -> None:
        self.expr = expr
        self.pos = pos
        self.msg = msg
        if pos < len(expr):
            where = f"[{expr[:pos]} >|{expr[pos]}|< {expr[pos + 1 :]}]"
            at = f"position {pos}"
        else:
            where = f"[{expr}]"
            at = f"position {pos} (end of input)"
        super().__init__(f"filters: parse error at {at}: {msg}: {where}")


class Filter(Protocol):
    """Anything that can decide whether an object (seen through an adaptor) matches."""

    def match(self, adaptor: Adaptor) -> bool: ...


class Operator(enum.StrEnum):
    PRESENT = "?"
    EQUAL = "=="
    NOT_EQUAL = "!="
    MATCHES = "~="


@dataclass(frozen=True)
class Selector:
    """One ``fieldpath [op value]`` term."""

    fieldpath: tuple[str, ...]
    operator: Operator = Operator.PRESENT
    value: str = ""
    regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def match(self, adaptor: Adaptor) -> bool:
        got = adaptor(self.fieldpath)
        match self.operator:
            case Operator.PRESENT:
                return got is not None
            case Operator.EQUAL:
                return got is not None and got == self.value
            case Operator.NOT_EQUAL:
                return (got or "") != self.value
            case Operator.MATCHES:
                assert self.regex is not None
                return self.regex.search(got or "") is not None
        return False  # pragma: no cover


@dataclass(frozen=True)
class AllOf:
    """Matches when every member matches (the ``,`` of one filter string)."""

    filters: tuple[Filter, ...]

    def match(self, adaptor: Adaptor) -> bool:
        return all(f.match(adaptor) for f in self.filters)


@dataclass(frozen=True)
class AnyOf:
    """Matches when any member matches (the repeated ``filters`` of a List request)."""

    filters: tuple[Filter, ...]

    def match(self, adaptor: Adaptor) -> bool:
        return any(f.match(adaptor) for f in self.filters)


class _Always:
    def match(self, adaptor: Adaptor) -> bool:
        return True

    def __repr__(self) -> str:
        return "ALWAYS"


ALWAYS: Filter = _Always()
"""The filter that matches everything (empty filter string / empty filter list)."""


_FIELD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_OPERATOR_CHARS = frozenset("=!~")
_BINARY_OPERATORS = {op.value: op for op in (Operator.EQUAL, Operator.NOT_EQUAL, Operator.MATCHES)}
_QUOTES = frozenset('"/|')
_SIMPLE_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_OCT_DIGITS = frozenset("01234567")


def _is_value_char(ch: str) -> bool:
    return ch != "," and not ch.isspace() and ch.isprintable()


class _Parser:
    """Recursive-descent parser over one filter string."""

    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.pos = 0

    def error(self, msg: str, pos: int | None = None) -> FilterSyntaxError:
        return FilterSyntaxError(self.expr, self.pos if pos is None else pos, msg)

    def peek(self) -> str:
        """The current character ("" at end of input), after skipping whitespace."""
        while self.pos < len(self.expr) and self.expr[self.pos].isspace():
            self.pos += 1
        return self.expr[self.pos] if self.pos < len(self.expr) else ""

    def parse(self) -> Filter:
        selectors: list[Filter] = [self.selector()]
        while ch := self.peek():
            if ch != ",":
                raise self.error(f"unexpected input: {ch!r}")
            self.pos += 1
            selectors.append(self.selector())
        return selectors[0] if len(selectors) == 1 else AllOf(tuple(selectors))

    def selector(self) -> Selector:
        path = self.fieldpath()
        if self.peek() in ("", ","):
            return Selector(path)
        op = self.operator()
        self.peek()
        value_pos = self.pos
        value = self.value(op)
        if op is not Operator.MATCHES:
            return Selector(path, op, value)
        try:
            regex = re.compile(value)
        except (re.error, OverflowError, RecursionError) as e:  # too large or too deep
            raise self.error(f"invalid regular expression {value!r}: {e}", value_pos) from None
        return Selector(path, op, value, regex)

    def fieldpath(self) -> tuple[str, ...]:
        path = [self.field()]
        while self.peek() == ".":
            self.pos += 1
            path.append(self.field())
        return tuple(path)

    def field(self) -> str:
        ch, start = self.peek(), self.pos
        if ch in _FIELD_CHARS:
            while self.pos < len(self.expr) and self.expr[self.pos] in _FIELD_CHARS:
                self.pos += 1
            return self.expr[start : self.pos]
        if ch in _QUOTES:
            text = self.quoted()
            if ch != '"':
                raise self.error("invalid quote encountered", start)
            return text
        raise self.error("expected field or quoted")

    def operator(self) -> Operator:
        ch, start = self.peek(), self.pos
        while self.pos < len(self.expr) and self.expr[self.pos] in _OPERATOR_CHARS:
            self.pos += 1
        text = self.expr[start : self.pos]
        if not text:
            if ch in _QUOTES:
                self.quoted()  # report an unterminated/garbled quote as such
                self.pos = start
            raise self.error('expected an operator ("=="|"!="|"~=")')
        if text not in _BINARY_OPERATORS:
            raise self.error(f"unsupported operator {text!r}", start)
        return _BINARY_OPERATORS[text]

    def value(self, op: Operator) -> str:
        ch, start = self.peek(), self.pos
        if ch in _QUOTES:
            text = self.quoted()
            if ch != '"' and op is not Operator.MATCHES:
                raise self.error("invalid quote encountered", start)
            return text
        if ch in ("", ",", "."):
            raise self.error("expected value or quoted")
        while self.pos < len(self.expr) and _is_value_char(self.expr[self.pos]):
            self.pos += 1
        if self.pos == start:
            raise self.error("expected value or quoted")
        return self.expr[start : self.pos]

    def quoted(self) -> str:
        """Consume a quoted literal at ``pos`` and return its unescaped text."""
        expr, start = self.expr, self.pos
        quote = expr[start]
        out = bytearray()
        i = start + 1
        while True:
            if i >= len(expr) or expr[i] == "\n":
                raise self.error("quoted literal not terminated", start)
            ch = expr[i]
            if ch == quote:
                break
            if ch == "\x00":
                raise self.error("unexpected null", i)
            if ch != "\\":
                out += ch.encode("utf-8", "surrogatepass")
                i += 1
                continue
            i = self._escape(i, quote, out)
        self.pos = i + 1
        try:
            return out.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error("quoted literal is not valid UTF-8", start) from None

    def _escape(self, i: int, quote: str, out: bytearray) -> int:
        """Decode the escape sequence starting at backslash ``i`` into ``out``; return new i."""
        expr = self.expr
        if i + 1 >= len(expr):
            raise self.error("quoted literal not terminated", i)
        kind = expr[i + 1]
        if kind in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[kind])
            return i + 2
        if kind == quote:
            out += quote.encode()
            return i + 2
        if kind in _OCT_DIGITS:
            digits = expr[i + 1 : i + 4]
            if len(digits) < 3 or not set(digits) <= _OCT_DIGITS or int(digits, 8) > 255:
                raise self.error("illegal numeric escape sequence", i)
            out.append(int(digits, 8))
            return i + 4
        if kind in _HEX_ESCAPES:
            n = _HEX_ESCAPES[kind]
            digits = expr[i + 2 : i + 2 + n]
            if len(digits) < n or not set(digits) <= _HEX_DIGITS:
                raise self.error("illegal numeric escape sequence", i)
            code = int(digits, 16)
            if kind == "x":
                out.append(code)  # a raw byte, as in Go
            elif code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise self.error("illegal numeric escape sequence", i)
            else:
                out += chr(code).encode("utf-8")
            return i + 2 + n
        raise self.error(f"illegal escape sequence '\\{kind}'", i)


def parse(expr: str) -> Filter:
    """Parse one filter string (selectors ANDed by ``,``); ``""`` matches everything."""
    if expr == "":
        return ALWAYS
    return _Parser(expr).parse()


def parse_all(exprs: Sequence[str]) -> Filter:
    """Parse a List request's repeated ``filters``: the OR of each; no filters match all."""
    if isinstance(exprs, str):
        raise TypeError("parse_all() takes a sequence of filter strings, not one string")
    filters = [parse(e) for e in exprs]
    if not filters or any(f is ALWAYS for f in filters):
        return ALWAYS
    return filters[0] if len(filters) == 1 else AnyOf(tuple(filters))


def dict_adaptor(
    fields: Mapping[str, str],
    labels: Mapping[str, str] | None = None,
    **nested: Mapping[str, str],
) -> Adaptor:
    """Build an adaptor over plain mappings.

    ``labels.<key>`` (and ``<name>.<key>`` for each ``name=mapping`` in ``nested``, e.g.
    ``annotations``) looks up the rest of the path, joined with ``.``, in that mapping
    (``labels=None`` means no labels); a key that is present counts as present even if its
    value is empty, and the bare map name (``labels``) is absent. Any other path is
    joined with ``.`` and looked up in ``fields`` (so ``target.digest`` is the key
    ``"target.digest"``); like containerd's adaptors, an empty scalar counts as absent.
    """
    maps: dict[str, Mapping[str, str]] = {"labels": labels or {}, **nested}

    def adaptor(fieldpath: Sequence[str]) -> str | None:
        if not fieldpath:
            return None
        if fieldpath[0] in maps:
            if len(fieldpath) < 2:
                return None
            return maps[fieldpath[0]].get(".".join(fieldpath[1:]))
        return fields.get(".".join(fieldpath)) or None

    return adaptor
