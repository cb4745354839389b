"""Build tuneforge's images with buildah (no daemon) and run commands inside them, for tests.

No registry is reachable here, so every image is built on a local base: Debian (minbase, python3, venv,
CA certificates) made by ``mmdebstrap`` once, imported into buildah's storage and passed as ``BASE_IMAGE``.
Everything lives under ``~/.cache/tuneforge/images`` (``TUNEFORGE_IMAGES_CACHE``), never in the repository:
the base rootfs, buildah's storage, and the pip cache that the Dockerfiles' cache mounts use (buildah keeps
cache mounts under ``$TMPDIR``), so a rebuild does not download torch again.

An image is tagged with a hash of its inputs (the Dockerfile, the files its ``COPY`` lines name, the build
arguments and the base image's id): an unchanged image is not rebuilt. Storage: overlay where the kernel
allows it (layers shared, rebuilds after a source change reuse the dependency layers), otherwise vfs (every
layer a full copy: one commit per stage and old images pruned).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("TUNEFORGE_IMAGES_CACHE", Path.home() / ".cache" / "tuneforge" / "images"))
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
#: where Debian keeps the CA bundle, on the host and in the base
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
#: the containers tests run commands in: prefix, image name, the test process's pid
TEST_CONTAINER_PREFIX = "tuneforge-test-"
#: where the build sees the host's wheelhouse
WHEELS_INSIDE = "/wheels"
#: what pip needs to build rouge-score's source release in an isolated environment (setuptools' legacy backend)
BUILD_BACKENDS = ("setuptools==84.2.1", "wheel==0.45.1")
BASE_TAG = f"localhost/tuneforge-test-base:{SUITE}-python3"
#: the images tests build: name -> Dockerfile
DOCKERFILES = {
    "trainer": REPO / "trainer_image" / "Dockerfile",
    "service": REPO / "service" / "Dockerfile",
    "operator": REPO / "operator" / "Dockerfile",
}


class BuildError(RuntimeError):
    pass


def missing_tools() -> list[str]:
    return [tool for tool in ("buildah", "mmdebstrap") if shutil.which(tool) is None]


def copied_sources(dockerfile: Path) -> list[str]:
    """The build-context paths a Dockerfile's ``COPY`` lines read (not ``COPY --from``)."""
    sources: list[str] = []
    for line in _instructions(dockerfile.read_text()):
        words = line.split()
        if words[0].upper() != "COPY" or any(w.startswith("--from") for w in words[1:]):
            continue
        sources += [w for w in words[1:-1] if not w.startswith("--")]
    return sources


def _instructions(text: str) -> list[str]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    out: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        out.append(current + line)
        current = ""
    return out


EXTRA_PIN = re.compile(r"pip install --no-deps (?:--\S+ )*\"?([A-Za-z0-9_.-]+==[0-9][^\s\";]*)")


def _pip_pins_in(dockerfile: Path) -> list[str]:
    """Literal ``name==version`` pins a Dockerfile installs besides its lock (for example the bundled model)."""
    return sorted(set(EXTRA_PIN.findall(dockerfile.read_text())))


def inputs_hash(dockerfile: Path, build_args: Mapping[str, str], base_id: str) -> str:
    """Hash of everything the image is built from; unchanged inputs mean an unchanged image."""
    digest = hashlib.sha256()
    for part in (
        dockerfile.read_bytes(),
        (REPO / ".dockerignore").read_bytes(),
        json.dumps(sorted(build_args.items())).encode(),
        base_id.encode(),
    ):
        digest.update(hashlib.sha256(part).digest())
    for source in copied_sources(dockerfile):
        root = REPO / source
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            if "__pycache__" in path.parts or path.suffix in (".pyc", ".pyo"):
                continue
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Built:
    name: str
    tag: str
    seconds: float  # 0 when the image was already there
    size_bytes: int


