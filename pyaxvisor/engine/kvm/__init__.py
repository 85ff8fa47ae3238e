"""The Linux KVM engine."""
