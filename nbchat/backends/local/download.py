"""A hub model's files on this machine: found in the Hugging Face cache, or downloaded with progress.

Runs in the model process (``child``), whose environment is the kernel's at the
moment of the load, so ``HF_ENDPOINT``, ``HF_HUB_CACHE`` and ``HF_TOKEN`` set in a
running kernel count. ``huggingface_hub.snapshot_download`` does the transfer:
it resumes a ``.incomplete`` blob left by an earlier attempt with a Range request
and retries a connection dropped half-way. Progress is read from the cache on
disk (finished files plus ``.incomplete`` blobs) rather than from
huggingface_hub's progress bars, whose classes change between its releases; it
so also counts what an earlier, interrupted attempt already fetched.
"""

from __future__ import annotations

import collections
import errno
import os
import shutil
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The files a causal LM needs: config, weights, tokenizer and chat template (no README, no ONNX, no
#: other frameworks' weights). A repo without safetensors weights gets its PyTorch ``.bin`` files.
NEEDED = ("*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja")
SAFETENSORS = (*NEEDED, "*.safetensors")
PYTORCH = (*NEEDED, "*.bin")
REPORT_EVERY_S = 0.25
SPEED_WINDOW_S = 3.0  # the speed shown is that of the last few seconds, not since the start
DEFAULT_ENDPOINT = "https://huggingface.co"
PARTIAL = ".nbchat-partial"  # a weights blob being downloaded: <sha256>.nbchat-partial, resumed by name
PIECE_BYTES = 1 << 20  # written to disk as it comes: a stop loses at most this much
RETRIES = 5  # connection failures in a row, with no byte received between them, before giving up
READ_TIMEOUT_S = 60.0
PARALLEL = 8  # weights files downloaded at once (huggingface_hub's own default)

Report = Callable[[int, int, float | None], None]  # (bytes on disk, bytes in all, recent bytes/s)


class DownloadFailed(Exception):
    """Why the files could not be had; ``kind`` picks the user's message (``message``)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind, self.detail = kind, detail


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def cache_dir() -> Path:
    """Where huggingface_hub keeps models, by its own rules (read now, not at its import)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    home = os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface")
    return Path(home).expanduser() / "hub"


def find_cached(repo_id: str) -> str | None:
    """The folder of a complete cached copy of ``repo_id``'s main revision, or None. No network."""
    for patterns in (SAFETENSORS, PYTORCH):
        folder = _cached_folder(repo_id, patterns)
        if folder is not None and complete(Path(folder)):
            return folder
    return None


def _cached_folder(repo_id: str, patterns: tuple[str, ...]) -> str | None:
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(
            repo_id, allow_patterns=list(patterns), cache_dir=cache_dir(), local_files_only=True
        )
    except Exception:  # not cached, or cached only in part (huggingface_hub's own check)
        return None
    return str(folder)


def complete(folder: Path) -> bool:
    """Whether ``folder`` holds a loadable model: its config and every weights file its index names."""
    import json

    if not (folder / "config.json").is_file():
        return False
    for single, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (folder / single).is_file():
            return True
        if (folder / index).is_file():
            try:
                shards = set(json.loads((folder / index).read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return False
            return all((folder / shard).is_file() for shard in shards)
    return False


def hub_problem() -> str | None:
    """Why the hub cannot be reached now (None if a connection opens within 3 s)."""
    if (os.environ.get("HF_HUB_OFFLINE") or "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    url = urllib.parse.urlsplit(endpoint())
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=3.0).close()
    except OSError as exc:
        return f"{host}: {exc}"
    return None


@dataclass(frozen=True)
class Plan:
    """What a download fetches: the commit, the files and their sizes, and which are LFS blobs."""

    commit: str
    sizes: dict[str, int]
    lfs: dict[str, str]  # file name → its sha256, the name of its blob in the cache
    patterns: tuple[str, ...]

    @property
    def total(self) -> int:
        return sum(self.sizes.values())


def plan(repo_id: str) -> Plan:
    """Ask the hub which files ``repo_id``'s main revision has (one request)."""
    from fnmatch import fnmatch

    from huggingface_hub import HfApi

    try:
        info = HfApi(endpoint=endpoint()).model_info(repo_id, files_metadata=True, timeout=30)
    except Exception as exc:
        raise _failure(exc) from None
    siblings = {s.rfilename: s for s in info.siblings or []}
    has_safetensors = any(name.endswith(".safetensors") for name in siblings)
    patterns = SAFETENSORS if has_safetensors else PYTORCH
    wanted = {name: s for name, s in siblings.items() if any(fnmatch(name, p) for p in patterns)}
    if info.sha is None:
        raise DownloadFailed("failed", "the hub did not say which commit its main revision is")
    sizes = {name: int(s.size or 0) for name, s in wanted.items()}
    lfs = {name: str(s.lfs.sha256) for name, s in wanted.items() if s.lfs is not None}
    return Plan(info.sha, sizes, lfs, patterns)


def fetch(repo_id: str, report: Report) -> str:
    """Download what ``repo_id`` lacks here; ``report`` hears the bytes a few times a second.

    The weights (LFS blobs, gigabytes) are fetched here, resumably (``fetch_blob``); the small
    files, the snapshot's links, its tree listing and ``refs/main`` by ``snapshot_download``,
    which then finds the blobs in place.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # this process's stderr is the kernel's log: the bytes go to report
    chosen = plan(repo_id)
    cache = cache_dir()
    repo_folder = cache / ("models--" + repo_id.replace("/", "--"))
    blobs = repo_folder / "blobs"
    meter = Meter(repo_folder, chosen)
    _check_space(cache, chosen.total - meter.on_disk())
    result: dict[str, Any] = {}

    def download() -> None:
        try:
            # The shards side by side, as snapshot_download fetches files: one connection each.
            with ThreadPoolExecutor(max_workers=PARALLEL, thread_name_prefix="nbchat-blob") as pool:
                list(pool.map(lambda name: fetch_blob(repo_id, name, chosen, blobs), chosen.lfs))  # raises
            result["folder"] = snapshot_download(
                repo_id,
                revision=chosen.commit,
                allow_patterns=list(chosen.patterns),
                cache_dir=cache,
                endpoint=endpoint(),
            )
        except BaseException as exc:
            result["error"] = exc

    worker = threading.Thread(target=download, name="nbchat-download", daemon=True)
    worker.start()
    while worker.is_alive():
        report(*meter.sample())
        worker.join(REPORT_EVERY_S)
    if "error" in result:
        raise _failure(result["error"])
    report(chosen.total, chosen.total, meter.sample()[2])
    _mark_main(repo_folder, chosen.commit)
    return str(result["folder"])


def fetch_blob(repo_id: str, name: str, chosen: Plan, blobs: Path) -> None:
    """One LFS file into ``blobs/<sha256>``, resuming a ``.nbchat-partial`` left by an earlier try.

    huggingface_hub (2.x) writes every download to a file of its own per process and deletes it
    on failure, so a stopped download would start again from zero: with 3.4 GB of weights that
    is the difference between a minute and half an hour on a slow line. A connection that drops
    is retried from the byte it reached, ``RETRIES`` times in a row without progress.
    """
    import httpx
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    blob = blobs / chosen.lfs[name]
    if blob.is_file():
        return
    blobs.mkdir(parents=True, exist_ok=True)
    partial = blob.with_name(blob.name + PARTIAL)
    size = chosen.sizes[name]
    failures = 0
    while True:
        have = partial.stat().st_size if partial.is_file() else 0
        if have >= size:
            break
        try:
            url = hf_hub_url(repo_id, name, revision=chosen.commit, endpoint=endpoint())
            location = get_hf_file_metadata(url).location  # where the bytes are: the hub's CDN
            headers = build_hf_headers()
            if urllib.parse.urlsplit(location).netloc != urllib.parse.urlsplit(endpoint()).netloc:
                headers.pop("authorization", None)  # a CDN's signed URL: the token stays with the hub
            if have:
                headers["Range"] = f"bytes={have}-"
            with httpx.stream(
                "GET", location, headers=headers, timeout=READ_TIMEOUT_S, follow_redirects=True
            ) as response:
                response.raise_for_status()
                resumed = response.status_code == 206
                with partial.open("ab" if resumed else "wb") as out:  # a 200 is the whole file again
                    for piece in response.iter_bytes(PIECE_BYTES):
                        out.write(piece)
                        failures = 0
        except (httpx.TransportError, ConnectionError) as exc:
            failures += 1
            if failures > RETRIES:
                raise DownloadFailed("unreachable", f"{type(exc).__name__}: {exc}") from None
            time.sleep(min(2.0**failures, 10.0) / 4)
    if partial.stat().st_size != size:
        raise DownloadFailed("failed", f"{name} came as {partial.stat().st_size:,} bytes, not {size:,}")
    os.replace(partial, blob)


class Meter:
    """Bytes of a download on disk now, and the speed of the last few seconds."""

    def __init__(self, repo_folder: Path, chosen: Plan) -> None:
        self._snapshot = repo_folder / "snapshots" / chosen.commit
        self._blobs = repo_folder / "blobs"
        self._plan = chosen
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._shown = 0

    def on_disk(self) -> int:
        done = 0
        for name, size in self._plan.sizes.items():
            sha = self._plan.lfs.get(name)
            if (self._snapshot / name).is_file() or (sha is not None and (self._blobs / sha).is_file()):
                done += size
            elif sha is not None:
                done += next(iter(_sizes([self._blobs / (sha + PARTIAL)])), 0)
        return done

    def sample(self) -> tuple[int, int, float | None]:
        # Never backwards: a blob being renamed from its partial file is briefly counted nowhere.
        self._shown = min(self._plan.total, max(self._shown, self.on_disk()))
        now = time.monotonic()
        self._samples.append((now, self._shown))
        while now - self._samples[0][0] > SPEED_WINDOW_S:
            self._samples.popleft()
        first_at, first = self._samples[0]
        speed = (self._shown - first) / (now - first_at) if now - first_at >= 0.5 else None
        return self._shown, self._plan.total, speed


def _sizes(paths: Iterable[Path]) -> Iterable[int]:
    for path in paths:
        try:
            yield path.stat().st_size
        except OSError:  # not there (yet), or renamed between a check and the stat
            continue


def _check_space(cache: Path, needed: int) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(cache).free
    if needed > free:
        raise DownloadFailed("disk", f"it needs {needed:,} more bytes and {cache} has {free:,} free")


def _mark_main(repo_folder: Path, commit: str) -> None:
    """Point ``refs/main`` at the commit fetched, so the next load finds it without the hub.

    snapshot_download writes a ref only for a branch it was asked for by name; the download asked
    for the commit (so every file comes from one revision even if main moves meanwhile).
    """
    refs = repo_folder / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    temporary = refs / f".main.{os.getpid()}"
    temporary.write_text(commit)
    os.replace(temporary, refs / "main")


def _failure(exc: BaseException) -> DownloadFailed:
    """huggingface_hub's exception as a kind of failure the kernel words for a user."""
    if isinstance(exc, DownloadFailed):
        return exc
    name = type(exc).__name__
    detail = f"{name}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}".rstrip(": ")
    if name == "GatedRepoError":
        return DownloadFailed("gated", detail)
    if name in ("RepositoryNotFoundError", "RevisionNotFoundError"):
        return DownloadFailed("not_found", detail)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DownloadFailed("disk", detail)
    if "connect" in name.lower() or "timeout" in name.lower() or name == "LocalEntryNotFoundError":
        return DownloadFailed("unreachable", detail)
    return DownloadFailed("failed", detail)


def message(repo_id: str, kind: str, detail: str) -> str:
    """What a user reads when ``repo_id`` could not be downloaded, and what to do about it."""
    where = endpoint()
    if kind == "gated":
        return (
            f"{repo_id!r} is a gated model on {where}: accept its terms on its page there, then log in "
            f"(`hf auth login`, or set HF_TOKEN) and try again ({detail})."
        )
    if kind == "not_found":
        return (
            f"There is no model {repo_id!r} on {where} (or it is private: log in with `hf auth login`). "
            f"Check the name, e.g. 'Qwen/Qwen3-1.7B' ({detail})."
        )
    if kind == "disk":
        return (
            f"Not enough disk space to download {repo_id!r} into {cache_dir()}: {detail}. Free some space, "
            "or point HF_HUB_CACHE at a bigger disk; what was downloaded so far is kept and resumed."
        )
    if kind == "unreachable":
        return (
            f"Could not download {repo_id!r}: the hub ({where}) could not be reached ({detail}). What was "
            "downloaded so far is kept: the next try resumes it."
        )
    return f"Could not download {repo_id!r} from {where}: {detail}. The next try resumes what was downloaded."
