"""Where data lives, for every stage, and how public corpora get there.

Lookup order for the data folder (`data_root`):
  1. $SCRATCHLM_DATA, when set (an error if it does not exist: a typo must not silently fall through);
  2. ../shared/data beside the repository checkout, or beside the current directory (the curated
     development data; its MANIFEST.md lists every file with its source and sha256);
  3. a download cache, $SCRATCHLM_CACHE or ~/.cache/scratchlm/data, filled by `scratchlm data download`.

Downloads come from the Hugging Face hub over plain HTTPS (no huggingface_hub needed). $HF_ENDPOINT
replaces the host, for a mirror, or for tests that serve files from 127.0.0.1.
"""

from __future__ import annotations

import difflib
import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

import scratchlm
from scratchlm.paths import repo_root

log = logging.getLogger(__name__)
DATA_ENV = "SCRATCHLM_DATA"
CACHE_ENV = "SCRATCHLM_CACHE"
DEFAULT_ENDPOINT = "https://huggingface.co"
_CHUNK = 1 << 20  # 1 MiB reads: large enough that Python overhead is noise next to the network


@dataclass(frozen=True, kw_only=True)
class Dataset:
    """One downloadable file of a public corpus on the Hugging Face hub."""

    name: str
    repo: str  # dataset repo id on the hub
    filename: str  # path inside the repo
    description: str
    approx_size: str  # for `scratchlm data list`; the server's Content-Length is what downloads check
    size_bytes: int | None = None  # exact size when known: an existing file of another size is re-fetched
    sha256: str | None = None  # verified after download when known
    revision: str = "main"


# Sizes are approximate (from the dataset pages); exact sizes and hashes are filled in once verified.
REGISTRY: dict[str, Dataset] = {
    d.name: d
    for d in [
        Dataset(name="tinystories-train", repo="roneneldan/TinyStories", filename="TinyStoriesV2-GPT4-train.txt",
                description="TinyStories v2: short stories by GPT-4 in a 3-year-old's vocabulary (train)",
                approx_size="2.2 GB"),
        Dataset(name="tinystories-valid", repo="roneneldan/TinyStories", filename="TinyStoriesV2-GPT4-valid.txt",
                description="TinyStories v2 (validation)", approx_size="22 MB"),
        Dataset(name="owt-sample-train", repo="stanford-cs336/owt-sample", filename="owt_train.txt.gz",
                description="OpenWebText sample used by Stanford CS336 (train, gzip)",
                approx_size="12 GB unpacked"),
        Dataset(name="owt-sample-valid", repo="stanford-cs336/owt-sample", filename="owt_valid.txt.gz",
                description="OpenWebText sample used by Stanford CS336 (validation, gzip)",
                approx_size="290 MB unpacked"),
    ]
}


class DownloadError(ConnectionError):
    """A download that failed for a reason outside this program (network, server, missing file)."""


# ---------------------------------------------------------------------------------------------------
# Where data lives


def locate_data_root() -> tuple[Path, str]:
    """(data folder, why it was chosen), following the order in the module docstring."""
    env = os.environ.get(DATA_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"${DATA_ENV}={env} is not an existing folder: point it at the shared data "
                                    "folder (the one with MANIFEST.md), or unset it to use the defaults")
        return path, f"${DATA_ENV}"
    for candidate, why in _shared_candidates():
        if candidate.is_dir():
            return candidate.resolve(), why
    return download_dir(), f"download cache (${DATA_ENV} is unset and no ../shared/data was found)"


def _shared_candidates() -> list[tuple[Path, str]]:
    candidates = []
    root = repo_root()
    if root is not None:
        candidates.append((root.parent / "shared" / "data", f"../shared/data beside the checkout {root}"))
    try:
        candidates.append((Path.cwd().parent / "shared" / "data", "../shared/data beside the current directory"))
    except FileNotFoundError:  # the current directory was deleted under us
        pass
    return candidates


def data_root() -> Path:
    """The folder that holds the project's data (see the module docstring for the lookup order)."""
    return locate_data_root()[0]


