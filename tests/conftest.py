"Shared fixtures: a URL cache kept out of the home folder, local HTTP servers, and a port with nothing listening."
from __future__ import annotations
import socket, threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@pytest.fixture(autouse=True)
def url_cache(tmp_path, monkeypatch):
    "Every test gets its own URL cache (VLMNB_CACHE), so nothing is read from or written to ~/.cache."
    cache = tmp_path/"vlmnb-cache"
    monkeypatch.setenv("VLMNB_CACHE", str(cache))
    return cache


class LocalServer:
    "A ThreadingHTTPServer on 127.0.0.1 serving fixed `routes` {path: (content_type, body)}; counts requests per path."
    def __init__(self, routes: dict[str, tuple[str, bytes]]):
        self.routes, self.hits = dict(routes), Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits[self.path] += 1
                if self.path not in server.routes:
                    self.send_error(404); return
                ctype, body = server.routes[self.path]
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            def log_message(self, *args): pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.closed = False

    def url(self, path: str) -> str: return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        if self.closed: return
        self.httpd.shutdown(); self.httpd.server_close(); self.thread.join(5)
        self.closed = True


@pytest.fixture(scope="session")
def make_server():
    "Factory for local HTTP servers; every server it made is shut down at the end of the session (closing early is fine)."
    servers = []
    def make(routes): servers.append(LocalServer(routes)); return servers[-1]
    yield make
    for s in servers: s.close()


@pytest.fixture(scope="session")
def free_port():
    "Function giving a TCP port on 127.0.0.1 with nothing listening on it (bound, then released)."
    def get() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    return get


def pytest_collection_modifyitems(config, items):
    "`online` tests reach the Hugging Face Hub: they run only with VLMNB_ONLINE=1 (and HF_HUB_OFFLINE unset)."
    import os
    if os.environ.get("VLMNB_ONLINE") == "1": return
    skip = pytest.mark.skip(reason="online: set VLMNB_ONLINE=1 (and unset HF_HUB_OFFLINE) to run against the real Hub")
    for item in items:
        if "online" in item.keywords: item.add_marker(skip)
