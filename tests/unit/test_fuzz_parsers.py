"""Property tests of the parsers (hypothesis): references, digests, identifiers, platforms,
image documents (manifests, indexes, configs), label masks and the list-filter language.

Each parser, given anything, either returns or raises its documented error (InvalidArgument;
FilterSyntaxError for filters), never anything else; what it accepts round-trips.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from liner_common.imagespec import parse_platform
from linerd import imagespec
from linerd.core import validate
from linerd.core.filters import FilterSyntaxError, dict_adaptor
from linerd.core.filters import parse as parse_filter
from linerd.errdefs import InvalidArgument
from linerd.remotes import reference

pytestmark = pytest.mark.unit

set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "liner-hypothesis"))
FUZZ = settings(
    derandomize=True,
    deadline=None,
    database=None,
    max_examples=400,
    suppress_health_check=[HealthCheck.too_slow],
)

HEX64 = "a" * 64
DIGEST = "sha256:" + HEX64


def sha_like(draw_hex: str) -> str:
    return "sha256:" + draw_hex


hex64 = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)

# --- references -------------------------------------------------------------------------------

_REF_ALPHABET = "abcdefxyzABZ0159._-/:@[]é \n\t"
ref_pieces = st.one_of(
    st.sampled_from(
        [
            "docker.io/",
            "index.docker.io/",
            "localhost/",
            "localhost:5000/",
            "[::1]:5000/",
            "Host/",
            "reg.example.com:443/",
            "library/",
            "busybox",
            "a__b",
            "a--b",
            "a..b",
            ":latest",
            ":v1.0-rc_1",
            ":é",
            "@" + DIGEST,
            "@sha256:" + "A" * 64,
            "@sha512:" + "b" * 128,
            "@sha256:" + HEX64 + "\n",
            HEX64,
            "/",
            ":",
            "@",
            "://",
            "x" * 130,
        ]
    ),
    st.text(alphabet=_REF_ALPHABET, max_size=8),
)
references = st.one_of(
    st.lists(ref_pieces, min_size=1, max_size=6).map("".join),
    st.text(max_size=40),
)


@settings(FUZZ)
@given(references)
@example("busybox:é")  # a tag is ASCII (\w in distribution's grammar is RE2's, not Unicode)
@example("a:tag\u0663")
def test_reference_parse_total_and_stable(text: str) -> None:
    try:
        ref = reference.parse(text)
    except InvalidArgument:
        return
    s = str(ref)
    assert s.isascii()
    assert reference.parse(s) == ref
    assert reference.normalize(s) == s
    assert ref.tag is None or re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", ref.tag)
    if ref.digest is not None:
        assert reference.validate_digest(ref.digest) == ref.digest


# --- digests and identifiers ------------------------------------------------------------------

digest_like = st.one_of(
    st.builds(lambda h: "sha256:" + h, hex64),
    st.builds(lambda h, tail: "sha256:" + h + tail, hex64, st.sampled_from(["\n", " ", "x", ""])),
    st.builds(
        lambda a, h: f"{a}:{h}",
        st.sampled_from(["sha256", "sha384", "sha512", "SHA256", "md5", ""]),
        st.text(alphabet="0123456789abcdefABCDEF\n", max_size=130),
    ),
    st.text(max_size=80),
)


@settings(FUZZ)
@given(digest_like)
@example(DIGEST + "\n")
def test_digests_accept_exactly_the_grammar(value: str) -> None:
    try:
        validate.digest(value)
    except InvalidArgument:
        assert not re.fullmatch(r"sha256:[a-f0-9]{64}", value)
    else:
        assert re.fullmatch(r"sha256:[a-f0-9]{64}", value)
    lengths = {"sha256": 64, "sha384": 96, "sha512": 128}
    try:
        reference.validate_digest(value)
    except InvalidArgument:
        algo, _, hexpart = value.partition(":")
        ok = algo in lengths and re.fullmatch(f"[a-f0-9]{{{lengths[algo]}}}", hexpart)
        assert not ok
    else:
        algo, _, hexpart = value.partition(":")
        assert re.fullmatch(f"[a-f0-9]{{{lengths[algo]}}}", hexpart)


@settings(FUZZ)
@given(st.one_of(st.text(alphabet="aZ09._-\n /é", max_size=80), st.text(max_size=20)))
@example("ns\n")
@example("a" * 77)
def test_identifiers_accept_exactly_the_grammar(value: str) -> None:
    grammar = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*", re.ASCII)
    try:
        validate.identifier(value)
    except InvalidArgument:
        assert not (grammar.fullmatch(value) and len(value) <= 76)
    else:
        assert grammar.fullmatch(value) and len(value) <= 76


# --- platforms --------------------------------------------------------------------------------


@settings(FUZZ)
@given(
    st.one_of(
        st.lists(
            st.sampled_from(
                [
                    "linux",
                    "LINUX",
                    "windows",
                    "amd64",
                    "x86_64",
                    "arm64",
                    "aarch64",
                    "armhf",
                    "arm",
                    "v7",
                    "v8",
                    "",
                    " ",
                    "i386",
                    "é",
                ]
            ),
            min_size=1,
            max_size=4,
        ).map("/".join),
        st.text(max_size=20),
    )
)
def test_platform_parse_total_and_stable(text: str) -> None:
    try:
        p = parse_platform(text)
    except ValueError:
        return
    assert p.os and p.architecture
    assert parse_platform(str(p)) == p
    assert p.matches(p) and p.normalized() == p


# --- image documents ------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=10),
    st.sampled_from(
        [DIGEST, "sha256:" + "z" * 64, 2, -1, imagespec.OCI_MANIFEST, imagespec.OCI_CONFIG]
    ),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(
                [
                    "mediaType",
                    "digest",
                    "size",
                    "annotations",
                    "platform",
                    "os",
                    "architecture",
                    "variant",
                    "manifests",
                    "layers",
                    "config",
                    "schemaVersion",
                    "rootfs",
                    "diff_ids",
                    "x",
                ]
            ),
            inner,
            max_size=6,
        ),
    ),
    max_leaves=20,
)


def descriptor(**over: Any) -> dict[str, Any]:
    return {"mediaType": imagespec.OCI_MANIFEST, "digest": DIGEST, "size": 1, **over}


valid_docs = st.one_of(
    st.builds(
        lambda cfg, layers: {"schemaVersion": 2, "config": cfg, "layers": layers},
        json_values | st.just(descriptor()),
        st.lists(json_values | st.just(descriptor()), max_size=3) | json_values,
    ),
    st.builds(lambda ms: {"manifests": ms}, st.lists(json_values | st.just(descriptor()))),
    st.builds(
        lambda ids, os_: {"rootfs": {"diff_ids": ids}, "os": os_, "architecture": "amd64"},
        st.lists(st.sampled_from([DIGEST, 1, None, DIGEST + "\n"]), max_size=3),
        json_values,
    ),
)
documents = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    valid_docs.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=40),
    st.sampled_from([b"[" * 100_000, b'{"a":' * 50_000, b"\xff\xfe{}", b"1" * 5000]),
)


@settings(FUZZ)
@given(documents)
@example(b"[" * 100_000)  # nesting deeper than the JSON decoder's recursion limit
def test_image_documents_raise_only_invalid_argument(data: bytes) -> None:
    for parse in (imagespec.parse_manifest, imagespec.parse_index, imagespec.parse_config):
        with contextlib.suppress(InvalidArgument):
            parse(data, DIGEST)
    try:
        m = imagespec.parse_manifest(data, DIGEST)
    except InvalidArgument:
        return
    for d in [m.config, *m.layers]:
        validate.digest(d.digest)
        assert isinstance(d.size, int) and d.size >= 0


# --- label masks ----------------------------------------------------------------------------

label_keys = st.sampled_from(["a", "b", "c.d", "x/y", "a.b.c", ""])
labels = st.dictionaries(label_keys.filter(bool), st.text(max_size=5), max_size=4)
mask_paths = st.lists(
    st.one_of(
        st.builds(lambda k: "labels." + k, label_keys),
        st.sampled_from(["labels", "name", "labelsx", "labels.", "annotations.a"]),
    ),
    max_size=5,
)


@settings(FUZZ)
@given(labels, labels, mask_paths)
def test_label_mask_touches_exactly_the_named_keys(
    current: dict[str, str], new: dict[str, str], paths: list[str]
) -> None:
    label_paths = [p for p in paths if p == "labels" or p.startswith("labels.")]
    if "labels." in paths:
        with pytest.raises(InvalidArgument):
            validate.apply_label_mask(current, new, paths)
        return
    got = validate.apply_label_mask(current, new, paths)
    if not label_paths:
        assert got is None
        return
    assert got is not None
    # After the last whole-map replacement, only keys named later change.
    last_all = max((i for i, p in enumerate(label_paths) if p == "labels"), default=-1)
    base = dict(new) if last_all >= 0 else dict(current)
    named = {p[len("labels.") :] for p in label_paths[last_all + 1 :]}
    expected_keys = (set(base) - named) | {k for k in named if k in new}
    assert set(got) == expected_keys
    for k in got:
        assert got[k] == (new[k] if k in named or last_all >= 0 else current[k])


# --- the filter language --------------------------------------------------------------------


@settings(FUZZ)
@given(
    st.one_of(
        st.text(max_size=30),
        st.lists(
            st.sampled_from(
                [
                    "name",
                    "labels",
                    ".",
                    ",",
                    "==",
                    "!=",
                    "~=",
                    '"',
                    "/",
                    "|",
                    "\\",
                    "\\x",
                    "\\u00e9",
                    "\\777",
                    "a b",
                    '"q"',
                    "(",
                    "a{4294967296}",
                    "(" * 200,
                    "*",
                    "é",
                ]
            ),
            max_size=10,
        ).map("".join),
    )
)
@example('name~="a{4294967296}"')  # repeat count past the regexp engine's limit
@example('name~="' + "(" * 1000 + '"')  # nesting past the recursion limit
def test_filter_parse_raises_only_syntax_errors(expr: str) -> None:
    try:
        f = parse_filter(expr)
    except FilterSyntaxError:
        return
    f.match(dict_adaptor({"name": "x"}, {"a": "b"}))


def go_quote(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\0":
            out.append("\\000")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


field_names = st.text(alphabet="abcdefXY_09", min_size=1, max_size=8).filter(
    lambda s: s != "labels"
)
values = st.text(max_size=12)


@settings(FUZZ)
@given(
    st.dictionaries(field_names, values.filter(bool), min_size=1, max_size=4),
    st.dictionaries(st.text(min_size=1, max_size=8), values, max_size=3),
    st.sampled_from(["==", "~=", "present"]),
)
def test_filter_built_from_a_dict_matches_it(
    fields: dict[str, str], labels_: dict[str, str], op: str
) -> None:
    selectors = []
    for key, value in [
        *fields.items(),
        *(("labels." + go_quote(k), v) for k, v in labels_.items()),
    ]:
        if op == "present":
            selectors.append(key)
        elif op == "==":
            selectors.append(f"{key}=={go_quote(value)}")
        else:
            selectors.append(f"{key}~={go_quote('^' + re.escape(value) + '$')}")
    expr = ",".join(selectors)
    f = parse_filter(expr)
    assert f.match(dict_adaptor(fields, labels_)), expr
    # Changing one value of a plain field breaks an equality filter.
    if op == "==":
        key = next(iter(fields))
        assert not f.match(dict_adaptor({**fields, key: fields[key] + "!"}, labels_))
