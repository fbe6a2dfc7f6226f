"""Clean upstream values before they can reach the store.

MongoDB and FerretDB 1.24 reject (or, worse, half-accept) some values that upstream JSON
carries without complaint: keys containing `.` or starting with `$`, NaN and Infinity,
NUL characters in strings, and arrays nested in arrays. Parsers build documents from
named fields only, so most of this never gets near the store; these helpers are the
last line of defence for text and for any free-form structure we decide to keep.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

#: C0/C1 control characters (NUL included), except tab and newline which text may use.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
#: Unicode "format" and private characters that render as nothing but break comparisons.
_INVISIBLE_CATEGORIES = frozenset({"Cf", "Cs", "Co"})


class UnsafeValue(ValueError):
    """A value cannot be stored as is (for example a key with '.', or a non-finite float)."""


def clean_text(value: str) -> str:
    """Return `value` without control, surrogate or invisible format characters, trimmed.

    Runs of whitespace (tabs and newlines included) become one space, so that one-line
    fields (a question, a slug) stay one line in logs and tables.
    """
    text = _CONTROL_RE.sub("", value)
    if not text.isascii():
        text = "".join(ch for ch in text if unicodedata.category(ch) not in _INVISIBLE_CATEGORIES)
    return " ".join(text.split())


def is_safe_key(key: str) -> bool:
    """True when `key` is storable in MongoDB and FerretDB: no '.', no leading '$', no NUL."""
    return bool(key) and "." not in key and not key.startswith("$") and "\x00" not in key


def finite_or_none(value: float | None) -> float | None:
    """`value` when it is a finite float, else None (NaN and ±Infinity are not storable)."""
    if value is None or not math.isfinite(value):
        return None
    return value


def check_storable(value: Any, path: str = "") -> None:
    """Raise `UnsafeValue` naming the first part of `value` the store would reject.

    Checks recursively: mapping keys, floats, strings, and arrays inside arrays.

    Args:
        value: a document or any value inside one.
        path: where `value` sits (used in the error message).

    Raises:
        UnsafeValue: with the dotted path of the offending part and the reason.
    """
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str) or not is_safe_key(key):
                raise UnsafeValue(f"{path or 'document'}: key {key!r} is not storable ('.', leading '$' or NUL)")
            check_storable(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            if isinstance(item, list | tuple):
                raise UnsafeValue(f"{path}[{index}]: arrays nested in arrays are not storable")
            check_storable(item, f"{path}[{index}]")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise UnsafeValue(f"{path}: {value} is not storable (NaN/Infinity)")
    elif isinstance(value, str) and "\x00" in value:
        raise UnsafeValue(f"{path}: NUL character in a string is not storable")


def clean_structure(value: Any) -> Any:
    """Return a storable copy of free-form JSON: unsafe keys dropped, NaN → None, text cleaned.

    Arrays nested in arrays are flattened one level at a time, because their elements are
    still meaningful while the nesting itself is what the store rejects.
    """
    if isinstance(value, Mapping):
        return {
            clean_text(key): clean_structure(item)
            for key, item in value.items()
            if isinstance(key, str) and is_safe_key(key) and clean_text(key)
        }
    if isinstance(value, list | tuple):
        flat: list[Any] = []
        for item in value:
            if isinstance(item, list | tuple):
                flat.extend(clean_structure(list(item)))
            else:
                flat.append(clean_structure(item))
        return flat
    if isinstance(value, float):
        return finite_or_none(value)
    if isinstance(value, str):
        return clean_text(value)
    return value
