"""pyaxvisor: the ArceOS hypervisor's vCPU and HAL design, in Python."""

__version__ = "0.1.0"
