"""API keys: recognisable, looked up by id, 256-bit secrets, typos caught by the checksum."""

from __future__ import annotations

import math

import pytest

from tenantry.contract.keys import (
    BASE62,
    KEY_LENGTH,
    SECRET_LENGTH,
    MalformedApiKeyError,
    generate_key,
    hash_key,
    parse_key,
    redact_keys,
    verify_key,
)


def test_generated_key_parses_back_to_its_id_and_verifies_against_its_hash() -> None:
    key = generate_key()
    parsed = parse_key(key.plaintext)
    assert parsed.key_id == key.key_id
    assert verify_key(parsed, key.hash)
    assert not verify_key(parsed, generate_key().hash)


def test_key_is_recognisable_and_carries_at_least_256_bits_of_secret() -> None:
    key = generate_key()
    assert key.plaintext.startswith("tnt_")
    assert len(key.plaintext) == KEY_LENGTH
    assert SECRET_LENGTH * math.log2(len(BASE62)) >= 256


def test_keys_are_unique() -> None:
    assert len({generate_key().plaintext for _ in range(1000)}) == 1000


def test_reissue_under_an_existing_id_changes_the_secret_only() -> None:
    first = generate_key()
    second = generate_key(first.key_id)
    assert second.key_id == first.key_id
    assert second.hash != first.hash


def test_storage_hash_never_contains_the_plaintext() -> None:
    key = generate_key()
    stored = hash_key(key.plaintext)
    assert stored.startswith("sha256:")
    assert key.plaintext not in stored
    assert key.plaintext[17:60] not in stored


def test_str_and_repr_of_a_key_do_not_reveal_the_secret() -> None:
    key = generate_key()
    assert key.plaintext not in str(key)
    assert key.plaintext not in repr(key)
    assert key.key_id in str(key)


def _typo(plaintext: str, position: int) -> str:
    replacement = "A" if plaintext[position] != "A" else "B"
    return plaintext[:position] + replacement + plaintext[position + 1 :]


VALID = generate_key().plaintext
MALFORMED = [
    pytest.param("", "must start with 'tnt_'", id="empty"),
    pytest.param("sk_live_" + VALID[4:], "must start with 'tnt_'", id="wrong-prefix"),
    pytest.param(VALID[:-1], f"must be {KEY_LENGTH} characters long, got {KEY_LENGTH - 1}",
                 id="cut-short"),
    pytest.param(VALID + "x", f"got {KEY_LENGTH + 1}", id="too-long"),
    pytest.param(VALID[:20] + "-" + VALID[21:], "must read tnt_", id="bad-character"),
    pytest.param(VALID[:16] + "x" + VALID[17:], "must read tnt_", id="missing-separator"),
    pytest.param(_typo(VALID, 30), "checksum does not match", id="typo-in-secret"),
    pytest.param(_typo(VALID, 6), "checksum does not match", id="typo-in-key-id"),
    pytest.param(_typo(VALID, KEY_LENGTH - 1), "checksum does not match", id="typo-in-checksum"),
]  # fmt: skip


@pytest.mark.parametrize(("presented", "rule"), MALFORMED)
def test_malformed_or_mistyped_key_is_refused_without_a_lookup(presented: str, rule: str) -> None:
    with pytest.raises(MalformedApiKeyError, match=rule.replace("'", ".")):
        parse_key(presented)


def test_redaction_keeps_the_public_id_and_drops_the_secret() -> None:
    key = generate_key()
    line = f"Authorization: Bearer {key.plaintext} from 10.0.0.1"
    redacted = redact_keys(line)
    assert key.plaintext not in redacted
    assert f"tnt_{key.key_id}_[REDACTED]" in redacted
    assert redacted.endswith("from 10.0.0.1")
