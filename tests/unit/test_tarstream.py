"""The layer tar reader against Python's tarfile, and on hostile headers."""

from __future__ import annotations

import io
import os
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linerd.diff import tarstream
from linerd.diff.tarstream import TarReader, parse_pax
from linerd.errdefs import InvalidArgument

pytestmark = pytest.mark.unit

_KINDS = {
    tarfile.REGTYPE: tarstream.FILE,
    tarfile.DIRTYPE: tarstream.DIR,
    tarfile.SYMTYPE: tarstream.SYMLINK,
    tarfile.LNKTYPE: tarstream.HARDLINK,
    tarfile.CHRTYPE: tarstream.CHAR,
    tarfile.BLKTYPE: tarstream.BLOCKDEV,
    tarfile.FIFOTYPE: tarstream.FIFO,
}


def read_all(data: bytes, chunk: int | None = None) -> list[tuple[tarstream.Entry, bytes]]:
    stream = _Chunked(data, chunk) if chunk else io.BytesIO(data)
    reader = TarReader(stream)  # type: ignore[arg-type]
    out = []
    while (e := reader.next()) is not None:
        r, w = os.pipe()
        try:
            reader.copy_to(w, e.name)
            os.close(w)
            w = -1
            with os.fdopen(r, "rb") as f:
                r = -1
                body = f.read()
        finally:
            for fd in (r, w):
                if fd >= 0:
                    os.close(fd)
        out.append((e, body))
    return out


class _Chunked(io.RawIOBase):
    """Serves at most `n` bytes per read, to cross every buffer boundary."""

    def __init__(self, data: bytes, n: int) -> None:
        self._data = data
        self._pos = 0
        self._n = n

    def read(self, size: int = -1) -> bytes:
        size = self._n if size < 0 else min(size, self._n)
        out = self._data[self._pos : self._pos + size]
        self._pos += len(out)
        return out


def build(members: list[tuple[tarfile.TarInfo, bytes]], fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


names = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\0/"), min_size=1, max_size=40
)
paths = st.lists(names, min_size=1, max_size=6).map("/".join)


@st.composite
def member(draw: st.DrawFn, fmt: int) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(draw(paths))
    info.type = draw(st.sampled_from(sorted(_KINDS)))
    info.mode = draw(st.integers(0, 0o7777))
    info.uid = draw(st.integers(0, 65535 if fmt == tarfile.USTAR_FORMAT else 1 << 31))
    info.gid = draw(st.integers(0, 65535))
    info.mtime = draw(st.integers(0, 1 << 33 if fmt != tarfile.USTAR_FORMAT else 1 << 32))
    data = b""
    if info.isreg():
        data = draw(st.binary(max_size=3000))
        info.size = len(data)
    elif info.issym() or info.islnk():
        info.linkname = draw(paths)
    elif info.ischr() or info.isblk():
        info.devmajor = draw(st.integers(0, 4095))
        info.devminor = draw(st.integers(0, 4095))
    if fmt == tarfile.PAX_FORMAT and draw(st.booleans()):
        info.pax_headers = {"SCHILY.xattr.user.k": draw(st.text(max_size=20))}
    return info, data


@st.composite
def archives(draw: st.DrawFn) -> tuple[bytes, int]:
    fmt = draw(st.sampled_from([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT]))
    members = draw(st.lists(member(fmt), max_size=8))
    try:
        return build(members, fmt), draw(st.sampled_from([1, 7, 512, 1 << 20]))
    except ValueError:  # a name or link ustar cannot hold
        return build([], fmt), 512


@settings(max_examples=300, deadline=None)
@given(archives())
def test_reads_what_tarfile_reads(case: tuple[bytes, int]) -> None:
    data, chunk = case
    ours = read_all(data, chunk)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        theirs = [(m, tar.extractfile(m).read() if m.isreg() else b"") for m in tar]  # type: ignore[union-attr]
    assert len(ours) == len(theirs)
    for (e, body), (m, tbody) in zip(ours, theirs, strict=True):
        assert e.name.rstrip("/") == m.name.rstrip("/")
        assert e.type == _KINDS[m.type]
        assert (e.mode, e.uid, e.gid) == (m.mode, m.uid, m.gid)
        assert e.mtime_ns == int(m.mtime) * 1_000_000_000
        assert body == tbody
        if m.issym() or m.islnk():
            assert e.linkname == m.linkname
        if m.ischr() or m.isblk():
            assert (e.devmajor, e.devminor) == (m.devmajor, m.devminor)
        want = {
            k.removeprefix("SCHILY.xattr."): v.encode("utf-8", "surrogateescape")
            for k, v in m.pax_headers.items()
            if k.startswith("SCHILY.xattr.")
        }
        assert dict(e.xattrs) == want


def test_pax_times_keep_nanoseconds_and_xattrs_stay_binary() -> None:
    info = tarfile.TarInfo("f")
    info.pax_headers = {"mtime": "1700000000.123456789", "atime": "-1.5"}
    data = build([(info, b"")], tarfile.PAX_FORMAT)
    # tarfile encodes PAX values as UTF-8 text; a binary capability needs a raw record.
    raw = b"SCHILY.xattr.security.capability=\x01\x00\x00\x02\n\xff"
    record = b"%d %s\n" % (len(raw) + 4, raw)
    assert parse_pax(record)["SCHILY.xattr.security.capability"] == raw.split(b"=", 1)[1]
    ((e, _),) = read_all(data)
    assert (e.mtime_ns, e.atime_ns) == (1_700_000_000_123_456_789, -1_500_000_000)


