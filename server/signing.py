"""The workspace's signing key: it vouches for who submitted a run and what the run is.

The private key stays in the workspace process's files (created 0600); the node is given only
the public key (``<key>.pub``). The ServerApp, which runs contributor code, never loads it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract.grant import GRANT_KEY, RunGrant, config_digest, sign


class WorkspaceSigner:
    """Signs run grants with an ed25519 key, created at ``key_path`` on first use.

    Parameters
    ----------
    key_path : Path
        The private key (PEM). Its public key is written beside it as ``<key_path>.pub``.
    lifetime : float
        Seconds a grant stays valid after it is signed.
    """

    def __init__(self, key_path: Path, lifetime: float = 24 * 3600.0) -> None:
        self.key_path = Path(key_path)
        self.lifetime = lifetime
        if not self.key_path.is_file():
            self._create()
        self._key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)

    @property
    def public_key_path(self) -> Path:
        """Where the node reads the key it trusts."""
        return self.key_path.with_name(self.key_path.name + ".pub")

    def signed(self, run_config: dict[str, object]) -> dict[str, object]:
        """The run config with a grant for its contributor, submission and exact content."""
        grant = RunGrant(contributor=str(run_config["contributor"]),
                         submission_id=str(run_config["submission-id"]),
                         config_digest=config_digest(run_config),
                         expires_at=time.time() + self.lifetime)
        return {**run_config, GRANT_KEY: sign(grant, self._key)}

    def _create(self) -> None:
        """A new key pair: the private key readable by this user only."""
        key = Ed25519PrivateKey.generate()
        self.key_path.parent.mkdir(parents=True, exist_ok=True)
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        descriptor = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(private)
        self.public_key_path.write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