class Buildah:
    """buildah with tuneforge's own storage root, chroot isolation, and the pip cache under CACHE."""

    def __init__(self, cache: Path = CACHE, driver: str | None = None) -> None:
        self.cache = cache
        self.driver = driver or os.environ.get("TUNEFORGE_BUILDAH_DRIVER") or self._probe_driver()
        self.root = cache / f"storage-{self.driver}"
        self.tmp = cache / "tmp"  # buildah's cache mounts (pip's downloads) and temporary layer files
        self.tmp.mkdir(parents=True, exist_ok=True)

    def _probe_driver(self) -> str:
        """overlay when this kernel mounts it for buildah, else vfs (always works, but copies every layer)."""
        probe = Buildah(self.cache, driver="overlay")
        try:
            container = probe.run("from", "scratch").stdout.strip()
            try:
                probe.run("mount", container)
            finally:
                probe.run("rm", container, check=False)
        except BuildError:
            return "vfs"
        return "overlay"

    def argv(self, *args: str) -> list[str]:
        return [
            "buildah",
            "--root",
            str(self.root / "root"),
            "--runroot",
            str(self.root / "run"),
            "--storage-driver",
            self.driver,
            *args,
        ]

    def env(self) -> dict[str, str]:
        return {**os.environ, "TMPDIR": str(self.tmp), "BUILDAH_ISOLATION": "chroot"}

    def run(self, *args: str, check: bool = True, timeout: float = 600, **kw: Any) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(self.argv(*args), env=self.env(), capture_output=True, text=True, timeout=timeout, **kw)
        if check and done.returncode != 0:
            raise BuildError(f"buildah {' '.join(args[:3])} failed ({done.returncode}):\n{done.stderr[-4000:]}")
        return done

    # images ---------------------------------------------------------------------------------------------

    def image_id(self, tag: str) -> str | None:
        done = self.run("inspect", "--type", "image", "--format", "{{.FromImageID}}", tag, check=False)
        if done.returncode != 0:
            return None
        return done.stdout.strip() or None

    def image_size(self, tag: str) -> int:
        """Uncompressed size: the sum of the image's layers (base included), from its manifest."""
        data = json.loads(self.run("inspect", "--type", "image", tag).stdout)
        return sum(int(layer["size"]) for layer in json.loads(data["Manifest"])["layers"])

    def config(self, tag: str) -> dict[str, Any]:
        """The image's OCI config (``config``: User, Env, Entrypoint, Cmd, Labels, …)."""
        data: dict[str, Any] = json.loads(self.run("inspect", "--type", "image", tag).stdout)
        return dict(data["OCIv1"])

    def tags(self, repository: str) -> list[str]:
        out = self.run("images", "--json", check=False).stdout or "[]"
        return [n for image in json.loads(out) for n in image.get("names") or [] if n.startswith(repository + ":")]

    def ensure_base(self, log: Path | None = None) -> str:
        """The Debian base image (made once by mmdebstrap); returns its tag."""
        if self.image_id(BASE_TAG):
            return BASE_TAG
        context = self.cache / "base" / f"debian-{SUITE}-{'-'.join(BASE_PACKAGES)}"
        rootfs = context / "rootfs.tar"
        if not rootfs.is_file():
            context.mkdir(parents=True, exist_ok=True)
            partial = context / "rootfs.partial"
            command = [
                "mmdebstrap",
                "--quiet",
                "--variant=minbase",
                "--format=tar",
                f"--include={','.join(BASE_PACKAGES)}",
                SUITE,
                str(partial),
                MIRROR,
            ]
            done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
            if done.returncode != 0:
                raise BuildError(f"mmdebstrap failed:\n{done.stderr[-4000:]}")
            partial.rename(rootfs)
        (context / "Containerfile").write_text('FROM scratch\nADD rootfs.tar /\nCMD ["/bin/bash"]\n')
        self.run("bud", "--quiet", "--isolation", "chroot", "-t", BASE_TAG, str(context), timeout=1800)
        return BASE_TAG

    def build(
        self, name: str, build_args: Mapping[str, str] | None = None, log: Path | None = None, timeout: float = 3600
    ) -> Built:
        """Build one of tuneforge's images on the test base unless an image of the same inputs exists."""
        dockerfile = DOCKERFILES[name]
        base = self.ensure_base()
        args = {"BASE_IMAGE": base, **(build_args or {})}
        key = inputs_hash(dockerfile, args, self.image_id(base) or "")
        repository = f"localhost/tuneforge-{name}"
        tag = f"{repository}:test-{key}"
        if self.image_id(tag):
            return Built(name, tag, 0.0, self.image_size(tag))
        command = [
            "bud",
            "--isolation",
            "chroot",
            "--pull=never",
            "--force-rm",  # a failed build leaves no working container (each can hold gigabytes)
            "-f",
            str(dockerfile),
            "-t",
            tag,
            f"--layers={'true' if self.driver == 'overlay' else 'false'}",
        ]
        for k, v in args.items():
            command += ["--build-arg", f"{k}={v}"]
        for host, inside in self._pip_mounts(name).items():
            command += ["-v", f"{host}:{inside}:ro"]
        self._remove_stale_containers()
        started = time.monotonic()
        out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115
        try:
            done = subprocess.run(
                [*self.argv(*command), str(REPO)], env=self.env(), stdout=out, stderr=subprocess.STDOUT, timeout=timeout
            )
        finally:
            if log:
                out.close()  # type: ignore[union-attr]
        if done.returncode != 0:
            tail = log.read_text()[-6000:] if log else ""
            raise BuildError(f"building the {name} image failed ({done.returncode}):\n{tail}")
        seconds = time.monotonic() - started
        self._drop_old(repository, keep=tag)
        return Built(name, tag, seconds, self.image_size(tag))

    def _pip_mounts(self, name: str) -> dict[str, str]:
        """Bind mounts for the build's RUN steps (never in a layer): a pip configuration that installs from a
        local wheelhouse only (given the same file, pip still prefers the index's copy), the wheelhouse, and the
        host's CA bundle (for pip's build-time needs behind a TLS-inspecting proxy). pip's HTTP cache stays
        empty here (the proxy's responses are not cacheable), so the wheelhouse is what spares a rebuild the
        download of torch."""
        wheels = self.wheelhouse(name)
        config = ["[global]", f"find-links = {WHEELS_INSIDE}", "no-index = true"]
        mounts = {str(wheels): WHEELS_INSIDE}
        bundle = Path(os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE") or HOST_CA_BUNDLE)
        if bundle.is_file():
            config.append(f"cert = {HOST_CA_BUNDLE}")
            mounts[str(bundle)] = HOST_CA_BUNDLE
        pip_conf = self.cache / "pip.conf"
        pip_conf.write_text("\n".join(config) + "\n")
        mounts[str(pip_conf)] = "/etc/pip.conf"
        return mounts

    def wheelhouse(self, name: str) -> Path:
        """Every distribution the image installs (its lock, the Dockerfile's other pins, the build backends of
        source releases), downloaded once on the host (``pip download``) into one directory the images share."""
        wheels = self.cache / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        dockerfile = DOCKERFILES[name]
        lock = REPO / ".ci" / "locks" / f"{name}.txt"
        pins = [*_pip_pins_in(dockerfile), *BUILD_BACKENDS]
        key = hashlib.sha256(lock.read_bytes() + "\n".join(pins).encode()).hexdigest()[:16]
        done_marker = wheels / f".complete-{name}-{key}"
        if done_marker.is_file():
            return wheels
        requirements = self.cache / f"wheelhouse-{name}.txt"
        requirements.write_text(lock.read_text() + "\n".join(pins) + "\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_FIND_LINKS")}
        # this host is what the images are (CPython 3.11, x86-64 glibc Linux), so its wheels are theirs
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                   "--no-binary=rouge-score", "-d", str(wheels), "-r", str(requirements)]  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            raise BuildError(f"pip download for the {name} image failed:\n{done.stderr[-4000:]}")
        done_marker.touch()
        return wheels

    def _remove_stale_containers(self) -> None:
        """Working containers of interrupted builds, and test containers whose process is gone."""
        listed = json.loads(self.run("containers", "--json", check=False).stdout or "[]")
        for container in listed or []:
            name = str(container.get("containername", ""))
            owner = name.removeprefix(TEST_CONTAINER_PREFIX).rsplit("-", 1)[-1]
            if name.startswith(TEST_CONTAINER_PREFIX) and owner.isdigit() and Path(f"/proc/{owner}").exists():
                continue
            self.run("rm", container["id"], check=False)

    def _drop_old(self, repository: str, keep: str) -> None:
        """Remove the older images of this name; with vfs also every dangling layer (each a full copy)."""
        for old in self.tags(repository):
            if old != keep:
                self.run("rmi", old, check=False)
        if self.driver != "overlay":
            self.run("rmi", "--prune", check=False)

    # running inside an image ------------------------------------------------------------------------------

    @contextmanager
    def container(self, tag: str) -> Iterator[Container]:
        image = tag.split("/")[-1].split(":")[0]
        name = self.run(
            "from", "--pull=never", "--name", f"{TEST_CONTAINER_PREFIX}{image}-{os.getpid()}", tag
        ).stdout.strip()
        try:
            yield Container(self, name, self.config(tag))
        finally:
            self.run("rm", name, check=False)


