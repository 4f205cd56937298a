"""Tests for liner.format: sizes, ages, durations, labels and tables as ctr prints them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from liner.format import (
    age,
    human_duration,
    human_size,
    labels_text,
    parse_duration,
    parse_labels,
    rfc3339,
    table,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0B"),
        (999, "999B"),
        (1000, "1kB"),
        (2048, "2.048kB"),
        (3 * (1 << 20) + 12345, "3.158MB"),
        (1_500_000_000, "1.5GB"),
        (10**30, "1e+06YB"),
    ],
)
def test_human_size(size: int, text: str) -> None:
    assert human_size(size) == text


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(milliseconds=300), "Less than a second"),
        (timedelta(seconds=1), "1 second"),
        (timedelta(seconds=59), "59 seconds"),
        (timedelta(seconds=61), "About a minute"),
        (timedelta(minutes=45), "45 minutes"),
        (timedelta(minutes=61), "About an hour"),
        (timedelta(hours=5), "5 hours"),
        (timedelta(days=3), "3 days"),
        (timedelta(days=20), "2 weeks"),
        (timedelta(days=90), "3 months"),
        (timedelta(days=800), "2 years"),
    ],
)
def test_human_duration(delta: timedelta, text: str) -> None:
    assert human_duration(delta) == text


def test_age() -> None:
    now = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    assert age(now - timedelta(minutes=5), now) == "5 minutes"
    assert age(None, now) == "-"


@pytest.mark.parametrize(
    ("text", "delta"),
    [
        ("24h", timedelta(hours=24)),
        ("30m", timedelta(minutes=30)),
        ("1h30m", timedelta(minutes=90)),
        ("1.5h", timedelta(minutes=90)),
        ("90s", timedelta(seconds=90)),
        ("500ms", timedelta(milliseconds=500)),
        ("0", timedelta(0)),
        ("0s", timedelta(0)),
        ("-5m", timedelta(minutes=-5)),
    ],
)
def test_parse_duration(text: str, delta: timedelta) -> None:
    assert parse_duration(text) == delta


@pytest.mark.parametrize("text", ["", "5", "h", "24 h", "1d", "soon", "1h-5m", "-"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_rfc3339_is_utc_with_z() -> None:
    when = datetime(2024, 5, 1, 14, 30, 15, 999_999, tzinfo=UTC)
    assert rfc3339(when) == "2024-05-01T14:30:15Z"
    cet = when.astimezone(timezone(timedelta(hours=2)))
    assert rfc3339(cet) == "2024-05-01T14:30:15Z"


def test_labels() -> None:
    assert labels_text({}) == "-"
    assert labels_text({"b": "2", "a": "1"}) == "a=1,b=2"
    assert parse_labels(["a=1", "b=", "c=x=y"]) == {"a": "1", "b": "", "c": "x=y"}
    for bad in (["a"], ["=1"], ["a=1", "b"]):
        with pytest.raises(ValueError, match="want KEY=VALUE"):
            parse_labels(bad)


def test_table_aligns_columns() -> None:
    text = table(
        ["NAME", "CREATED AT", "LABELS"],
        [["a", "2024-01-01T00:00:00Z", "-"], ["longer-name", "x", "k=v"]],
    )
    assert text == (
        "NAME          CREATED AT             LABELS\n"
        "a             2024-01-01T00:00:00Z   -\n"
        "longer-name   x                      k=v\n"
    )
    assert "\t" not in text
    assert table(["A", "B"], []) == "A   B\n"
