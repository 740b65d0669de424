"""``digits stack up|down|status``: a PostgreSQL server and an MLflow tracking server on this machine, for workers.

One folder (``~/.cache/digits/stack`` or ``--dir``) holds everything::

    pgpass         the generated password of the database role ``digits``, in libpq's password-file format (0600):
                   export PGPASSFILE=<dir>/pgpass and no URL, command line or log ever holds the password
    pgdata/        PostgreSQL's data directory (databases ``optuna`` and ``mlflow``), or a link to it (below)
    artifacts/     the tracking server's artifact store (``--artifacts-destination``; clients go through the server)
    postgres.log, postgres.pid, mlflow.log, mlflow.pid, stack.json (the ports)

PostgreSQL is Debian's (``/usr/lib/postgresql/*/bin``), started with ``initdb`` and ``pg_ctl``, not systemd, bound to
127.0.0.1. It refuses to run as root: as root it runs as the ``postgres`` user, and when that user cannot enter the
folder (``/root`` is closed to other users) the data directory lives in postgres's home,
``~postgres/digits-stack/<hash of the folder>``, with ``pgdata`` a link to it. Every step is idempotent: ``up`` starts
what is not running, ``down`` stops what is (by pid) and keeps the data.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import pwd
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from digits.core.errors import DigitsError
from digits.ops.processes import alive, group_alive, port_free, read_pid, wait_gone

DEFAULT_DIR = Path("~/.cache/digits/stack")
PG_PORT, MLFLOW_PORT = 5432, 5000
ROLE = "digits"
DATABASES = ("optuna", "mlflow")
PG_USER = "postgres"  # who runs PostgreSQL when we are root
START_TIMEOUT = 180.0  # the first start of the tracking server creates its tables: tens of seconds on 2 cores


class StackError(DigitsError):
    """The stack cannot be started, stopped or found; one line saying what to do."""


@dataclass(frozen=True)
class Stack:
    """The stack's folder and ports."""

    dir: Path
    pg_port: int = PG_PORT
    mlflow_port: int = MLFLOW_PORT

    @property
    def pgdata(self) -> Path:
        return self.dir / "pgdata"

    @property
    def pgpass(self) -> Path:
        return self.dir / "pgpass"

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    def storage_url(self, database: str = "optuna") -> str:
        """The database's URL without its password (libpq takes it from ``PGPASSFILE``)."""
        return f"postgresql://{ROLE}@127.0.0.1:{self.pg_port}/{database}"


def open_stack(directory: str | Path | None = None, pg_port: int = 0, mlflow_port: int = 0) -> Stack:
    """The stack in ``directory``: ports given here, else those of its last ``up``, else the defaults."""
    path = Path(directory or DEFAULT_DIR).expanduser().resolve()
    saved = {}
    if (path / "stack.json").is_file():
        saved = json.loads((path / "stack.json").read_text())
    return Stack(path, pg_port or saved.get("pg_port", PG_PORT), mlflow_port or saved.get("mlflow_port", MLFLOW_PORT))


# --- processes ----------------------------------------------------------------------------------------------------


# --- PostgreSQL ---------------------------------------------------------------------------------------------------


def pg_bin() -> Path:
    """The folder of PostgreSQL's server binaries (the newest of Debian's, else PATH), or ``StackError``."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    found = candidates[-1] if candidates else shutil.which("pg_ctl")
    if not found or not (Path(found).parent / "initdb").exists():
        raise StackError(
            "PostgreSQL's server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql (Debian's package)"
        )
    return Path(found).parent


def _as_pg(command: list[str]) -> list[str]:
    """``command`` run as the ``postgres`` user when we are root (PostgreSQL refuses root), else as ourselves."""
    if os.geteuid() != 0:
        return command
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        raise StackError(
            f"PostgreSQL cannot run as root and there is no {PG_USER!r} user: apt-get install postgresql creates it"
        ) from None
    return ["runuser", "-u", PG_USER, "--", *command]


def _pg(command: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(_as_pg(command), capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise StackError(f"{what} failed: {lines[-1] if lines else f'exit code {result.returncode}'}")
    return result


def _data_dir(stack: Stack) -> Path:
    """The real data directory: ``pgdata`` itself, or (as root, when postgres cannot enter the folder) a link's target."""
    if stack.pgdata.is_symlink() or stack.pgdata.is_dir():
        return stack.pgdata.resolve()
    if os.geteuid() != 0 or subprocess.run(_as_pg(["test", "-x", str(stack.dir)])).returncode == 0:
        stack.pgdata.mkdir(mode=0o700)
        if os.geteuid() == 0:
            shutil.chown(stack.pgdata, PG_USER, PG_USER)
        return stack.pgdata
    home = Path(pwd.getpwnam(PG_USER).pw_dir) / "digits-stack"
    target = home / hashlib.sha256(str(stack.dir).encode()).hexdigest()[:12]
    for path in (home, target):
        path.mkdir(mode=0o700, exist_ok=True)
        shutil.chown(path, PG_USER, PG_USER)
    stack.pgdata.symlink_to(target, target_is_directory=True)
    return target


