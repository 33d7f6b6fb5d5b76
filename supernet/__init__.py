"""Weight sharing for picodet-nas: dynamic (sliceable) layers, the supernet of a search space,
subnet sampling rules and extraction of a static subnet with its weights (BN recalibration is
`picodet_nas.bn_stats`, shared with static networks)."""

from .sampling import STRATEGIES, SubnetSampler
from .supernet import Supernet

__all__ = ["STRATEGIES", "SubnetSampler", "Supernet"]
