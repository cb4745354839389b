"""A throwaway PostgreSQL server (Debian's package) on 127.0.0.1, for tests of the cluster-mode database."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.processes import stop_process


def find_pg_bin() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


class PostgresServer:
    def __init__(self, port: int) -> None:
        bindir = find_pg_bin()
        if bindir is None:
            raise FileNotFoundError("PostgreSQL server binaries not found (apt-get install postgresql)")
        self.bindir = bindir
        self.port = port
        self.root = Path(tempfile.mkdtemp(prefix="tuneforge-pg-"))
        self.data = self.root / "data"
        self.proc: subprocess.Popen[bytes] | None = None
        # initdb refuses to run as root: run the server as the package's 'postgres' user
        self.user = "postgres" if os.geteuid() == 0 else None

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", self.user, "--", *args] if self.user else list(args)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://tuneforge@127.0.0.1:{self.port}/tuneforge"

    def start(self) -> PostgresServer:
        if self.user:
            pw = pwd.getpwnam(self.user)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        subprocess.run(self._cmd(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "tuneforge",
                                 "--auth=trust", "-E", "UTF8"), check=True, capture_output=True)
        log = self.root / "server.log"
        self.proc = subprocess.Popen(
            self._cmd(str(self.bindir / "postgres"), "-D", str(self.data), "-h", "127.0.0.1", "-p", str(self.port),
                      "-k", str(self.root), "-c", "fsync=off", "-c", "full_page_writes=off"),
            stdout=open(log, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115 - owned by the child
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready = subprocess.run([str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                                   capture_output=True)
            if ready.returncode == 0:
                break
            time.sleep(0.2)
        else:
            raise TimeoutError(f"PostgreSQL did not start: {log.read_text()[-2000:]}")
        subprocess.run([str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "tuneforge",
                        "tuneforge"], check=True, capture_output=True)
        return self

    def create_database(self, name: str) -> str:
        """A new, empty database on this server (one per test keeps tests independent); returns its URL."""
        subprocess.run([str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "tuneforge",
                        name], check=True, capture_output=True)
        return self.url.rsplit("/", 1)[0] + "/" + name

    def stop(self) -> None:
        stop_process(self.proc, timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)
