"""A real Kubernetes control plane for the lab: etcd, kube-apiserver, kube-controller-manager, KWOK.

Every component runs as a child process on loopback, with its own free ports, certificates and
data under one work folder, so that several control planes (one per test worker) can run side by
side. KWOK plays the kubelet of every Node with the stages in ``isolator/lab/stages``.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import logging
import shutil
import ssl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import aiohttp
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from isolator.clock import Clock, SystemClock
from isolator.lab.cluster import KUBELET_LABEL, KUBELET_STOPPED
from isolator.lab.monitoring import free_port
from isolator.lab.process import ManagedProcess, ProcessFailedError, log_tail

logger = logging.getLogger(__name__)

STAGES_DIR = Path(__file__).parent / "stages"

# The two ranges must not overlap: Service ClusterIPs come from the first, KWOK hands out Pod IPs
# from the second. Neither is routed anywhere; the lab's own networks use 198.18.0.0/15.
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.0.0.0/16"

ADMIN_USER = "isolator-lab-admin"
CLUSTER_NAME = "isolator-lab"

# Build timeout: a cold build of all four binaries takes 15-25 minutes on 2 cores (estimate).
BUILD_TIMEOUT_S = 3600.0
READY_TIMEOUT_S = 90.0
POLL_INTERVAL_S = 0.1
CERT_VALIDITY = datetime.timedelta(days=30)


def locate_binaries(repo_root: Path) -> Path:
    """Build or find the control-plane binaries with ``controlplane/build.sh``.

    Returns the folder of the binaries. The script honours ISOLATOR_BIN_DIR and caches builds
    by version, so a warm call returns at once. Its progress lines go straight to this process's
    standard error.
    """
    script = repo_root / "controlplane" / "build.sh"
    # A build script is not a lab service, so it runs to completion here instead of under
    # ManagedProcess. Its stdout carries the result and its stderr streams to the caller.
    try:
        result = subprocess.run(
            [str(script)],
            stdout=subprocess.PIPE,
            stderr=None,
            stdin=subprocess.DEVNULL,
            check=False,
            timeout=BUILD_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as err:
        raise ProcessFailedError(f"{script} timed out after {BUILD_TIMEOUT_S:.0f} s") from err
    output = result.stdout.decode(errors="replace").strip()
    if result.returncode != 0 or not output:
        raise ProcessFailedError(
            f"{script} failed with code {result.returncode}; its progress is on standard error"
        )
    bin_dir = Path(output.splitlines()[-1])
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kwok"):
        if not (bin_dir / name).is_file():
            raise ProcessFailedError(f"{script} printed {bin_dir}, which has no {name}")
    return bin_dir


@dataclass
class ControlPlaneOptions:
    """Options of the lab control plane: extra controllers, KWOK's Lease timing and cleanup."""

    # Adds the upstream node lifecycle controller, to measure its behaviour side by side with
    # the isolator's. It marks Pods NotReady once a Node's Lease is older than the grace period.
    node_lifecycle_controller: bool = False
    # The controller's --node-monitor-grace-period in seconds. 50 s is the default of
    # kube-controller-manager 1.37.
    node_monitor_grace_period_s: int = 50
    # KWOK's --node-lease-duration-seconds. KWOK renews each Lease every quarter of this
    # duration, as the kubelet does, so 10 s means a renewal every 2.5 s. The kubelet's own
    # default is 40 s (a renewal every 10 s).
    kwok_node_lease_seconds: int = 10
    # Deletes the whole work folder, logs included, when the control plane stops.
    remove_work_dir: bool = False
    # Extra kube-apiserver flags, such as "--audit-log-path=...", appended last.
    extra_apiserver_flags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("node_monitor_grace_period_s", "kwok_node_lease_seconds"):
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value}")


# --- certificates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pair:
    """A PEM certificate and its PEM private key."""

    cert_pem: bytes
    key_pem: bytes


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256 keys take about a millisecond to make, against tens of milliseconds for RSA-2048,
    # and every Kubernetes component accepts them, service account tokens (ES256) included.
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        # An hour of slack lets a client whose clock is slightly behind accept the certificate.
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + CERT_VALIDITY)
    )


