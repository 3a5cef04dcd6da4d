"""JSON text from users and programs, parsed the way its writers meant it.

`json.loads` fails in two ways that data can cause and that are no `JSONDecodeError`: an
integer of more than 4,300 digits (CPython 3.11's int <-> str limit, `sys.set_int_max_str_digits`;
the judge lifts it for programs, so a call-based program may return one and a dataset may hold
one) and nesting deeper than the interpreter can parse (`RecursionError`). `loads` reads such
an integer as a `BigInt` (its digits, compared as digits: converting it would take time
quadratic in its length, which a program's output must not buy on the host) and turns
too-deep nesting into a `ValueError`; `dumps` writes BigInts back as the numbers they are.
"""

from __future__ import annotations

import json
import re
import secrets
import sys
from typing import Any


class BigInt:
    """A JSON integer too long for `int(str)`: equal to another BigInt with the same digits.

    JSON integers have one spelling (no leading zeros, no `+`), so equal digits are equal
    values, and a BigInt never equals a plain int (those are shorter)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BigInt) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"<integer of {len(self.text.lstrip('-'))} digits>"


def _parse_int(text: str) -> int | BigInt:
    limit = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 0
    if limit and len(text) - text.startswith("-") > limit:
        return BigInt(text)
    return int(text)


def loads(text: str | bytes) -> Any:
    """`json.loads(text)`, with integers of any length; ValueError for any invalid document.

    Raises `json.JSONDecodeError` (a ValueError, with `msg`, `lineno`, `colno`) for bad JSON
    and a plain `ValueError("nested too deeply")` for nesting deeper than Python can parse.
    """
    try:
        return json.loads(text, parse_int=_parse_int)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def dumps(value: Any, **kwargs: Any) -> str:
    """`json.dumps(value, **kwargs)`, writing each BigInt as its digits."""
    nonce = secrets.token_hex(8)
    found = False
    user_default = kwargs.pop("default", None)

    def default(obj: Any) -> Any:
        nonlocal found
        if isinstance(obj, BigInt):
            found = True
            return f"\0{nonce}{obj.text}"
        if user_default is not None:
            return user_default(obj)
        raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")

    try:
        text = json.dumps(value, default=default, **kwargs)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not found:
        return text
    return re.sub(r'"\\u0000' + nonce + r'(-?[0-9]+)"', r"\1", text)


def error_text(exc: ValueError) -> str:
    """What is wrong, in a few words: the decoder's message, or the error's own text."""
    return exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
