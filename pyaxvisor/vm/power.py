"""A VM's view of its CPUs' power, neutral to the firmware interface that asks.

PSCI (AArch64) and SBI HSM (RISC-V) both let a guest turn CPUs on and off and
ask whether one is on; each has its own return codes. The VM keeps one state
per vCPU (:class:`CpuPower`) and answers a start request with one
:class:`CpuStart` outcome; the board maps both to its interface's codes.
"""

from __future__ import annotations

import enum

__all__ = ["CpuPower", "CpuStart"]


class CpuPower(enum.Enum):
    OFF = "off"  # never started, or turned itself off (CpuDown)
    PENDING = "pending"  # a start was asked for and the vCPU is not running yet
    ON = "on"


class CpuStart(enum.Enum):
    """What became of a request to start a vCPU (CpuUp)."""

    STARTED = "started"
    ALREADY_ON = "already on"
    PENDING = "already being started"
    INVALID = "no such CPU"
