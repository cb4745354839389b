"""FineTuneJob + its Job + its pods -> what to do and the new status. Pure: every input is a plain dict as the
API returns it (camelCase), the clock is a parameter.

Phases: ``Pending`` (accepted, no Job yet) -> ``Queued`` (Job created, pod not running: waiting for the
scheduler, a GPU, an image, Kueue, or between attempts) -> ``Running`` -> ``Succeeded`` | ``Failed`` |
``Cancelled``; ``Suspended`` while ``spec.suspend`` holds. ``reason`` says why, in one CamelCase word a user
can look up (docs/cluster.md): Unschedulable, ImagePullBackOff, ContainerConfigError, Preempted, Resumed,
Retrying, OOMKilled, BadInput, TrainerError, DeadlineExceeded, BackoffLimitExceeded, Cancelled, InvalidSpec.

``activePods`` counts the pods that may still run a trainer (see :func:`live`), in every phase: a final phase
with ``activePods > 0`` means pods are still stopping (a cancelled job's pods checkpoint during their grace
period), so whatever the job wrote to the object store is not final yet.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tuneforge.contracts.exit_codes import ExitCode
from tuneforge.contracts.finetunejob import CONDITION_TYPES, TERMINAL_PHASES, TRAINER_CONTAINER, child_names
from tuneforge.operator.config import OperatorSettings
from tuneforge.operator.manifests import InvalidSpec, build_children

JSON = dict[str, Any]

#: fields of ``status`` the operator owns (the service owns ``progress`` and ``lastCheckpoint``)
OWNED_FIELDS = ("phase", "reason", "message", "exitCode", "observedGeneration", "attempts", "jobName",
                "podNames", "activePods", "startTime", "completionTime", "conditions")
MAX_POD_NAMES = 100
IMAGE_PULL_REASONS = frozenset({"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull",
                                "RegistryUnavailable"})
CONFIG_ERROR_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError", "RunContainerError"})
WARNING_REASONS = frozenset({"Unschedulable", "ImagePullBackOff", "ContainerConfigError", "Preempted",
                             "Retrying", "OOMKilled", "BadInput", "TrainerError", "DeadlineExceeded",
                             "BackoffLimitExceeded", "InvalidSpec", "PodFailed", "JobRecreated"})
_CONDITION_OF_PHASE = {"Pending": "Queued", "Queued": "Queued", "Running": "Running", "Suspended": "Suspended",
                       "Succeeded": "Succeeded", "Failed": "Failed", "Cancelled": "Failed"}


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class CreateChildren:
    """Create these manifests in order; an existing one (409) is left as it is."""

    manifests: list[JSON]


@dataclass(frozen=True)
class DeleteJob:
    name: str
    #: Foreground: the Job object stays until its pods are gone
    propagation: str = "Foreground"


@dataclass(frozen=True)
class SuspendJob:
    name: str
    suspend: bool


Action = CreateChildren | DeleteJob | SuspendJob


@dataclass(frozen=True)
class Observation:
    phase: str
    reason: str
    message: str
    exit_code: int | None = None


@dataclass(frozen=True)
class Outcome:
    """How one pod ended."""

    reason: str
    message: str
    exit_code: int | None
    #: preempted/disrupted: the Job replaces the pod without counting a failure
    preempted: bool = False


@dataclass
class Plan:
    actions: list[Action]
    #: the complete operator-owned status
    status: JSON
    #: merge patch for ``status`` (changed fields only); None when nothing changed
    patch: JSON | None
    #: (type, reason, message) of a Kubernetes Event to post when phase or reason changed
    events: list[tuple[str, str, str]] = field(default_factory=list)


# --------------------------------------------------------------------------- small readers


def timestamp(now: dt.datetime) -> str:
    return now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _status(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("status") or {}


def condition(obj: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    for cond in _status(obj).get("conditions") or []:
        if cond.get("type") == ctype:
            return cond
    return None


def true_condition(obj: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    cond = condition(obj, ctype)
    return cond if cond is not None and cond.get("status") == "True" else None


def _trainer_status(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    statuses = _status(pod).get("containerStatuses") or []
    for cs in statuses:
        if cs.get("name") == TRAINER_CONTAINER:
            return cs
    return statuses[0] if statuses else {}


def terminated_state(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    cs = _trainer_status(pod)
    return (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")


def waiting_state(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return (_trainer_status(pod).get("state") or {}).get("waiting")


def _ended(pod: Mapping[str, Any]) -> bool:
    return _status(pod).get("phase") in ("Succeeded", "Failed") or bool(_meta(pod).get("deletionTimestamp"))


def _active(pod: Mapping[str, Any]) -> bool:
    return not _ended(pod)


def live(pod: Mapping[str, Any]) -> bool:
    """Whether the pod's trainer may still be running, and so writing to the object store: the pod has not
    finished, or it is being deleted (the kubelet stops its containers within the grace period, in which the
    trainer saves a checkpoint; the pod object goes once they have stopped)."""
    return _status(pod).get("phase") not in ("Succeeded", "Failed") or bool(_meta(pod).get("deletionTimestamp"))


def _sorted(pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(pods, key=lambda p: (_meta(p).get("creationTimestamp") or "", _meta(p).get("name") or ""))


def termination_detail(text: str | None, limit: int = 400) -> str:
    """The useful line of a termination message: the trainer's ``tuneforge: <why>``, else the last line."""
    if not text:
        return ""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    chosen = next((line for line in reversed(lines) if line.startswith("tuneforge:")), lines[-1])
    chosen = chosen.removeprefix("tuneforge:").strip()
    return chosen if len(chosen) <= limit else chosen[: limit - 1] + "…"


