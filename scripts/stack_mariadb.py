"""The business MariaDB pair of the native stack: a GTID primary and a ``read_only`` replica.

Two ``mariadbd`` processes, each with its own datadir, socket, pidfile and error log under
``<stack_dir>/mariadb/{primary,replica}``:

* **primary** (``server_id=1``, ``log_bin``, ``binlog_format=ROW``): the business DB
  ``pixiv`` (tables from ``tasks.core.schema``, as ``infra/sql/replica_schema.sql``), the
  replication account ``replicator`` and the pipeline's read-only account ``recsys_ro``
  (both replicate), plus the ``recsys`` DB and its read/write ``recsys`` account. The recsys
  DB lives on the primary's server and is filtered out on the replica
  (``replicate_wild_ignore_table=recsys%.%``: also the system tests' private
  ``recsys_*`` DBs), so it never exists there.
* **replica** (``server_id=2``, ``read_only=ON``): follows the primary with
  ``CHANGE MASTER TO ... MASTER_USE_GTID=slave_pos`` from the primary's first GTID, so the
  schema and accounts arrive by replication. ``recsys_ro`` has ``SELECT`` on ``pixiv`` plus
  ``REPLICATION CLIENT`` and ``SLAVE MONITOR`` (MariaDB >= 10.5.2 needs SLAVE MONITOR for
  ``SHOW REPLICA STATUS``; REPLICATION CLIENT alone is BINLOG MONITOR there).

``up`` is idempotent (a running server is left alone, an initialised datadir is reused);
``down`` stops both; ``status`` reports pids, GTID positions and the replica's lag.
CLI: ``python scripts/stack_mariadb.py up|down|status [--dir D] [--primary-port P]
[--replica-port R]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BUSINESS_DB = "pixiv"
RECSYS_DB = "recsys"
REPLICATION_USER = ("replicator", "replicator-dev-pw")
READONLY_USER = ("recsys_ro", "recsys-ro-dev-pw")
RECSYS_USER = ("recsys", "recsys-dev-pw")
ROLES = ("primary", "replica")

_PRIMARY_CNF = """
server_id = 1
log_bin = {datadir}/mariadb-bin
log_bin_index = {datadir}/mariadb-bin.index
binlog_format = ROW
gtid_strict_mode = ON
local_infile = 1
"""
_REPLICA_CNF = """
server_id = 2
read_only = ON
relay_log = {datadir}/relay-bin
log_bin = {datadir}/mariadb-bin
log_slave_updates = ON
binlog_format = ROW
gtid_strict_mode = ON
replicate_wild_ignore_table = recsys%.%
replicate_ignore_db = recsys
"""


def _dirs(stack_dir: Path, role: str) -> dict[str, Path]:
    base = Path(stack_dir) / "mariadb" / role
    return {
        "base": base,
        "datadir": base / "data",
        "socket": base / "mysqld.sock",
        "pid": base / "mysqld.pid",
        "log": base / "error.log",
        "cnf": base / "my.cnf",
    }


def _write_cnf(paths: dict[str, Path], role: str, port: int) -> None:
    extra = (_PRIMARY_CNF if role == "primary" else _REPLICA_CNF).format(datadir=paths["datadir"])
    user = "user = root\n" if os.geteuid() == 0 else ""
    paths["cnf"].write_text(
        "[mysqld]\n"
        f"{user}"
        f"datadir = {paths['datadir']}\n"
        f"socket = {paths['socket']}\n"
        f"pid_file = {paths['pid']}\n"
        f"log_error = {paths['log']}\n"
        f"port = {port}\n"
        "bind_address = 127.0.0.1\n"
        "skip_name_resolve = ON\n"
        "character_set_server = utf8mb4\n"
        "collation_server = utf8mb4_unicode_ci\n"
        "default_time_zone = '+00:00'\n"
        "innodb_buffer_pool_size = 128M\n"
        "innodb_log_file_size = 48M\n"
        "performance_schema = OFF\n"
        "max_connections = 300\n" + extra
    )


def _pid(paths: dict[str, Path]) -> int | None:
    """The server's pid when its pidfile names a live process."""
    try:
        pid = int(paths["pid"].read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _sql(paths: dict[str, Path], statements: str, *, user: str = "root") -> str:
    """Run SQL as root over the server's socket; return the tab-separated output."""
    done = subprocess.run(
        ["mariadb", "--no-defaults", f"--socket={paths['socket']}", f"-u{user}", "-N", "-B"],
        input=statements,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"SQL on {paths['socket']} failed: {done.stderr.strip()}")
    return done.stdout


def _start(paths: dict[str, Path], role: str, port: int) -> None:
    paths["base"].mkdir(parents=True, exist_ok=True)
    _write_cnf(paths, role, port)
    if not (paths["datadir"] / "mysql").is_dir():
        paths["datadir"].mkdir(parents=True, exist_ok=True)
        init = [
            "mariadb-install-db",
            "--no-defaults",
            f"--datadir={paths['datadir']}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ]
        if os.geteuid() == 0:
            init.append("--user=root")
        done = subprocess.run(init, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"mariadb-install-db ({role}) failed: {done.stderr[-2000:]}")
    if _pid(paths) is None:
        binary = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        with open(paths["base"] / "stdout.log", "ab") as out:
            subprocess.Popen(  # noqa: S603 - our own binary and config
                [binary, f"--defaults-file={paths['cnf']}"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
    for _ in range(120):
        ping = subprocess.run(
            ["mariadb-admin", "--no-defaults", f"--socket={paths['socket']}", "-uroot", "ping"],
            capture_output=True,
            check=False,
        )
        if ping.returncode == 0:
            return
        time.sleep(0.5)
    tail = paths["log"].read_text()[-2000:] if paths["log"].exists() else "(no log)"
    raise RuntimeError(f"mariadbd {role} on port {port} did not come up: {tail}")


def _primary_setup(paths: dict[str, Path], primary_port: int) -> None:
    """Accounts and databases on the primary (idempotent). Business DB, replicator and
    recsys_ro are binlogged (the replica gets them); the recsys DB is filtered there."""
    from sqlalchemy import create_engine

    from tasks.core import schema

    repl, repl_pw = REPLICATION_USER
    ro, ro_pw = READONLY_USER
    rw, rw_pw = RECSYS_USER
    _sql(
        paths,
        f"""
        CREATE USER IF NOT EXISTS 'root'@'127.0.0.1';
        GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
        CREATE USER IF NOT EXISTS '{repl}'@'127.0.0.1' IDENTIFIED BY '{repl_pw}';
        GRANT REPLICATION SLAVE ON *.* TO '{repl}'@'127.0.0.1';
        CREATE DATABASE IF NOT EXISTS `{BUSINESS_DB}` CHARACTER SET utf8mb4;
        CREATE USER IF NOT EXISTS '{ro}'@'%' IDENTIFIED BY '{ro_pw}';
        GRANT SELECT ON `{BUSINESS_DB}`.* TO '{ro}'@'%';
        GRANT REPLICATION CLIENT, SLAVE MONITOR ON *.* TO '{ro}'@'%';
        CREATE DATABASE IF NOT EXISTS `{RECSYS_DB}` CHARACTER SET utf8mb4;
        CREATE USER IF NOT EXISTS '{rw}'@'%' IDENTIFIED BY '{rw_pw}';
        GRANT ALL PRIVILEGES ON `{RECSYS_DB}`.* TO '{rw}'@'%';
        """,
    )
    engine = create_engine(urls(primary_port, 0)["primary"])
    try:
        schema.create_business_schema(engine)  # checkfirst: idempotent
    finally:
        engine.dispose()


def _replica_setup(paths: dict[str, Path], primary_port: int) -> None:
    """Point the replica at the primary (GTID, from its first transaction) once; start it."""
    repl, repl_pw = REPLICATION_USER
    configured = _sql(paths, "SHOW SLAVE STATUS").strip()
    if not configured:
        _sql(
            paths,
            f"""
            CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={primary_port},
              MASTER_USER='{repl}', MASTER_PASSWORD='{repl_pw}',
              MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1;
            """,
        )
    _sql(paths, "START SLAVE")


def _gtid_of(paths: dict[str, Path], variable: str) -> str:
    return _sql(paths, f"SELECT @@GLOBAL.{variable}").strip()


def wait_caught_up(stack_dir: Path, timeout_s: float = 60.0) -> None:
    """Block until the replica has applied every GTID the primary has binlogged."""
    p, r = _dirs(stack_dir, "primary"), _dirs(stack_dir, "replica")
    target = _gtid_of(p, "gtid_binlog_pos")
    if not target:
        return
    got = _sql(r, f"SELECT MASTER_GTID_WAIT('{target}', {timeout_s})").strip()
    if got != "0":
        state = status(stack_dir)
        raise RuntimeError(f"replica did not reach primary GTID {target!r}: {state}")


def up(stack_dir: Path, primary_port: int = 3307, replica_port: int = 3308) -> None:
    """Start (initialising on first use) the primary and the replica; idempotent."""
    primary, replica = _dirs(stack_dir, "primary"), _dirs(stack_dir, "replica")
    _start(primary, "primary", primary_port)
    _primary_setup(primary, primary_port)
    _start(replica, "replica", replica_port)
    _replica_setup(replica, primary_port)
    wait_caught_up(stack_dir)


def _stop(paths: dict[str, Path], timeout_s: float = 60.0) -> None:
    pid = _pid(paths)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)


def kill(stack_dir: Path) -> None:
    """SIGKILL both servers (a crash; InnoDB recovers and the replica resumes on ``up``)."""
    for role in ROLES:
        pid = _pid(_dirs(stack_dir, role))
        if pid is not None:
            os.kill(pid, signal.SIGKILL)


def down(stack_dir: Path) -> None:
    """Stop the replica, then the primary (data kept; ``up`` resumes replication)."""
    _stop(_dirs(stack_dir, "replica"))
    _stop(_dirs(stack_dir, "primary"))


def status(stack_dir: Path) -> dict[str, Any]:
    """Pids, GTID positions and the replica's IO/SQL threads and ``Seconds_Behind_Master``."""
    out: dict[str, Any] = {}
    for role in ROLES:
        paths = _dirs(stack_dir, role)
        pid = _pid(paths)
        entry: dict[str, Any] = {"running": pid is not None, "pid": pid}
        if pid is not None:
            try:
                entry["gtid_binlog_pos"] = _gtid_of(paths, "gtid_binlog_pos")
                entry["gtid_current_pos"] = _gtid_of(paths, "gtid_current_pos")
                entry["read_only"] = _sql(paths, "SELECT @@GLOBAL.read_only").strip() == "1"
                if role == "replica":
                    entry.update(_replica_threads(paths))
            except RuntimeError as exc:
                entry["error"] = str(exc)
        out[role] = entry
    return out


def _replica_threads(paths: dict[str, Path]) -> dict[str, Any]:
    done = subprocess.run(
        ["mariadb", "--no-defaults", f"--socket={paths['socket']}", "-uroot", "-B"],
        input="SHOW SLAVE STATUS",
        capture_output=True,
        text=True,
        check=True,
    )
    lines = done.stdout.splitlines()
    if len(lines) < 2:
        return {"replicating": False}
    row = dict(zip(lines[0].split("\t"), lines[1].split("\t"), strict=False))
    lag = row.get("Seconds_Behind_Master")
    return {
        "replicating": True,
        "io_running": row.get("Slave_IO_Running"),
        "sql_running": row.get("Slave_SQL_Running"),
        "seconds_behind_master": None if lag in (None, "NULL") else int(lag),
        "gtid_slave_pos": _gtid_of(paths, "gtid_slave_pos"),
        "using_gtid": row.get("Using_Gtid"),
        "last_error": row.get("Last_Error") or None,
    }


def urls(primary_port: int = 3307, replica_port: int = 3308) -> dict[str, str]:
    """SQLAlchemy URLs: ``primary`` (business DB, root), ``replica`` (recsys_ro on the
    read_only replica), ``recsys_db`` (recsys account on the primary's server, LOAD DATA
    LOCAL enabled for the extraction and sampling bulk paths)."""
    ro, ro_pw = READONLY_USER
    rw, rw_pw = RECSYS_USER
    return {
        "primary": f"mysql+mysqldb://root@127.0.0.1:{primary_port}/{BUSINESS_DB}?charset=utf8mb4",
        "replica": f"mysql+mysqldb://{ro}:{ro_pw}@127.0.0.1:{replica_port}/{BUSINESS_DB}"
        "?charset=utf8mb4",
        "recsys_db": f"mysql+mysqldb://{rw}:{rw_pw}@127.0.0.1:{primary_port}/{RECSYS_DB}"
        "?charset=utf8mb4&local_infile=1",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("up", "down", "status", "urls"))
    parser.add_argument("--dir", type=Path, default=ROOT / "var" / "stack")
    parser.add_argument("--primary-port", type=int, default=3307)
    parser.add_argument("--replica-port", type=int, default=3308)
    args = parser.parse_args(argv)
    if args.command == "up":
        up(args.dir, args.primary_port, args.replica_port)
    elif args.command == "down":
        down(args.dir)
    if args.command in ("up", "status"):
        print(json.dumps(status(args.dir), indent=2))
    if args.command == "urls":
        print(json.dumps(urls(args.primary_port, args.replica_port), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
