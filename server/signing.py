"""The workspace's signing key: it vouches for who submitted a run and what the run is.

The private key stays in the workspace process's files (created 0600); the node is given only
the public key (``<key>.pub``). The ServerApp, which runs contributor code, never loads it.
"""

from __future__ import annotations

import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract.files import create_once, write_whole
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
        made = b"" if self.key_path.is_file() else Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        self._key = serialization.load_pem_private_key(create_once(self.key_path, made), password=None)
        write_whole(self.public_key_path, self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

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
