"""A real Kubernetes control plane on this machine: etcd, kube-apiserver, controller-manager,
scheduler, started from binaries built by ``.ci/controlplane/build``.

No kubelet runs here, so no pod ever runs on this control plane: pods stay ``Pending``.
What it serves is the real API: server-side apply with real ``managedFields``, CRDs
through apiextensions with their schemas, validation (422), admission, RBAC, and the
real controllers (Deployment -> ReplicaSet, namespaces, garbage collection,
EndpointSlices, service-account tokens).

Everything is on loopback: etcd (TLS, client certificates), the apiserver (TLS, client
certificates, RBAC on, service-account keys), the controller-manager and scheduler
(their health ports). Ports are chosen free at each start. Certificates are made here
with ``cryptography`` (one CA for all; EC P-256 keys) and kept in the folder, so
kubeconfigs written earlier stay valid across restarts except for the server port.

Identities (client certificates signed by the CA):

- ``admin.kubeconfig``: ``slipway-admin`` in ``system:masters`` (bypasses RBAC; for
  bootstrap and for tests that set up other identities);
- ``kubeconfig``: ``slipway``, bound to ``cluster-admin`` by a ClusterRoleBinding, i.e.
  through RBAC like a real cluster's deploy identity;
- :meth:`ControlPlane.write_kubeconfig` makes any other (a restricted identity).

Layout of the folder (default ``$SLIPWAY_HOME/controlplane``): ``pki/``, ``etcd-data/``,
``logs/<component>.log``, ``state.json`` (pids and URLs), the kubeconfigs.

Example:
    ```python
    plane = start_control_plane(Path("/tmp/cp"))
    print(plane.api_url, plane.kubeconfig)
    plane.stop()
    ```
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from slipway.exceptions import ConfigError, RemoteUnavailable
from slipway.local_cluster import _alive, _free_port, _tail
from slipway.workspace import slipway_home

# Keep in step with .ci/controlplane/{kubernetes,etcd}/go.mod (a test checks it).
KUBERNETES_VERSION = "v1.34.4"
ETCD_VERSION = "v3.6.16"
BUILD_SCRIPT = ".ci/controlplane/build"
KUBE_COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
COMPONENTS = ("etcd", *KUBE_COMPONENTS)
# No node IPAM or node lifecycle: there are no nodes (no kubelet can run here).
CONTROLLERS = "*,-nodeipam,-nodelifecycle"
SERVICE_CIDR = "10.96.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
START_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 15.0
SLIPWAY_USER = "slipway"
ADMIN_USER = "slipway-admin"
CERT_DAYS = 365

Log = Callable[[str], None]


def binaries_dir(cache: Path | None = None) -> dict[str, Path]:
    """Where ``.ci/controlplane/build`` puts each component's binary."""
    base = cache or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    tools = base / "slipway-tools"
    found = {name: tools / f"kubernetes-{KUBERNETES_VERSION}" / name for name in KUBE_COMPONENTS}
    return {"etcd": tools / f"etcd-{ETCD_VERSION}" / "etcd", **found}


def missing_binaries(binaries: Mapping[str, Path] | None = None) -> list[Path]:
    """The component binaries that are not built (empty: all four are there)."""
    paths = binaries or binaries_dir()
    return [path for path in paths.values() if not os.access(path, os.X_OK)]


def require_binaries(binaries: Mapping[str, Path] | None = None) -> dict[str, Path]:
    """The four binaries; ConfigError naming the missing ones and the build script."""
    paths = dict(binaries or binaries_dir())
    missing = missing_binaries(paths)
    if missing:
        raise ConfigError(
            "the Kubernetes control plane is not built: missing "
            + ", ".join(str(path) for path in missing)
            + f"; build it once with {BUILD_SCRIPT} (about 25 min on 2 cores, cached by version)"
        )
    return paths


