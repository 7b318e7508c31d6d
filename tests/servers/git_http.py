"""A real git smart-HTTP server for tests: git's own ``git http-backend`` behind stdlib HTTP.

Why: the product checks out and pushes over HTTPS with credentials. ``file://`` remotes never
exercise authentication, protocol v2 over HTTP, shallow fetches by SHA over the stateless RPC,
or how credentials reach git. This server runs git's CGI, so the protocol is the real one; it
adds HTTP basic auth and a request log so tests can assert how credentials travelled (never in
a URL path). Loopback only, port 0.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, Self
from urllib.parse import quote, unquote, urlsplit

__all__ = ["GitHttpServer", "RequestRecord", "commit_files", "git_executable", "make_bare_repo"]

_CHUNK = 64 * 1024
_HEADER_LINE_MAX = 64 * 1024
_ZERO_OID = "0" * 40


@functools.cache
def git_executable() -> str:
    """The git binary, resolved once so every call uses the same one."""
    git = shutil.which("git")
    if git is None:
        raise RuntimeError("git is not installed")
    return git


@functools.cache
def _http_backend() -> str:
    """Path of git's CGI; it lives in the exec-path, not on PATH."""
    exec_path = subprocess.run(
        [git_executable(), "--exec-path"], check=True, capture_output=True, text=True
    ).stdout.strip()
    backend = Path(exec_path) / "git-http-backend"
    if not backend.is_file():
        raise RuntimeError(f"git-http-backend not found in {exec_path}")
    return str(backend)


def _isolated_git_env(extra_config: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment that ignores the machine's system/global git config (credential helpers,
    askpass, url rewrites), so server and helpers behave the same on every machine."""
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": os.environ.get("HOME", tempfile.gettempdir()),
        "LANG": "C",
        "LC_ALL": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
    }
    extra_config = extra_config or {}
    for i, (key, value) in enumerate(extra_config.items()):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    env["GIT_CONFIG_COUNT"] = str(len(extra_config))
    return env


def _git(
    args: list[str],
    *,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run git with an argv list (never a shell) in the isolated environment."""
    full_env = _isolated_git_env()
    if env:
        full_env.update(env)
    return subprocess.run(
        [git_executable(), *args], input=input, env=full_env, capture_output=True, check=check
    )


def _inside(root: Path, name: str) -> Path:
    """Resolve ``name`` under ``root`` and refuse anything that escapes it."""
    root = root.resolve()
    path = (root / name).resolve()
    if path == root or not path.is_relative_to(root):
        raise ValueError(f"repository name {name!r} escapes {root}")
    return path


