"""FedAvg with a learning rate that decays every round."""

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg


class FedAvgLrDecay(FedAvg):
    """Federated averaging whose clients' learning rate decays geometrically.

    In round ``t`` the train config's ``lr`` becomes ``lr * lr_decay ** (t - 1)``.
    Everything else is ``FedAvg``.

    Parameters
    ----------
    lr_decay : float (default: 0.9)
        Factor applied to the learning rate each round, in (0, 1].
    **kwargs
        Passed to ``FedAvg``.
    """

    def __init__(self, lr_decay: float = 0.9, **kwargs: object) -> None:
        super().__init__(**kwargs)
        if not 0.0 < lr_decay <= 1.0:
            raise ValueError("lr_decay must lie in (0, 1]")
        self.lr_decay = lr_decay

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Decay ``lr`` in a copy of the config, then configure the round as FedAvg does."""
        config = ConfigRecord(dict(config))  # start() passes the same record every round
        if "lr" in config:
            config["lr"] = float(config["lr"]) * self.lr_decay ** (server_round - 1)
        return super().configure_train(server_round, arrays, config, grid)
