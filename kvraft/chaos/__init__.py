"""Fault injection against real node processes, with recorded and checked histories."""

from kvraft.chaos.nemesis import FAULT_KINDS, Nemesis, NemesisSettings
from kvraft.chaos.runner import ChaosReport, ChaosSettings, run_chaos

__all__ = ["FAULT_KINDS", "ChaosReport", "ChaosSettings", "Nemesis", "NemesisSettings",
           "run_chaos"]