HBA = """\
# digits stack: the superuser only through the socket in this private directory; the role digits over TCP with its password
local all {pg_user} trust
host {databases} {role} 127.0.0.1/32 scram-sha-256
"""


def _init_postgres(stack: Stack, bin_dir: Path) -> Path:
    """``initdb`` once; the pg_hba.conf above. Returns the data directory."""
    data = _data_dir(stack)
    if (data / "PG_VERSION").exists():
        return data
    _pg(
        [
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            PG_USER,
            "--auth-local=trust",
            "--auth-host=reject",
            "-E",
            "UTF8",
            "--no-instructions",
        ],
        "initdb",
    )
    hba = data / "pg_hba.conf"
    hba.write_text(HBA.format(pg_user=PG_USER, databases=",".join(DATABASES), role=ROLE))
    if os.geteuid() == 0:
        shutil.chown(hba, PG_USER, PG_USER)
    return data


def _password(stack: Stack) -> str:
    """The role's password, generated once into ``pgpass`` (libpq's format, mode 0600)."""
    if stack.pgpass.exists():
        return stack.pgpass.read_text().strip().rsplit(":", 1)[1]
    password = secrets.token_hex(16)
    fd = os.open(stack.pgpass, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"127.0.0.1:*:*:{ROLE}:{password}\n")
    return password


