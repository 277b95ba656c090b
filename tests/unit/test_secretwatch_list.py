"""The Secret watch's list waits as long as the API server may take over one page.

A label selector filters after etcd is read, so where many large unrelated Secrets sit in the
cluster (and the page does not come from the API server's watch cache) one page can take tens
of seconds. With the 5 s read timeout of ordinary calls, every list timed out and the watch
never started (bench/RESULTS.md: 10,000 RotatingSecrets beside 5,000 unrelated 512 KiB
Secrets: 6 timeouts, 49 list requests, no watch). Here a local HTTP server answers a page
one second after that timeout, through the real client (keyrotor.kubehttp).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from keyrotor import kube, kubehttp
from keyrotor.secretwatch import list_metadata

DELAY = kube.TIMEOUT[1] + 1.0


class SlowList(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        time.sleep(DELAY)  # the API server reading etcd before it answers
        body = json.dumps({"kind": "PartialObjectMetadataList", "metadata": {
            "resourceVersion": "42"}, "items": [{"metadata": {
                "name": "s", "namespace": "ns", "resourceVersion": "41",
                "managedFields": [{"manager": "keyrotor"}]}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def slow_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowList)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_slow_page_of_the_secret_list_is_waited_for(slow_server: str) -> None:
    api = kube.KubeApi(kubehttp.Client(kubehttp.Credentials(server=slow_server), retries=0))
    started = time.monotonic()
    items, version = list_metadata(api.core, "")
    assert time.monotonic() - started >= DELAY
    assert version == "42"
    assert items == [{"name": "s", "namespace": "ns", "resourceVersion": "41"}]
