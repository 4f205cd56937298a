"""Tests for linerd.core.filters (containerd's list-filter language)."""

from __future__ import annotations

import pytest

from linerd.core.filters import (
    ALWAYS,
    Adaptor,
    FilterSyntaxError,
    Operator,
    Selector,
    dict_adaptor,
    parse,
    parse_all,
)

pytestmark = pytest.mark.unit

# A small corpus in the spirit of containerd's filter tests: (name, other, labels).
CORPUS: dict[str, Adaptor] = {
    "foo-true": dict_adaptor({"name": "foo"}, {"foo": "true"}),
    "bar-nolabels": dict_adaptor({"name": "bar"}),
    "foo-complex": dict_adaptor(
        {"name": "foo"}, {"foo": "present", "more complex label": "present"}
    ),
    "bar-true": dict_adaptor({"name": "bar"}, {"bar": "true"}),
    "fooer-escaped": dict_adaptor(
        {"name": "fooer"}, {'more complex label with \\ and "': "present"}
    ),
    "fooer-escaped-post": dict_adaptor(
        {"name": "fooer"}, {'more complex label with \\ and ".post': "present"}
    ),
    "baz": dict_adaptor({"name": "baz", "other": "too complex, yo"}),
    "bazo": dict_adaptor({"name": "bazo", "other": "abc"}),
    "compound": dict_adaptor({"name": "compound"}, {"foo": "omg_asdf.asdf-qwer"}),
}


def matching(expr: str) -> list[str]:
    f = parse(expr)
    return [key for key, adaptor in CORPUS.items() if f.match(adaptor)]


def matches(expr: str, adaptor: Adaptor) -> bool:
    return parse(expr).match(adaptor)


# --- matching ---------------------------------------------------------------------------------


def test_empty_matches_everything() -> None:
    assert parse("") is ALWAYS
    assert matching("") == list(CORPUS)


def test_presence() -> None:
    assert matching("name") == list(CORPUS)
    assert matching("labels.foo") == ["foo-true", "foo-complex", "compound"]
    assert matching("other") == ["baz", "bazo"]
    assert matching("nosuchfield") == []


def test_equality() -> None:
    assert matching("name==bar") == ["bar-nolabels", "bar-true"]
    assert matching("labels.foo==true") == ["foo-true"]
    # Bare values may contain dots, dashes, slashes, colons, '=' ... but not ',' or spaces.
    assert matching("labels.foo==omg_asdf.asdf-qwer") == ["compound"]
    img = dict_adaptor({"name": "docker.io/library/busybox:latest"})
    assert matches("name==docker.io/library/busybox:latest", img)
    assert matches("name==docker.io/library/busybox:latest,name!=a=b", img)
    assert matches("name == docker.io/library/busybox:latest", img)


def test_equality_requires_presence() -> None:
    assert not matches('labels.x==""', dict_adaptor({}, {}))
    assert matches('labels.x==""', dict_adaptor({}, {"x": ""}))


def test_inequality() -> None:
    assert matching("name!=bar") == [k for k in CORPUS if k not in ("bar-nolabels", "bar-true")]
    # An absent field compares as "" (as in containerd), so it is "not equal" to a value.
    assert matches("labels.foo!=true", CORPUS["bar-nolabels"])
    assert not matches('labels.foo!=""', CORPUS["bar-nolabels"])


def test_regex_bare_and_quoted() -> None:
    assert matching("other~=[abc]+,name!=foo") == ["baz", "bazo"]
    assert matching("other~=/[abc]+/,name!=foo") == ["baz", "bazo"]
    # A comma inside a quoted regexp does not end the selector.
    assert matching("other~=/[abc]{1,2}/,name!=foo") == ["baz", "bazo"]
    # Valid syntax (escaped delimiter, embedded '"'), but matches nothing.
    assert matching('other~=/[abc]{0,1}"\\//,name!=foo') == []
    assert matching("other~=|, yo$|") == ["baz"]
    assert matching("name~=^ba") == ["bar-nolabels", "bar-true", "baz", "bazo"]
    assert matching('name~="^fo+$"') == ["foo-true", "foo-complex"]


def test_regex_is_unanchored_search_and_absent_is_empty() -> None:
    assert matches("name~=ox", dict_adaptor({"name": "box"}))
    assert matches("name~=^$", dict_adaptor({}))
    assert not matches("name~=/./", dict_adaptor({}))


