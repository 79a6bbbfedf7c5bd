"""``cohortfl new DIR``: a contributor's first package, which runs as it is.

It writes ``submission.yaml`` (the methodology as data: strategy, model, hyperparameters) and
``strategy.py`` (a small strategy of the contributor's own, named ``contributor.Name`` in the
YAML), each commented where a contributor changes things. The same package goes to the local
engine (``cohortfl submit DIR --contributor NAME``, on the synthetic cohort) and to the
foundation's workspace (``cohortfl submit DIR --workspace URL ...``), where the strategy runs in
a sandbox.
"""

from __future__ import annotations

from pathlib import Path

SUBMISSION = """\
# Your methodology, as data: the node trains what this names, within its policy
# (`cohortfl policy` prints the limits). Files beside this one: strategy.py, and optionally
# initial.npz (starting weights, by the model's parameter names).

strategy:
  _target_: contributor.WarmRestartFedAvg   # your class in strategy.py; or e.g.
  fraction_evaluate: 0.0                    # flwr.serverapp.strategy.FedProx (docs/contributors.md)
  restart_every: 5

model:
  name: linear          # linear, mlp or pathway (conf/model/*.yaml show their parameters)

lr: 0.1
batch_size: 32
seed: 0
"""

STRATEGY = '''\
"""A strategy of your own: FedAvg whose learning rate restarts every few rounds.

It runs in the workspace's sandbox (no files, no network but Flower's own). A strategy may put
only these keys in a train message's config: lr, local-epochs, batch-size, proximal-mu,
server-round.
"""

from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAvg


class WarmRestartFedAvg(FedAvg):
    def __init__(self, restart_every: int = 5, **kwargs):
        super().__init__(**kwargs)
        self.restart_every = restart_every

    def configure_train(self, server_round, arrays, config, grid):
        config = ConfigRecord(dict(config))  # the same record comes every round: change a copy
        step = (server_round - 1) % self.restart_every
        config["lr"] = float(config["lr"]) * 0.5 ** step
        return super().configure_train(server_round, arrays, config, grid)
'''


def write_package(folder: Path) -> list[Path]:
    """Write the example package into ``folder`` (new or empty); the files written.

    Raises
    ------
    FileExistsError
        ``folder`` holds files already: nothing is overwritten.
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} is not empty; give a new folder (nothing was written)")
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (("submission.yaml", SUBMISSION), ("strategy.py", STRATEGY)):
        (folder / name).write_text(text, encoding="utf-8")
        written.append(folder / name)
    return written