class _CertificateAuthority:
    """A self-signed CA that signs the API server's serving certificate and client certificates."""

    def __init__(self) -> None:
        self._key = _new_key()
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{CLUSTER_NAME}-ca")])
        self.cert = (
            _cert_builder(self._name, self._name, self._key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
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
            .sign(self._key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue_server(self, common_name: str, dns_names: list[str], ips: list[str]) -> _Pair:
        """Sign a serving certificate for the given DNS names and IP addresses."""
        san: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
        san += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        return self._issue(common_name, [], ExtendedKeyUsageOID.SERVER_AUTH, san)

    def issue_client(self, user: str, groups: list[str]) -> _Pair:
        """Sign a client certificate; the API server reads CN as the user and O as the groups."""
        return self._issue(user, groups, ExtendedKeyUsageOID.CLIENT_AUTH, [])

    def _issue(
        self,
        common_name: str,
        organizations: list[str],
        usage: x509.ObjectIdentifier,
        san: list[x509.GeneralName],
    ) -> _Pair:
        key = _new_key()
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        attributes += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
        builder = (
            _cert_builder(x509.Name(attributes), self._name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return _Pair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_bytes(data)


def _kubeconfig(server_url: str, ca_pem: bytes, user: str, client: _Pair) -> str:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CLUSTER_NAME,
                "cluster": {"server": server_url, "certificate-authority-data": b64(ca_pem)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(client.cert_pem),
                    "client-key-data": b64(client.key_pem),
                },
            }
        ],
        "contexts": [{"name": user, "context": {"cluster": CLUSTER_NAME, "user": user}}],
        "current-context": user,
    }
    return yaml.safe_dump(document, sort_keys=False)


def _free_ports(count: int) -> list[int]:
    """Return distinct loopback TCP ports that were free a moment ago.

    NOTE: another process can take a port between this call and the server's bind. The start
    then fails with the server's "address already in use" in the ProcessFailedError.
    """
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


# --- the control plane --------------------------------------------------------------------------


class ControlPlane:
    """etcd, kube-apiserver, kube-controller-manager and KWOK as child processes.

    Use it as an async context manager, or call ``start`` and ``stop``. A failed ``start`` stops
    what it started before it raises. Logs go to ``work_dir/logs/<name>.log``.
    """

    def __init__(
        self,
        work_dir: Path,
        bin_dir: Path,
        options: ControlPlaneOptions | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.work_dir = work_dir
        self.bin_dir = bin_dir
        self.options = options or ControlPlaneOptions()
        self._clock = clock or SystemClock()
        self._processes: list[ManagedProcess] = []
        self._ca: _CertificateAuthority | None = None
        self._server_url: str | None = None
        # Seconds from the call of start() to each milestone, for start-time measurements.
        self.start_timings: dict[str, float] = {}

    @property
    def server_url(self) -> str:
        """The API server's URL, https://127.0.0.1:<port>, known once ``start`` has begun."""
        if self._server_url is None:
            raise RuntimeError("the control plane has not been started")
        return self._server_url

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig: a client certificate in the group system:masters."""
        return self.work_dir / "kubeconfig" / "admin.yaml"

    @property
    def logs_dir(self) -> Path:
        return self.work_dir / "logs"

    @property
    def pids(self) -> list[int]:
        """Process ids of the children that this control plane owns until ``stop``."""
        return [p.pid for p in self._processes if p.pid is not None]

    def user_kubeconfig(self, user: str, groups: list[str]) -> Path:
        """Write a kubeconfig with a client certificate for ``user`` in ``groups`` and return it.

        The identity has no rights until RBAC grants them, which makes it the tool for
        least-privilege tests.
        """
        if self._ca is None:
            raise RuntimeError("the control plane has not been started")
        path = self.work_dir / "kubeconfig" / f"{user.replace(':', '_')}.yaml"
        client = self._ca.issue_client(user, groups)
        _write_private(path, _kubeconfig(self.server_url, self._ca.cert_pem, user, client).encode())
        return path

    async def __aenter__(self) -> ControlPlane:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start every component and wait until the API serves the namespace "default".

        Raises ProcessFailedError with the log tail of the component that exited or never
        became ready. Every process is stopped before the error propagates.
        """
        if self._processes:
            raise RuntimeError("the control plane was already started")
        started_at = self._clock.monotonic()
        try:
            await self._start(started_at)
        except BaseException:
            await self.stop()
            raise
        logger.info(
            "control plane started",
            extra={"server": self.server_url, "seconds": round(self.start_timings["ready"], 2)},
        )

    async def _start(self, started_at: float) -> None:
        etcd_port, etcd_peer_port, api_port, kwok_port = _free_ports(4)
        self._server_url = f"https://127.0.0.1:{api_port}"
        pki = self.work_dir / "pki"
        self._write_pki(pki)
        self._mark("certificates", started_at)

        self._launch("etcd", self._etcd_argv(etcd_port, etcd_peer_port))
        self._launch("kube-apiserver", self._apiserver_argv(pki, api_port, etcd_port))
        await self._wait_api_ready()
        self._mark("apiserver", started_at)

        # The controller manager waits only briefly for a healthy API server, and KWOK needs
        # one to list Nodes, so both start once the API server is ready.
        self._launch("kube-controller-manager", self._controller_manager_argv())
        self._launch("kwok", self._kwok_argv(kwok_port))
        await self._wait_http_ok(f"http://127.0.0.1:{kwok_port}/healthz", "kwok")
        await self._wait_api_ok("/api/v1/namespaces/default", "namespace default")
        self._mark("ready", started_at)

    async def stop(self) -> None:
        """Stop every process, newest first, and remove the work folder if the options ask.

        Safe to call twice and after a failed start.
        """
        processes, self._processes = self._processes, []
        await asyncio.to_thread(_stop_all, processes)
        if self.options.remove_work_dir:
            await asyncio.to_thread(shutil.rmtree, self.work_dir, True)
        if processes:
            logger.info("control plane stopped", extra={"work_dir": str(self.work_dir)})

    # --- start helpers ---------------------------------------------------------------------------

    def _mark(self, milestone: str, started_at: float) -> None:
        self.start_timings[milestone] = self._clock.monotonic() - started_at

    def _write_pki(self, pki: Path) -> None:
        self._ca = _CertificateAuthority()
        _write_private(pki / "ca.crt", self._ca.cert_pem)
        serving = self._ca.issue_server(
            "kube-apiserver",
            ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"],
            ["127.0.0.1"],
        )
        _write_private(pki / "apiserver.crt", serving.cert_pem)
        _write_private(pki / "apiserver.key", serving.key_pem)
        service_account_key = _new_key()
        _write_private(pki / "service-account.key", _key_pem(service_account_key))
        public_pem = service_account_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        _write_private(pki / "service-account.pub", public_pem)
        admin = self._ca.issue_client(ADMIN_USER, ["system:masters"])
        _write_private(pki / "admin.crt", admin.cert_pem)
        _write_private(pki / "admin.key", admin.key_pem)
        kubeconfig = _kubeconfig(self.server_url, self._ca.cert_pem, ADMIN_USER, admin)
        _write_private(self.kubeconfig, kubeconfig.encode())

    def _launch(self, name: str, argv: list[str]) -> None:
        process = ManagedProcess(name, argv, self.logs_dir / f"{name}.log", cwd=self.work_dir)
        self._processes.append(process)
        process.start()

    def _etcd_argv(self, port: int, peer_port: int) -> list[str]:
        client_url = f"http://127.0.0.1:{port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        return [
            str(self.bin_dir / "etcd"),
            "--name=lab",
            f"--data-dir={self.work_dir / 'etcd'}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=lab={peer_url}",
            # The data is thrown away after the run, so durability buys nothing here.
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ]

    def _apiserver_argv(self, pki: Path, port: int, etcd_port: int) -> list[str]:
        return [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=RBAC",
            "--anonymous-auth=false",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={pki / 'service-account.pub'}",
            f"--service-account-signing-key-file={pki / 'service-account.key'}",
            # No service account controller runs, so no Pod could get its token.
            "--disable-admission-plugins=ServiceAccount",
            # 1.37 rejects a loopback advertise address with the default "lease" reconciler.
            "--endpoint-reconciler-type=none",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--profiling=false",
            *self.options.extra_apiserver_flags,
        ]

    def _controller_manager_argv(self) -> list[str]:
        controllers = ["endpoints-controller", "endpointslice-controller"]
        argv = [
            str(self.bin_dir / "kube-controller-manager"),
            f"--kubeconfig={self.kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            # Port 0 turns off the controller manager's own HTTPS endpoint, which nothing reads.
            "--secure-port=0",
        ]
        if self.options.node_lifecycle_controller:
            controllers.append("node-lifecycle-controller")
            argv.append(f"--node-monitor-grace-period={self.options.node_monitor_grace_period_s}s")
        argv.append(f"--controllers={','.join(controllers)}")
        return argv

    def _stage_files(self) -> list[Path]:
        # Without the node lifecycle controller, the "node down" stage plays its part too and
        # marks the Node Unknown at once. With the controller, the Node only falls silent.
        node_down = (
            "node-down-silent.yaml" if self.options.node_lifecycle_controller else "node-down.yaml"
        )
        return [STAGES_DIR / name for name in ("node.yaml", node_down, "pod.yaml")]

    def _kwok_argv(self, port: int) -> list[str]:
        stages = self._stage_files()
        return [
            str(self.bin_dir / "kwok"),
            f"--kubeconfig={self.kubeconfig}",
            # Not --manage-all-nodes: the "node down" stages let a Node go by labelling it.
            f"--manage-nodes-with-label-selector={KUBELET_LABEL}!={KUBELET_STOPPED}",
            *(f"--config={stage}" for stage in stages),
            f"--server-address=127.0.0.1:{port}",
            f"--node-lease-duration-seconds={self.options.kwok_node_lease_seconds}",
            f"--cidr={POD_CIDR}",
        ]

    # --- readiness --------------------------------------------------------------------------------

    def _check_processes(self) -> None:
        for process in self._processes:
            process.check_running()

    def _admin_ssl_context(self) -> ssl.SSLContext:
        pki = self.work_dir / "pki"
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(pki / "admin.crt", pki / "admin.key")
        return context

    async def _wait_api_ready(self) -> None:
        await self._wait_api_ok("/readyz", "kube-apiserver /readyz")

    async def _wait_api_ok(self, path: str, what: str) -> None:
        await self._poll_until_ok(self.server_url + path, what, self._admin_ssl_context())

    async def _wait_http_ok(self, url: str, what: str) -> None:
        await self._poll_until_ok(url, what, None)

    async def _poll_until_ok(self, url: str, what: str, context: ssl.SSLContext | None) -> None:
        """Poll ``url`` until it returns 200, a process exits, or READY_TIMEOUT_S passes."""
        deadline = self._clock.monotonic() + READY_TIMEOUT_S
        timeout = aiohttp.ClientTimeout(total=2.0)
        last_error = "no answer yet"
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                self._check_processes()
                try:
                    async with session.get(url, ssl=context if context else False) as response:
                        if response.status == 200:
                            return
                        last_error = f"HTTP {response.status}: {(await response.text())[:300]}"
                except (aiohttp.ClientError, TimeoutError) as err:
                    last_error = f"{type(err).__name__}: {err}"
                if self._clock.monotonic() > deadline:
                    raise ProcessFailedError(self._not_ready_message(what, last_error))
                await self._clock.sleep(POLL_INTERVAL_S)

    def _not_ready_message(self, what: str, last_error: str) -> str:
        tails = "\n".join(
            f"--- last lines of {p.log_path}:\n{log_tail(p.log_path)}" for p in self._processes
        )
        return f"{what} not ready after {READY_TIMEOUT_S:.0f} s ({last_error})\n{tails}"


def _stop_all(processes: list[ManagedProcess]) -> None:
    # Newest first: clients go before the API server, and the API server before etcd.
    for process in reversed(processes):
        process.stop()
