"""A run grant: what the workspace signs and the node verifies before any work.

The run config's ``contributor`` and ``submission-id`` are values whoever starts a Flower run can
set. The workspace, which authenticated the contributor, signs a ``RunGrant`` (contributor,
submission id, the digest of the whole run config, an expiry) with an ed25519 key no strategy
reads; the node holds only the public key, and refuses a run whose grant is missing, forged,
expired, or signed for another identity or another config.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

#: The run-config key that carries the signed grant.
GRANT_KEY = "grant"


class GrantError(ValueError):
    """A grant that does not verify; the message says why, in terms of the grant only."""


@dataclass(frozen=True)
class RunGrant:
    """What the workspace vouches for about one Flower run."""

    contributor: str
    submission_id: str
    config_digest: str
    expires_at: float


def config_digest(run_config: Mapping[str, object]) -> str:
    """SHA-256 of the run config without its grant, keys sorted (what the grant covers)."""
    values = {k: v for k, v in run_config.items() if k != GRANT_KEY}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def sign(grant: RunGrant, key: Ed25519PrivateKey) -> str:
    """``payload.signature``, both URL-safe base64: the value of the run config's grant."""
    payload = json.dumps(asdict(grant), sort_keys=True).encode()
    return f"{_b64(payload)}.{_b64(key.sign(payload))}"


def verify(token: str, key: Ed25519PublicKey) -> RunGrant:
    """The grant a token carries, if ``key`` signed it.

    Raises
    ------
    GrantError
        Not a token, or a signature that does not verify.
    """
    try:
        payload, signature = (base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
                              for part in str(token).split("."))
        key.verify(signature, payload)
        return RunGrant(**json.loads(payload))
    except InvalidSignature:
        raise GrantError("the grant's signature is not the workspace's") from None
    except (ValueError, TypeError):
        raise GrantError("the grant is not a signed run grant") from None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")
