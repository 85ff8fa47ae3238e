"""Emulated devices: UARTs, interrupt controllers, timers, ROM."""
