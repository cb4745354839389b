"""The model cache's lock (filelock): one process converts or downloads a model while the others wait."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tuneforge.trainer.models import _file_lock

WAITER = """
import sys, time
from pathlib import Path
from tuneforge.trainer.models import _file_lock
print("waiting", flush=True)
with _file_lock(Path(sys.argv[1])):
    print(f"acquired {time.time()}", flush=True)
"""


def test_a_second_process_waits_until_the_lock_is_released(tmp_path: Path) -> None:
    path = tmp_path / "models" / "nested" / ".SmolLM2.lock"  # the folder is created as needed
    with _file_lock(path):
        waiter = subprocess.Popen([sys.executable, "-c", WAITER, str(path)], stdout=subprocess.PIPE, text=True)
        assert waiter.stdout is not None
        assert waiter.stdout.readline().strip() == "waiting"
        time.sleep(1.5)  # the waiter has had time to try
        released = time.time()
    out, _ = waiter.communicate(timeout=60)
    assert waiter.returncode == 0
    acquired = float(out.split()[-1])
    assert acquired >= released


def test_the_lock_is_released_when_the_block_raises(tmp_path: Path) -> None:
    path = tmp_path / ".m.lock"
    try:
        with _file_lock(path):
            raise RuntimeError("conversion failed")
    except RuntimeError:
        pass
    lock = _file_lock(path)
    lock.acquire(timeout=1)  # would time out if the failed holder had kept it
    lock.release()
