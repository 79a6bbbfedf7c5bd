"""The node operator's settings: where the cohort is, where the record goes, the policy.

These come from the foundation, never from a run: in simulation the workspace
passes them in; in deployment they come from the SuperNode's ``--node-config``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from flwr.app import UserConfig
from omegaconf import OmegaConf

from client.errors import NodeError
from client.policy import NodePolicy
from conf import CONF_DIR


@dataclass(frozen=True)
class NodeSettings:
    """Everything the node needs that is not in a run.

    Attributes
    ----------
    data_path : str
        The cohort file (CSV or Parquet).
    tracking_uri : str
        The MLflow store of the official record.
    device : str
        ``auto`` (GPU when there is one), ``cpu`` or ``cuda[:N]``.
    state_dir : str
        The node's own directory for what it keeps between runs and processes:
        its ledger (submissions, compute, exports) and its FLOP counts.
    workspace_key : str
        The workspace's public key file (PEM): the node works only for runs it signed.
    holdout_fraction : float or None
        The holdout as a share of the records, each record's side fixed by its id (stable as the
        cohort grows); None: ``holdout_size`` records, stratified exactly.
    dictionary : str
        The foundation's data dictionary (YAML, ``contract/dictionary.py``) the cohort file is read
        with; empty: the demo's shape (``conf/dictionary/synthetic.yaml``).
    """

    data_path: str
    tracking_uri: str
    state_dir: str
    holdout_size: int = 128
    split_seed: int = 0
    device: str = "auto"
    policy: NodePolicy = field(default_factory=NodePolicy)
    workspace_key: str = ""
    dictionary: str = ""
    holdout_fraction: float | None = None

    @classmethod
    def from_node_config(cls, node_config: UserConfig) -> NodeSettings:
        """Read ``--node-config`` keys: data-path, tracking-uri, state-dir, and optional
        holdout-size, holdout-fraction, split-seed, device, policy (a ``conf/policy`` name),
        workspace-key, dictionary."""
        for key in ("data-path", "tracking-uri", "state-dir"):
            if key not in node_config:
                raise NodeError(f"the node needs --node-config '{key}=...'")
        policy = str(node_config.get("policy", "pilot"))
        return cls(
            data_path=str(node_config["data-path"]),
            tracking_uri=str(node_config["tracking-uri"]),
            holdout_size=int(node_config.get("holdout-size", 128)),
            split_seed=int(node_config.get("split-seed", 0)),
            device=str(node_config.get("device", "auto")),
            state_dir=str(node_config["state-dir"]),
            policy=load_policy(CONF_DIR / "policy" / f"{policy}.yaml"),
            workspace_key=str(node_config.get("workspace-key", "")),
            dictionary=str(node_config.get("dictionary", "")),
            holdout_fraction=(float(node_config["holdout-fraction"]) if "holdout-fraction" in node_config
                              else None),
        )


    @property
    def workspace_key_pem(self) -> bytes | None:
        """The workspace's public key the node trusts, or None when none is configured."""
        path = Path(self.workspace_key) if self.workspace_key else None
        return path.read_bytes() if path and path.is_file() else None

    @property
    def ledger_path(self) -> Path:
        """The node's ledger file."""
        return Path(self.state_dir) / "ledger.sqlite"

    @property
    def flop_store_path(self) -> Path:
        """The node's store of counted FLOPs per step shape."""
        return Path(self.state_dir) / "flops.sqlite"


def policy_from_mapping(limits: dict) -> NodePolicy:
    """Build a policy from a mapping of its limits, refusing unknown keys."""
    known = {f.name for f in fields(NodePolicy)}
    unknown = sorted(set(limits) - known)
    if unknown:
        raise NodeError(f"unknown policy limit(s) {unknown}; known: {sorted(known)}")
    values = {k: tuple(v) if isinstance(v, list | tuple) else v for k, v in limits.items()}
    return NodePolicy(**values)


def load_policy(path: Path) -> NodePolicy:
    """Read a node policy YAML file (``conf/policy/*.yaml``)."""
    if not path.is_file():
        raise NodeError(f"no node policy at {path}")
    return policy_from_mapping(OmegaConf.to_container(OmegaConf.load(path), resolve=True))
