"""The real ``helm`` binary (built from its Go module by infra/testbed/helm/build.sh) and helpers to render the
tuneforge chart and read what it rendered. Nothing here depends on pytest."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "tuneforge"
PRODUCTION_VALUES = CHART / "examples" / "values-production.yaml"
BUILD_SCRIPT = ROOT / "infra" / "testbed" / "helm" / "build.sh"

Manifest = dict[str, Any]


def go_available() -> bool:
    return bool(shutil.which("go")) or os.access("/usr/local/go/bin/go", os.X_OK)


def build_helm(timeout: float = 1800.0) -> Path:
    """Run build.sh (a no-op once built) and return the binary it prints."""
    env = dict(os.environ)
    if not shutil.which("go") and os.access("/usr/local/go/bin/go", os.X_OK):
        env["PATH"] = "/usr/local/go/bin" + os.pathsep + env.get("PATH", "")
    proc = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=None, env=env,
                          timeout=timeout, check=False)
    out = proc.stdout.decode().strip().splitlines()
    if proc.returncode != 0 or not out:
        raise RuntimeError(f"{BUILD_SCRIPT} failed with exit code {proc.returncode}")
    return Path(out[-1])


class HelmError(RuntimeError):
    def __init__(self, args: Sequence[str], code: int, output: str) -> None:
        super().__init__(f"helm {' '.join(args)} exited {code}:\n{output}")
        self.code = code
        self.output = output


class Helm:
    """Runs the binary with its own config/cache/data dirs (never the user's ~/.config/helm)."""

    def __init__(self, binary: Path, home: Path, kubeconfig: Path | None = None) -> None:
        self.binary = binary
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("HELM_", "KUBECONFIG"))}
        for name, sub in (("HELM_CONFIG_HOME", "config"), ("HELM_CACHE_HOME", "cache"),
                          ("HELM_DATA_HOME", "data")):
            (home / sub).mkdir(parents=True, exist_ok=True)
            self.env[name] = str(home / sub)
        if kubeconfig is not None:
            self.env["KUBECONFIG"] = str(kubeconfig)

    def run(self, *args: str, timeout: float = 300.0) -> str:
        proc = subprocess.run([str(self.binary), *args], capture_output=True, env=self.env, timeout=timeout,
                              check=False)
        output = proc.stdout.decode() + proc.stderr.decode()
        if proc.returncode != 0:
            raise HelmError(args, proc.returncode, output)
        return proc.stdout.decode()

    def template(self, values: Sequence[Path] = (), sets: Mapping[str, str] | None = None,
                 release: str = "tf", namespace: str = "tuneforge", extra: Sequence[str] = ()) -> list[Manifest]:
        args = ["template", release, str(CHART), "--namespace", namespace, *values_args(values, sets), *extra]
        return parse_manifests(self.run(*args))


def values_args(values: Sequence[Path] = (), sets: Mapping[str, str] | None = None) -> list[str]:
    args: list[str] = []
    for path in values:
        args += ["-f", str(path)]
    for key, value in (sets or {}).items():
        args += ["--set", f"{key}={value}"]
    return args


def parse_manifests(text: str) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def by_kind(docs: Sequence[Manifest], kind: str) -> list[Manifest]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: Sequence[Manifest], kind: str, name_suffix: str = "") -> Manifest:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind} named *{name_suffix}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def container_env(deployment: Manifest, secrets: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """The environment the Deployment's first container gets: ``envFrom`` Secrets, then ``env`` (plain values
    and ``secretKeyRef``s), resolved against ``secrets`` (name -> decoded data), as the kubelet does."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        ref = source.get("secretRef")
        assert ref, f"only secretRef envFrom is expected, got {source}"
        env.update(secrets[ref["name"]])
    for item in container.get("env") or []:
        if "valueFrom" not in item:  # the apiserver drops an empty value
            env[item["name"]] = str(item.get("value", ""))
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        data = secrets.get(ref["name"], {})
        if ref["key"] in data:
            env[item["name"]] = data[ref["key"]]
        elif not ref.get("optional"):
            raise KeyError(f"Secret {ref['name']} has no key {ref['key']} (needed by {item['name']})")
    return env


def secret_data(secret: Mapping[str, Any]) -> dict[str, str]:
    """A Secret's data decoded (stringData as rendered, or base64 data as read from the apiserver)."""
    out = {k: str(v) for k, v in (secret.get("stringData") or {}).items()}
    out.update({k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()})
    return out