def test_regex_escaped_delimiter() -> None:
    f = parse(r"input~=/foo\/bar/")
    assert isinstance(f, Selector)
    assert f.value == "foo/bar"
    assert f.match(dict_adaptor({"input": "xfoo/bary"}))
    pipe = parse("input~=|foo/bar|")
    assert isinstance(pipe, Selector) and pipe.value == "foo/bar"


def test_bare_regex_keeps_backslashes() -> None:
    f = parse(r"name~=[abc]\+")
    assert isinstance(f, Selector) and f.value == r"[abc]\+"
    assert f.match(dict_adaptor({"name": "xb+"}))


def test_unicode_values() -> None:
    assert matches("name~=牛", dict_adaptor({"name": "a牛b"}))
    assert matches("name~=|牛|", dict_adaptor({"name": "a牛b"}))
    assert matches("name==牛", dict_adaptor({"name": "牛"}))


def test_quoted_field_with_dots_and_slashes() -> None:
    obj = dict_adaptor(
        {"name": "x"}, {"containerd.io/gc.root": "2024", "io.cri-containerd.image": "managed"}
    )
    assert matches('labels."containerd.io/gc.root"', obj)
    assert matches('labels."containerd.io/gc.root"==2024', obj)
    assert matches('labels."io.cri-containerd.image"==managed', obj)
    assert not matches('labels."containerd.io/gc.root"==2025', obj)
    # Bare components are dot-separated, so this path has three components but the
    # adaptor joins them back with "." -- the quoting matters only for '/', '-', etc.
    assert parse('labels."a.b".c') == Selector(("labels", "a.b", "c"))
    assert matches("labels.containerd", dict_adaptor({}, {"containerd": "1"}))


def test_quoted_field_components_with_escapes() -> None:
    assert matching('name==foo,labels."more complex label"') == ["foo-complex"]
    assert matching(r'labels."more complex label with \\ and \""==present') == ["fooer-escaped"]
    assert matching(r'labels."more complex label with \\ and \"".post==present') == [
        "fooer-escaped-post"
    ]
    assert parse('"leading quote".postquote==value') == Selector(
        ("leading quote", "postquote"), Operator.EQUAL, "value"
    )


def test_quoted_values_with_escapes() -> None:
    assert matching('other=="too complex, yo"') == ["baz"]
    f = parse(r'name~="asdf\n\tfooo"')
    assert isinstance(f, Selector) and f.value == "asdf\n\tfooo"
    cases = {
        r'"a\x41\101\u00e9\U0001F600"': "aAAé\U0001f600",
        r'"\a\b\f\r\v\\"': "\a\b\f\r\v\\",
        r'"\xc3\xa9"': "é",  # \x yields raw bytes, as in Go strings
        '""': "",
        '"tab\there"': "tab\there",
    }
    for quoted, expected in cases.items():
        sel = parse(f"x=={quoted}")
        assert isinstance(sel, Selector)
        assert sel.value == expected, quoted


def test_and_via_commas() -> None:
    assert matching("labels.foo,name") == ["foo-true", "foo-complex", "compound"]
    assert matching("name==bar,labels.bar") == ["bar-true"]
    assert matching("name==bar,labels.bar==true") == ["bar-true"]
    assert matching("name==bar,labels.bar==wrong") == []
    assert matching("name==foo, labels.foo==present") == ["foo-complex"]


def test_or_via_parse_all() -> None:
    f = parse_all(["name==bar", "labels.foo==true"])
    assert [k for k, a in CORPUS.items() if f.match(a)] == ["foo-true", "bar-nolabels", "bar-true"]
    single = parse_all(["name==baz"])
    assert [k for k, a in CORPUS.items() if single.match(a)] == ["baz"]


def test_parse_all_empty_matches_everything() -> None:
    assert parse_all([]) is ALWAYS
    assert parse_all([""]) is ALWAYS
    assert parse_all(["", ""]) is ALWAYS
    # An empty member ORs in "everything".
    assert parse_all(["name==nothing", ""]) is ALWAYS


def test_parse_all_rejects_bare_string_and_propagates_errors() -> None:
    with pytest.raises(TypeError):
        parse_all("name==foo")
    with pytest.raises(FilterSyntaxError):
        parse_all(["name==foo", "name=="])