def download_dir() -> Path:
    """Where `download` puts corpora by default: $SCRATCHLM_CACHE, else ~/.cache/scratchlm/data."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "scratchlm" / "data").expanduser()


def shared_data_path(relpath: str | os.PathLike) -> Path:
    """`relpath` under the data folder (or the download cache), or a FileNotFoundError saying how to get it."""
    root, why = locate_data_root()
    for base in dict.fromkeys([root, download_dir()]):  # ordered and deduplicated
        if (base / relpath).exists():
            return base / relpath
    raise FileNotFoundError(
        f"{relpath} is not in the data folder {root} ({why}). Set ${DATA_ENV} to the shared data folder "
        f"(its MANIFEST.md lists every file), or fetch a public corpus with `scratchlm data download NAME` "
        f"(see `scratchlm data list`)."
    )




# ---------------------------------------------------------------------------------------------------
# Downloads


def get_dataset(name: str) -> Dataset:
    if name in REGISTRY:
        return REGISTRY[name]
    close = difflib.get_close_matches(name, list(REGISTRY), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown dataset {name!r}{hint}; known: {', '.join(REGISTRY)} (see `scratchlm data list`)")


def dataset_url(d: Dataset) -> str:
    base = (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    return f"{base}/datasets/{d.repo}/resolve/{d.revision}/{urllib.parse.quote(d.filename)}"


def download(name: str, dest_dir: str | os.PathLike | None = None, force: bool = False, progress: bool = True) -> Path:
    """Fetch registered corpus `name` into `dest_dir` (default: download_dir()) and return its path.

    1) An existing file is kept (it can only be complete: files appear by rename), unless `force` or a
       known exact size disagrees.
    2) Bytes stream into `.<name>.partial`; an interrupted download resumes from there on the next call
       (HTTP Range), which matters for multi-GB files on a flaky connection.
    3) Size, and sha256 when known, are checked; then the file is renamed into place atomically.
    """
    d = get_dataset(name)
    dest = Path(dest_dir if dest_dir is not None else download_dir()) / d.filename
    if dest.exists() and not force:
        if d.size_bytes is None or dest.stat().st_size == d.size_bytes:
            log.info("%s: already downloaded at %s", name, dest)
            return dest
        log.warning("%s: %s has %d bytes, expected %d; downloading again", name, dest, dest.stat().st_size, d.size_bytes)
    partial = dest.with_name(f".{dest.name}.partial")
    if force:
        partial.unlink(missing_ok=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    url = dataset_url(d)
    total = _fetch(url, partial, desc=name, progress=progress)
    _verify(d, partial, total)
    os.replace(partial, dest)
    log.info("%s: downloaded %d bytes to %s", name, dest.stat().st_size, dest)
    return dest


def _fetch(url: str, partial: Path, desc: str, progress: bool) -> int | None:
    """Stream `url` into `partial`, resuming after the bytes already there. Returns the total size if known."""
    offset = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": f"scratchlm/{scratchlm.__version__}"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # range starts at or past the end: the partial file is stale, start over
            partial.unlink()
            return _fetch(url, partial, desc, progress)
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}" + _hint(e.code)) from None
    except (urllib.error.URLError, OSError) as e:  # DNS, refused connection, timeout, missing file://
        reason = getattr(e, "reason", e)
        raise DownloadError(f"cannot download {url}: {reason}. Check the network connection, or set "
                            "HF_ENDPOINT to a reachable mirror") from None
    with response:
        if offset and getattr(response, "status", None) != 206:
            offset = 0  # the server ignored Range (file:// always does): start from the beginning
        total = _total_size(response, offset)
        try:
            with open(partial, "ab" if offset else "wb") as f, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                disable=not progress,
            ) as bar:
                while chunk := response.read(_CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
                f.flush()
                os.fsync(f.fileno())
        except (OSError, http.client.HTTPException) as e:
            have = partial.stat().st_size if partial.exists() else 0
            raise DownloadError(f"download of {url} stopped after {have / 1e6:.1f} MB ({e}); run the same "
                                "command again to resume") from None
    return total


def _total_size(response: http.client.HTTPResponse, offset: int) -> int | None:
    content_range = response.headers.get("Content-Range", "")  # "bytes 100-199/200" on a resumed request
    if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


def _verify(d: Dataset, partial: Path, total: int | None) -> None:
    size = partial.stat().st_size
    if total is not None and size < total:
        raise DownloadError(f"{d.name}: got {size} of {total} bytes; run the same command again to resume")
    expected = d.size_bytes if d.size_bytes is not None else total
    if expected is not None and size != expected:
        partial.unlink()
        raise ValueError(f"{d.name}: downloaded {size} bytes but expected {expected}; the partial file was "
                         "deleted, run the command again (check HF_ENDPOINT if it fails the same way)")
    if d.sha256 is not None:
        digest = sha256_file(partial)
        if digest != d.sha256:
            partial.unlink()
            raise ValueError(f"{d.name}: sha256 {digest} does not match the expected {d.sha256}; the file "
                             "was deleted (a corrupted transfer or a changed upstream file)")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _hint(code: int) -> str:
    if code in (401, 403):
        return " (the dataset may be gated or private on the hub)"
    if code == 404:
        return " (the registry entry may be out of date, or HF_ENDPOINT points at the wrong server)"
    return ""
