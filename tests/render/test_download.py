"""Downloads against a real HTTP server on 127.0.0.1 serving real GLB bytes (design §7: no mocks)."""

from __future__ import annotations

import hashlib
import http.server
import threading
import time
from pathlib import Path

import pytest

from mvforge.render.download import DownloadError, fetch, sha256_file

GLB = Path(__file__).resolve().parents[1] / "data" / "glb" / "Duck.glb"


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict = {}
    hits: dict = {}

    def do_GET(self):  # noqa: N802 (http.server's naming)
        type(self).hits[self.path] = type(self).hits.get(self.path, 0) + 1
        route = self.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        kind, body = route
        if kind == "flaky" and self.hits[self.path] == 1:
            self.send_error(503)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if kind == "stall":
            self.wfile.write(body[:100])
            self.wfile.flush()
            time.sleep(3)
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    data = GLB.read_bytes()
    corrupt = bytearray(data)
    corrupt[len(corrupt) // 2] ^= 0xFF
    _Handler.routes = {
        "/duck.glb": ("ok", data),
        "/corrupt.glb": ("ok", bytes(corrupt)),
        "/stall.glb": ("stall", data),
        "/flaky.glb": ("flaky", data),
    }
    _Handler.hits = {}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Handler.hits
    httpd.shutdown()
    httpd.server_close()


def test_download_checks_sha_and_reuses_the_cache(server, tmp_path):
    url, hits = server
    want = hashlib.sha256(GLB.read_bytes()).hexdigest()
    dest = tmp_path / "cache" / "glbs" / "duck.glb"
    got = fetch(f"{url}/duck.glb", dest, sha256=want, timeout_s=5, retries=0)
    assert dest.read_bytes() == GLB.read_bytes()
    assert got.sha256 == want and not got.cached and got.attempts == 1
    assert [p.name for p in dest.parent.iterdir()] == ["duck.glb"]  # no temporary left
    again = fetch(f"{url}/duck.glb", dest, sha256=want, timeout_s=5, retries=0)
    assert again.cached and hits["/duck.glb"] == 1


def test_404_fails_without_retrying(server, tmp_path):
    url, hits = server
    with pytest.raises(DownloadError, match="404") as e:
        fetch(f"{url}/nope.glb", tmp_path / "nope.glb", timeout_s=5, retries=3, backoff_s=0.01)
    assert e.value.reason == "download_failed"
    assert hits["/nope.glb"] == 1
    assert list(tmp_path.iterdir()) == []


def test_corrupted_body_is_a_sha_mismatch(server, tmp_path):
    url, hits = server
    want = sha256_file(GLB)
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        fetch(f"{url}/corrupt.glb", tmp_path / "c.glb", sha256=want, timeout_s=5, retries=1, backoff_s=0.01)
    assert hits["/corrupt.glb"] == 2
    assert list(tmp_path.iterdir()) == []


def test_stalled_server_times_out(server, tmp_path):
    url, _ = server
    start = time.monotonic()
    with pytest.raises(DownloadError, match="attempts failed"):
        fetch(f"{url}/stall.glb", tmp_path / "s.glb", timeout_s=0.5, retries=1, backoff_s=0.01)
    assert time.monotonic() - start < 2.9  # gave up on each attempt well before the server's 3 s stall
    assert list(tmp_path.iterdir()) == []


def test_transient_error_is_retried(server, tmp_path):
    url, hits = server
    got = fetch(f"{url}/flaky.glb", tmp_path / "f.glb", timeout_s=5, retries=2, backoff_s=0.01)
    assert hits["/flaky.glb"] == 2 and got.attempts == 2
    assert (tmp_path / "f.glb").read_bytes() == GLB.read_bytes()


def test_corrupted_cache_entry_is_fetched_again(server, tmp_path):
    url, hits = server
    dest = tmp_path / "duck.glb"
    dest.write_bytes(b"not the duck")
    got = fetch(f"{url}/duck.glb", dest, sha256=sha256_file(GLB), timeout_s=5, retries=0)
    assert not got.cached and dest.read_bytes() == GLB.read_bytes()
