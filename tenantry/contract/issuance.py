"""Key issuance: from a tenant's spec and its key Secret as it is, the key Secret as it should
be, and the registry keys it yields. Pure functions, no I/O: the operator applies the result
to Kubernetes, `tenantry dev` to a local file, and both read back the same state.

The key Secret `<tenant>-api-keys` holds, for its owners:
- one data entry per named key: the plaintext key;
- `webhook_signing_secret`: the tenant's secret for signed webhook deliveries
  (`_` cannot appear in a key name, so the names never collide);
- annotations recording what only the Secret can remember: for each key, the value of the
  tenant's `tenantry.io/rotate-<name>` annotation already acted on, its creation time and,
  during a rotation's grace period, the previous key's id, hash and end of validity.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from tenantry.contract.keys import MalformedApiKeyError, generate_key, hash_key, parse_key
from tenantry.contract.registry import RegistryKey
from tenantry.contract.resources import ApiTenant, IssuedKey

ROTATE_ANNOTATION_PREFIX = "tenantry.io/rotate-"
SIGNING_SECRET_FIELD = "webhook_signing_secret"  # noqa: S105 - a field name
STATE_ANNOTATION = "tenantry.io/key-state"


def key_secret_name(tenant_name: str) -> str:
    return f"{tenant_name}-api-keys"


@dataclass(frozen=True)
class PreviousKey:
    key_id: str
    key_hash: str
    valid_until: datetime


@dataclass(frozen=True)
class KeyRecordState:
    """What the Secret remembers about one named key."""

    plaintext: str
    created_at: datetime
    rotation: str = ""  # the rotate annotation value this key answers
    previous: PreviousKey | None = None

    @property
    def key_id(self) -> str:
        return parse_key(self.plaintext).key_id


@dataclass(frozen=True)
class KeySecretState:
    keys: dict[str, KeyRecordState] = field(default_factory=dict)
    signing_secret: str = ""

    # --- to and from the Secret's data and annotations ---------------------------------

    def to_secret(self) -> tuple[dict[str, str], dict[str, str]]:
        """`(stringData, annotations)` of the key Secret."""
        data = {name: record.plaintext for name, record in self.keys.items()}
        data[SIGNING_SECRET_FIELD] = self.signing_secret
        state = {
            name: {
                "createdAt": record.created_at.isoformat(),
                "rotation": record.rotation,
                **(
                    {
                        "previous": {
                            "keyId": record.previous.key_id,
                            "hash": record.previous.key_hash,
                            "validUntil": record.previous.valid_until.isoformat(),
                        }
                    }
                    if record.previous
                    else {}
                ),
            }
            for name, record in sorted(self.keys.items())
        }
        return data, {STATE_ANNOTATION: json.dumps(state, separators=(",", ":"), sort_keys=True)}

    @classmethod
    def from_secret(
        cls, data: dict[str, str], annotations: dict[str, str], now: datetime
    ) -> KeySecretState:
        """Read a Secret back. Entries that are not valid keys are dropped (and so re-issued):
        an edited Secret is drift, corrected like any other."""
        try:
            state = json.loads(annotations.get(STATE_ANNOTATION, "{}"))
        except json.JSONDecodeError:
            state = {}
        keys = {}
        for name, plaintext in data.items():
            if name == SIGNING_SECRET_FIELD:
                continue
            try:
                parse_key(plaintext)
            except MalformedApiKeyError:
                continue
            recorded = state.get(name, {}) if isinstance(state, dict) else {}
            previous = recorded.get("previous")
            keys[name] = KeyRecordState(
                plaintext=plaintext,
                created_at=_parse_time(recorded.get("createdAt"), now),
                rotation=str(recorded.get("rotation", "")),
                previous=PreviousKey(
                    key_id=previous["keyId"],
                    key_hash=previous["hash"],
                    valid_until=_parse_time(previous["validUntil"], now),
                )
                if isinstance(previous, dict)
                else None,
            )
        return cls(keys=keys, signing_secret=data.get(SIGNING_SECRET_FIELD, ""))


def _parse_time(value: object, default: datetime) -> datetime:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return default
    return default


def rotation_requests(tenant: ApiTenant) -> dict[str, str]:
    """`{key name: value}` of the tenant's `tenantry.io/rotate-<name>` annotations."""
    return {
        name.removeprefix(ROTATE_ANNOTATION_PREFIX): value
        for name, value in tenant.metadata.annotations.items()
        if name.startswith(ROTATE_ANNOTATION_PREFIX)
    }


def desired_key_state(
    tenant: ApiTenant, existing: KeySecretState | None, now: datetime
) -> KeySecretState:
    """The key Secret as it should be.

    - a key named in the spec and not in the Secret is issued;
    - a key in the Secret and no longer in the spec is gone (revoked);
    - a rotate annotation with a value not yet acted on issues a new key and keeps the old
      one valid for the tenant's grace period;
    - a previous key past its grace period is dropped;
    - a missing Secret (`existing` None) re-issues every key: the old plaintext is gone.
    """
    current = existing or KeySecretState()
    rotations = rotation_requests(tenant)
    grace = timedelta(seconds=tenant.spec.key_rotation_grace_period_seconds)
    keys: dict[str, KeyRecordState] = {}
    for spec in tenant.spec.keys:
        requested = rotations.get(spec.name, "")
        record = current.keys.get(spec.name)
        if record is None:
            keys[spec.name] = KeyRecordState(generate_key().plaintext, now, requested)
            continue
        if requested != record.rotation:
            old = parse_key(record.plaintext)
            previous = PreviousKey(old.key_id, old.hash, now + grace) if grace else None
            record = KeyRecordState(generate_key().plaintext, now, requested, previous)
        if record.previous is not None and record.previous.valid_until <= now:
            record = replace(record, previous=None)
        keys[spec.name] = record
    return KeySecretState(keys=keys, signing_secret=current.signing_secret or new_signing_secret())


def new_signing_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def registry_keys(tenant: ApiTenant, state: KeySecretState) -> list[RegistryKey]:
    """The registry's view of the tenant's keys: hashes, scopes, expiry, rotation overlap."""
    by_name = {spec.name: spec for spec in tenant.spec.keys}
    keys = []
    for name, record in sorted(state.keys.items()):
        spec = by_name.get(name)
        if spec is None:
            continue
        common = {"name": name, "scopes": spec.granted_scopes(), "expires_at": spec.expires_at}
        keys.append(
            RegistryKey(key_id=record.key_id, key_hash=hash_key(record.plaintext), **common)
        )
        if record.previous is not None:
            keys.append(
                RegistryKey(
                    key_id=record.previous.key_id,
                    key_hash=record.previous.key_hash,
                    valid_until=record.previous.valid_until,
                    **common,
                )
            )
    return keys


def issued_keys(state: KeySecretState, tenant: ApiTenant) -> list[IssuedKey]:
    """The `status.keys` of the tenant: ids, creation, expiry, the rotation in progress."""
    expiry = {spec.name: spec.expires_at for spec in tenant.spec.keys}
    return [
        IssuedKey(
            name=name,
            key_id=record.key_id,
            created_at=record.created_at,
            expires_at=expiry.get(name),
            previous_key_id=record.previous.key_id if record.previous else None,
            previous_valid_until=record.previous.valid_until if record.previous else None,
        )
        for name, record in sorted(state.keys.items())
    ]
