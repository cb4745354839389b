"""Serving in cluster mode: one ``ServingEngine`` (a vLLM Deployment run by the operator) per base model in use.

- The first request for a base model creates its ServingEngine (``contracts.servingengine``) with ``replicas: 1``
  and waits, up to ``start_timeout_seconds``, until the operator reports the Deployment ready for the current
  generation (``status.observedGeneration`` and ``readyReplicas``): the first request waits, it does not fail
  while the engine starts. A later request after a scale-down scales it back to 1 and waits the same way.
- A reaper scales an engine to 0 once no request has used it for ``idle_seconds`` (the last use is also written
  to the ServingEngine, so a second service replica does not stop an engine the first one is using). Engines
  found scaled up at start (a restarted service) are adopted, so they go to zero too.
- Requests and streams are proxied with :class:`tuneforge.engine_client.EngineClient` to
  ``cluster_url_template`` (the engine's Service by default).
- An adapter is loaded on its first use in an engine: the pod's adapter-fetcher sidecar (asked with the bearer
  token the two share, ``cluster_fetcher_token``) copies it from the object store into the shared volume
  (checked against its manifest), then vLLM's ``/v1/load_lora_adapter`` loads it from there. Beyond
  ``max_loras`` the least recently used adapter without requests in flight is unloaded
  (``/v1/unload_lora_adapter``) and its copy deleted. An engine that was restarted (scaled down and up, or its
  pod replaced) has lost its adapters: they are forgotten when it becomes ready again, and an answer "model does
  not exist" for an adapter reloads it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tuneforge.contracts.finetunejob import GROUP, LABEL_MANAGED_BY, MANAGED_BY_SERVICE, VERSION, Named, label_value
from tuneforge.contracts.servingengine import (
    LABEL_BASE_MODEL,
    PLURAL,
    ServingEngine,
    ServingEngineSpec,
    ServingScheduling,
    VllmArgs,
    WeightsSource,
    engine_name,
    serving_child_names,
)
from tuneforge.engine_client import EngineClient, EngineHTTPError, EngineStream, EngineUnavailable, Reply
from tuneforge.engine_client.client import error_body
from tuneforge.service.core.config import ServiceSettings
from tuneforge.service.core.errors import Unavailable
from tuneforge.service.domain.serving import AdapterRef, EngineReply, ServingBackend, Target
from tuneforge.service.executors.kubernetes import load_api_client
from tuneforge.storage import ObjectStore

log = logging.getLogger(__name__)
JSON = dict[str, Any]
EventHook = Callable[[str, str, dict[str, Any]], None]

#: annotation on a ServingEngine: when a request last used it (epoch seconds), shared by service replicas
LAST_USED_ANNOTATION = "tuneforge.dev/last-used"
REQUEST_TIMEOUT = 15
POLL_SECONDS = 0.5


def build_servingengine(target: Target, settings: ServiceSettings) -> JSON:
    """The ServingEngine for ``target``'s base model (pure); ``replicas`` 1: it is created for a request."""
    serving, ex = settings.serving, settings.executor
    weights = (WeightsSource(prefix=target.base_ref) if target.base_is_prefix
               else WeightsSource(catalogue=target.base_ref))
    spec = ServingEngineSpec(
        base_model=target.base,
        weights=weights,
        storage_url=settings.storage.url,
        storage_secret=ex.kube_storage_secret or None,
        image=serving.cluster_image or None,
        fetcher_image=ex.kube_image,
        image_pull_secrets=[Named(name=n) for n in ex.kube_image_pull_secrets] or None,
        service_account_name=ex.kube_service_account or None,
        replicas=1,
        vllm=VllmArgs(max_loras=serving.max_loras, max_lora_rank=serving.max_lora_rank,
                      max_model_len=serving.max_model_len or None),
        scheduling=ServingScheduling(gpus=serving.cluster_gpus, gpu_type=serving.cluster_gpu_type or None,
                                     node_selector=dict(ex.kube_node_selector) or None,
                                     tolerations=[dict(t) for t in ex.kube_tolerations] or None,
                                     priority_class_name=ex.kube_priority_class or None),
    )
    metadata = {"name": engine_name(target.base), "namespace": ex.kube_namespace,
                "labels": {LABEL_BASE_MODEL: label_value(target.base), LABEL_MANAGED_BY: MANAGED_BY_SERVICE}}
    return ServingEngine(metadata=metadata, spec=spec).dump()


