"""Object-store throughput: tuneforge's S3Store vs a naive boto3 client, against one local S3 server.

A model-sized file set is generated in a temporary directory: one large safetensors-like file and a checkpoint
of many 10-50 MB files (about 1 GB in all by default). Both clients upload and download it from the same
server (moto's server mode by default, or MinIO with ``--server minio``), in alternating rounds, and the MB/s and
their ratios are printed:

- naive: ``boto3.client("s3")`` with boto3's default ``TransferConfig`` (8 MB threshold and parts, 10 threads
  per file), one file after the other (``upload_file``/``download_file`` in a loop), as a script would do;
- tuneforge: ``S3Store.upload_dir``/``put_file``/``download_prefix``/``download_file`` with its defaults
  (or the ``--part-size-mb``/``--inflight``/``--files`` given), CRC32 checksums on every request and
  full-object checksums verified on download.

Run from the repository root:  .venv/bin/python bench/object_store.py  (``--help`` for sizes and settings).
moto keeps objects in its memory (spilling large ones to /tmp); every round deletes what it wrote.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.s3_server import TEST_ENV, MinioServer, MotoServer  # noqa: E402

MB = 1_000_000
MiB = 1 << 20
BUCKET = "tuneforge-bench"


def make_file_set(root: Path, large_mb: int, ckpt_files: int, ckpt_min_mb: int, ckpt_max_mb: int,
                  seed: int = 0) -> tuple[Path, Path]:
    """``root/model/model.safetensors`` and ``root/checkpoint/*`` of random (incompressible) bytes."""
    rng = random.Random(seed)
    model = root / "model"
    ckpt = root / "checkpoint"
    model.mkdir(parents=True)
    ckpt.mkdir(parents=True)

    def write(path: Path, size: int) -> None:
        with open(path, "wb") as fh:
            for start in range(0, size, 4 * MiB):
                fh.write(os.urandom(min(4 * MiB, size - start)))

    write(model / "model.safetensors", large_mb * MB)
    for i in range(ckpt_files):
        write(ckpt / f"shard-{i:03d}.safetensors", rng.randint(ckpt_min_mb, ckpt_max_mb) * MB)
    return model / "model.safetensors", ckpt


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def boto_session(credentials: dict[str, str]) -> Any:
    import boto3

    return boto3.session.Session(**credentials)


MOTO_CREDENTIALS = {"aws_access_key_id": TEST_ENV["AWS_ACCESS_KEY_ID"],
                    "aws_secret_access_key": TEST_ENV["AWS_SECRET_ACCESS_KEY"],
                    "region_name": TEST_ENV["AWS_DEFAULT_REGION"]}


def start_server(kind: str, work: Path, moto_buffer_mb: int) -> tuple[Any, dict[str, str]]:
    """The S3 server both clients use, and the credentials it accepts."""
    if kind == "minio":
        build = ROOT / "infra" / "testbed" / "minio" / "build.sh"
        binary = subprocess.run(["bash", str(build)], check=True, stdout=subprocess.PIPE, text=True).stdout.strip()
        (work / "minio-data").mkdir(parents=True)
        server = MinioServer(binary, str(work / "minio-data")).start()
        return server, server.credentials()
    moto_env = {"MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": str(moto_buffer_mb * MiB)} if moto_buffer_mb else None
    return MotoServer(env=moto_env).start(), MOTO_CREDENTIALS


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux), 0 elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


CPU_LOG: list[tuple[str, float, float, float]] = []  # (what, wall, client cpu, server cpu)
SERVER_PID = 0


def timed(fn: Callable[[], object], label: str = "") -> float:
    c0, s0 = time.process_time(), cpu_seconds(SERVER_PID)
    start = time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    CPU_LOG.append((label, wall, time.process_time() - c0, cpu_seconds(SERVER_PID) - s0))
    return wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large-mb", type=int, default=256, help="size of the single large file (MB)")
    parser.add_argument("--ckpt-files", type=int, default=26, help="number of checkpoint files")
    parser.add_argument("--ckpt-min-mb", type=int, default=10)
    parser.add_argument("--ckpt-max-mb", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the median is reported")
    parser.add_argument("--part-size-mb", type=int, default=None, help="tuneforge part size (default: its own)")
    parser.add_argument("--inflight", type=int, default=None, help="tuneforge parts in flight")
    parser.add_argument("--files", type=int, default=None, help="tuneforge files in flight")
    parser.add_argument("--skip-large-download", action="store_true",
                        help="skip downloading the large file (moto reads a whole object for every ranged GET "
                             "the naive client sends: slow and memory-hungry for large objects)")
    parser.add_argument("--threshold-mb", type=int, default=None, help="tuneforge single-request limit")
    parser.add_argument("--checksum", choices=["full", "composite", "off"], default=None,
                        help="tuneforge checksum mode")
    parser.add_argument("--moto-buffer-mb", type=int, default=0,
                        help="objects up to this size stay in moto's memory (its default spills objects over 5 MiB "
                             "to temporary files)")
    parser.add_argument("--server", choices=["moto", "minio"], default="moto",
                        help="the local S3 server: moto (Python, what the tests use) or MinIO (Go, built from the Go "
                             "module proxy by infra/testbed/minio/build.sh on first use)")
    parser.add_argument("--verbose", "-v", action="store_true", help="print every measurement with CPU times")
    parser.add_argument("--workdir", type=Path, default=None, help="where to generate the files (default: a temp dir)")
    args = parser.parse_args(argv)

    from tuneforge.storage.s3 import S3Settings, S3Store

    overrides: dict[str, Any] = {}
    if args.threshold_mb:
        overrides["multipart_threshold"] = args.threshold_mb * MiB
    if args.part_size_mb:
        overrides["part_size"] = args.part_size_mb * MiB
    if args.inflight:
        overrides["max_inflight"] = args.inflight
    if args.files:
        overrides["file_concurrency"] = args.files
    if args.checksum:
        overrides["checksum"] = args.checksum
    settings = S3Settings(**overrides)

    work = Path(tempfile.mkdtemp(prefix="tuneforge-bench-", dir=args.workdir))
    server, credentials = start_server(args.server, work, args.moto_buffer_mb)
    global SERVER_PID
    SERVER_PID = server.proc.pid if server.proc else 0
    try:
        t0 = time.perf_counter()
        large, ckpt = make_file_set(work / "src", args.large_mb, args.ckpt_files, args.ckpt_min_mb, args.ckpt_max_mb)
        ckpt_bytes, large_bytes = dir_bytes(ckpt), large.stat().st_size
        print(f"file set: 1 x {large_bytes / MB:.0f} MB + {args.ckpt_files} checkpoint files, "
              f"{ckpt_bytes / MB:.0f} MB ({(ckpt_bytes + large_bytes) / MB:.0f} MB in all), generated in "
              f"{time.perf_counter() - t0:.1f}s")
        print(f"server: {args.server} on {server.url}")
        print(f"tuneforge settings: single request up to {settings.multipart_threshold // MiB} MiB, parts of "
              f"{settings.part_size // MiB} MiB, {settings.max_inflight} parts in flight, {settings.file_concurrency} "
              f"files at once, {settings.memory_budget // MiB} MiB buffers, checksum {settings.checksum}")

        store = S3Store(BUCKET, "", settings=settings, endpoint_url=server.url, session=boto_session(credentials))
        store.create_bucket()
        naive = boto_session(credentials).client("s3", endpoint_url=server.url)
        ckpt_names = sorted(p.name for p in ckpt.iterdir())

        results: dict[tuple[str, str], list[float]] = {}

        def record(client: str, what: str, nbytes: int, seconds: float) -> None:
            results.setdefault((client, what), []).append(nbytes / MB / seconds)
            if args.verbose:
                _, wall, ccpu, scpu = CPU_LOG[-1]
                print(f"    {client:>10} {what:<22} {nbytes / MB / seconds:7.1f} MB/s  wall {wall:5.1f}s  "
                      f"client cpu {ccpu:5.1f}s  server cpu {scpu:5.1f}s", flush=True)

        def round_naive(n: int) -> None:
            prefix = f"naive-{n}"
            out = work / f"out-{prefix}"
            out.mkdir()
            record("naive", "checkpoint upload", ckpt_bytes, timed(lambda: [
                naive.upload_file(str(ckpt / name), BUCKET, f"{prefix}/ckpt/{name}") for name in ckpt_names]))
            record("naive", "large file upload", large_bytes, timed(
                lambda: naive.upload_file(str(large), BUCKET, f"{prefix}/model.safetensors")))
            record("naive", "checkpoint download", ckpt_bytes, timed(lambda: [
                naive.download_file(BUCKET, f"{prefix}/ckpt/{name}", str(out / name)) for name in ckpt_names]))
            if not args.skip_large_download:
                record("naive", "large file download", large_bytes, timed(
                    lambda: naive.download_file(BUCKET, f"{prefix}/model.safetensors", str(out / "large"))))
            store.delete_prefix(prefix + "/")
            shutil.rmtree(out)

        def round_ours(n: int) -> None:
            prefix = f"tuneforge-{n}"
            out = work / f"out-{prefix}"
            record("tuneforge", "checkpoint upload", ckpt_bytes, timed(
                lambda: store.upload_dir(ckpt, f"{prefix}/ckpt")))
            record("tuneforge", "large file upload", large_bytes, timed(
                lambda: store.put_file(f"{prefix}/model.safetensors", large)))
            record("tuneforge", "checkpoint download", ckpt_bytes, timed(
                lambda: store.download_prefix(f"{prefix}/ckpt", out)))
            if not args.skip_large_download:
                record("tuneforge", "large file download", large_bytes, timed(
                    lambda: store.download_file(f"{prefix}/model.safetensors", out / "large")))
            store.delete_prefix(prefix + "/")
            shutil.rmtree(out)

        for n in range(args.rounds):
            for client, run in (("naive", round_naive), ("tuneforge", round_ours)):
                t = time.perf_counter()
                run(n)
                print(f"  round {n + 1}/{args.rounds} {client}: {time.perf_counter() - t:.1f}s", flush=True)

        whats = ["checkpoint upload", "large file upload", "checkpoint download", "large file download"]
        print(f"\n{'MB/s (median of ' + str(args.rounds) + ')':<26}{'naive boto3':>14}{'tuneforge':>12}{'ratio':>9}")
        for what in whats:
            if ("naive", what) not in results:
                continue
            a = statistics.median(results[("naive", what)])
            b = statistics.median(results[("tuneforge", what)])
            print(f"{what:<26}{a:>14.1f}{b:>12.1f}{b / a:>8.2f}x")
        ratio = statistics.median(results[("tuneforge", "checkpoint upload")]) / statistics.median(
            results[("naive", "checkpoint upload")])
        print(f"\nmulti-file checkpoint upload: {ratio:.2f}x the naive client (target: at least 3x)")
        store.close()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