@dataclass
class ControlPlane:
    """A running control plane. ``ready_seconds`` says how long each component took, from
    the start of :func:`start_control_plane` until it answered healthy."""

    folder: Path
    api_url: str
    kubeconfig: Path
    admin_kubeconfig: Path
    pids: dict[str, int]
    ready_seconds: dict[str, float] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    def write_kubeconfig(self, path: Path, user: str, groups: Sequence[str] = ()) -> Path:
        """A kubeconfig for a new identity: a client certificate for ``user`` in ``groups``
        (what it may do is up to RBAC: bind roles to it)."""
        pki = _Pki(self.folder / "pki")
        # its own file prefix: never the components' own certificates (user-*)
        key, cert = pki.issue(f"identity-{user}", user, groups, client=True, overwrite=True)
        _write_kubeconfig(path, self.api_url, pki.ca_cert_path, cert, key, user)
        return path

    def rss_bytes(self) -> dict[str, int]:
        """Resident memory of each component's process (0 when it is gone)."""
        return {name: _rss(pid) for name, pid in self.pids.items()}

    def stop(self) -> None:
        """Stop every component: SIGTERM to its process group, SIGKILL after a while."""
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            _signal_group(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(STOP_TIMEOUT_SECONDS)
            _signal_group(proc.pid, signal.SIGKILL)  # and anything it left in its group
            proc.wait()
        stop_components({k: v for k, v in self.pids.items() if k not in self.procs})
        (self.folder / "state.json").unlink(missing_ok=True)


def start_control_plane(
    folder: Path | None = None,
    *,
    binaries: Mapping[str, Path] | None = None,
    timeout: float = START_TIMEOUT_SECONDS,
    log: Log = print,
) -> ControlPlane:
    """Start etcd, kube-apiserver, kube-controller-manager and kube-scheduler; wait until
    each answers healthy; bind ``slipway`` to ``cluster-admin``.

    A control plane still running from this folder (``state.json``) is stopped first.

    Raises:
        ConfigError: a binary is missing (the message names the build script).
        RemoteUnavailable: a component exited or did not become healthy in ``timeout``
            seconds; the message names it and shows its last log lines. Whatever had
            started is stopped.
    """
    paths = require_binaries(binaries)
    folder = (folder or slipway_home() / "controlplane").resolve()
    for sub in ("pki", "logs", "etcd-data"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(folder / "etcd-data", 0o700)  # etcd refuses a data dir others can read
    stop_control_plane(folder)
    pki = _Pki(folder / "pki")
    files = pki.ensure()
    ports = {name: _free_port() for name in ("etcd", "etcd-peer", *KUBE_COMPONENTS)}
    api_url = f"https://127.0.0.1:{ports['kube-apiserver']}"
    kubeconfigs = {  # whose certificate (pki.ensure() names the users) -> where
        "admin": folder / "admin.kubeconfig",
        "slipway": folder / "kubeconfig",
        "kube-controller-manager": folder / "controller-manager.kubeconfig",
        "kube-scheduler": folder / "scheduler.kubeconfig",
    }
    for name, path in kubeconfigs.items():
        key, cert = files[f"user-{name}"]
        _write_kubeconfig(path, api_url, pki.ca_cert_path, cert, key, name)
    argv = _argv(paths, folder, files, ports, pki, kubeconfigs)
    start = time.monotonic()
    pids: dict[str, int] = {}
    plane = ControlPlane(folder, api_url, kubeconfigs["slipway"], kubeconfigs["admin"], pids)
    try:
        for name in COMPONENTS:
            proc = _spawn(argv[name], folder / "logs" / f"{name}.log")
            plane.procs[name] = proc
            pids[name] = proc.pid
            _write_state(folder, plane)
            _wait_healthy(name, proc, _health_url(name, ports), pki, folder, start, timeout)
            plane.ready_seconds[name] = round(time.monotonic() - start, 2)
            log(f"controlplane: {name} healthy after {plane.ready_seconds[name]:.1f} s")
        _bind_slipway(api_url, pki)
    except BaseException:
        plane.stop()
        raise
    log(
        f"controlplane: Kubernetes {KUBERNETES_VERSION} at {api_url} (real apiserver; no "
        f"nodes, pods stay Pending); kubeconfig {plane.kubeconfig}; state in {folder}"
    )
    return plane


def stop_control_plane(folder: Path) -> bool:
    """Stop a control plane started from ``folder`` (by its ``state.json``); True when
    something was running."""
    try:
        state = json.loads((folder / "state.json").read_text())
        pids = {str(k): int(v) for k, v in state["pids"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    running = stop_components(pids, marker=str(folder))
    (folder / "state.json").unlink(missing_ok=True)
    return running


def stop_components(pids: Mapping[str, int], marker: str = "") -> bool:
    """SIGTERM each component's process group (the last started first), wait, SIGKILL
    what is left. ``marker``: only processes whose command line contains it (a pid read
    from a file may have been reused)."""
    running = False
    for name in reversed(list(pids)):
        pid = pids[name]
        if not _alive(pid, marker or name):
            continue
        running = True
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while time.monotonic() < deadline and _alive(pid, marker or name):
            _reap(pid)
            time.sleep(0.05)
        _signal_group(pid, signal.SIGKILL)
        _reap(pid)
    return running


# --- command lines -----------------------------------------------------------------------------


def _argv(
    paths: Mapping[str, Path],
    folder: Path,
    files: Mapping[str, tuple[Path, Path]],
    ports: Mapping[str, int],
    pki: _Pki,
    kubeconfigs: Mapping[str, Path],
) -> dict[str, list[str]]:
    ca = str(pki.ca_cert_path)
    etcd_key, etcd_cert = files["etcd-server"]
    api_key, api_cert = files["kube-apiserver"]
    client_key, client_cert = files["user-apiserver-etcd-client"]
    sa_key, sa_pub = pki.service_account_paths
    etcd_url = f"https://127.0.0.1:{ports['etcd']}"
    peer_url = f"http://127.0.0.1:{ports['etcd-peer']}"

    def component(name: str) -> list[str]:
        kubeconfig = str(kubeconfigs[name])
        return [
            str(paths[name]),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports[name]}",
            f"--cert-dir={folder / 'pki' / name}",
            "--leader-elect=false",
        ]

    return {
        "etcd": [
            str(paths["etcd"]),
            "--name=slipway",
            f"--data-dir={folder / 'etcd-data'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=slipway={peer_url}",
            f"--cert-file={etcd_cert}",
            f"--key-file={etcd_key}",
            f"--trusted-ca-file={ca}",
            "--client-cert-auth",
            "--listen-metrics-urls=",
            "--log-level=warn",
        ],
        "kube-apiserver": [
            str(paths["kube-apiserver"]),
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={ports['kube-apiserver']}",
            f"--etcd-servers={etcd_url}",
            f"--etcd-cafile={ca}",
            f"--etcd-certfile={client_cert}",
            f"--etcd-keyfile={client_key}",
            f"--client-ca-file={ca}",
            f"--tls-cert-file={api_cert}",
            f"--tls-private-key-file={api_key}",
            "--authorization-mode=RBAC",
            "--anonymous-auth=false",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={sa_pub}",
            f"--service-account-signing-key-file={sa_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--cert-dir={folder / 'pki' / 'kube-apiserver'}",
            "--profiling=false",
        ],
        "kube-controller-manager": [
            *component("kube-controller-manager"),
            f"--controllers={CONTROLLERS}",
            f"--root-ca-file={ca}",
            f"--service-account-private-key-file={sa_key}",
            "--use-service-account-credentials=true",
            f"--cluster-signing-cert-file={ca}",
            f"--cluster-signing-key-file={pki.ca_key_path}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
        ],
        "kube-scheduler": component("kube-scheduler"),
    }


def _health_url(name: str, ports: Mapping[str, int]) -> str:
    if name == "etcd":
        return f"https://127.0.0.1:{ports['etcd']}/health"
    if name == "kube-apiserver":
        return f"https://127.0.0.1:{ports[name]}/readyz"
    return f"https://127.0.0.1:{ports[name]}/healthz"


# --- processes ---------------------------------------------------------------------------------


def _spawn(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as output:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as one
        )


def _wait_healthy(
    name: str,
    proc: subprocess.Popen[bytes],
    url: str,
    pki: _Pki,
    folder: Path,
    start: float,
    timeout: float,
) -> None:
    context = pki.client_context()
    if name in ("kube-controller-manager", "kube-scheduler"):
        # they serve /healthz with a self-signed certificate of their own (--cert-dir)
        context = ssl._create_unverified_context()  # noqa: S323 - loopback health check only
    last = "no answer yet"
    while time.monotonic() - start < timeout:
        # the Popen, not /proc/<pid>/cmdline: right after exec the kernel may not have set
        # the new command line yet, and a busy machine makes that window long
        code = proc.poll()
        if code is not None:
            how = (
                f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
            )
            raise RemoteUnavailable(_failure(name, how, folder))
        try:
            with urllib.request.urlopen(url, timeout=3, context=context) as answer:
                if answer.status == 200:
                    return
                last = f"HTTP {answer.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read()[-300:].decode(errors='replace')}"
        except (urllib.error.URLError, OSError) as exc:
            last = type(getattr(exc, "reason", exc)).__name__
        time.sleep(0.1)
    raise RemoteUnavailable(
        _failure(name, f"was not healthy after {timeout:.0f} s ({url}: {last})", folder)
    )


def _failure(name: str, what: str, folder: Path) -> str:
    log = folder / "logs" / f"{name}.log"
    return f"control plane: {name} {what}; last lines of {log}:\n{_tail(log)}"


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _write_state(folder: Path, plane: ControlPlane) -> None:
    state = {"api_url": plane.api_url, "pids": plane.pids, "kubeconfig": str(plane.kubeconfig)}
    partial = folder / ".state.json.partial"
    partial.write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")
    os.replace(partial, folder / "state.json")


def _bind_slipway(api_url: str, pki: _Pki) -> None:
    """ClusterRoleBinding ``slipway`` -> ``cluster-admin`` (RBAC, not system:masters)."""
    body = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "slipway-cluster-admin"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin",
        },
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": SLIPWAY_USER}
        ],
    }  # fmt: skip
    request = urllib.request.Request(
        f"{api_url}/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10, context=pki.client_context()):
            pass
    except urllib.error.HTTPError as exc:
        if exc.code != 409:  # already bound (a restart on the same etcd data)
            detail = exc.read()[:300].decode(errors="replace")
            raise RemoteUnavailable(
                f"control plane: binding {SLIPWAY_USER} to cluster-admin failed: "
                f"HTTP {exc.code}: {detail}"
            ) from None


# --- certificates ------------------------------------------------------------------------------


class _Pki:
    """One CA and the certificates signed by it, as PEM files in ``folder`` (made once)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca_cert_path = folder / "ca.crt"
        self.ca_key_path = folder / "ca.key"
        self.service_account_paths = (folder / "sa.key", folder / "sa.pub")

    def ensure(self) -> dict[str, tuple[Path, Path]]:
        """Every key and certificate the components need: name -> (key, cert)."""
        if not (self.ca_cert_path.exists() and self.ca_key_path.exists()):
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "slipway-local-ca")])
            cert = (
                _builder(name, name, key.public_key())
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(
                    x509.KeyUsage(
                        digital_signature=True,
                        key_cert_sign=True,
                        crl_sign=True,
                        content_commitment=False,
                        key_encipherment=False,
                        data_encipherment=False,
                        key_agreement=False,
                        encipher_only=False,
                        decipher_only=False,
                    ),
                    critical=True,
                )  # fmt: skip
                .sign(key, hashes.SHA256())
            )
            _write_key(self.ca_key_path, key)
            self.ca_cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        sa_key, sa_pub = self.service_account_paths
        if not (sa_key.exists() and sa_pub.exists()):
            key = ec.generate_private_key(ec.SECP256R1())
            _write_key(sa_key, key)
            sa_pub.write_bytes(
                key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
        hosts = ["127.0.0.1", "localhost", "kubernetes", "kubernetes.default",
                 "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
                 str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))]  # fmt: skip
        return {
            "etcd-server": self.issue("etcd-server", "etcd", (), hosts=["127.0.0.1", "localhost"]),
            "kube-apiserver": self.issue("kube-apiserver", "kube-apiserver", (), hosts=hosts),
            "user-apiserver-etcd-client": self.issue(
                "user-apiserver-etcd-client", "kube-apiserver-etcd-client", (), client=True
            ),
            "user-admin": self.issue("user-admin", ADMIN_USER, ["system:masters"], client=True),
            "user-slipway": self.issue("user-slipway", SLIPWAY_USER, (), client=True),
            "user-kube-controller-manager": self.issue(
                "user-kube-controller-manager", "system:kube-controller-manager", (), client=True
            ),
            "user-kube-scheduler": self.issue(
                "user-kube-scheduler", "system:kube-scheduler", (), client=True
            ),
        }

    def issue(
        self,
        name: str,
        common_name: str,
        groups: Sequence[str],
        *,
        hosts: Sequence[str] = (),
        client: bool = False,
        overwrite: bool = False,
    ) -> tuple[Path, Path]:
        """``name.key`` and ``name.crt``, signed by the CA: a client certificate (CN the
        user, O the groups, as the apiserver reads them) or a server one for ``hosts``."""
        key_path, cert_path = self.folder / f"{name}.key", self.folder / f"{name}.crt"
        if key_path.exists() and cert_path.exists() and not overwrite:
            return key_path, cert_path
        ca_key = serialization.load_pem_private_key(self.ca_key_path.read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(self.ca_cert_path.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [x509.NameAttribute(NameOID.ORGANIZATION_NAME, group) for group in groups]
            + [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        )
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = _builder(subject, ca_cert.subject, key.public_key()).add_extension(
            x509.ExtendedKeyUsage([usage]), critical=False
        )
        if hosts:
            names: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{self.ca_key_path} is not the EC key this module made")
        cert = builder.sign(ca_key, hashes.SHA256())
        _write_key(key_path, key)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return key_path, cert_path

    def client_context(self) -> ssl.SSLContext:
        """TLS that trusts the CA and presents the admin's certificate."""
        context = ssl.create_default_context(cafile=str(self.ca_cert_path))
        context.load_cert_chain(self.folder / "user-admin.crt", self.folder / "user-admin.key")
        return context


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _write_kubeconfig(path: Path, api_url: str, ca: Path, cert: Path, key: Path, user: str) -> None:
    """A self-contained kubeconfig (certificates embedded), readable by its owner only."""

    def b64(file: Path) -> str:
        return base64.b64encode(file.read_bytes()).decode("ascii")

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "slipway-local", "cluster": {
                "server": api_url, "certificate-authority-data": b64(ca)}}
        ],
        "users": [
            {"name": user, "user": {
                "client-certificate-data": b64(cert), "client-key-data": b64(key)}}
        ],
        "contexts": [
            {"name": f"{user}@slipway-local",
             "context": {"cluster": "slipway-local", "user": user, "namespace": "default"}}
        ],
        "current-context": f"{user}@slipway-local",
    }  # fmt: skip
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        yaml.safe_dump(config, handle, sort_keys=False)
