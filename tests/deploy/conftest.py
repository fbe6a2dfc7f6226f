"""Fixtures shared by the deployment tests."""

from __future__ import annotations

# Import hypothesis now, at collection: otherwise its pytest plugin imports it lazily in
# the terminal summary, and CPython 3.11.7's AST recursion-depth bug (gh-106905) can
# crash pytest's assertion rewriter there after all tests passed ("SystemError: AST
# constructor recursion depth mismatch"). Seen when tests/deploy runs on its own.
import hypothesis  # noqa: F401
