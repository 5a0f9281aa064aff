"""The pure shard controller: configurations, the controller state machine, the planner.

No I/O and no clocks: the controller's Raft group applies :class:`ControllerMachine`
commands; ``shardctl`` plans with :func:`plan` and submits ``APPLY_PLAN``.
"""

from kvraft.ctrler.config import (
    ConfigError,
    Configuration,
    Range,
    freeze_groups,
    initial_configuration,
)
from kvraft.ctrler.machine import (
    ControllerMachine,
    CtrlCommand,
    CtrlDecodeError,
    CtrlOp,
    CtrlRejected,
    CtrlResult,
    next_configuration,
)
from kvraft.ctrler.rebalance import Move, Plan, RangeSize, apply_plan_to, plan

__all__ = [
    "ConfigError",
    "Configuration",
    "ControllerMachine",
    "CtrlCommand",
    "CtrlDecodeError",
    "CtrlOp",
    "CtrlRejected",
    "CtrlResult",
    "Move",
    "Plan",
    "Range",
    "RangeSize",
    "apply_plan_to",
    "freeze_groups",
    "initial_configuration",
    "next_configuration",
    "plan",
]
