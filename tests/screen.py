"""What a guest printed, as the real-guest tests read it: a console sink that lets a
test wait for text to appear."""

from __future__ import annotations

import threading


class Screen:
    """What the guest printed, with waiting for text to appear."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.cond = threading.Condition()

    def write(self, b: bytes) -> None:
        with self.cond:
            self.data += b
            self.cond.notify_all()

    def wait_for(self, text: bytes, start: int = 0, timeout: float = 120) -> int:
        with self.cond:
            ok = self.cond.wait_for(lambda: self.data.find(text, start) >= 0, timeout)
            assert ok, f"{text!r} did not appear; the guest printed:\n{self.data[-2000:]!r}"
            return self.data.find(text, start) + len(text)