def make_bare_repo(root: Path, name: str, *, initial_branch: str = "main") -> Path:
    """Create an empty bare repository ``root/name`` that a GitHttpServer on ``root`` serves.

    The initial branch is explicit so HEAD does not depend on the machine's init.defaultBranch.
    """
    path = _inside(root, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    _git(["init", "--quiet", "--bare", f"--initial-branch={initial_branch}", str(path)])
    return path


def commit_files(
    repo: Path,
    files: Mapping[str, str | bytes | None],
    message: str = "commit",
    *,
    branch: str = "main",
) -> str:
    """Commit ``files`` (path -> content, ``None`` deletes) on ``branch`` of ``repo``; return SHA.

    Works directly on a bare repository with plumbing and a temporary index, so fixtures can
    seed server-side history without a work tree or the network. Author and committer are fixed
    and the date is the parent's plus one second, so SHAs are deterministic and times increase.
    """
    git_dir = ["--git-dir", str(repo)]
    ref = f"refs/heads/{branch}"
    _git([*git_dir, "check-ref-format", ref])
    listed = (
        _git(
            [
                *git_dir,
                "for-each-ref",
                "--format=%(refname) %(objectname) %(committerdate:unix)",
                ref,
            ]
        )
        .stdout.decode()
        .split("\n")
    )
    parent, when = None, 1_700_000_000
    for line in listed:
        name, _, rest = line.partition(" ")
        if name == ref:
            parent, _, stamp = rest.partition(" ")
            when = int(stamp) + 1
    with tempfile.TemporaryDirectory(prefix="slipway-index-") as tmp:
        env = {
            "GIT_INDEX_FILE": str(Path(tmp) / "index"),
            "GIT_AUTHOR_NAME": "Slipway Test",
            "GIT_AUTHOR_EMAIL": "test@slipway.invalid",
            "GIT_COMMITTER_NAME": "Slipway Test",
            "GIT_COMMITTER_EMAIL": "test@slipway.invalid",
            "GIT_AUTHOR_DATE": f"{when} +0000",
            "GIT_COMMITTER_DATE": f"{when} +0000",
        }
        if parent:
            _git([*git_dir, "read-tree", parent], env=env)
        entries = []
        for path, content in files.items():
            if content is None:
                entries.append(f"0 {_ZERO_OID}\t{path}")
                continue
            data = content.encode() if isinstance(content, str) else content
            blob = _git([*git_dir, "hash-object", "-w", "--stdin"], input=data).stdout
            entries.append(f"100644 {blob.decode().strip()}\t{path}")
        index_info = "".join(f"{entry}\0" for entry in entries).encode()
        _git([*git_dir, "update-index", "-z", "--index-info"], env=env, input=index_info)
        tree = _git([*git_dir, "write-tree"], env=env).stdout.decode().strip()
        parent_args = ["-p", parent] if parent else []
        commit = (
            _git(
                [*git_dir, "commit-tree", tree, *parent_args, "-F", "-"],
                env=env,
                input=message.encode(),
            )
            .stdout.decode()
            .strip()
        )
    _git([*git_dir, "update-ref", ref, commit, parent or _ZERO_OID])
    return commit


@dataclass(frozen=True)
class RequestRecord:
    """One HTTP request as the server saw it; ``auth`` is none|missing|bad|ok."""

    method: str
    path: str
    status: int
    auth: str
    user: str | None
    git_protocol: str | None
    content_encoding: str | None
    chunked: bool


class _HTTPServer(ThreadingHTTPServer):
    """Threaded server whose close never waits for idle keep-alive connections."""

    daemon_threads = True
    block_on_close = False
    owner: GitHttpServer

    def handle_error(self, request: object, client_address: object) -> None:
        """A client hanging up (or stop() cutting it off) is normal; print anything else."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class _Handler(BaseHTTPRequestHandler):
    """Authenticates, then runs git-http-backend as a CGI per request and relays its output."""

    protocol_version = "HTTP/1.1"  # keep-alive + chunked responses, as git's curl expects
    timeout = 30  # an idle keep-alive connection does not pin a thread forever
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.owner._track_connection(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._track_connection(self.connection, add=False)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Silence per-request stderr lines; the request log is ``GitHttpServer.records``."""

    def do_GET(self) -> None:  # noqa: N802
        self._serve()

    def do_POST(self) -> None:  # noqa: N802
        self._serve()

    # -- request side -----------------------------------------------------------------------
    def _is_chunked(self) -> bool:
        return "chunked" in self.headers.get("Transfer-Encoding", "").lower()

    def _body(self) -> Iterator[bytes]:
        """The request body, de-chunked: git uses chunked POSTs above http.postBuffer."""
        if self._is_chunked():
            while True:
                size_line = self.rfile.readline(_HEADER_LINE_MAX)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(_HEADER_LINE_MAX) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                yield from self._read_exact(size)
                self.rfile.readline(_HEADER_LINE_MAX)  # CRLF after the chunk
        else:
            yield from self._read_exact(int(self.headers.get("Content-Length") or 0))

    def _read_exact(self, remaining: int) -> Iterator[bytes]:
        while remaining > 0:
            data = self.rfile.read(min(remaining, _CHUNK))
            if not data:
                raise ConnectionError("client closed the connection mid-body")
            remaining -= len(data)
            yield data

    def _record(self, status: int, auth: str, user: str | None) -> None:
        self.server.owner._record(
            RequestRecord(
                method=self.command,
                path=self.path,
                status=status,
                auth=auth,
                user=user,
                git_protocol=self.headers.get("Git-Protocol"),
                content_encoding=self.headers.get("Content-Encoding"),
                chunked=self._is_chunked(),
            )
        )

    # -- response side ----------------------------------------------------------------------
    def _serve(self) -> None:
        auth, user = self.server.owner._check_auth(self.headers.get("Authorization"))
        if auth in ("missing", "bad"):
            for _ in self._body():  # drain, so the keep-alive connection stays in sync
                pass
            self._record(401, auth, None)
            body = b"Authentication required\n"
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self._run_cgi(auth, user)

    def _cgi_env(self, user: str | None) -> dict[str, str]:
        split = urlsplit(self.path)
        env = dict(self.server.owner._cgi_base_env)
        env.update(
            {
                "GATEWAY_INTERFACE": "CGI/1.1",
                "SERVER_PROTOCOL": self.request_version,
                "SERVER_NAME": "127.0.0.1",
                "SERVER_PORT": str(self.server.server_address[1]),
                "REQUEST_METHOD": self.command,
                "PATH_INFO": unquote(split.path),
                "QUERY_STRING": split.query,
                "REMOTE_ADDR": self.client_address[0],
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            }
        )
        # Absent CONTENT_LENGTH makes http-backend read stdin to EOF (chunked requests).
        if not self._is_chunked() and self.headers.get("Content-Length"):
            env["CONTENT_LENGTH"] = self.headers["Content-Length"]
        if user:
            env["REMOTE_USER"] = user
        for header, var in (
            ("Content-Encoding", "HTTP_CONTENT_ENCODING"),
            ("Git-Protocol", "HTTP_GIT_PROTOCOL"),
        ):
            if header in self.headers:
                env[var] = self.headers[header]
        return env

    def _run_cgi(self, auth: str, user: str | None) -> None:
        owner = self.server.owner
        proc = subprocess.Popen(
            [_http_backend()],
            env=self._cgi_env(user),
            cwd=owner.root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        owner._track_process(proc, add=True)
        # Body in and stderr out on their own threads: the CGI may write before it has read all.
        feeder = threading.Thread(target=self._feed, args=(proc.stdin,), daemon=True)
        drainer = threading.Thread(target=owner._drain_stderr, args=(proc.stderr,), daemon=True)
        feeder.start()
        drainer.start()
        try:
            assert proc.stdout is not None
            status, reason, headers = self._cgi_headers(proc.stdout)
            self._record(status, auth, user)
            self.send_response(status, reason)
            names = {name.lower() for name, _ in headers}
            chunked = "content-length" not in names
            for name, value in headers:
                if name.lower() not in ("connection", "transfer-encoding"):
                    self.send_header(name, value)
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while data := proc.stdout.read1(_CHUNK):
                self.wfile.write(b"%x\r\n%b\r\n" % (len(data), data) if chunked else data)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True
            proc.kill()
        finally:
            feeder.join()
            proc.wait()
            drainer.join()
            proc.stdout.close()  # type: ignore[union-attr]
            owner._track_process(proc, add=False)

    def _feed(self, stdin: IO[bytes] | None) -> None:
        """Copy the body to the CGI; keep reading it even if the CGI stopped listening."""
        assert stdin is not None
        try:
            for data in self._body():
                try:
                    stdin.write(data)
                except OSError:
                    pass
        except (OSError, ValueError):
            self.close_connection = True
        finally:
            try:
                stdin.close()
            except OSError:
                pass

    @staticmethod
    def _cgi_headers(stdout: IO[bytes]) -> tuple[int, str, list[tuple[str, str]]]:
        """Parse CGI response headers; ``Status:`` becomes the HTTP status (default 200)."""
        status, reason, headers = 200, "OK", []
        while True:
            line = stdout.readline(_HEADER_LINE_MAX)
            if not line and not headers:
                return 502, "Bad Gateway", [("Content-Length", "0")]
            line = line.rstrip(b"\r\n")
            if not line:
                return status, reason, headers
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "status":
                code, _, reason = value.strip().partition(" ")
                status = int(code)
            else:
                headers.append((name.strip(), value.strip()))


class GitHttpServer:
    """Serves every repository under ``root`` over git smart HTTP on 127.0.0.1:<free port>.

    With ``username`` and ``password`` set, each request must carry matching HTTP basic auth
    or gets ``401`` with ``WWW-Authenticate: Basic realm="git"`` (like GitHub/GitLab, which
    also answer the initial unauthenticated probe with 401). Pushes are enabled unless
    ``allow_push=False``; ``config`` adds server-side git config (e.g. uploadpack.*).
    """

    def __init__(
        self,
        root: Path,
        *,
        username: str | None = None,
        password: str | None = None,
        allow_push: bool = True,
        config: Mapping[str, str] | None = None,
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        self.root = Path(root).resolve()
        self.username = username
        self.password = password
        server_config = {"safe.directory": "*", "http.receivepack": str(allow_push).lower()}
        server_config.update(config or {})
        self._cgi_base_env = _isolated_git_env(server_config)
        self._cgi_base_env.update({"GIT_PROJECT_ROOT": str(self.root), "GIT_HTTP_EXPORT_ALL": "1"})
        self.requests: list[tuple[str, str, int]] = []
        self.records: list[RequestRecord] = []
        self.cgi_stderr: list[str] = []
        self._lock = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._processes: set[subprocess.Popen[bytes]] = set()

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> Self:
        """Bind 127.0.0.1:0 and serve on a daemon thread; idempotent."""
        with self._lock:
            if self._httpd is not None:
                return self
            _http_backend()  # fail here, not inside a request, if git lacks the CGI
            httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
            httpd.owner = self
            self._httpd = httpd
            self._thread = threading.Thread(
                target=httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"git-http-{httpd.server_address[1]}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, cut open connections and kill running CGIs so stop() is quick."""
        with self._lock:
            httpd, thread = self._httpd, self._thread
            self._httpd = self._thread = None
            if httpd is None:
                return
            httpd.shutdown()
            httpd.server_close()
            for conn in list(self._connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            for proc in list(self._processes):
                proc.kill()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses ----------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The bound port; only valid while started."""
        if self._httpd is None:
            raise RuntimeError("GitHttpServer is not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:PORT`` (no credentials, ever)."""
        return f"http://127.0.0.1:{self.port}"

    def repo_url(self, name: str) -> str:
        """URL of repository ``root/name`` (``name`` as given to make_bare_repo)."""
        return f"{self.url}/{quote(name.strip('/'), safe='/')}"

    # -- request log ----------------------------------------------------------------------------
    @property
    def request_count(self) -> int:
        """How many requests were answered (401s included)."""
        with self._lock:
            return len(self.requests)

    def clear_log(self) -> None:
        """Forget recorded requests, e.g. between the arrange and act steps of a test."""
        with self._lock:
            self.requests.clear()
            self.records.clear()
            self.cgi_stderr.clear()

    # -- internals used by the handler ----------------------------------------------------------
    def _check_auth(self, header: str | None) -> tuple[str, str | None]:
        """Return (outcome, user); constant-time comparison of both parts."""
        if self.username is None or self.password is None:
            return "none", None
        if not header:
            return "missing", None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            return "bad", None
        try:
            decoded = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return "bad", None
        user, sep, password = decoded.partition(b":")
        user_ok = hmac.compare_digest(user, self.username.encode())
        password_ok = hmac.compare_digest(password, self.password.encode())
        if sep and user_ok and password_ok:
            return "ok", self.username
        return "bad", None

    def _record(self, record: RequestRecord) -> None:
        # Recorded before the status line is sent, so a client that finished sees it logged.
        with self._lock:
            self.records.append(record)
            self.requests.append((record.method, record.path, record.status))

    def _drain_stderr(self, stderr: IO[bytes] | None) -> None:
        assert stderr is not None
        text = stderr.read().decode("utf-8", "replace")
        stderr.close()
        if text:
            with self._lock:
                self.cgi_stderr.append(text)

    def _track_connection(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            (self._connections.add if add else self._connections.discard)(conn)

    def _track_process(self, proc: subprocess.Popen[bytes], *, add: bool) -> None:
        with self._lock:
            (self._processes.add if add else self._processes.discard)(proc)