def pod_outcome(pod: Mapping[str, Any]) -> Outcome:
    """Why a pod ended (or is ending), in the user's terms."""
    name = _meta(pod).get("name", "?")
    status = _status(pod)
    term = terminated_state(pod)
    code = term.get("exitCode") if term else None
    detail = termination_detail(term.get("message")) if term else ""
    disruption = true_condition(pod, "DisruptionTarget")
    if code == ExitCode.BAD_INPUT:
        return Outcome("BadInput", f"The trainer rejected its input: {detail or 'bad input (exit 65)'}", code)
    if code == ExitCode.PREEMPTED or disruption is not None or status.get("reason") in ("Evicted", "Preempting"):
        if disruption is not None:
            why = disruption.get("reason") or "disrupted"
            if disruption.get("message"):
                why += f": {disruption['message']}"
        elif status.get("reason"):
            why = f"{status['reason']}: {status.get('message') or ''}".rstrip(": ")
        else:
            why = "the trainer saved a checkpoint and exited (exit 75)"
        return Outcome("Preempted", f"Pod {name} was preempted ({why})", code, preempted=True)
    if term and term.get("reason") == "OOMKilled":
        return Outcome("OOMKilled", f"The trainer ran out of memory (pod {name} OOMKilled, exit {code}): request "
                                    "more memory or lower batch_size / max_length", code)
    if status.get("reason") == "DeadlineExceeded":
        return Outcome("DeadlineExceeded", f"Pod {name} ran past the job's deadline", code)
    if code is not None:
        message = f"The trainer exited with code {code}" + (f": {detail}" if detail else "")
        return Outcome("TrainerError", message, code)
    return Outcome("PodFailed", status.get("message") or f"Pod {name} failed ({status.get('reason') or 'unknown'})",
                   None)


# --------------------------------------------------------------------------- observation


#: reasons that stay while the Job replaces a pod that is already gone (evicted pods are deleted)
STICKY_REASONS = frozenset({"Preempted", "Retrying", "JobRecreated", "Resuming"})


