"""A streaming tar reader for layers: ustar, GNU and PAX headers, nothing else.

Why not `tarfile`: in stream mode it spent ~2 s of a 2.3 s unpack of a 180 MB layer copying
its own buffers; this reader parses a header in a few microseconds and hands file data to
`os.write` straight from the decompressor's chunks. It also gives the applier exactly what
it needs (nanosecond times, raw xattr bytes) and refuses what layers never hold (GNU sparse
files, multi-volume entries) with a clear error instead of guessing.

Conventions follow Go's archive/tar (what containerd uses) and tarfile where they agree:
names are UTF-8 (undecodable bytes kept with surrogateescape), a zero block ends the archive,
a clean end of stream at a header boundary is an end too, a partial header is an error, the
V7 "regular file whose name ends in /" is a directory, header-only types carry no data
whatever their size field says, PAX global headers apply to every later entry.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from decimal import Decimal
from typing import BinaryIO

from linerd.errdefs import InvalidArgument

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
_CHUNK = 1 << 20
_SUM_MAX = BLOCK * 255
_MAX_SPECIAL = 1 << 20  # PAX and GNU long-name records: Go's tar reader caps them alike

# Entry types, as the applier sees them.
FILE = "file"
DIR = "dir"
SYMLINK = "symlink"
HARDLINK = "hardlink"
CHAR = "char"
BLOCKDEV = "block"
FIFO = "fifo"

_TYPES = {
    b"0": FILE,
    b"\0": FILE,
    b"7": FILE,  # contiguous file: a regular file everywhere that matters
    b"1": HARDLINK,
    b"2": SYMLINK,
    b"3": CHAR,
    b"4": BLOCKDEV,
    b"5": DIR,
    b"6": FIFO,
}
_POSIX_MAGIC = b"ustar\x0000"
_ID_LIMIT = 1 << 32  # uid, gid and device numbers are 32-bit in the kernel
_TIME_LIMIT = 1 << 63  # nanoseconds in a signed 64-bit timespec
_XATTR_PREFIX = "SCHILY.xattr."


@dataclass(slots=True)
class Entry:
    name: str
    type: str  # one of the constants above
    mode: int
    uid: int
    gid: int
    size: int  # bytes of data that follow (0 for every type but FILE)
    mtime_ns: int
    atime_ns: int
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: list[tuple[str, bytes]] = field(default_factory=list)

    def __reduce__(self) -> tuple[type[Entry], tuple[object, ...]]:
        # The unpack worker pickles thousands of these: positional fields dump and load in
        # half the time of the default (slots state dicts), at the end of a staging.
        return (
            Entry,
            (
                self.name,
                self.type,
                self.mode,
                self.uid,
                self.gid,
                self.size,
                self.mtime_ns,
                self.atime_ns,
                self.linkname,
                self.devmajor,
                self.devminor,
                self.xattrs,
            ),
        )


def _malformed(why: str) -> InvalidArgument:
    return InvalidArgument(f"malformed tar: {why}")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _cstr(buf: bytes, start: int, end: int) -> bytes:
    nul = buf.find(b"\0", start, end)
    return buf[start : end if nul < 0 else nul]


def _number(buf: bytes, start: int, end: int, what: str) -> int:
    raw = buf[start:end]
    first = raw[0]
    if first & 0x80:  # GNU base-256: big-endian two's complement, high bit as the marker
        if first == 0xFF:
            return int.from_bytes(raw, "big", signed=True)
        return int.from_bytes(bytes([first & 0x7F]) + raw[1:], "big")
    try:  # the common case, "0000644\0" or "644 \0"
        return int(raw.rstrip(b"\0 ") or b"0", 8)
    except ValueError:
        pass
    digits = _cstr(buf, start, end).strip(b" ")
    if not digits:
        return 0
    try:
        return int(digits, 8)
    except ValueError:
        raise _malformed(f"bad {what} field {digits!r}") from None


def _byte_sum_is(block: bytes, total: int) -> bool:
    """Whether sum(block) == total for a header block, ~8x faster than sum() (which was 40 % of
    parsing a layer): Adler-32's low half is 1 + the byte sum mod 65521, the block read as an
    integer is the byte sum mod 255 (256 = 1 mod 255), and with both moduli the sum is exact
    (65521 * 255 > 512 * 255)."""
    return (
        0 <= total <= _SUM_MAX
        and zlib.adler32(block) & 0xFFFF == (1 + total) % 65521
        and int.from_bytes(block, "little") % 255 == total % 255
    )


def _checksum_ok(hdr: bytes) -> bool:
    try:
        stored = _number(hdr, 148, 156, "checksum")
    except InvalidArgument:
        return False
    own = sum(hdr[148:156]) - 256  # the field itself counts as 8 spaces
    if _byte_sum_is(hdr, stored + own):
        return True
    unsigned = sum(hdr) - own
    # Some old writers summed signed chars.
    rest = hdr[:148] + hdr[156:]
    return stored == unsigned - 256 * sum(1 for b in rest if b > 127)


def _pax_ns(value: str, key: str) -> int:
    # Every entry of a layer carries one ("1795826532.7107015"): plain digits skip Decimal.
    sec, dot, frac = value.partition(".")
    if sec.isascii() and sec.isdigit() and (not dot or (frac.isascii() and frac.isdigit())):
        return int(sec) * 1_000_000_000 + (int(frac[:9].ljust(9, "0")) if dot else 0)
    try:
        return int(Decimal(value) * 1_000_000_000)
    except ArithmeticError:
        raise _malformed(f"bad PAX {key} {value!r}") from None


def _pax_int(value: str, key: str) -> int:
    try:
        n = int(value, 10)
    except ValueError:
        raise _malformed(f"bad PAX {key} {value!r}") from None
    if n < 0:
        raise _malformed(f"negative PAX {key}")
    return n


def parse_pax(data: bytes) -> dict[str, bytes]:
    """PAX records `"<len> <key>=<value>\\n"`; values stay bytes (xattrs are binary)."""
    out: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # some writers pad the record block with NULs
            break
        space = data.find(b" ", pos, pos + 20)
        if space < 0:
            raise _malformed("bad PAX record length")
        try:
            length = int(data[pos:space], 10)
        except ValueError:
            raise _malformed("bad PAX record length") from None
        end = pos + length
        if length <= space - pos + 1 or end > len(data) or data[end - 1] != 0x0A:
            raise _malformed("bad PAX record")
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if not eq or not key:
            raise _malformed("bad PAX record")
        out[_text(key)] = value
        pos = end
    return out


class TarReader:
    """Reads entries from a stream of tar bytes: `next()` until None, `copy_to(fd)` for the
    current FILE entry's data (skipped on the next `next()` when not copied).

    Reads the stream in chunks of `read(1 MiB)`; bytes after the end-of-archive marker are
    left unread apart from what the last chunk held.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._buf: bytes = b""
        self._pos = 0
        self._offset = 0  # stream offset of self._buf[0], for messages
        self._remaining = 0  # data bytes of the current entry not yet consumed
        self._padding = 0
        self._global: dict[str, bytes] = {}
        self._done = False

    # --- buffer ---------------------------------------------------------------------------

    def _fill(self) -> bool:
        chunk = self._stream.read(_CHUNK)
        if not chunk:
            return False
        rest = self._buf[self._pos :]
        self._offset += self._pos
        self._buf = rest + chunk if rest else chunk
        self._pos = 0
        return True

    def _take(self, n: int) -> bytes | None:
        """Exactly n bytes, or None at a clean end of stream; a partial read is an error."""
        while len(self._buf) - self._pos < n:
            if not self._fill():
                if len(self._buf) == self._pos:
                    return None
                raise _malformed("unexpected end of data")
        data = self._buf[self._pos : self._pos + n]
        self._pos += n
        return data

    def _skip(self, n: int) -> None:
        while n:
            avail = len(self._buf) - self._pos
            if not avail:
                if not self._fill():
                    raise _malformed("unexpected end of data")
                continue
            step = min(avail, n)
            self._pos += step
            n -= step

    # --- entries ----------------------------------------------------------------------------

    def next(self) -> Entry | None:
        if self._done:
            return None
        self._skip(self._remaining + self._padding)
        self._remaining = self._padding = 0
        local: dict[str, bytes] = {}
        long_name: bytes | None = None
        long_link: bytes | None = None
        while True:
            at = self._offset + self._pos
            hdr = self._take(BLOCK)
            if hdr is None or hdr == _ZERO_BLOCK:
                self._done = True
                if local or long_name is not None or long_link is not None:
                    raise _malformed("archive ends after an extended header")
                return None
            if not _checksum_ok(hdr):
                if at == 0:
                    raise InvalidArgument("not a tar archive (bad header checksum)")
                raise _malformed(f"bad header checksum at offset {at}")
            flag = hdr[156:157]
            size = _number(hdr, 124, 136, "size")
            if size < 0:
                raise _malformed(f"negative size at offset {at}")
            if flag in (b"x", b"g", b"L", b"K"):
                if size > _MAX_SPECIAL:
                    raise _malformed(f"extended header of {size} bytes at offset {at}")
                data = self._take(size) if size else b""
                if data is None:
                    raise _malformed("unexpected end of data")
                self._skip(-size % BLOCK)
                if flag == b"x":
                    local.update(parse_pax(data))
                elif flag == b"g":
                    self._global.update(parse_pax(data))
                elif flag == b"L":
                    long_name = data.split(b"\0", 1)[0]
                else:
                    long_link = data.split(b"\0", 1)[0]
                continue
            return self._entry(hdr, flag, size, local, long_name, long_link)

    def _entry(
        self,
        hdr: bytes,
        flag: bytes,
        size: int,
        local: dict[str, bytes],
        long_name: bytes | None,
        long_link: bytes | None,
    ) -> Entry:
        name_raw = _cstr(hdr, 0, 100)
        if hdr[257:265] == _POSIX_MAGIC:
            prefix = _cstr(hdr, 345, 500)
            if prefix:
                name_raw = prefix + b"/" + name_raw
        kind = _TYPES.get(flag)
        if kind is None:
            what = "GNU sparse file" if flag == b"S" else f"entry type {flag!r}"
            raise InvalidArgument(f'layer entry "{_text(name_raw)}": unsupported {what}')
        if flag == b"\0" and name_raw.endswith(b"/"):
            kind = DIR  # V7 tar marks directories by the trailing slash alone
        mtime_ns = _number(hdr, 136, 148, "mtime") * 1_000_000_000
        e = Entry(
            name=_text(long_name if long_name is not None else name_raw),
            type=kind,
            mode=_number(hdr, 100, 108, "mode"),
            uid=_number(hdr, 108, 116, "uid"),
            gid=_number(hdr, 116, 124, "gid"),
            size=size,
            mtime_ns=mtime_ns,
            atime_ns=mtime_ns,
            linkname=_text(long_link if long_link is not None else _cstr(hdr, 157, 257)),
        )
        if kind in (CHAR, BLOCKDEV):
            e.devmajor = _number(hdr, 329, 337, "devmajor")
            e.devminor = _number(hdr, 337, 345, "devminor")
        pax = {**self._global, **local} if self._global else local
        if pax:
            self._apply_pax(e, pax)
        if not (0 <= e.uid < _ID_LIMIT and 0 <= e.gid < _ID_LIMIT):
            raise _malformed(f'entry "{e.name}": owner {e.uid}:{e.gid} out of range')
        if not (0 <= e.devmajor < _ID_LIMIT and 0 <= e.devminor < _ID_LIMIT):
            raise _malformed(f'entry "{e.name}": device number out of range')
        if not (
            -_TIME_LIMIT < e.mtime_ns < _TIME_LIMIT and -_TIME_LIMIT < e.atime_ns < _TIME_LIMIT
        ):
            raise _malformed(f'entry "{e.name}": time out of range')
        if kind != FILE:
            e.size = 0  # header-only types carry no data, whatever the size field says
        self._remaining = e.size
        self._padding = -e.size % BLOCK
        return e

    @staticmethod
    def _apply_pax(e: Entry, pax: dict[str, bytes]) -> None:
        atime = None
        for key, raw in pax.items():
            if key.startswith(_XATTR_PREFIX):
                e.xattrs.append((key[len(_XATTR_PREFIX) :], raw))
                continue
            if key.startswith("GNU.sparse."):
                raise InvalidArgument(f'layer entry "{e.name}": unsupported GNU sparse file')
            if not raw:
                continue  # an empty value unsets a global one: the header's value stands
            value = _text(raw)
            if key == "path":
                e.name = value
            elif key == "linkpath":
                e.linkname = value
            elif key == "size":
                e.size = _pax_int(value, key)
            elif key == "uid":
                e.uid = _pax_int(value, key)
            elif key == "gid":
                e.gid = _pax_int(value, key)
            elif key == "mtime":
                e.mtime_ns = _pax_ns(value, key)
            elif key == "atime":
                atime = _pax_ns(value, key)
        e.atime_ns = e.mtime_ns if atime is None else atime

    # --- data -------------------------------------------------------------------------------

    def copy_to(self, fd: int, name: str) -> None:
        """Write the current entry's remaining data to `fd`."""
        while self._remaining:
            avail = len(self._buf) - self._pos
            if not avail:
                if not self._fill():
                    raise InvalidArgument(f'layer entry "{name}": unexpected end of data')
                continue
            n = min(avail, self._remaining)
            view = memoryview(self._buf)[self._pos : self._pos + n]
            done = 0
            while done < n:
                done += os.write(fd, view[done:])
            self._pos += n
            self._remaining -= n
