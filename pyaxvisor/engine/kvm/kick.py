"""Kicking a vCPU thread out of ``KVM_RUN`` from another thread.

The protocol (``Documentation/virt/kvm/api.rst``, ``immediate_exit``): set
``kvm_run.immediate_exit`` first, then send the vCPU's thread a signal that has
a handler. If the thread is inside ``KVM_RUN`` the signal makes it return EINTR;
if it is about to enter, KVM sees ``immediate_exit`` and returns EINTR at once;
either way no kick is lost. :data:`KICK_SIGNAL` (a real-time signal) gets an
empty C handler installed by :func:`install` (idempotent, from any thread), so
the kick runs no Python code in the target thread.
"""

from __future__ import annotations

import contextlib
import signal
import threading

from pyaxvisor.engine.kvm import _native  # type: ignore[attr-defined]

#: The signal sent to vCPU threads.
KICK_SIGNAL = signal.SIGRTMIN + 4

_installed = False
_lock = threading.Lock()


def install() -> None:
    """Give :data:`KICK_SIGNAL` its empty handler (once per process)."""
    global _installed
    with _lock:
        if not _installed:
            _native.install_kick(int(KICK_SIGNAL))
            _installed = True


def kick_thread(thread_id: int) -> None:
    """Send :data:`KICK_SIGNAL` to the thread with ``threading.get_ident()`` ``thread_id``
    (a thread that has already ended is ignored)."""
    install()
    with contextlib.suppress(ProcessLookupError):
        signal.pthread_kill(thread_id, KICK_SIGNAL)