def observe(cr: Mapping[str, Any], job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]],
            attempts: int) -> Observation:
    """The phase a FineTuneJob is in, judged from its (existing, owned) Job and pods."""
    spec = cr.get("spec") or {}
    prior = _status(cr)
    job_spec = job.get("spec") or {}
    pods = _sorted(pods)
    ended = [p for p in pods if _ended(p) and _status(p).get("phase") != "Succeeded"]
    last = pod_outcome(ended[-1]) if ended else None
    completions = int(job_spec.get("completions") or 1)

    if true_condition(job, "Complete") or true_condition(job, "SuccessCriteriaMet") or (
        sum(1 for p in pods if _status(p).get("phase") == "Succeeded") >= completions
    ):
        return Observation("Succeeded", "Completed", "The trainer finished and published the model", 0)

    failed = true_condition(job, "Failed") or true_condition(job, "FailureTarget")
    outcomes = [(p, pod_outcome(p)) for p in ended]
    counted = [o for p, o in outcomes if not o.preempted and _status(p).get("phase") == "Failed"]
    limit_value = job_spec.get("backoffLimit")
    backoff_limit = int(limit_value) if limit_value is not None else 6
    if failed is not None:
        reason = failed.get("reason") or "JobFailed"
        if reason == "DeadlineExceeded":
            limit = job_spec.get("activeDeadlineSeconds")
            return Observation("Failed", "DeadlineExceeded",
                               f"The job ran longer than its deadline (activeDeadlineSeconds={limit}) and was stopped")
        if counted:
            worst = counted[-1]
            message = worst.message
            if reason == "BackoffLimitExceeded" and worst.reason != "BadInput":
                message += f" (failed {len(counted)} times; backoffLimit={backoff_limit})"
            return Observation("Failed", worst.reason, message, worst.exit_code)
        return Observation("Failed", reason, failed.get("message") or "The Job failed")
    # decided by the pod failure policy / backoff limit even before the Job controller says so
    if last is not None and last.reason == "BadInput" and not any(_active(p) for p in pods):
        return Observation("Failed", "BadInput", last.message, last.exit_code)
    if counted and len(counted) > backoff_limit and not any(_active(p) for p in pods):
        worst = counted[-1]
        suffix = f" (failed {len(counted)} times; backoffLimit={backoff_limit})" if backoff_limit else ""
        return Observation("Failed", worst.reason, worst.message + suffix, worst.exit_code)

    if job_spec.get("suspend"):
        if spec.get("suspend"):
            return Observation("Suspended", "Suspended", "Suspended: the trainer pod was stopped after saving a "
                                                         "checkpoint; set spec.suspend=false to resume")
        queue = (spec.get("scheduling") or {}).get("queueName")
        return Observation("Queued", "WaitingForAdmission", f"Waiting for Kueue to admit the job (queue {queue})")

    active = [p for p in pods if _active(p)]
    running = [p for p in active if _status(p).get("phase") == "Running"]
    if running:
        pod = running[-1]
        where = f"Pod {_meta(pod).get('name')} is running on node {(pod.get('spec') or {}).get('nodeName')}"
        if last is not None:
            reason = "Resumed" if last.preempted else "Retrying"
            return Observation("Running", reason, f"{where} (attempt {attempts}); before: {last.message}")
        if attempts > 1:  # the previous pod is gone: evicted, preempted or deleted (failed pods are kept)
            before = prior.get("message") if prior.get("reason") in STICKY_REASONS else None
            return Observation("Running", "Resumed", f"{where} (attempt {attempts}); before: "
                               f"{before or 'the previous pod was deleted (evicted, preempted or drained)'}")
        return Observation("Running", "PodRunning", where)
    if active:
        pod = active[-1]
        name = _meta(pod).get("name")
        scheduled = condition(pod, "PodScheduled")
        if scheduled is not None and scheduled.get("status") == "False" and \
                scheduled.get("reason") == "Unschedulable":
            return Observation("Queued", "Unschedulable",
                               f"No node can run pod {name} yet: {scheduled.get('message') or 'unschedulable'}")
        waiting = waiting_state(pod)
        if waiting and waiting.get("reason") in IMAGE_PULL_REASONS:
            images = [c.get("image") for c in (pod.get("spec") or {}).get("containers") or []]
            image = images[0] if images else "?"
            return Observation("Queued", "ImagePullBackOff", f"Cannot pull the trainer image {image}: "
                                                            f"{waiting.get('message') or waiting.get('reason')}")
        if waiting and waiting.get("reason") in CONFIG_ERROR_REASONS:
            return Observation("Queued", "ContainerConfigError",
                               f"Pod {name} cannot start: {waiting.get('message') or waiting.get('reason')}")
        node = (pod.get("spec") or {}).get("nodeName")
        if node:
            return Observation("Queued", "PodStarting", f"Pod {name} is starting on node {node}")
        return Observation("Queued", "PodPending", f"Pod {name} is waiting for the scheduler")
    if last is not None:
        if last.preempted:
            return Observation("Queued", "Preempted",
                               f"{last.message}; a new pod will resume from the latest checkpoint")
        return Observation("Queued", "Retrying", f"{last.message}; retrying")
    if attempts > 0:
        if prior.get("reason") in STICKY_REASONS:
            return Observation("Queued", str(prior["reason"]), str(prior.get("message") or ""))
        return Observation("Queued", "Preempted", "The trainer pod was deleted (evicted, preempted or drained); "
                                                  "a new pod will resume from the latest checkpoint")
    name = _meta(job).get("name")
    return Observation("Queued", "JobCreated", f"Job {name} created; waiting for its pod")


