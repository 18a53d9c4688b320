"""API key format: `tnt_<key id>_<secret><checksum>`.

- `tnt_` is a fixed prefix so secret scanners can recognise a leaked key.
- The key id (12 base62 characters) is public: it is how the API finds the key in memory,
  appears in status and logs, and is never enough to authenticate.
- The secret is 43 base62 characters, at least 256 bits from `secrets`.
- The checksum (6 base62 characters of CRC32 over everything before it) catches a typo or a
  truncated copy without a lookup, and lets scanners tell real keys from look-alikes.

Storage keeps only `sha256:<hex>` of the whole key. The secret carries 256 bits, so a fast
hash is as strong as a slow one here (the same choice GitHub and Stripe make) and costs the
request path about a microsecond.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib
from dataclasses import dataclass

PREFIX = "tnt_"
KEY_ID_LENGTH = 12
SECRET_LENGTH = 43
CHECKSUM_LENGTH = 6
KEY_LENGTH = len(PREFIX) + KEY_ID_LENGTH + 1 + SECRET_LENGTH + CHECKSUM_LENGTH
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
HASH_SCHEME = "sha256:"

_SHAPE = re.compile(
    rf"^{PREFIX}(?P<key_id>[0-9A-Za-z]{{{KEY_ID_LENGTH}}})_"
    rf"(?P<secret>[0-9A-Za-z]{{{SECRET_LENGTH}}})(?P<checksum>[0-9A-Za-z]{{{CHECKSUM_LENGTH}}})$"
)
# What a key looks like anywhere in a text; used to redact logs.
KEY_PATTERN = re.compile(rf"{PREFIX}[0-9A-Za-z]{{{KEY_ID_LENGTH}}}_[0-9A-Za-z]+")
_KEY_ID = re.compile(rf"^[0-9A-Za-z]{{{KEY_ID_LENGTH}}}$")


class MalformedApiKeyError(ValueError):
    """The presented string is not a Tenantry API key; the message says which rule it broke."""


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits.append(BASE62[digit])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_LENGTH)


def _random_base62(length: int) -> str:
    return "".join(secrets.choice(BASE62) for _ in range(length))


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A parsed key. `str()` is deliberately not the plaintext, so it cannot leak by accident."""

    key_id: str
    plaintext: str

    def __str__(self) -> str:
        return f"{PREFIX}{self.key_id}_…"

    __repr__ = __str__

    @property
    def hash(self) -> str:
        return hash_key(self.plaintext)


def generate_key(key_id: str | None = None) -> ApiKey:
    """A new key; pass `key_id` to re-issue a secret under an existing id."""
    key_id = key_id if key_id is not None else _random_base62(KEY_ID_LENGTH)
    if not _KEY_ID.match(key_id):
        raise MalformedApiKeyError(
            f"key id must be {KEY_ID_LENGTH} characters of [0-9A-Za-z], got {key_id!r}"
        )
    body = f"{PREFIX}{key_id}_{_random_base62(SECRET_LENGTH)}"
    return ApiKey(key_id=key_id, plaintext=body + _checksum(body))


def parse_key(presented: str) -> ApiKey:
    """Check a presented key's shape and checksum; no lookup, no secret comparison."""
    if not presented.startswith(PREFIX):
        raise MalformedApiKeyError(f"API key must start with {PREFIX!r}")
    if len(presented) != KEY_LENGTH:
        raise MalformedApiKeyError(
            f"API key must be {KEY_LENGTH} characters long, got {len(presented)}"
        )
    match = _SHAPE.match(presented)
    if match is None:
        raise MalformedApiKeyError(
            f"API key must read {PREFIX}<12 characters [0-9A-Za-z]>_<49 characters [0-9A-Za-z]>"
        )
    body = presented[:-CHECKSUM_LENGTH]
    if not hmac.compare_digest(_checksum(body), match["checksum"]):
        raise MalformedApiKeyError("API key checksum does not match: it was mistyped or cut short")
    return ApiKey(key_id=match["key_id"], plaintext=presented)


def hash_key(plaintext: str) -> str:
    return HASH_SCHEME + hashlib.sha256(plaintext.encode("ascii")).hexdigest()


def verify_key(key: ApiKey, stored_hash: str) -> bool:
    """Constant-time comparison of a presented key against a stored hash."""
    return hmac.compare_digest(hash_key(key.plaintext), stored_hash)


def redact_keys(text: str) -> str:
    """Replace anything shaped like a key with its public id, for logs and errors."""
    return KEY_PATTERN.sub(
        lambda m: m.group(0)[: len(PREFIX) + KEY_ID_LENGTH] + "_[REDACTED]", text
    )
