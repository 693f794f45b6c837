"""Guidance policies: pure torch, no ComfyUI imports (see policy.py for the interface)."""

from .cfg import CFGPolicy, cfg
from .guided_run import GuidedRun
from .policy import GuidancePolicy, Guided, PolicyRun, StepContext
from .record import GuidanceRecord

__all__ = ["CFGPolicy", "cfg", "GuidedRun", "GuidancePolicy", "Guided", "PolicyRun",
           "StepContext", "GuidanceRecord"]
