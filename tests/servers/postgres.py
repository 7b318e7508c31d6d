"""A throwaway PostgreSQL cluster: the database of a scaled-out Prefect server.

Real PostgreSQL (Debian's ``postgresql-15``, which ``.ci/run`` installs): ``initdb``
into a fresh directory, ``pg_ctl start`` on a free loopback port, one database.
``initdb`` refuses to run as root, so under root the cluster belongs to Debian's
``postgres`` user (and lives outside pytest's root-only temporary directory).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers.ports import free_port

DATABASE = "prefect"
NEEDED = ("initdb", "pg_ctl", "postgres", "createdb")


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server binaries: on PATH, else Debian's newest."""
    found = shutil.which("initdb")
    if found:
        folder = Path(found).resolve().parent
        if all((folder / tool).exists() for tool in NEEDED):
            return folder

    def version(path: Path) -> int:
        match = re.fullmatch(r"\d+", path.parent.name)
        return int(match.group()) if match else 0

    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True):
        if all((folder / tool).exists() for tool in NEEDED):
            return folder
    return None


def _as_owner() -> tuple[list[str], str | None]:
    """The command prefix that runs PostgreSQL's tools as a non-root user, and that user."""
    if os.geteuid() != 0:
        return [], None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("initdb refuses to run as root and there is no 'postgres' user")
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("initdb refuses to run as root and runuser (util-linux) is missing")
    return [runuser, "-u", "postgres", "--"], "postgres"


@pytest.fixture(scope="package")
def postgres_url() -> Iterator[str]:
    """A running PostgreSQL with an empty database; yields its SQLAlchemy asyncpg URL."""
    folder = postgres_bin()
    if folder is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) are not installed; "
            "on Debian: apt-get install postgresql-15 (.ci/run does)"
        )
    prefix, owner = _as_owner()
    root = Path(tempfile.mkdtemp(prefix="slipway-postgres-"))
    if owner is not None:
        shutil.chown(root, user=owner)
    data = root / "data"
    port = free_port()

    def run(*command: str) -> None:
        done = subprocess.run(
            [*prefix, *command], capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")

    run(str(folder / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
        "--encoding=UTF8", "--locale=C", "--no-sync")  # fmt: skip
    # loopback only, its socket in its own folder, no fsync: a throwaway cluster
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg_ctl = str(folder / "pg_ctl")
    run(pg_ctl, "-D", str(data), "-l", str(root / "postgres.log"), "-o", options, "-w", "start")
    try:
        run(str(folder / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
            DATABASE)  # fmt: skip
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/{DATABASE}"
    finally:
        subprocess.run(
            [*prefix, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)
