"""Client algorithms: what a worker does around and inside local training, per strategy.

Add one as a module here (a `ClientAlgorithm` subclass) and a line in `registry.ALGORITHMS`
naming the server strategy it pairs with (docs/worker.md, "Client algorithms").
"""

from client_worker.algorithms.base import ClientAlgorithm, Groups, RoundContext, Weights
from client_worker.algorithms.fedprox import FedProx
from client_worker.algorithms.registry import ALGORITHMS, UnknownAlgorithm, algorithm_class
from client_worker.algorithms.session import AlgorithmSession
from client_worker.algorithms.state import StateStore

__all__ = [
    "ALGORITHMS",
    "AlgorithmSession",
    "ClientAlgorithm",
    "FedProx",
    "Groups",
    "RoundContext",
    "StateStore",
    "UnknownAlgorithm",
    "Weights",
    "algorithm_class",
]
