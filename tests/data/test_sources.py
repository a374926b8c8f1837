"""Where data lives, and downloads: all offline, against a stand-in hub on 127.0.0.1 or file:// URLs."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from pathlib import Path

import pytest

from scratchlm.data import sources
from scratchlm.data.sources import Dataset, DownloadError

TEXT = b"Once upon a time, there was a tiny model.\n" * 2000  # 84 KB: several reads, still instant


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test reads the real shared data or writes to ~/.cache."""
    monkeypatch.delenv("SCRATCHLM_DATA", raising=False)
    monkeypatch.setenv("SCRATCHLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "repo_root", lambda: None)
    monkeypatch.chdir(tmp_path)


# --- data root -------------------------------------------------------------------------------------


def test_env_var_wins_and_must_exist(tmp_path, monkeypatch):
    monkeypatch.setenv("SCRATCHLM_DATA", str(tmp_path))
    assert sources.data_root() == tmp_path
    assert sources.locate_data_root()[1] == "$SCRATCHLM_DATA"
    monkeypatch.setenv("SCRATCHLM_DATA", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=r"SCRATCHLM_DATA=.*missing is not an existing folder"):
        sources.data_root()


def test_shared_data_beside_the_checkout(tmp_path, monkeypatch):
    (tmp_path / "repo").mkdir()
    (tmp_path / "shared" / "data").mkdir(parents=True)
    monkeypatch.setattr(sources, "repo_root", lambda: tmp_path / "repo")
    root, why = sources.locate_data_root()
    assert root == (tmp_path / "shared" / "data").resolve() and "beside the checkout" in why


def test_shared_data_beside_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "work").mkdir()
    (tmp_path / "shared" / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    root, why = sources.locate_data_root()
    assert root == (tmp_path / "shared" / "data").resolve() and "current directory" in why


def test_falls_back_to_the_download_cache(tmp_path, monkeypatch):
    assert sources.data_root() == tmp_path / "cache"
    monkeypatch.delenv("SCRATCHLM_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert sources.data_root() == tmp_path / "home" / ".cache" / "scratchlm" / "data"


def test_shared_data_path_finds_files_or_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("SCRATCHLM_DATA", str(tmp_path))
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("a")
    assert sources.shared_data_path("text/a.txt") == tmp_path / "text" / "a.txt"
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "dl.txt").write_text("d")  # a downloaded corpus is found too
    assert sources.shared_data_path("dl.txt") == tmp_path / "cache" / "dl.txt"
    with pytest.raises(FileNotFoundError) as e:
        sources.shared_data_path("text/b.txt")
    assert all(s in str(e.value) for s in ("text/b.txt", "$SCRATCHLM_DATA", "MANIFEST.md", "scratchlm data download"))


# --- registry --------------------------------------------------------------------------------------


def test_registry_entries_point_at_the_hub(monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert {"tinystories-train", "tinystories-valid", "owt-sample-train", "owt-sample-valid"} <= set(sources.REGISTRY)
    for name, d in sources.REGISTRY.items():
        assert d.name == name and d.repo.count("/") == 1 and d.filename and d.description and d.approx_size
    assert (sources.dataset_url(sources.REGISTRY["tinystories-valid"])
            == "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-valid.txt")
    with pytest.raises(ValueError, match="did you mean 'tinystories-valid'"):
        sources.get_dataset("tinystories-vaild")


# --- downloads -------------------------------------------------------------------------------------


class Hub(http.server.SimpleHTTPRequestHandler):
    """Serves files under `root` like the hub's resolve/ URLs, with Range support (206) and a fault switch."""

    root: Path
    requests: list[dict]
    truncate_next: bool = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=str(self.root), **kwargs)

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.requests.append({"path": self.path, "range": self.headers.get("Range")})
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if type(self).truncate_next:  # promise the whole body, send half, hang up
            type(self).truncate_next = False
            body = body[: len(body) // 2]
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A local stand-in for huggingface.co; returns (root folder, list of requests seen)."""
    root = tmp_path / "hub"
    handler = type("TestHub", (Hub,), {"root": root, "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}/")
    yield root, handler
    server.shutdown()
    server.server_close()


def publish(root: Path, d: Dataset, data: bytes) -> Path:
    path = root / "datasets" / d.repo / "resolve" / d.revision / d.filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def register(monkeypatch, **kwargs) -> Dataset:
    d = Dataset(name="tiny", repo="someone/tiny", filename="tiny.txt", description="test", approx_size="84 KB", **kwargs)
    monkeypatch.setitem(sources.REGISTRY, "tiny", d)
    return d


def test_download_then_skip_then_force(hub, tmp_path, monkeypatch):
    root, handler = hub
    d = register(monkeypatch)
    publish(root, d, TEXT)
    dest = sources.download("tiny", progress=False)
    assert dest == tmp_path / "cache" / "tiny.txt" and dest.read_bytes() == TEXT
    assert handler.requests == [{"path": "/datasets/someone/tiny/resolve/main/tiny.txt", "range": None}]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["tiny.txt"]  # no partial file left

    publish(root, d, b"changed")
    assert sources.download("tiny", progress=False).read_bytes() == TEXT  # complete file: no request at all
    assert len(handler.requests) == 1
    assert sources.download("tiny", force=True, progress=False).read_bytes() == b"changed"


def test_an_interrupted_download_resumes_with_a_range_request(hub, tmp_path, monkeypatch):
    root, handler = hub
    d = register(monkeypatch)
    publish(root, d, TEXT)
    handler.truncate_next = True
    with pytest.raises(DownloadError, match="run the same command again to resume"):
        sources.download("tiny", tmp_path / "out", progress=False)
    partial = tmp_path / "out" / ".tiny.txt.partial"
    assert not (tmp_path / "out" / "tiny.txt").exists() and 0 < partial.stat().st_size < len(TEXT)
    have = partial.stat().st_size

    dest = sources.download("tiny", tmp_path / "out", progress=True)  # with the progress bar, for coverage
    assert dest.read_bytes() == TEXT and not partial.exists()
    assert handler.requests[-1]["range"] == f"bytes={have}-"


def test_a_server_that_ignores_range_restarts_cleanly(tmp_path, monkeypatch):
    d = register(monkeypatch)
    publish(tmp_path / "hub", d, TEXT)
    monkeypatch.setenv("HF_ENDPOINT", (tmp_path / "hub").as_uri())  # file:// never honours Range
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".tiny.txt.partial").write_bytes(b"stale bytes from another version")
    assert sources.download("tiny", tmp_path / "out", progress=False).read_bytes() == TEXT


def test_sha256_and_exact_size_are_checked(hub, tmp_path, monkeypatch):
    root, _ = hub
    good = hashlib.sha256(TEXT).hexdigest()
    d = register(monkeypatch, sha256=good, size_bytes=len(TEXT))
    publish(root, d, TEXT)
    dest = sources.download("tiny", progress=False)
    assert dest.read_bytes() == TEXT

    dest.write_bytes(b"short")  # wrong size on disk: fetched again rather than trusted
    assert sources.download("tiny", progress=False).read_bytes() == TEXT

    register(monkeypatch, sha256="0" * 64)
    with pytest.raises(ValueError, match=f"sha256 {good} does not match"):
        sources.download("tiny", tmp_path / "other", progress=False)
    assert list((tmp_path / "other").iterdir()) == []  # neither the file nor a partial is kept


def test_http_errors_are_clear(hub, monkeypatch):
    register(monkeypatch)  # registered, but not published: the hub answers 404
    with pytest.raises(DownloadError, match=r"/datasets/someone/tiny/resolve/main/tiny.txt: HTTP 404.*registry"):
        sources.download("tiny", progress=False)
    assert isinstance(DownloadError("x"), ConnectionError)  # the CLI reports it as `error: ...`, exit code 2


def test_an_unreachable_host_is_a_clear_error(monkeypatch):
    register(monkeypatch)
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(DownloadError, match="cannot download .*Check the network connection, or set HF_ENDPOINT"):
        sources.download("tiny", progress=False)
