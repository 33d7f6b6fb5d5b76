"""Weight sharing for picodet-nas: dynamic (sliceable) layers, the supernet of a search space,
subnet sampling rules, BN recalibration and extraction of a static subnet with its weights."""

from .calibration import recalibrate_bn
from .sampling import STRATEGIES, SubnetSampler
from .supernet import Supernet

__all__ = ["STRATEGIES", "SubnetSampler", "Supernet", "recalibrate_bn"]
