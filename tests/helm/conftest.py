"""Fixtures of the chart tests: the real helm binary, built from its Go module (infra/testbed/helm/build.sh;
cached under ~/.cache/tuneforge/helm after the first build). Tests skip only when no Go toolchain exists."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.helm_chart import Helm, build_helm, go_available


@pytest.fixture(scope="session")
def helm_binary() -> Path:
    if not go_available():
        pytest.skip("no Go toolchain (go on PATH or /usr/local/go/bin/go): cannot build helm")
    return build_helm()


@pytest.fixture(scope="session")
def helm(helm_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(helm_binary, tmp_path_factory.mktemp("helm-home"))
