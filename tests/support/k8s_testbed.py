"""A real Kubernetes control plane for tests, without Docker.

``K8sTestbed`` starts etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (which plays the kubelets of fake nodes) from the
binaries that ``infra/testbed/k8s/build.sh`` builds, all bound to 127.0.0.1 on
free ports, with certificates and service-account keys generated into a
temporary directory. Nothing here depends on pytest.

Typical use::

    bin_dir = K8sTestbed.build()            # runs build.sh (cached after the first run)
    tb = K8sTestbed(bin_dir)
    tb.start()
    tb.add_gpu_node("gpu-0", gpus=8, labels={"nvidia.com/gpu.product": "H100"})
    # ... point the kubernetes client at tb.kubeconfig_path ...
    tb.finish_pod("ns", "pod-name", exit_code=0)   # the fake kubelet ends the pod
    tb.stop()

Pod lifecycle on fake nodes (kwok stages written by this module):

* a pod bound to a fake node goes ``Running`` at once (containers running,
  Ready) and stays Running until the test ends it;
* ``finish_pod(ns, name, exit_code, reason=None, message=None)`` annotates the
  pod with ``tuneforge.test/exit-code`` (plus ``tuneforge.test/reason`` and
  ``tuneforge.test/message``); kwok then terminates every container with that
  exit code and sets the phase to ``Succeeded`` (code 0) or ``Failed`` (any
  other code). Default reasons: ``Completed`` for 0, ``Error`` otherwise; pass
  e.g. ``reason="OOMKilled", exit_code=137`` for an OOM kill. A test may also
  put these annotations in the pod template to make pods finish as soon as
  they run;
* deleting a running pod (``kubectl delete``, the eviction API, preemption,
  a cancelled Job) behaves like a kubelet: containers end with exit code 143
  (``reason: Error``), or with the code in ``tuneforge.test/exit-code`` if the
  pod carries one (a trainer that saves a checkpoint on SIGTERM and exits with
  its "preempted" code), the phase goes ``Failed`` keeping any
  ``DisruptionTarget`` condition, and the pod object is removed once its
  finalizers are gone;
* ``patch_pod_status(ns, name, status)`` patches ``pods/status`` directly for
  anything else.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import http.client
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.waiting import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "infra" / "testbed" / "k8s" / "build.sh"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")

EXIT_CODE_ANNOTATION = "tuneforge.test/exit-code"
REASON_ANNOTATION = "tuneforge.test/reason"
MESSAGE_ANNOTATION = "tuneforge.test/message"
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
FAKE_NODE_VALUE = "fake"
GPU_RESOURCE = "nvidia.com/gpu"

SERVICE_CIDR = "10.0.0.0/24"
# Pod IPs that kwok writes into pod status (data only: no traffic ever goes there).
POD_CIDR = "10.0.0.1/24"


class TestbedError(RuntimeError):
    """A control-plane component failed; the message carries its log tail."""

    __test__ = False  # not a pytest test class


# --------------------------------------------------------------------------- #
# kwok stages for pods (node stages are kwok's defaults: initialize + lease)   #
# --------------------------------------------------------------------------- #

_POD_STAGES = r"""
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options: {}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-ready
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.podIP'
      operator: 'DoesNotExist'
  next:
    event:
      type: Normal
      reason: Started
      message: Started containers (kwok)
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Initialized
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Ready
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: ContainersReady
      {{ range .spec.readinessGates }}
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: {{ .conditionType | Quote }}
      {{ end }}
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: true
        started: true
        restartCount: 0
        state:
          running:
            startedAt: {{ $now | Quote }}
      {{ end }}
      initContainerStatuses:
      {{ range .spec.initContainers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: true
        restartCount: 0
        state:
          terminated:
            exitCode: 0
            finishedAt: {{ $now | Quote }}
            reason: Completed
            startedAt: {{ $now | Quote }}
      {{ end }}
      hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
      {{ $podIP := PodIPWith .spec.nodeName (or .spec.hostNetwork false)
           (or .metadata.uid "") (or .metadata.name "") (or .metadata.namespace "") }}
      podIP: {{ $podIP | Quote }}
      phase: Running
      startTime: {{ $now | Quote }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-finish
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values: ['Running']
    - key: '.metadata.annotations["tuneforge.test/exit-code"]'
      operator: 'Exists'
  next:
    statusTemplate: |
      {{ $now := Now }}
      {{ $ann := or .metadata.annotations dict }}
      {{ $code := index $ann "tuneforge.test/exit-code" }}
      {{ $reason := index $ann "tuneforge.test/reason"
           | default (ternary "Completed" "Error" (eq $code "0")) }}
      {{ $message := index $ann "tuneforge.test/message" | default "" }}
      {{ $started := or .status.startTime $now }}
      conditions:
      - lastTransitionTime: {{ $now | Quote }}
        status: "False"
        type: Ready
        reason: PodCompleted
      - lastTransitionTime: {{ $now | Quote }}
        status: "False"
        type: ContainersReady
        reason: PodCompleted
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: false
        started: false
        restartCount: 0
        state:
          terminated:
            exitCode: {{ $code }}
            reason: {{ $reason | Quote }}
            message: {{ $message | Quote }}
            startedAt: {{ $started | Quote }}
            finishedAt: {{ $now | Quote }}
      {{ end }}
      phase: {{ if eq $code "0" }}Succeeded{{ else }}Failed{{ end }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-terminate
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'Exists'
    - key: '.status.phase'
      operator: 'In'
      values: ['Pending', 'Running']
  next:
    event:
      type: Normal
      reason: Killing
      message: Stopping containers (kwok)
    statusTemplate: |
      {{ $now := Now }}
      {{ $ann := or .metadata.annotations dict }}
      {{ $code := index $ann "tuneforge.test/exit-code" | default "143" }}
      {{ $reason := index $ann "tuneforge.test/reason"
           | default (ternary "Completed" "Error" (eq $code "0")) }}
      {{ $started := or .status.startTime $now }}
      conditions:
      - lastTransitionTime: {{ $now | Quote }}
        status: "False"
        type: Ready
        reason: PodCompleted
      - lastTransitionTime: {{ $now | Quote }}
        status: "False"
        type: ContainersReady
        reason: PodCompleted
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: false
        started: false
        restartCount: 0
        state:
          terminated:
            exitCode: {{ $code }}
            reason: {{ $reason | Quote }}
            startedAt: {{ $started | Quote }}
            finishedAt: {{ $now | Quote }}
      {{ end }}
      phase: {{ if eq $code "0" }}Succeeded{{ else }}Failed{{ end }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-delete
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'Exists'
    - key: '.status.phase'
      operator: 'NotIn'
      values: ['Pending', 'Running']
    - key: '.metadata.finalizers'
      operator: 'DoesNotExist'
  next:
    delete: true
"""


# --------------------------------------------------------------------------- #
# small helpers                                                               #
# --------------------------------------------------------------------------- #


def _tail(path: Path, lines: int = 40) -> str:
    try:
        data = path.read_bytes()[-64 * 1024 :].decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return "\n".join(data.splitlines()[-lines:])


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the test process
    except Exception:  # pragma: no cover - not Linux, or no libc
        pass


def _wait(
    what: str,
    check: Callable[[], Any],
    timeout: float,
    interval: float = 0.2,
    on_timeout: Callable[[], str] | None = None,
) -> Any:
    """Poll ``check`` until it returns something truthy; raise TestbedError on timeout."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except TestbedError:
            raise
        except Exception as exc:
            last_exc = exc
        if time.monotonic() > deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            detail = ("\n" + on_timeout()) if on_timeout else ""
            raise TestbedError(f"timed out after {timeout:.0f}s waiting for {what}{extra}{detail}")
        time.sleep(interval)


# --------------------------------------------------------------------------- #
# certificates                                                                #
# --------------------------------------------------------------------------- #


def _generate_pki(d: Path) -> None:
    """CA, apiserver serving cert, admin client cert, service-account key pair."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    until = now + datetime.timedelta(days=2)

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def write_key(name: str, k: Any) -> None:
        (d / name).write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        os.chmod(d / name, 0o600)

    def write_cert(name: str, c: x509.Certificate) -> None:
        (d / name).write_bytes(c.public_bytes(serialization.Encoding.PEM))

    def name(cn: str, org: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    ca_key = key()
    ca_name = name("tuneforge-testbed-ca")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write_key("ca.key", ca_key)
    write_cert("ca.crt", ca)

    def leaf(subject: x509.Name, usage: Sequence[Any], sans: Sequence[x509.GeneralName] = ()):
        k = key()
        b = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(list(usage)), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
        )
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        return k, b.sign(ca_key, hashes.SHA256())

    service_ip = next(ipaddress.ip_network(SERVICE_CIDR).hosts())
    k, c = leaf(
        name("kube-apiserver"),
        [ExtendedKeyUsageOID.SERVER_AUTH],
        [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(service_ip),
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes"),
            x509.DNSName("kubernetes.default"),
            x509.DNSName("kubernetes.default.svc"),
            x509.DNSName("kubernetes.default.svc.cluster.local"),
        ],
    )
    write_key("apiserver.key", k)
    write_cert("apiserver.crt", c)

    k, c = leaf(name("tuneforge-testbed-admin", "system:masters"), [ExtendedKeyUsageOID.CLIENT_AUTH])
    write_key("admin.key", k)
    write_cert("admin.crt", c)

    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (d / "sa.key").write_bytes(
        sa.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    os.chmod(d / "sa.key", 0o600)
    (d / "sa.pub").write_bytes(
        sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


# --------------------------------------------------------------------------- #
# the testbed                                                                 #
# --------------------------------------------------------------------------- #


class _Proc:
    def __init__(self, name: str, argv: list[str], log: Path, env: Mapping[str, str]):
        self.name, self.argv, self.log, self.env = name, argv, log, dict(env)
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as f:
            f.write(f"\n==== {time.strftime('%H:%M:%S')} starting: {' '.join(self.argv)}\n".encode())
            f.flush()
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                preexec_fn=_set_pdeathsig if sys.platform.startswith("linux") else None,
            )

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        p = self.popen
        if p is None:
            return
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM if grace > 0 else signal.SIGKILL)
            try:
                p.wait(max(grace, 0.1))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)
        self.popen = None


class K8sTestbed:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok on 127.0.0.1.

    ``bin_dir`` holds the binaries (see :meth:`build`). ``workdir`` defaults to
    a fresh temporary directory, removed by :meth:`stop` unless ``keep_workdir``
    (or the environment variable ``TUNEFORGE_KEEP_TESTBED=1``) is set; logs of
    every component are in ``<workdir>/logs``.
    """

    __test__ = False

    def __init__(
        self,
        bin_dir: str | os.PathLike[str],
        workdir: str | os.PathLike[str] | None = None,
        *,
        keep_workdir: bool | None = None,
        startup_timeout: float = 90.0,
        verbosity: int = 1,
    ) -> None:
        self.bin_dir = Path(bin_dir)
        missing = [b for b in BINARIES if not os.access(self.bin_dir / b, os.X_OK)]
        if missing:
            raise TestbedError(f"missing binaries in {self.bin_dir}: {', '.join(missing)}")
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="tuneforge-k8s-"))
        if keep_workdir is None:
            keep_workdir = os.environ.get("TUNEFORGE_KEEP_TESTBED", "") not in ("", "0")
        self.keep_workdir = keep_workdir
        self.startup_timeout = startup_timeout
        self.verbosity = verbosity
        self.pki_dir = self.workdir / "pki"
        self.log_dir = self.workdir / "logs"
        self.kubeconfig_path = self.workdir / "admin.kubeconfig"
        self.etcd_port = self.etcd_peer_port = self.apiserver_port = 0
        self.kcm_port = self.scheduler_port = self.kwok_port = 0
        self._procs: dict[str, _Proc] = {}
        self._ssl: ssl.SSLContext | None = None
        self.started = False

    # ------------------------------------------------------------------ build
    @staticmethod
    def build(script: str | os.PathLike[str] = BUILD_SCRIPT, timeout: float = 3600.0) -> Path:
        """Run build.sh (a no-op once built) and return the bin dir it prints.

        Raises FileNotFoundError if no Go toolchain can be found, TestbedError
        if the build fails. Build progress goes to this process's stderr.
        """
        if not go_available():
            raise FileNotFoundError("no Go toolchain (go on PATH or /usr/local/go/bin/go)")
        env = dict(os.environ)
        if not shutil.which("go", path=env.get("PATH")) and os.access("/usr/local/go/bin/go", os.X_OK):
            env["PATH"] = "/usr/local/go/bin" + os.pathsep + env.get("PATH", "")
        proc = subprocess.run(
            ["bash", str(script)],
            stdout=subprocess.PIPE,
            stderr=None,  # progress straight to the terminal / CI log
            env=env,
            timeout=timeout,
            check=False,
        )
        out = proc.stdout.decode().strip().splitlines()
        if proc.returncode != 0 or not out:
            raise TestbedError(f"{script} failed with exit code {proc.returncode}")
        return Path(out[-1])

    # ------------------------------------------------------------- lifecycle
    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    def start(self) -> K8sTestbed:
        if self.started:
            return self
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.started = True
        return self

    def __enter__(self) -> K8sTestbed:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self) -> None:
        for d in (self.pki_dir, self.log_dir, self.workdir / "etcd", self.workdir / "certs"):
            d.mkdir(parents=True, exist_ok=True)
        _generate_pki(self.pki_dir)
        self.etcd_port, self.etcd_peer_port = free_port(), free_port()
        self.apiserver_port, self.kcm_port = free_port(), free_port()
        self.scheduler_port, self.kwok_port = free_port(), free_port()
        self._write_kubeconfig()
        (self.workdir / "kwok.yaml").write_text(_POD_STAGES)

        self._define_processes()
        self._launch("etcd")
        _wait("etcd /health", self._etcd_healthy, self.startup_timeout, on_timeout=lambda: self._logs("etcd"))
        self._launch("kube-apiserver")
        self._wait_apiserver()
        for name in ("kube-controller-manager", "kube-scheduler", "kwok"):
            self._launch(name)
        _wait(
            "kube-controller-manager /healthz",
            lambda: self._https_ok(self.kcm_port, "/healthz", "kube-controller-manager"),
            self.startup_timeout,
            on_timeout=lambda: self._logs("kube-controller-manager"),
        )
        _wait(
            "kube-scheduler /healthz",
            lambda: self._https_ok(self.scheduler_port, "/healthz", "kube-scheduler"),
            self.startup_timeout,
            on_timeout=lambda: self._logs("kube-scheduler"),
        )
        _wait(
            "kwok /healthz",
            lambda: self._http_ok(self.kwok_port, "/healthz", "kwok"),
            self.startup_timeout,
            on_timeout=lambda: self._logs("kwok"),
        )
        # The service-account controller runs: namespaces get their default SA.
        _wait(
            "serviceaccount default/default",
            lambda: self.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
            self.startup_timeout,
            on_timeout=lambda: self._logs("kube-controller-manager"),
        )

    def stop(self) -> None:
        """Kill every component (reverse start order); remove the workdir unless kept."""
        for name in reversed(list(self._procs)):
            self._procs[name].stop()
        self.started = False
        if self._own_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def restart_apiserver(self, downtime: float = 0.0, grace: float = 3.0) -> None:
        """Stop kube-apiserver, wait ``downtime`` seconds, start it again on the same port.

        It gets SIGTERM and ``grace`` seconds to exit (its HTTP/2 shutdown can hang
        on open watches), then SIGKILL; ``grace=0`` kills it at once, like a crash.
        Clients see connection errors meanwhile; the data stays in etcd.
        """
        self._procs["kube-apiserver"].stop(grace=grace)
        if downtime:
            time.sleep(downtime)
        self._launch("kube-apiserver")
        self._wait_apiserver()

    def stop_component(self, name: str) -> None:
        """Stop one component (e.g. "kwok" or "kube-controller-manager") until start_component."""
        self._procs[name].stop()

    def start_component(self, name: str) -> None:
        if not self._procs[name].alive():
            self._launch(name)

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def logs(self, lines: int = 40) -> str:
        """The last lines of every component's log."""
        return "\n".join(self._logs(n, lines) for n in self._procs)

    # ----------------------------------------------------------- processes
    def _define_processes(self) -> None:
        p, w = self.pki_dir, self.workdir
        b = self.bin_dir
        kc = str(self.kubeconfig_path)
        v = f"--v={self.verbosity}"
        env = {k: val for k, val in os.environ.items() if not k.startswith("KUBECONFIG")}
        env["HOME"] = str(w)  # kwok & friends must not read the user's ~/.kube or ~/.kwok
        for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            env.pop(proxy, None)
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        etcd_url = f"http://127.0.0.1:{self.etcd_port}"
        peer_url = f"http://127.0.0.1:{self.etcd_peer_port}"
        specs: dict[str, list[str]] = {
            "etcd": [
                str(b / "etcd"),
                "--name=testbed",
                f"--data-dir={w / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=testbed={peer_url}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
            "kube-apiserver": [
                str(b / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={w / 'certs'}",
                f"--tls-cert-file={p / 'apiserver.crt'}",
                f"--tls-private-key-file={p / 'apiserver.key'}",
                f"--client-ca-file={p / 'ca.crt'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={p / 'sa.pub'}",
                f"--service-account-signing-key-file={p / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--endpoint-reconciler-type=none",
                "--authorization-mode=RBAC",
                "--allow-privileged=true",
                "--profiling=false",
                v,
            ],
            "kube-controller-manager": [
                str(b / "kube-controller-manager"),
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.kcm_port}",
                f"--cert-dir={w / 'certs'}",
                f"--service-account-private-key-file={p / 'sa.key'}",
                f"--root-ca-file={p / 'ca.crt'}",
                f"--cluster-signing-cert-file={p / 'ca.crt'}",
                f"--cluster-signing-key-file={p / 'ca.key'}",
                "--controllers=*",
                "--use-service-account-credentials=false",
                "--leader-elect=false",
                "--profiling=false",
                v,
            ],
            "kube-scheduler": [
                str(b / "kube-scheduler"),
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.scheduler_port}",
                f"--cert-dir={w / 'certs'}",
                "--leader-elect=false",
                "--profiling=false",
                v,
            ],
            "kwok": [
                str(b / "kwok"),
                f"--kubeconfig={kc}",
                f"--config={w / 'kwok.yaml'}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION}={FAKE_NODE_VALUE}",
                f"--server-address=127.0.0.1:{self.kwok_port}",
                "--node-ip=127.0.0.1",
                f"--node-port={self.kwok_port}",
                f"--cidr={POD_CIDR}",
                "--node-lease-duration-seconds=40",
                v,
            ],
        }
        self._procs = {name: _Proc(name, argv, self.log_path(name), env) for name, argv in specs.items()}

    def _launch(self, name: str) -> None:
        self._procs[name].start()

    def _check_alive(self, name: str) -> None:
        proc = self._procs[name]
        if not proc.alive():
            state = f"exited with code {proc.popen.returncode}" if proc.popen else "is stopped"
            raise TestbedError(f"{name} {state}:\n{self._logs(name)}")

    def _logs(self, name: str, lines: int = 40) -> str:
        return f"--- {name} log tail ({self.log_path(name)}):\n{_tail(self.log_path(name), lines)}"

    def _etcd_healthy(self) -> bool:
        self._check_alive("etcd")
        conn = http.client.HTTPConnection("127.0.0.1", self.etcd_port, timeout=2)
        try:
            conn.request("GET", "/health")
            resp = conn.getresponse()
            return resp.status == 200 and json.loads(resp.read()).get("health") == "true"
        finally:
            conn.close()

    def _wait_apiserver(self) -> None:
        def ready() -> bool:
            self._check_alive("kube-apiserver")
            status, _ = self.request("GET", "/readyz", timeout=3)
            return status == 200

        _wait(
            "kube-apiserver /readyz",
            ready,
            self.startup_timeout,
            on_timeout=lambda: self._logs("kube-apiserver"),
        )

    def _https_ok(self, port: int, path: str, name: str) -> bool:
        self._check_alive(name)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # self-signed serving cert of the component
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=2, context=ctx)
        try:
            conn.request("GET", path)
            return conn.getresponse().status == 200
        finally:
            conn.close()

    def _http_ok(self, port: int, path: str, name: str) -> bool:
        self._check_alive(name)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", path)
            return conn.getresponse().status == 200
        finally:
            conn.close()

    # ------------------------------------------------------------ kubeconfig
    def _write_kubeconfig(self) -> None:
        def b64(name: str) -> str:
            return base64.b64encode((self.pki_dir / name).read_bytes()).decode()

        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "testbed",
                    "cluster": {"server": self.server, "certificate-authority-data": b64("ca.crt")},
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate-data": b64("admin.crt"),
                        "client-key-data": b64("admin.key"),
                    },
                }
            ],
            "contexts": [{"name": "testbed", "context": {"cluster": "testbed", "user": "admin"}}],
            "current-context": "testbed",
            "preferences": {},
        }
        # JSON is valid YAML: every kubeconfig reader takes it.
        self.kubeconfig_path.write_text(json.dumps(cfg, indent=2))
        os.chmod(self.kubeconfig_path, 0o600)

    # ------------------------------------------------------- raw REST access
    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            ctx = ssl.create_default_context(cafile=str(self.pki_dir / "ca.crt"))
            ctx.load_cert_chain(str(self.pki_dir / "admin.crt"), str(self.pki_dir / "admin.key"))
            self._ssl = ctx
        return self._ssl

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        timeout: float = 10.0,
    ) -> tuple[int, Any]:
        """One admin request to the apiserver; returns (status, decoded JSON or text)."""
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.apiserver_port, timeout=timeout, context=self._ssl_context()
        )
        try:
            headers = {"Accept": "application/json"}
            data = None
            if body is not None:
                data = body if isinstance(body, (bytes, str)) else json.dumps(body)
                headers["Content-Type"] = content_type
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read().decode("utf-8", "replace")
            try:
                return resp.status, json.loads(raw)
            except ValueError:
                return resp.status, raw
        finally:
            conn.close()

    def _ok(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        status, obj = self.request(method, path, body, **kw)
        if status >= 300:
            raise TestbedError(f"{method} {path} -> {status}: {obj}")
        return obj

    # --------------------------------------------------------- test helpers
    def create_namespace(self, name: str, timeout: float = 30.0) -> None:
        """Create a namespace and wait until its default service account exists."""
        status, obj = self.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
        if status not in (201, 409):
            raise TestbedError(f"create namespace {name} -> {status}: {obj}")
        _wait(
            f"serviceaccount {name}/default",
            lambda: self.request("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")[0] == 200,
            timeout,
        )

    def add_gpu_node(
        self,
        name: str,
        gpus: int = 1,
        labels: Mapping[str, str] | None = None,
        *,
        cpu: str = "32",
        memory: str = "256Gi",
        pods: int = 110,
        taints: Sequence[Mapping[str, str]] = (),
        extra_resources: Mapping[str, str] | None = None,
        wait: bool = True,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Create a kwok fake node advertising ``gpus`` x ``nvidia.com/gpu``; wait until Ready.

        ``gpus=0`` makes a CPU-only node. ``taints`` are node taints
        (``{"key":..., "value":..., "effect": "NoSchedule"}``).
        """
        resources = {"cpu": cpu, "memory": memory, "pods": str(pods)}
        if gpus:
            resources[GPU_RESOURCE] = str(gpus)
        resources.update(extra_resources or {})
        node_labels = {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "type": "kwok",
        }
        if gpus:
            node_labels["nvidia.com/gpu.present"] = "true"
            node_labels["nvidia.com/gpu.count"] = str(gpus)
        node_labels.update(labels or {})
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": node_labels,
                "annotations": {
                    FAKE_NODE_ANNOTATION: FAKE_NODE_VALUE,
                    "node.alpha.kubernetes.io/ttl": "0",
                },
            },
            "spec": {"taints": [dict(t) for t in taints]} if taints else {},
            "status": {"capacity": resources, "allocatable": resources},
        }
        self._ok("POST", "/api/v1/nodes", node)
        # Status on create is kept for nodes, but patch it too so the GPUs are there for sure.
        self._ok(
            "PATCH",
            f"/api/v1/nodes/{name}/status",
            {"status": {"capacity": resources, "allocatable": resources}},
            content_type="application/merge-patch+json",
        )
        if wait:
            _wait(
                f"node {name} Ready",
                lambda: self._node_ready(name),
                timeout,
                on_timeout=lambda: self._logs("kwok"),
            )
        return self._ok("GET", f"/api/v1/nodes/{name}")

    def _node_ready(self, name: str) -> bool:
        self._check_alive("kwok")
        node = self._ok("GET", f"/api/v1/nodes/{name}")
        conds = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
        taints = [t.get("key") for t in node.get("spec", {}).get("taints", []) or []]
        return conds.get("Ready") == "True" and "node.kubernetes.io/not-ready" not in taints

    def delete_node(self, name: str) -> None:
        status, obj = self.request("DELETE", f"/api/v1/nodes/{name}")
        if status not in (200, 202, 404):
            raise TestbedError(f"delete node {name} -> {status}: {obj}")

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        return self._ok("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")

    def wait_pod_phase(
        self, namespace: str, name: str, phases: str | Sequence[str], timeout: float = 30.0
    ) -> dict[str, Any]:
        """Wait until the pod is in one of ``phases``; return the pod."""
        want = {phases} if isinstance(phases, str) else set(phases)

        def check() -> dict[str, Any] | None:
            pod = self.get_pod(namespace, name)
            return pod if pod.get("status", {}).get("phase") in want else None

        return _wait(
            f"pod {namespace}/{name} phase in {sorted(want)}",
            check,
            timeout,
            on_timeout=lambda: self._describe_pod(namespace, name),
        )

    def _describe_pod(self, namespace: str, name: str) -> str:
        status, pod = self.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
        if status != 200 or not isinstance(pod, dict):
            return f"pod {namespace}/{name}: {status} {pod}"
        return f"pod {namespace}/{name} status: {json.dumps(pod.get('status', {}))[:2000]}\n" + self._logs(
            "kwok", 15
        )

    def finish_pod(
        self,
        namespace: str,
        name: str,
        exit_code: int,
        reason: str | None = None,
        message: str | None = None,
        *,
        wait: bool = True,
        timeout: float = 30.0,
    ) -> dict[str, Any] | None:
        """End a pod on a fake node: every container terminates with ``exit_code``.

        The pod goes Succeeded (0) or Failed (other codes); ``reason`` defaults to
        ``Completed``/``Error`` (use e.g. ``"OOMKilled"`` with 137). The pod must
        be bound to a kwok node; if it is not Running yet it finishes as soon as
        it runs. With ``wait`` (default) returns the terminal pod.
        """
        annotations = {EXIT_CODE_ANNOTATION: str(int(exit_code))}
        if reason is not None:
            annotations[REASON_ANNOTATION] = reason
        if message is not None:
            annotations[MESSAGE_ANNOTATION] = message
        self._ok(
            "PATCH",
            f"/api/v1/namespaces/{namespace}/pods/{name}",
            {"metadata": {"annotations": annotations}},
            content_type="application/merge-patch+json",
        )
        if not wait:
            return None
        return self.wait_pod_phase(namespace, name, ("Succeeded", "Failed"), timeout)

    def patch_pod_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        """Strategic-merge-patch ``pods/status`` directly (conditions merge by type)."""
        return self._ok(
            "PATCH",
            f"/api/v1/namespaces/{namespace}/pods/{name}/status",
            {"status": dict(status)},
            content_type="application/strategic-merge-patch+json",
        )


def go_available() -> bool:
    """True if a Go toolchain is on PATH or at /usr/local/go/bin/go."""
    return bool(shutil.which("go")) or os.access("/usr/local/go/bin/go", os.X_OK)
