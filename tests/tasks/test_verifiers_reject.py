"""The verifiers refuse inputs that are not strings of their language (issue 21, item 5).

A verifier that silently scores a malformed input would make every check built on it
(splits agree with the verifier, causal prefixes) accept wrong generators.
"""

from __future__ import annotations

import pytest

import ponder.tasks as T
from ponder.errors import ConfigError


@pytest.mark.parametrize("text", [
    "( ]",            # wrong closing type
    "( [ ) ]",        # crossing pairs: balanced counts, wrong nesting
    "[ ( ] )",
    "( ( ) ] )",      # a wrong type deep inside
    ") (",            # a close with nothing open
    "( x )",          # not a bracket
])
def test_dyck_verifier_rejects_malformed(text: str) -> None:
    with pytest.raises(ConfigError):
        T.get("dyck").solve(text.split())


def test_dyck_verifier_rejects_types_beyond_k() -> None:
    with pytest.raises(ConfigError):
        T.get("dyck", k=2).solve("{ }".split())
    # the same string is a Dyck-3 string
    assert T.get("dyck", k=3).solve("{ }".split()) == (["}", "none"], [1, 0])


def test_dyck_verifier_still_accepts_nested_and_open_prefixes() -> None:
    task = T.get("dyck")
    assert task.solve("( [ ] ( ) )".split())[0] == [")", "]", ")", ")", ")", "none"]
    # a causal prefix may leave brackets open
    assert task.solve("( [".split()) == ([")", "]"], [1, 2])


@pytest.mark.parametrize("text", ["1 2 ?", "1 0 -1", "1 a ?", "? ?", "", "1 ? 0 ?"])
def test_parity_verifier_rejects_malformed(text: str) -> None:
    with pytest.raises(ConfigError):
        T.get("parity").solve(text.split())


def test_parity_verifier_accepts_its_alphabet() -> None:
    assert T.get("parity").solve("1 -1 0 1 1 ?".split()) == ([None] * 5 + ["1"], [None] * 5 + [4])
