"""SIGTERM handling: ask the training loop to checkpoint and stop at the end of the current step."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType


class PreemptFlag:
    def __init__(self) -> None:
        self._event = threading.Event()
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self, signum: int = signal.SIGTERM) -> None:
        self.signum = signum
        self._event.set()

    def install(self) -> None:
        """Route SIGTERM (and SIGINT) to this flag; only possible from the main thread."""

        def handler(signum: int, frame: FrameType | None) -> None:
            if self.requested and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C stops at once
            print(
                f"tuneforge: received signal {signum}; checkpointing and stopping",
                file=sys.stderr,
                flush=True,
            )
            self.request(signum)

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, handler)
            signal.signal(signal.SIGINT, handler)
