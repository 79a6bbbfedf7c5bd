"""Contributor strategies: Flower ``Strategy`` subclasses, one small file each.

Any strategy of ``flwr.serverapp.strategy`` works unmodified from config
(``conf/strategy``). Strategies here never touch MLflow, Hydra, files or data.
"""
