"""tuneforge control plane: REST API v1, persistence, executors and the CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    # one version, pyproject.toml's, read from the installed distribution's metadata
    __version__ = version("tuneforge")
except PackageNotFoundError:  # a source tree on sys.path that was never installed (`bash .ci/setup` installs it)
    __version__ = "0+unknown"