def test_global_pax_headers_apply_to_later_entries() -> None:
    buf = io.BytesIO()
    with tarfile.open(
        fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"uid": "4242"}
    ) as tar:
        tar.addfile(tarfile.TarInfo("a"), io.BytesIO(b""))
    ((e, _),) = read_all(buf.getvalue())
    assert e.uid == 4242


def test_base256_numbers() -> None:
    info = tarfile.TarInfo("big")
    info.uid = 1 << 30
    info.mtime = 1 << 33
    data = build([(info, b"")], tarfile.GNU_FORMAT)
    ((e, _),) = read_all(data)
    assert (e.uid, e.mtime_ns) == (1 << 30, (1 << 33) * 1_000_000_000)


def test_v7_directory_by_trailing_slash_and_header_only_sizes() -> None:
    d = tarfile.TarInfo("dir/")
    d.type = tarfile.AREGTYPE
    link = tarfile.TarInfo("l")
    link.type = tarfile.SYMTYPE
    link.linkname = "x"
    f = tarfile.TarInfo("f")
    f.size = 3
    raw = bytearray(build([(d, b""), (f, b"abc")], tarfile.USTAR_FORMAT))
    ((e1, _), (e2, body)) = read_all(bytes(raw))
    assert e1.type == tarstream.DIR and e2.name == "f" and body == b"abc"


def test_empty_stream_and_missing_end_marker_are_ends() -> None:
    assert read_all(b"") == []
    one = build([(tarfile.TarInfo("a"), b"")], tarfile.USTAR_FORMAT)
    assert [e.name for e, _ in read_all(one[:512])] == ["a"]


def _header(name: bytes = b"f", size: bytes = b"0", flag: bytes = b"0") -> bytearray:
    info = tarfile.TarInfo(name.decode())
    hdr = bytearray(info.tobuf(tarfile.USTAR_FORMAT)[:512])
    hdr[124:136] = size.rjust(11, b"0") + b"\0"
    hdr[156:157] = flag
    _fix_checksum(hdr)
    return hdr


def _fix_checksum(hdr: bytearray) -> None:
    hdr[148:156] = b"        "
    hdr[148:156] = b"%06o\0 " % sum(hdr)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"not a tar" * 100, "not a tar archive"),
        (bytes(_header())[:300], "unexpected end of data"),
        (bytes(_header(size=b"10")) + b"abc", "unexpected end of data"),
        (bytes(_header(flag=b"S")), "unsupported GNU sparse"),
        (bytes(_header(flag=b"V")), "unsupported entry type"),
        (bytes(_header(flag=b"x", size=b"%o" % (2 << 20))), "extended header of"),
        (bytes(_header(flag=b"x", size=b"12")) + b"99 path=a\n".ljust(512, b"\0"), "PAX"),
        (bytes(_header(flag=b"L", size=b"2")) + b"a\0".ljust(512, b"\0"), "ends after"),
        (bytes(_header()) + b"\x01" * 512, "bad header checksum at offset 512"),
    ],
)
def test_hostile_headers_are_clear_errors(data: bytes, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        read_all(data)


@pytest.mark.parametrize(("start", "end"), [(108, 116), (329, 337)])
def test_out_of_range_ids_are_refused(start: int, end: int) -> None:
    hdr = _header(flag=b"3")
    hdr[start:end] = b"\x80" + (1 << 40).to_bytes(7, "big")
    _fix_checksum(hdr)
    with pytest.raises(InvalidArgument, match="out of range"):
        read_all(bytes(hdr))


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=512, max_size=512), st.integers(-70_000, 200_000))
def test_fast_byte_sum_is_exact(block: bytes, delta: int) -> None:
    total = sum(block)
    assert tarstream._byte_sum_is(block, total)
    if delta:
        assert not tarstream._byte_sum_is(block, total + delta)


@pytest.mark.parametrize("off", [1, 255, 65521, 65521 * 255, -65521])
def test_checksum_off_by_a_modulus_is_refused(off: int) -> None:
    hdr = _header()
    good = int(bytes(hdr[148:154]), 8)
    hdr[148:156] = b"%06o\0 " % (good + off) if good + off >= 0 else b"-1\0     "
    with pytest.raises(InvalidArgument, match="not a tar archive"):
        read_all(bytes(hdr))


@pytest.mark.parametrize(
    ("value", "ns"),
    [
        ("1700000000", 1_700_000_000_000_000_000),
        ("1700000000.5", 1_700_000_000_500_000_000),
        ("1700000000.1234567891", 1_700_000_000_123_456_789),
        ("-1.5", -1_500_000_000),
        ("1e3", 1_000_000_000_000),
        ("0.000000001", 1),
    ],
)
def test_pax_times(value: str, ns: int) -> None:
    assert tarstream._pax_ns(value, "mtime") == ns


def test_entries_pickle_with_every_field() -> None:
    import dataclasses
    import pickle

    e = tarstream.Entry(
        "a/b", tarstream.CHAR, 0o4755, 1, 2, 0, 3, 4, "l", 5, 6, [("user.x", b"\0")]
    )
    assert len(e.__reduce__()[1]) == len(dataclasses.fields(tarstream.Entry))
    assert pickle.loads(pickle.dumps(e)) == e