def is_ready(engine: Mapping[str, Any]) -> bool:
    """Whether the operator reports a ready engine for the ServingEngine's current spec (not a stale status)."""
    meta, status = engine.get("metadata") or {}, engine.get("status") or {}
    return (int((engine.get("spec") or {}).get("replicas") or 0) >= 1
            and int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
            and int(status.get("readyReplicas") or 0) >= 1 and status.get("phase") == "Ready")


def _same_spec(current: Any, wanted: Mapping[str, Any]) -> bool:
    """Whether the ServingEngine's spec (as the apiserver keeps it, defaults filled in) is ``wanted``."""
    try:
        return ServingEngineSpec.model_validate(current) == ServingEngineSpec.model_validate(wanted)
    except ValueError:  # not a spec this version understands: replace it
        return False


@dataclass
class _Engine:
    base: str
    name: str
    url: str
    fetcher_url: str
    ready: bool = False
    #: the ServingEngine asks for a replica (scaled up here, or found so at start): the reaper looks at it
    up: bool = False
    #: adapters loaded in the engine, least recently used first
    adapters: OrderedDict[str, str] = field(default_factory=OrderedDict)
    in_flight: dict[str, int] = field(default_factory=dict)
    active: int = 0
    last_used: float = field(default_factory=time.time)
    last_touch: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    adapter_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ClusterServing(ServingBackend):
    kind = "vllm"

    def __init__(self, settings: ServiceSettings, store: ObjectStore, on_event: EventHook | None = None,
                 api_client: client.ApiClient | None = None) -> None:
        self.settings = settings
        self.store = store
        self.namespace = settings.executor.kube_namespace
        self.on_event = on_event or (lambda kind, base, data: None)
        self._api_client = api_client
        self._custom: client.CustomObjectsApi | None = None
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10), trust_env=False)
        self.engines_by_base: dict[str, _Engine] = {}
        token = settings.serving.cluster_fetcher_token
        #: the adapter-fetcher sidecars answer only requests with the token they share with the service
        self._fetcher_auth = {"Authorization": f"Bearer {token}"} if token else {}
        if not token:
            log.warning("TUNEFORGE_SERVING_CLUSTER_FETCHER_TOKEN is not set: the engine pods' adapter fetchers will "
                        "refuse this service's requests, so tuned models cannot be served (the chart sets it with "
                        "serving.enabled)")
        self._reaper: asyncio.Task[None] | None = None

    # -- Kubernetes --
    @property
    def custom(self) -> client.CustomObjectsApi:
        if self._custom is None:
            api = self._api_client or load_api_client(self.settings.executor.kubeconfig)
            self._custom = client.CustomObjectsApi(api)
        return self._custom

    def _get(self, name: str) -> JSON | None:
        try:
            found: JSON = self.custom.get_namespaced_custom_object(  # type: ignore[assignment]
                GROUP, VERSION, self.namespace, PLURAL, name, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return found

    def _create(self, manifest: JSON) -> None:
        try:
            self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, manifest,
                                                        _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status != 409:  # another request or replica created it first
                raise

    def _patch(self, name: str, body: JSON) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, body,
                                                   _request_timeout=REQUEST_TIMEOUT)

    async def _k8s(self, call: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.to_thread(call, *args)
        except ApiException as exc:
            raise Unavailable(f"the cluster refused a ServingEngine call ({exc.status} {exc.reason})",
                              code="engine_unavailable") from exc
        except (OSError, ValueError, urllib3.exceptions.HTTPError) as exc:  # connection errors, bad kubeconfig
            raise Unavailable(f"the cluster cannot be reached ({exc})", code="engine_unavailable") from exc

    def _emit(self, kind: str, base: str, **data: Any) -> None:
        try:
            self.on_event(kind, base, data)
        except Exception:  # a metrics hook must not break serving
            log.exception("engine event hook failed")

    # -- lifecycle --
    async def start(self) -> None:
        idle = self.settings.serving.idle_seconds
        if idle:
            self._reaper = asyncio.create_task(self._run_reaper(max(0.2, min(30.0, idle / 4))))

    def _list(self) -> list[JSON]:
        listing: JSON = self.custom.list_namespaced_custom_object(  # type: ignore[assignment]
            GROUP, VERSION, self.namespace, PLURAL, label_selector=f"{LABEL_MANAGED_BY}={MANAGED_BY_SERVICE}",
            _request_timeout=REQUEST_TIMEOUT)
        return list(listing.get("items") or [])

    async def adopt(self) -> list[str]:
        """Engines left scaled up (by an earlier run of the service, or another replica) are watched by the reaper
        from now on, so they too go to zero when idle; returns their base models."""
        adopted = []
        for item in await self._k8s(self._list):
            base = str((item.get("spec") or {}).get("baseModel") or "")
            if not base or int((item.get("spec") or {}).get("replicas") or 0) < 1:
                continue
            engine = self._engine_for(base)
            if not engine.up:
                engine.up = True
                engine.last_used = time.time()
                adopted.append(base)
        return adopted

    async def aclose(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        await self.http.aclose()

    def engines(self) -> list[dict[str, Any]]:
        return [{"base_model": e.base, "engine": "vllm", "servingengine": e.name, "ready": e.ready,
                 "adapters": list(e.adapters), "active_requests": e.active}
                for e in self.engines_by_base.values()]

    def _engine(self, target: Target) -> _Engine:
        return self._engine_for(target.base)

    def _engine_for(self, base: str) -> _Engine:
        current = self.engines_by_base.get(base)
        if current is None:
            name = engine_name(base)
            service = serving_child_names(name).service
            serving = self.settings.serving
            current = _Engine(base, name,
                              serving.cluster_url_template.format(service=service, namespace=self.namespace),
                              serving.cluster_fetcher_url_template.format(service=service, namespace=self.namespace))
            self.engines_by_base[base] = current
        return current

    async def _ready(self, target: Target) -> _Engine:
        """The engine for ``target``'s base model, created or scaled up and waited for."""
        engine = self._engine(target)
        if engine.ready:
            return engine
        async with engine.lock:
            if engine.ready:
                return engine
            started = time.monotonic()
            current = await self._k8s(self._get, engine.name)
            wanted = build_servingengine(target, self.settings)
            if current is None:
                await self._k8s(self._create, wanted)
                self._emit("created", target.base, servingengine=engine.name)
            elif not _same_spec(current.get("spec"), wanted["spec"]):
                # scaled to zero, or made with other settings: the settings of now apply from this start on
                await self._k8s(self._patch, engine.name, {"spec": wanted["spec"]})
            engine.up = True
            deadline = started + self.settings.serving.start_timeout_seconds
            while True:
                current = await self._k8s(self._get, engine.name)
                if current is not None and is_ready(current):
                    break
                if time.monotonic() >= deadline:
                    status = (current or {}).get("status") or {}
                    state = "; ".join(str(v) for v in (status.get("phase"), status.get("message")) if v)
                    raise Unavailable(
                        f"the engine for {target.base} did not become ready in "
                        f"{self.settings.serving.start_timeout_seconds:g} s (ServingEngine {engine.name}: "
                        f"{state or 'no status yet'}); the request can be sent again", code="engine_start_timeout")
                await asyncio.sleep(POLL_SECONDS)
            # a freshly started pod holds no adapters
            engine.adapters.clear()
            engine.ready = True
            engine.last_used = time.time()
            self._emit("started", target.base, servingengine=engine.name, seconds=time.monotonic() - started)
            return engine

    # -- adapters --
    async def _load_adapter(self, engine: _Engine, adapter: AdapterRef) -> None:
        if adapter.name in engine.adapters:
            engine.adapters.move_to_end(adapter.name)
            return
        async with engine.adapter_lock:
            if adapter.name in engine.adapters:
                engine.adapters.move_to_end(adapter.name)
                return
            path = await self._fetch(engine, adapter)
            loaded = await EngineClient(engine.url, self.http).load_adapter(adapter.name, path)
            engine.adapters[adapter.name] = path
            if loaded:
                self._emit("adapter_loaded", engine.base, adapter=adapter.name)
            await self._evict_beyond_limit(engine, keep=adapter.name)

    async def _fetch(self, engine: _Engine, adapter: AdapterRef) -> str:
        try:
            r = await self.http.post(f"{engine.fetcher_url}/fetch", json={
                "name": adapter.name, "prefix": adapter.prefix, "files": list(adapter.files)}, timeout=600,
                headers=self._fetcher_auth)
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"the adapter fetcher of {engine.name} does not answer ({exc})") from exc
        if r.status_code != 200:
            try:
                message = r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = r.text[:300]
            raise Unavailable(f"the adapter {adapter.name} could not be fetched into the engine: {message}",
                              code="adapter_fetch_failed")
        return str(r.json()["path"])

    async def _evict_beyond_limit(self, engine: _Engine, keep: str) -> None:
        limit = self.settings.serving.max_loras
        for name in list(engine.adapters):
            if len(engine.adapters) <= limit:
                return
            if name == keep or engine.in_flight.get(name):
                continue  # in use: evicted later, once it is idle
            try:
                await EngineClient(engine.url, self.http).unload_adapter(name)
            except (EngineHTTPError, EngineUnavailable) as exc:  # gone already, or the engine is: forget it anyway
                log.warning("unloading adapter %s from %s failed: %s", name, engine.name, exc)
            engine.adapters.pop(name, None)
            with contextlib.suppress(httpx.HTTPError):
                await self.http.delete(f"{engine.fetcher_url}/adapters/{name}", timeout=30,
                                       headers=self._fetcher_auth)
            self._emit("adapter_evicted", engine.base, adapter=name)

    # -- requests --
    def _used(self, engine: _Engine, adapter: AdapterRef | None, delta: int) -> None:
        engine.active += delta
        if adapter is not None:
            engine.in_flight[adapter.name] = engine.in_flight.get(adapter.name, 0) + delta
        engine.last_used = time.time()

    async def _touch(self, engine: _Engine) -> None:
        """Record the use on the ServingEngine (for other replicas' reapers), at most every quarter idle time."""
        idle = self.settings.serving.idle_seconds
        if not idle or engine.last_used - engine.last_touch < idle / 4:
            return
        engine.last_touch = engine.last_used
        with contextlib.suppress(Unavailable):
            await self._k8s(self._patch, engine.name,
                            {"metadata": {"annotations": {LAST_USED_ANNOTATION: f"{engine.last_used:.3f}"}}})

    def _body(self, target: Target, body: dict[str, Any]) -> dict[str, Any]:
        return {**body, "model": target.adapter.name if target.adapter else target.base}

    async def _send(self, target: Target, call: Callable[[EngineClient, _Engine], Any]) -> Any:
        """Run ``call`` on a ready engine with the adapter loaded. An engine found gone (scaled down by another
        replica, pod replaced) or one that lost the adapter is made ready again and asked once more."""
        for attempt in (1, 2):
            engine = await self._ready(target)
            try:
                if target.adapter is not None:
                    await self._load_adapter(engine, target.adapter)
                self._used(engine, target.adapter, +1)
                try:
                    result = await call(EngineClient(engine.url, self.http), engine)
                finally:
                    self._used(engine, target.adapter, -1)
            except (EngineUnavailable, httpx.ConnectTimeout) as exc:
                # nothing was answered: the engine went away (a Service without endpoints may time out instead
                # of refusing); its state is looked up again and the request sent once more
                engine.ready = False
                if attempt == 2:
                    raise EngineUnavailable(str(exc)) from exc
                continue
            except EngineHTTPError as exc:
                if attempt == 1 and self._lost_adapter(target, exc.status, exc.body):
                    engine.adapters.pop(target.adapter.name if target.adapter else "", None)
                    continue
                return Reply(exc.status, exc.body)
            if (attempt == 1 and isinstance(result, Reply)
                    and self._lost_adapter(target, result.status, result.body)):
                engine.adapters.pop(target.adapter.name if target.adapter else "", None)
                continue
            await self._touch(engine)
            return result
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    @staticmethod
    def _lost_adapter(target: Target, status: int, body: Mapping[str, Any]) -> bool:
        """vLLM's answer for a model name it does not know: the engine restarted and lost a runtime adapter."""
        message = str((body.get("error") or {}).get("message") or "")
        return target.adapter is not None and status == 404 and "does not exist" in message

    async def request(self, target: Target, path: str, body: dict[str, Any]) -> EngineReply:
        async def call(engine_client: EngineClient, _: _Engine) -> Reply:
            return await engine_client.request(path, {**self._body(target, body), "stream": False})

        try:
            reply: Reply = await self._send(target, call)
        except EngineUnavailable as exc:
            return EngineReply(503, error_body(f"the engine for {target.base} is unavailable ({exc}); the next "
                                               "request starts it again", code="engine_unavailable"))
        return EngineReply(reply.status, reply.body)

    async def stream(self, target: Target, path: str, body: dict[str, Any]) -> AsyncIterator[bytes] | EngineReply:
        async def call(engine_client: EngineClient, engine: _Engine) -> EngineStream:
            opened = await engine_client.stream(path, self._body(target, body))
            self._used(engine, target.adapter, +1)  # counted until the stream is consumed or dropped
            return opened

        try:
            answer = await self._send(target, call)
        except EngineUnavailable as exc:
            return EngineReply(503, error_body(f"the engine for {target.base} is unavailable ({exc}); the next "
                                               "request starts it again", code="engine_unavailable"))
        if isinstance(answer, Reply):
            return EngineReply(answer.status, answer.body)
        return self._relay(answer, self._engine(target), target.adapter)

    async def _relay(self, opened: EngineStream, engine: _Engine, adapter: AdapterRef | None) -> AsyncIterator[bytes]:
        try:
            async for event in opened:
                yield event
        finally:
            self._used(engine, adapter, -1)

    # -- idle scale-down --
    async def _run_reaper(self, every: float) -> None:
        with contextlib.suppress(Exception):  # the cluster may be unreachable now: engines are adopted on use then
            await self.adopt()
        while True:
            await asyncio.sleep(every)
            try:
                await self.reap_idle()
            except Exception:  # the next round tries again
                log.exception("scaling idle engines down failed")

    async def reap_idle(self) -> list[str]:
        """Scale to 0 the engines no request has used for ``idle_seconds`` (here or, per the ServingEngine's
        last-used annotation, in another replica); returns their base models."""
        idle = self.settings.serving.idle_seconds
        stopped: list[str] = []
        if not idle:
            return stopped
        for engine in list(self.engines_by_base.values()):
            if not engine.up or engine.active or time.time() - engine.last_used <= idle:
                continue
            async with engine.lock:
                if not engine.up or engine.active or time.time() - engine.last_used <= idle:
                    continue  # a request started (or scaled it up again) while the lock was waited for
                current = await self._k8s(self._get, engine.name)
                if current is None:
                    engine.ready = engine.up = False
                    continue
                noted = ((current.get("metadata") or {}).get("annotations") or {}).get(LAST_USED_ANNOTATION)
                with contextlib.suppress(ValueError):
                    if noted and time.time() - float(noted) <= idle:
                        continue  # another replica used it lately
                await self._k8s(self._patch, engine.name, {"spec": {"replicas": 0}})
                engine.ready = engine.up = False
                engine.adapters.clear()
                self._emit("stopped", engine.base, servingengine=engine.name, reason="idle")
                stopped.append(engine.base)
        return stopped
