"""The YAML subset registries.d files use: nested block mappings of plain or quoted scalars.

liner carries no YAML library; registries.d(5) files are small mappings of mappings. Anything
beyond that subset (sequences, flow collections, anchors, aliases, tags, block scalars,
several documents) is refused with the line number, never guessed at.
"""

from __future__ import annotations

import re
from typing import Any

MAX_DEPTH = 16
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_NULL = {"", "~", "null", "Null", "NULL"}


class YAMLRefused(ValueError):
    pass


def _strip_comment(line: str) -> str:
    out = []
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            break
        out.append(ch)
    return "".join(out).rstrip()


def _scalar(text: str, lineno: int) -> Any:
    text = text.strip()
    if not text:
        return None
    if text[0] == '"':
        if len(text) < 2 or text[-1] != '"':
            raise YAMLRefused(f"line {lineno}: unterminated double-quoted string")
        body = text[1:-1]
        if "\\" in body:
            escapes = {'\\"': '"', "\\\\": "\\", "\\n": "\n", "\\t": "\t", "\\/": "/"}
            body = re.sub(r"\\.", lambda m: escapes.get(m.group(0), m.group(0)), body)
        return body
    if text[0] == "'":
        if len(text) < 2 or text[-1] != "'":
            raise YAMLRefused(f"line {lineno}: unterminated single-quoted string")
        return text[1:-1].replace("''", "'")
    if text[0] in "[{&*!|>%@`" or text == "-" or text.startswith("- "):
        raise YAMLRefused(f"line {lineno}: unsupported YAML construct {text[:20]!r}")
    if text in _BOOL:
        return _BOOL[text]
    if text in _NULL:
        return None
    return text


def _split_key(content: str, lineno: int) -> tuple[str, str]:
    if content[0] in "'\"":
        quote = content[0]
        end = content.find(quote, 1)
        if end < 0:
            raise YAMLRefused(f"line {lineno}: unterminated quoted key")
        key = content[1:end]
        rest = content[end + 1 :]
        if not rest.startswith(":") or (len(rest) > 1 and rest[1] not in " \t"):
            raise YAMLRefused(f"line {lineno}: expected ':' after the key")
        return key, rest[1:]
    if content[0] in "[{&*!|>%@`-?":
        raise YAMLRefused(
            f"line {lineno}: unsupported YAML construct {content[:20]!r} (quote such keys)"
        )
    # The key ends at the first ": " (or a ':' ending the line): host:port keys keep theirs.
    match = re.search(r":(?:[ \t]|$)", content)
    if match is None:
        raise YAMLRefused(f"line {lineno}: expected 'key: value'")
    return content[: match.start()].strip(), content[match.end() :]


def loads(text: str) -> Any:
    """Parse the subset; an empty document is None."""
    lines: list[tuple[int, int, str]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise YAMLRefused(f"line {lineno}: tabs are not allowed in indentation")
        content = _strip_comment(raw)
        if not content.strip():
            continue
        if content.strip() in ("---", "..."):
            if lines:
                raise YAMLRefused(f"line {lineno}: only one YAML document is supported")
            continue
        indent = len(content) - len(content.lstrip(" "))
        lines.append((lineno, indent, content.strip()))
    if not lines:
        return None
    pos = 0

    def block(indent: int, depth: int) -> dict[str, Any]:
        nonlocal pos
        if depth > MAX_DEPTH:
            raise YAMLRefused(f"line {lines[pos][0]}: nested deeper than {MAX_DEPTH} levels")
        out: dict[str, Any] = {}
        while pos < len(lines):
            lineno, ind, content = lines[pos]
            if ind < indent:
                break
            if ind > indent:
                raise YAMLRefused(f"line {lineno}: unexpected indentation")
            key, rest = _split_key(content, lineno)
            if key in out:
                raise YAMLRefused(f"line {lineno}: mapping key {key!r} already defined")
            pos += 1
            if rest.strip():
                out[key] = _scalar(rest, lineno)
            elif pos < len(lines) and lines[pos][1] > indent:
                out[key] = block(lines[pos][1], depth + 1)
            else:
                out[key] = None
        return out

    first_indent = lines[0][1]
    result = block(first_indent, 1)
    if pos < len(lines):
        raise YAMLRefused(f"line {lines[pos][0]}: unexpected indentation")
    return result
