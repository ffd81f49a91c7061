"""Pseudonymous keys and which identifier an event names."""

from __future__ import annotations

import hmac

import pytest

from nextclick.operators.identity.pseudonyms import (
    CHANNEL_DEFAULT_ID_TYPE,
    KEY_CACHE_SIZE,
    pseudonymize,
    pseudonymize_cached,
    resolve_identifier,
)

SECRET = b"test-secret"


def test_pseudonymize_is_truncated_hmac_sha256():
    expected = hmac.new(SECRET, b"cookie:abc-123", "sha256").hexdigest()[:32]
    assert pseudonymize("cookie", "abc-123", SECRET) == expected
    assert len(expected) == 32


@pytest.mark.parametrize("secret", [b"", b"k", b"x" * 64, b"y" * 65, b"z" * 300])
def test_pseudonymize_matches_hmac_for_any_key_length(secret):
    for id_type, raw in [("email", "élise@example.com"), ("device", "")]:
        expected = hmac.new(secret, f"{id_type}:{raw}".encode(), "sha256").hexdigest()[:32]
        assert pseudonymize(id_type, raw, secret) == expected


def test_pseudonymize_is_stable():
    assert pseudonymize("email", "a@example.com", SECRET) == pseudonymize("email", "a@example.com", SECRET)


def test_pseudonymize_is_keyed():
    assert pseudonymize("email", "a@example.com", SECRET) != pseudonymize("email", "a@example.com", b"other")


def test_pseudonymize_is_scoped_by_id_type():
    assert pseudonymize("cookie", "123", SECRET) != pseudonymize("device", "123", SECRET)
    assert pseudonymize("customer", "123", SECRET) != pseudonymize("cookie", "123", SECRET)


def test_customer_id_wins_over_key_and_id_type():
    payload = {"customer_id": "C-42", "id_type": "email"}
    assert resolve_identifier(payload, b"a@example.com", "web") == ("customer", "C-42")


@pytest.mark.parametrize("customer_id", ["", " ", "\t\n", "\u3000", None, 42, ["C-42"]])
def test_blank_or_non_string_customer_id_falls_back_to_key(customer_id):
    assert resolve_identifier({"customer_id": customer_id}, b"ck-1", "web") == ("cookie", "ck-1")


def test_payload_id_type_applies_to_key():
    assert resolve_identifier({"id_type": "phone"}, b"+4912345", "call_center") == ("phone", "+4912345")


@pytest.mark.parametrize("channel", sorted(CHANNEL_DEFAULT_ID_TYPE))
def test_channel_default_id_type(channel):
    assert resolve_identifier({}, b"raw", channel) == (CHANNEL_DEFAULT_ID_TYPE[channel], "raw")


def test_channel_defaults():
    assert CHANNEL_DEFAULT_ID_TYPE == {"web": "cookie", "email": "email", "mobile": "device",
                                      "store": "customer", "call_center": "customer"}


@pytest.mark.parametrize("key", [None, b"", b"\xff\xfe", b" ", b"\t\r\n", "\u00a0".encode()])
def test_no_identifier(key):
    assert resolve_identifier({}, key, "web") is None
    assert resolve_identifier({"customer_id": ""}, key, "web") is None
    assert resolve_identifier({"customer_id": "  "}, key, "web") is None


def test_identifiers_are_not_trimmed():
    assert resolve_identifier({"customer_id": " C-42 "}, None, "web") == ("customer", " C-42 ")
    assert resolve_identifier({}, b" ck-1", "web") == ("cookie", " ck-1")


def test_the_cached_key_is_the_key_under_each_secret():
    pseudonymize_cached.cache_clear()
    for _ in range(2):
        for secret in (SECRET, b"other"):
            assert pseudonymize_cached("email", "a@b.example", secret) == pseudonymize("email", "a@b.example", secret)
    info = pseudonymize_cached.cache_info()
    assert (info.hits, info.misses, info.maxsize) == (2, 2, KEY_CACHE_SIZE)


def test_invalid_id_type_or_unknown_channel_gives_none_not_a_guess():
    assert resolve_identifier({"id_type": "passport"}, b"raw", "web") is None
    assert resolve_identifier({"id_type": 3}, b"raw", "web") is None
    assert resolve_identifier({}, b"raw", "fax") is None
    assert resolve_identifier({"id_type": "email"}, b"raw", "fax") == ("email", "raw")
