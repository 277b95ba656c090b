"""A real Prometheus server (Debian's package) on loopback, scraping what the tests add.

Scrapes every second (so verification by PromQL takes seconds, not minutes) and finds its
targets in a file_sd file that :meth:`PrometheusServer.scrape` rewrites atomically.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from keyrotor.testing.controlplane import free_port
from keyrotor.testing.processes import ServerError, give_to, spawn, stop, wait_until

BINARY = "/usr/bin/prometheus"
USER = "prometheus"  # Debian's package creates it


@dataclass
class PrometheusServer:
    port: int = field(default_factory=free_port)
    workdir: Path = field(init=False)
    proc: Any = field(init=False, default=None)
    targets: dict[str, list[str]] = field(init=False, default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> PrometheusServer:
        if not Path(BINARY).exists():
            raise ServerError("Prometheus is not installed: apt-get install prometheus "
                              "(scripts/test installs it)")
        self.workdir = Path(tempfile.mkdtemp(prefix="keyrotor-prom-"))
        (self.workdir / "targets.json").write_text("[]")
        (self.workdir / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s, scrape_timeout: 900ms}\n"
            "scrape_configs:\n"
            "  - job_name: tests\n"
            "    file_sd_configs: [{files: ['" + str(self.workdir / "targets.json") + "'], "
            "refresh_interval: 1s}]\n")
        give_to(self.workdir, USER)
        log = self.workdir / "prometheus.log"
        self.proc = spawn([BINARY, f"--config.file={self.workdir / 'prometheus.yml'}",
                           f"--storage.tsdb.path={self.workdir / 'data'}",
                           f"--web.listen-address=127.0.0.1:{self.port}",
                           "--storage.tsdb.retention.time=1h"], log, user=USER)
        try:
            wait_until(self._ready, self.proc, log, "prometheus")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        stop(self.proc)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def scrape(self, job: str, *addresses: str) -> None:
        """Scrape ``addresses`` (host:port) with the label ``job``."""
        self.targets[job] = list(addresses)
        groups = [{"targets": t, "labels": {"job": j}} for j, t in self.targets.items()]
        temporary = self.workdir / "targets.json.tmp"
        temporary.write_text(json.dumps(groups))
        give_to(temporary, USER)
        temporary.replace(self.workdir / "targets.json")

    def query(self, promql: str) -> list[dict[str, Any]]:
        body = requests.get(f"{self.url}/api/v1/query", params={"query": promql},
                            timeout=5).json()
        if body.get("status") != "success":
            raise ServerError(f"query {promql!r} failed: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def up(self, job: str) -> bool:
        """Has every target of ``job`` been scraped successfully?"""
        rows = self.query(f'up{{job="{job}"}}')
        return len(rows) == len(self.targets.get(job, ())) and all(
            r["value"][1] == "1" for r in rows)
