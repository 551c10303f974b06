"""The node's processes for a benchmark: ``serve``, and when scaled out Redis, PostgreSQL and a
separate worker, each of which can be SIGKILLed and started again (``soak.py``) or only run
(``turnaround.py``). Uses the test suite's helpers (``tests/testsupport.py``)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append(int(entry.name))
    return found


def cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class Cluster:
    """``serve`` and, scaled out, Redis, PostgreSQL and a separate worker; all restartable.

    Parameters
    ----------
    out : Path
        Folder for the node's data and logs.
    mode : str
        ``embedded`` (SQLite, embedded broker and worker) or ``scaled`` (Redis without
        persistence, PostgreSQL, ``serve`` without a bundle and a separate worker).
    bundle : Path
        The model bundle.
    pacs_port : int
        The destination's port (AE title ``PACS`` on loopback).
    **settings : str
        More ``SPINEXR_*`` environment settings.
    """

    def __init__(self, out: Path, mode: str, bundle: Path, pacs_port: int, **settings: str) -> None:
        from testsupport import make_node

        self.out, self.mode = out, mode
        self.redis = self.pg = self.worker = None
        extra = {
            "SPINEXR_MODELS__DEVICE": "cpu",
            "SPINEXR_DESTINATIONS": json.dumps(
                [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}]
            ),
            **settings,
        }
        if mode == "scaled":
            from postgres_support import PostgresServer
            from testsupport import free_port, start_redis

            self.pg = PostgresServer().start()
            self.redis_port = free_port()
            self.redis = start_redis(self.redis_port)
            extra["SPINEXR_QUEUE__BROKER_URL"] = f"redis://127.0.0.1:{self.redis_port}/0"
            extra["SPINEXR_DATABASE__URL"] = self.pg.url
        else:
            extra["SPINEXR_MODELS__BUNDLE"] = str(bundle)
        self.node = make_node(out, **extra)
        self.worker_env = dict(self.node.env, SPINEXR_MODELS__BUNDLE=str(bundle))
        self.lock = threading.Lock()

    def start(self) -> None:
        self.start_serve()
        if self.mode == "scaled":
            self.start_worker()

    def start_serve(self) -> None:
        for attempt in range(10):
            try:
                self.node.start(timeout=120)
                return
            except AssertionError:
                self.node.kill()
                time.sleep(1 + attempt)
        raise RuntimeError("serve did not come back after 10 tries")

    def start_worker(self) -> None:
        from testsupport import EXE

        log = open(self.out / "worker.log", "ab")  # noqa: SIM115 - closed with the process
        self.worker = subprocess.Popen(
            [str(EXE), "worker", "--queues", "inference,export"],
            env=self.worker_env,
            cwd=self.out,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def victims(self) -> list[str]:
        names = ["serve", "embedded worker"] if self.mode == "embedded" else ["serve"]
        if self.mode == "scaled":
            names += ["worker", "redis-server"]
        return names

    def kill(self, victim: str) -> bool:
        """SIGKILL ``victim`` and start it again; False when it was not running."""
        with self.lock:
            if victim == "serve":
                self.node.kill()
                time.sleep(random.uniform(0.2, 2.0))
                self.start_serve()
            elif victim == "embedded worker":
                serve = self.node.proc.pid if self.node.proc else None
                pids = [p for p in children(serve) if " worker" in cmdline(p)] if serve else []
                if not pids:
                    return False
                os.kill(pids[0], signal.SIGKILL)  # serve's supervisor starts another
            elif victim == "worker":
                assert self.worker is not None
                self.worker.kill()
                self.worker.wait()
                time.sleep(random.uniform(0.2, 2.0))
                self.start_worker()
            elif victim == "redis-server":
                from testsupport import start_redis

                assert self.redis is not None
                self.redis.kill()
                self.redis.wait()
                time.sleep(random.uniform(0.2, 2.0))
                self.redis = start_redis(self.redis_port)
            return True

    def database_url(self) -> str:
        """The node's database URL (PostgreSQL when scaled out, else its SQLite file)."""
        return self.node.env.get("SPINEXR_DATABASE__URL") or (
            f"sqlite:///{(self.node.data_dir / 'spinexr.db').resolve()}"
        )

    def stop(self) -> int | None:
        code = self.node.stop()
        if self.worker is not None:
            self.worker.terminate()
            self.worker.wait(timeout=60)
        if self.redis is not None:
            self.redis.terminate()
        return code

    def remove(self) -> None:
        if self.pg is not None:
            self.pg.remove()