# --------------------------------------------------------------------------- plan


def _track_pods(prior: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> tuple[list[str], int]:
    names = list(prior.get("podNames") or [])
    attempts = int(prior.get("attempts") or 0)
    for pod in _sorted(pods):
        name = _meta(pod).get("name")
        if name and name not in names:
            names.append(name)
            attempts += 1
    return names[-MAX_POD_NAMES:], attempts


def _conditions(prior: Sequence[Mapping[str, Any]], obs: Observation, now: str, generation: Any) -> list[JSON]:
    before = {c.get("type"): c for c in prior or []}
    true_type = _CONDITION_OF_PHASE[obs.phase]
    out: list[JSON] = []
    for ctype in CONDITION_TYPES:
        status = "True" if ctype == true_type else "False"
        old = before.get(ctype) or {}
        cond: JSON = {
            "type": ctype,
            "status": status,
            "reason": obs.reason,
            "lastTransitionTime": old.get("lastTransitionTime") if old.get("status") == status and
            old.get("lastTransitionTime") else now,
        }
        if status == "True":
            cond["message"] = obs.message
        if generation is not None:
            cond["observedGeneration"] = generation
        out.append(cond)
    return out


def _owned(job: Mapping[str, Any] | None, cr: Mapping[str, Any]) -> bool:
    if job is None:
        return False
    uid = _meta(cr).get("uid")
    return any(ref.get("uid") == uid for ref in _meta(job).get("ownerReferences") or [])


def _pending_since(pods: Sequence[Mapping[str, Any]]) -> dt.datetime | None:
    active = [p for p in _sorted(pods) if _active(p)]
    return parse_time(_meta(active[-1]).get("creationTimestamp")) if active else None


def _cancelled(live_pods: int) -> Observation:
    if live_pods:
        return Observation("Cancelled", "Cancelled", f"Cancelled: the Job is being deleted; {live_pods} pod"
                           f"{'s are' if live_pods > 1 else ' is'} still stopping")
    return Observation("Cancelled", "Cancelled", "Cancelled: the Job and its pods are deleted")


def plan(cr: Mapping[str, Any], job: Mapping[str, Any] | None, pods: Sequence[Mapping[str, Any]],
         config: OperatorSettings, now: dt.datetime) -> Plan:
    """Decide the actions and the new status of one FineTuneJob from what exists now."""
    spec = cr.get("spec") or {}
    meta = _meta(cr)
    prior = _status(cr)
    names = child_names(meta["name"])
    prior_phase = prior.get("phase")
    pod_names, attempts = _track_pods(prior, pods)
    actions: list[Action] = []
    owned = _owned(job, cr)
    job_deleting = bool(job and _meta(job).get("deletionTimestamp"))
    job_name = prior.get("jobName")
    live_pods = sum(1 for p in pods if live(p))

    if prior_phase in TERMINAL_PHASES:
        if prior_phase == "Cancelled" and owned and not job_deleting:
            actions.append(DeleteJob(names.job))
        if prior_phase == "Cancelled":
            obs = _cancelled(live_pods)  # the message follows the pods until they are gone
        else:
            obs = Observation(prior_phase, prior.get("reason") or prior_phase, prior.get("message") or "",
                              prior.get("exitCode"))
    elif spec.get("cancel"):
        if owned and not job_deleting:
            actions.append(DeleteJob(names.job))
        obs = _cancelled(live_pods)
    elif job is not None and not owned:
        obs = Observation("Pending", "WaitingForOldJob",
                          f"A Job named {names.job} that belongs to an earlier FineTuneJob is still being deleted")
    elif job is None:
        try:
            children = build_children(cr, config)
        except InvalidSpec as exc:
            obs = Observation("Failed", "InvalidSpec", str(exc))
        else:
            actions.append(CreateChildren(children))
            job_name = names.job
            if prior.get("jobName") and prior_phase not in (None, "Pending"):
                obs = Observation("Queued", "JobRecreated", f"Job {names.job} was deleted outside tuneforge; "
                                  "created it again (the trainer resumes from its latest checkpoint)")
            else:
                obs = Observation("Queued", "JobCreated", f"Job {names.job} created; waiting for its pod")
    elif job_deleting:
        obs = Observation("Queued", "JobDeleted", f"Job {names.job} is being deleted; a new one will follow")
    else:
        assert job is not None
        job_name = names.job
        want_suspend = bool(spec.get("suspend"))
        queue = (spec.get("scheduling") or {}).get("queueName")
        job_suspended = bool((job.get("spec") or {}).get("suspend"))
        obs = observe(cr, job, pods, attempts)
        if obs.phase not in TERMINAL_PHASES:
            if want_suspend and not job_suspended:
                actions.append(SuspendJob(names.job, True))
                obs = Observation("Suspended", "Suspended", "Suspended: the trainer pod is stopped after saving "
                                                            "a checkpoint; set spec.suspend=false to resume")
            elif not want_suspend and job_suspended and not queue:
                actions.append(SuspendJob(names.job, False))
                obs = Observation("Queued", "Resuming", "Resuming: a new pod continues from the latest checkpoint")
            max_pending = (spec.get("scheduling") or {}).get("maxPendingSeconds")
            since = _pending_since(pods)
            if obs.reason == "Unschedulable" and max_pending and since is not None and \
                    (now - since).total_seconds() >= float(max_pending):
                actions.append(DeleteJob(names.job, "Background"))
                obs = Observation("Failed", "Unschedulable", f"{obs.message} (gave up after {max_pending}s)")

    stamp = timestamp(now)
    terminal = obs.phase in TERMINAL_PHASES
    first_start = next((_status(p).get("startTime") for p in _sorted(pods) if _status(p).get("startTime")), None)
    status: JSON = {
        "phase": obs.phase,
        "reason": obs.reason,
        "message": obs.message,
        "exitCode": obs.exit_code,
        "observedGeneration": meta.get("generation"),
        "attempts": attempts,
        "jobName": job_name,
        "podNames": pod_names,
        "activePods": live_pods,
        "startTime": prior.get("startTime") or first_start or (stamp if obs.phase == "Running" else None),
        "completionTime": prior.get("completionTime") or (stamp if terminal else None),
        "conditions": _conditions(prior.get("conditions") or [], obs, stamp, meta.get("generation")),
    }
    changed = {k: v for k, v in status.items() if prior.get(k) != v}
    # an absent field and an explicit null are the same thing in a merge patch
    changed = {k: v for k, v in changed.items() if not (v is None and prior.get(k) is None)}
    events: list[tuple[str, str, str]] = []
    if (prior.get("phase"), prior.get("reason")) != (obs.phase, obs.reason) or \
            (obs.reason in ("Preempted", "Resumed", "Retrying") and prior.get("attempts") != attempts):
        kind = "Warning" if obs.reason in WARNING_REASONS or obs.phase == "Failed" else "Normal"
        events.append((kind, obs.reason, obs.message))
    return Plan(actions=actions, status=status, patch=changed or None, events=events)
