"""``python -m tuneforge.operator [kopf run options]``: run the FineTuneJob operator.

Examples::

    python -m tuneforge.operator --namespace tuneforge            # one namespace, kopf peering "default"
    python -m tuneforge.operator --all-namespaces --peering tuneforge
    python -m tuneforge.operator --standalone --namespace 'team-*' # tests: no peering, namespace glob

Kubernetes access: in a pod its service account, else ``$KUBECONFIG``. Settings: ``TUNEFORGE_OPERATOR_*``
(see :mod:`tuneforge.operator.config`).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from kopf.cli import main as kopf_main

    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a in ("-A", "--all-namespaces") or a.startswith(("-n", "--namespace")) for a in args):
        args = ["--all-namespaces", *args]
    kopf_main(["run", "-m", "tuneforge.operator.handlers", *args], prog_name="tuneforge-operator")


if __name__ == "__main__":
    main()
