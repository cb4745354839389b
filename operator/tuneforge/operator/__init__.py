"""The FineTuneJob operator (kopf): reconciles ``finetunejobs.tuneforge.dev`` into trainer Jobs and pods.

Layout: :mod:`.crd` (the CustomResourceDefinition, generated into ``helm/crds/``), :mod:`.manifests` (pure:
FineTuneJob -> ConfigMap + batch/v1 Job), :mod:`.status` (pure: FineTuneJob + Job + pods -> actions and the
new status), :mod:`.handlers` (thin kopf handlers that read, call the pure functions and write). Run it with
``python -m tuneforge.operator`` (see :mod:`.__main__`).

This package must not import the service, the trainer or torch (import-linter contract): it shares only
:mod:`tuneforge.contracts` with them.
"""

GROUP = "tuneforge.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAME = "ftj"

#: on every child (ConfigMap, Job, pods): the name of the owning FineTuneJob
LABEL_FINETUNEJOB = "tuneforge.dev/finetunejob"
#: on the FineTuneJob and its children: the service's job id and tenant
LABEL_JOB_ID = "tuneforge.dev/job-id"
LABEL_TENANT = "tuneforge.dev/tenant"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "app.kubernetes.io/component"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"

#: name of the trainer container (the pod failure policy keys on it)
TRAINER_CONTAINER = "trainer"
#: where the JobSpec ConfigMap is mounted
JOBSPEC_DIR = "/etc/tuneforge"
JOBSPEC_FILE = "jobspec.json"
WORK_DIR = "/work"

PHASES = ("Pending", "Queued", "Running", "Suspended", "Succeeded", "Failed", "Cancelled")
TERMINAL_PHASES = frozenset({"Succeeded", "Failed", "Cancelled"})
CONDITION_TYPES = ("Queued", "Running", "Suspended", "Succeeded", "Failed")

__all__ = [
    "API_VERSION",
    "CONDITION_TYPES",
    "GROUP",
    "JOBSPEC_DIR",
    "JOBSPEC_FILE",
    "KIND",
    "KUEUE_QUEUE_LABEL",
    "LABEL_COMPONENT",
    "LABEL_FINETUNEJOB",
    "LABEL_JOB_ID",
    "LABEL_MANAGED_BY",
    "LABEL_TENANT",
    "PHASES",
    "PLURAL",
    "SHORT_NAME",
    "SINGULAR",
    "TERMINAL_PHASES",
    "TRAINER_CONTAINER",
    "VERSION",
    "WORK_DIR",
]
