"""Cleaning upstream values so the store never sees what it rejects."""

from __future__ import annotations

import math

import pytest

from shared.providers.sanitize import UnsafeValue, check_storable, clean_structure, clean_text, finite_or_none


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("\x00Will\x07 it\x1b rain?", "Will it rain?"),
        ("  two\tlines\nhere  ", "two lines here"),
        ("zero\u200bwidth", "zerowidth"),
        ("café ✓", "café ✓"),
        ("\x9fC1", "C1"),
    ],
)
def test_clean_text_drops_control_and_invisible_characters(raw: str, clean: str) -> None:
    assert clean_text(raw) == clean


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"a.b": 1}, "key 'a.b'"),
        ({"$where": 1}, r"key '\$where'"),
        ({"x": {"y": math.nan}}, "x.y: nan"),
        ({"x": [1, [2]]}, r"x\[1\]: arrays nested"),
        ({"x": "nul\x00"}, "x: NUL"),
        ({"x": [{"inf": math.inf}]}, r"x\[0\].inf: inf"),
    ],
)
def test_check_storable_names_the_offending_part(value: object, where: str) -> None:
    with pytest.raises(UnsafeValue, match=where):
        check_storable(value)


def test_check_storable_accepts_ordinary_documents() -> None:
    check_storable({"_id": "p:1", "n": 1.5, "tags": ["a", {"b": None}], "nested": {"ok": True}})


def test_clean_structure_makes_free_form_json_storable() -> None:
    dirty = {"a.b": 1, "$x": 2, "keep": {"v": math.nan, "l": [[1, 2], [3]]}, "t": "a\x00b"}
    cleaned = clean_structure(dirty)
    check_storable(cleaned)
    assert cleaned == {"keep": {"v": None, "l": [1, 2, 3]}, "t": "ab"}


@pytest.mark.parametrize(("value", "expected"), [(1.5, 1.5), (math.nan, None), (-math.inf, None), (None, None)])
def test_finite_or_none(value: float | None, expected: float | None) -> None:
    assert finite_or_none(value) == expected