def test_dict_adaptor_paths() -> None:
    a = dict_adaptor(
        {"name": "img", "target.mediatype": "application/json", "empty": ""},
        {"a.b/c": "x", "blank": ""},
        annotations={"org.opencontainers.image.ref.name": "latest"},
    )
    assert a(["name"]) == "img"
    assert a(["target", "mediatype"]) == "application/json"
    assert a(["empty"]) is None  # empty scalar counts as absent, like containerd
    assert a(["labels", "a.b/c"]) == "x"
    assert a(["labels", "a", "b/c"]) == "x"
    assert a(["labels", "blank"]) == ""  # a present map key is present even if empty
    assert a(["labels"]) is None
    assert a(["annotations", "org", "opencontainers", "image", "ref", "name"]) == "latest"
    assert a([]) is None
    assert a(["nope"]) is None
    assert matches('labels."a.b/c"==x', a)
    assert matches('annotations."org.opencontainers.image.ref.name"==latest', a)
    assert matches("target.mediatype~=json$", a)
    assert not matches("labels.anything", dict_adaptor({"labels.anything": "no"}, None))


# --- syntax errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "pos", "message"),
    [
        ("name==foo,", 10, "expected field or quoted"),  # trailing comma
        ("labels.", 7, "expected field or quoted"),  # trailing field separator
        ("name==", 6, "expected value or quoted"),  # missing value at end
        ("image~=,id?=?fbaq", 7, "expected value or quoted"),  # missing value before ','
        ("name==.foo", 6, "expected value or quoted"),
        ("name~=.*", 6, "expected value or quoted"),  # a leading '.' needs quoting: /.*/
        ("name=foo", 4, "unsupported operator '='"),
        ("name===foo", 4, "unsupported operator '==='"),
        ("name~foo", 4, "unsupported operator '~'"),
        ("name?=foo", 4, "expected an operator"),
        ("labels.foo-bar==x", 10, "expected an operator"),  # '-' needs a quoted component
        ("name", None, None),  # sanity: valid
        ('labels."unterminated', 7, "quoted literal not terminated"),
        ('name=="unterminated', 6, "quoted literal not terminated"),
        ("labels.ns/key==value", 9, "quoted literal not terminated"),
        ("labels.key==/value", 12, "quoted literal not terminated"),
        ('labels."a\nb"==value', 7, "quoted literal not terminated"),
        ("labels.|foo|==omg", 7, "invalid quote encountered"),
        ("name==/foo/", 6, "invalid quote encountered"),  # alt quotes only for ~=
        ('labels.?"x"==present', 7, "expected field or quoted"),
        ("'single'==x", 0, "expected field or quoted"),
        (r'labels."\g"', 8, "illegal escape sequence"),
        (r'labels."\xaz"', 8, "illegal numeric escape sequence"),
        (r'labels."\777"', 8, "illegal numeric escape sequence"),
        (r'labels."\ud800"', 8, "illegal numeric escape sequence"),
        (r'x=="\'"', 4, "illegal escape sequence"),
        (r"x~=/\d/", 4, "illegal escape sequence"),  # only \/ may be escaped in /.../
        (r'x=="\xff"', 3, "not valid UTF-8"),
        ("foo\x00bar", 3, "expected an operator"),
        ('x=="a\x00"', 5, "unexpected null"),
        ('name=="foo"bar', 11, "unexpected input"),
        ("name==a b", 8, "unexpected input"),
        ("name==foo,,x", 10, "expected field or quoted"),
        (",name", 0, "expected field or quoted"),
        ("  ", 2, "expected field or quoted"),
        ("name~=[abc", 6, "invalid regular expression"),
        ("name~=/(unclosed/", 6, "invalid regular expression"),
        ("name~=*", 6, "invalid regular expression"),
    ],
)
def test_syntax_errors(expr: str, pos: int | None, message: str | None) -> None:
    if pos is None:
        parse(expr)
        return
    with pytest.raises(FilterSyntaxError) as info:
        parse(expr)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.pos == pos, str(err)
    assert err.expr == expr
    assert message is not None and message in str(err)
    assert f"position {pos}" in str(err)


def test_error_message_marks_location() -> None:
    with pytest.raises(FilterSyntaxError) as info:
        parse("image~=,id?=?fbaq")
    assert str(info.value) == (
        "filters: parse error at position 7: expected value or quoted: [image~= >|,|< id?=?fbaq]"
    )
    with pytest.raises(FilterSyntaxError) as info:
        parse("name==foo,")
    assert str(info.value) == (
        "filters: parse error at position 10 (end of input): expected field or quoted: [name==foo,]"
    )


def test_parsed_structure() -> None:
    assert parse("name") == Selector(("name",), Operator.PRESENT)
    assert parse("a.b!=c") == Selector(("a", "b"), Operator.NOT_EQUAL, "c")
    f = parse("a~=b")
    assert isinstance(f, Selector) and f.regex is not None and f.operator is Operator.MATCHES
