"""Label assignment: which priors are positives for which GT box."""

from .simota import AssignResult, SimOTAAssigner

__all__ = ["AssignResult", "SimOTAAssigner"]
