"""Meta-learning algorithms and the baselines they are compared with, one file each, looked up by
name. What each declares: ``fedmeta.meta.algorithms.base``."""

from __future__ import annotations

from fedmeta.meta.algorithms.anil import ANIL
from fedmeta.meta.algorithms.base import InnerLoop, MetaAlgorithm
from fedmeta.meta.algorithms.ditto import Ditto
from fedmeta.meta.algorithms.fedavg import FedAvgSGD
from fedmeta.meta.algorithms.fedprox import FedProx
from fedmeta.meta.algorithms.fedrep import FedRep
from fedmeta.meta.algorithms.fomaml import FirstOrderMAML
from fedmeta.meta.algorithms.maml import SecondOrderMAML
from fedmeta.meta.algorithms.matchingnet import MatchingNet
from fedmeta.meta.algorithms.metasgd import MetaSGD
from fedmeta.meta.algorithms.perfedavg import PerFedAvg
from fedmeta.meta.algorithms.protonet import ProtoNet
from fedmeta.meta.algorithms.relationnet import RelationNet
from fedmeta.meta.algorithms.reptile import Reptile

__all__ = ["InnerLoop", "MetaAlgorithm", "ALGORITHMS", "get_algorithm"]

ALGORITHMS: dict[str, MetaAlgorithm] = {
    a.name: a for a in (
        SecondOrderMAML(), FirstOrderMAML(), Reptile(), MetaSGD(), ANIL(), ProtoNet(), MatchingNet(), RelationNet(),
        FedAvgSGD(), FedProx(), Ditto(), FedRep(), PerFedAvg(),
    )
}


def get_algorithm(name: str) -> MetaAlgorithm:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r} (expected one of {', '.join(sorted(ALGORITHMS))})") from None
