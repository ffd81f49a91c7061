"""Duplicated keys in JSON objects: find the first one, cheaply when there is none.

RFC 8259 leaves the meaning of an object with a key twice open, and decoders differ: orjson and
msgspec keep the last value, others the first or both. nextclick refuses such messages instead of
guessing (`invalid_json`). `duplicate_key` runs on text a strict decoder (orjson) already accepted,
and uses the decoded value to prove most texts duplicate-free by counting colons, without a scan:

- outside strings, a colon appears in JSON only after a key, so the text's colons are its keys (at
  every depth) plus the colons inside strings;
- the decoded value holds one key per distinct key of each object, and the strings' colons once
  each, so its count equals the text's exactly when no object has a key twice. The one way a string
  can decode to more colons than it had is the escape `\\u003a`: a text containing `\\u003` is
  always scanned.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

# Strings (with escapes) and the structural characters; numbers, literals and spaces are skipped.
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[{}\[\],:]', re.S)


def duplicate_key(text: bytes, decoded: Any) -> tuple[str, int] | None:
    """(key, depth) of the first key found twice in one object of `text` (depth 1: the top level).

    `text` must be valid JSON and `decoded` what a decoder that keeps one value per key made of it.
    """
    colons = text.count(b":")
    if type(decoded) is dict and colons == len(decoded):
        return None  # every colon is one top-level key: nothing nested, nothing twice
    if b"\\u003" not in text and colons == _colon_count(decoded):
        return None
    return _scan(text.decode("utf-8"))


def _colon_count(value: Any) -> int:
    """Keys of every object plus the colons in every key and string, as `text.count(b":")` counts them."""
    total = 0
    stack = [value]
    while stack:  # iterative: a text may nest as deep as the decoder allows
        item = stack.pop()
        kind = type(item)
        if kind is str:
            total += item.count(":")
        elif kind is dict:
            total += len(item)
            for key, sub in item.items():
                total += key.count(":")
                stack.append(sub)
        elif kind is list:
            stack.extend(item)
    return total


def _scan(text: str) -> tuple[str, int] | None:
    """The exact check: walk the tokens, keeping the keys seen in each open object."""
    stack: list[set[str] | None] = []  # one entry per open container; None for an array
    expect_key = False
    for match in _TOKEN.finditer(text):
        token = match.group()
        first = token[0]
        if first == '"':
            if expect_key and (keys := stack[-1]) is not None:
                key = orjson.loads(token)
                if key in keys:
                    return key, len(stack)
                keys.add(key)
                expect_key = False
        elif first == "{":
            stack.append(set())
            expect_key = True
        elif first == "[":
            stack.append(None)
            expect_key = False
        elif first == "," and stack:
            expect_key = stack[-1] is not None
        elif first in "}]":
            stack.pop()
            expect_key = False
    return None
