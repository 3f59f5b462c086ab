"""``relay api`` as a real process (``python -m relay api``) on free ports."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.api.conftest import free_port
from tests.procs import terminate


@dataclass
class ApiProcess:
    proc: subprocess.Popen[bytes]
    url: str
    metrics_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()


@contextlib.contextmanager
def relay_api(database_url: str, log_path: Path, **settings: str) -> Iterator[ApiProcess]:
    """Start ``relay api``, wait until /healthz answers, SIGTERM it at the end."""
    port, metrics_port = free_port(), free_port()
    env = dict(os.environ)
    env.update(
        {
            "RELAY_DATABASE_URL": database_url,
            "RELAY_API_ADDR": f"127.0.0.1:{port}",
            "RELAY_API_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
            "RELAY_LOG_FORMAT": "json",
        }
    )
    env.update({"RELAY_" + k.upper(): v for k, v in settings.items()})
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "api"], env=env, stdout=log, stderr=log
        )
    api = ApiProcess(proc, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}", log_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"relay api exited:\n{api.log()}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(api.url + "/healthz", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"relay api did not start:\n{api.log()}"
            time.sleep(0.1)
        yield api
    finally:
        terminate(proc)
