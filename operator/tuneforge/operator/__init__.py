"""The FineTuneJob operator (kopf): reconciles ``finetunejobs.tuneforge.dev`` into trainer Jobs and pods.

Layout: the resource itself (names, labels, phases, spec/status models, the CRD) is a contract shared with the
service, :mod:`tuneforge.contracts.finetunejob`; here :mod:`.crd` writes the CRD into ``helm/crds/``,
:mod:`.manifests` (pure: FineTuneJob -> ConfigMap + batch/v1 Job), :mod:`.status` (pure: FineTuneJob + Job +
pods -> actions and the new status), :mod:`.handlers` (thin kopf handlers that read, call the pure functions
and write). Run it with ``python -m tuneforge.operator`` (see :mod:`.__main__`).

This package must not import the service, the trainer or torch (import-linter contract): it shares only
:mod:`tuneforge.contracts` with them.
"""