def _start_postgres(stack: Stack, bin_dir: Path, data: Path) -> int:
    """``pg_ctl start`` unless running; the role and the databases made or updated. Returns the postmaster's pid."""
    pid = read_pid(data / "postmaster.pid")
    if not alive(pid):
        if not port_free(stack.pg_port):
            raise StackError(f"port {stack.pg_port} on 127.0.0.1 is taken (another PostgreSQL?): pass --pg_port")
        options = (
            f"-c listen_addresses=127.0.0.1 -p {stack.pg_port} -c unix_socket_directories={shlex.quote(str(data))}"
        )
        # No -l: the server writes to pg_ctl's stdout, a file we opened (postgres itself may not reach this folder).
        with open(stack.dir / "postgres.log", "ab") as log:
            result = subprocess.run(
                _as_pg([str(bin_dir / "pg_ctl"), "start", "-D", str(data), "-w", "-t", "60", "-o", options]),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if result.returncode != 0:
            raise StackError(
                f"PostgreSQL did not start (exit code {result.returncode}): see {stack.dir / 'postgres.log'}"
            )
        pid = read_pid(data / "postmaster.pid")
    (stack.dir / "postgres.pid").write_text(f"{pid}\n")
    _create_databases(stack, bin_dir, data)
    return pid


def _create_databases(stack: Stack, bin_dir: Path, data: Path) -> None:
    sql = [f"SELECT 'CREATE ROLE {ROLE} LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}')\\gexec"]
    sql.append(f"ALTER ROLE {ROLE} PASSWORD '{_password(stack)}';")
    for db in DATABASES:
        sql.append(
            f"SELECT 'CREATE DATABASE {db} OWNER {ROLE}' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{db}')\\gexec"
        )
    # On stdin, so that the password is on no command line.
    psql = [
        str(bin_dir / "psql"),
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        str(data),
        "-p",
        str(stack.pg_port),
        "-U",
        PG_USER,
        "-d",
        "postgres",
        "-f",
        "-",
    ]
    _pg(psql, "creating the databases", input="\n".join(sql) + "\n", timeout=60)


def _stop_postgres(stack: Stack) -> bool:
    if not (stack.pgdata.exists() and alive(read_pid(stack.pgdata / "postmaster.pid"))):
        return False
    pid = read_pid(stack.pgdata / "postmaster.pid")
    _pg(
        [str(pg_bin() / "pg_ctl"), "stop", "-D", str(stack.pgdata.resolve()), "-m", "fast", "-w", "-t", "60"],
        "pg_ctl stop",
    )
    wait_gone([pid], 30)
    return True


# --- the tracking server ------------------------------------------------------------------------------------------


def _healthy(stack: Stack) -> bool:
    try:
        with urllib.request.urlopen(f"{stack.tracking_uri}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _start_mlflow(stack: Stack, workers: int) -> int:
    """``mlflow server`` on the ``mlflow`` database unless running; waits for ``/health``. Returns its pid."""
    pid = read_pid(stack.dir / "mlflow.pid")
    if alive(pid) and _healthy(stack):
        return pid
    if alive(pid):
        raise StackError(
            f"mlflow server (pid {pid}) runs but does not answer on {stack.tracking_uri}: digits stack down, then up"
        )
    if not port_free(stack.mlflow_port):
        raise StackError(f"port {stack.mlflow_port} on 127.0.0.1 is taken: pass --mlflow_port")
    (stack.dir / "artifacts").mkdir(exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        stack.storage_url("mlflow"),
        "--artifacts-destination",
        str(stack.dir / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(stack.mlflow_port),
        "--workers",
        str(workers),
    ]
    # No job runner: its three huey processes (~250 MB each) serve MLflow's GenAI jobs, which this workflow has none of.
    env = {**os.environ, "PGPASSFILE": str(stack.pgpass), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(stack.dir / "mlflow.log", "ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
    (stack.dir / "mlflow.pid").write_text(f"{process.pid}\n")
    deadline = time.monotonic() + START_TIMEOUT
    while not _healthy(stack):
        if process.poll() is not None or time.monotonic() > deadline:
            _stop_mlflow(stack)
            raise StackError(f"mlflow server did not come up on {stack.tracking_uri}: see {stack.dir / 'mlflow.log'}")
        time.sleep(0.5)
    return process.pid


def _stop_mlflow(stack: Stack) -> bool:
    """SIGTERM the server's process group (it and its uvicorn workers), SIGKILL what is left after 30 s."""
    pid = read_pid(stack.dir / "mlflow.pid")
    if not pid or not group_alive(pid):
        return False
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while group_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not group_alive(pid):
            break
    (stack.dir / "mlflow.pid").unlink(missing_ok=True)
    return True


# --- the three commands -------------------------------------------------------------------------------------------


def up(stack: Stack, mlflow_workers: int = 2) -> Stack:
    """Start PostgreSQL and the tracking server, whichever is not running; create what is missing."""
    bin_dir = pg_bin()  # first: a missing package is said before anything is created
    was = open_stack(stack.dir)
    if any(running(was).values()) and (was.pg_port, was.mlflow_port) != (stack.pg_port, stack.mlflow_port):
        raise StackError(
            f"the stack in {stack.dir} runs on ports {was.pg_port} and {was.mlflow_port}: digits stack down first to change them"
        )
    stack.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (stack.dir / "stack.json").write_text(
        json.dumps({"pg_port": stack.pg_port, "mlflow_port": stack.mlflow_port}) + "\n"
    )
    data = _init_postgres(stack, bin_dir)
    _start_postgres(stack, bin_dir, data)
    _start_mlflow(stack, mlflow_workers)
    return stack


def down(stack: Stack) -> list[str]:
    """Stop the tracking server, then PostgreSQL, by their recorded pids; the data stays. Returns what was stopped."""
    stopped = []
    if _stop_mlflow(stack):
        stopped.append("mlflow server")
    if _stop_postgres(stack):
        stopped.append("postgresql")
    (stack.dir / "postgres.pid").unlink(missing_ok=True)
    return stopped


def purge(stack: Stack) -> None:
    """``down``, then delete the stack's folder and its data directory: the studies, runs and artifacts are gone."""
    down(stack)
    if stack.pgdata.is_symlink():
        shutil.rmtree(stack.pgdata.resolve(), ignore_errors=True)
    shutil.rmtree(stack.dir, ignore_errors=True)


def running(stack: Stack) -> dict[str, int | None]:
    """The live pid of each part (None when it is not running)."""
    pg = read_pid(stack.pgdata / "postmaster.pid") if stack.pgdata.exists() else None
    ml = read_pid(stack.dir / "mlflow.pid")
    return {"postgresql": pg if alive(pg) else None, "mlflow server": ml if alive(ml) else None}


def describe(stack: Stack) -> str:
    """What ``status`` prints: each part's state, then the lines to export in a worker's shell."""
    pids = running(stack)
    lines = [f"stack in {stack.dir}"]
    lines.append(
        f"postgresql    {_state(pids['postgresql'])}  127.0.0.1:{stack.pg_port}, databases {', '.join(DATABASES)}, data {stack.pgdata.resolve() if stack.pgdata.exists() else stack.pgdata}"
    )
    lines.append(
        f"mlflow server {_state(pids['mlflow server'])}  {stack.tracking_uri}, artifacts {stack.dir / 'artifacts'}"
    )
    lines += [
        "# in each worker's shell:",
        f"export PGPASSFILE={stack.pgpass}",
        f"export MLFLOW_TRACKING_URI={stack.tracking_uri}",
        f"digits tune --storage {stack.storage_url()} --study_name NAME",
    ]
    return "\n".join(lines)


def _state(pid: int | None) -> str:
    return f"running (pid {pid})" if pid else "stopped"