@dataclass
class Container:
    buildah: Buildah
    name: str
    image_config: dict[str, Any]

    @property
    def entrypoint(self) -> list[str]:
        return list(self.image_config["config"].get("Entrypoint") or [])

    def argv(self, command: Sequence[str], volumes: Mapping[str, str] = {}, env: Mapping[str, str] = {}) -> list[str]:
        """``buildah run`` as the image's user, with its environment, plus bind mounts and variables.

        chroot isolation shares the host's network namespace: a server inside listens on the host's loopback."""
        args = ["run", "--isolation", "chroot"]
        for host, inside in volumes.items():
            args += ["-v", f"{host}:{inside}"]
        for k, v in env.items():
            args += ["--env", f"{k}={v}"]
        return self.buildah.argv(*args, self.name, "--", *command)

    def run(
        self, command: Sequence[str], timeout: float = 600, volumes: Mapping[str, str] = {}, env: Mapping[str, str] = {}
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(command, volumes, env), env=self.buildah.env(), capture_output=True, text=True, timeout=timeout
        )

    @contextmanager
    def background(
        self, command: Sequence[str], log: Path, env: Mapping[str, str] = {}
    ) -> Iterator[subprocess.Popen[bytes]]:
        """Run a long-lived process (a server) in the container; stopped (its whole group) on exit."""
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                self.argv(command, env=env),
                env=self.buildah.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
