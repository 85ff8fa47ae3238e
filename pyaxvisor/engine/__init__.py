"""Execution engines ("the silicon"): Linux KVM and a software CPU."""
