"""A loopback server that speaks the Hugging Face hub's download protocol, for tests and benchmarks.

No model hub can be reached where nbchat is tested, yet the first use of ``qwen3`` downloads a
checkpoint with ``huggingface_hub`` (``snapshot_download``, ``hf_hub_download``, ``from_pretrained``).
This rig lets those official clients run unchanged with ``HF_ENDPOINT`` (or ``endpoint=``) pointed at
it. It answers what huggingface.co answers (checked against huggingface_hub 2.4's source):

- ``GET /api/models/{repo}[/revision/{rev}]``: model info (``sha``, ``siblings``; with
  ``?blobs=true`` each sibling's ``size``, ``blobId`` and ``lfs``).
- ``GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=``: the tree listing, one page, no Link.
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: a regular file answers 200 with ``ETag`` (its git
  blob id), ``X-Repo-Commit``, ``Content-Length``, ``Accept-Ranges``; an LFS file answers 302 with
  ``X-Linked-Etag`` (its sha256) and ``X-Linked-Size`` to a content URL on a second port, so that,
  as with the hub's CDN, the client stops at the redirect and then GETs the content URL.
- ``Range: bytes=N-`` (and ``N-M``, ``-N``) answers 206 with ``Content-Range``.
- errors carry ``X-Error-Code``/``X-Error-Message`` (RepoNotFound, RevisionNotFound, EntryNotFound,
  GatedRepo) so huggingface_hub raises its own exceptions. No ``X-Xet-*`` header is ever sent.

A gated repo behaves as on the hub for a client without a token: its model info and tree are
public (``"gated": "manual"``) and every file request answers 401 ``GatedRepo``.

In-process::

    with HubTestServer() as hub:
        hub.add_repo("tiny/Qwen3-test", checkpoint_dir)
        snapshot_download("tiny/Qwen3-test", endpoint=hub.url, cache_dir=tmp)

In its own process (prints ``READY http://127.0.0.1:<port>``, stops on SIGTERM)::

    python -m nbchat.testing.hub_server --repo tiny/Qwen3-test=/path/to/checkpoint --bytes-per-s 5e6
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from nbchat.testing.loopback import (
    ClientGone,
    HTTPError,
    LoopbackHandler,
    LoopbackServer,
    ServerStopping,
    dumps,
    serve_until_signalled,
)

__all__ = ["LFS_THRESHOLD_BYTES", "HubFile", "HubTestServer", "main"]

LFS_THRESHOLD_BYTES = 10 * 1024 * 1024  # larger files are stored with LFS, as the hub's .gitattributes do
_FULL_SPEED_WRITE = 256 * 1024  # one body write at full speed
_THROTTLED_WRITES_PER_S = 50  # a throttled body goes out in writes this often, so progress is smooth
_REPO = r"(?P<repo>[^/]+(?:/[^/]+)?)"
_INFO = re.compile(rf"^/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?$")
_TREE = re.compile(rf"^/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")
_RESOLVE = re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_CDN = re.compile(r"^/cdn/(?P<sha256>[0-9a-f]{64})$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_NO_HARNESSES: dict[str, Any] = {"standardEnvVars": [], "harnesses": {}}


def _git_blob_id(size: int, chunks: list[bytes] | None = None, path: Path | None = None) -> str:
    """The git object id of a blob: sha1 of ``b"blob <size>\\0"`` and the content."""
    digest = hashlib.sha1(b"blob %d\0" % size, usedforsecurity=False)
    for chunk in chunks or []:
        digest.update(chunk)
    if path is not None:
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class HubFile:
    """One file of a repo: where its bytes are on disk and the ids the hub gives it."""

    path: str  # in the repo, "/"-separated
    source: Path
    size: int
    blob_id: str  # git blob id: of the content, or of the LFS pointer for an LFS file
    sha256: str
    lfs: bool
    pointer_size: int  # bytes of the LFS pointer file (0 for a regular file)

    @classmethod
    def read(cls, path: str, source: Path) -> HubFile:
        size = source.stat().st_size
        sha256 = hashlib.sha256()
        with source.open("rb") as f:
            while block := f.read(1 << 20):
                sha256.update(block)
        digest = sha256.hexdigest()
        if path.endswith(".safetensors") or size > LFS_THRESHOLD_BYTES:
            pointer = (
                f"version https://git-lfs.github.com/spec/v1\noid sha256:{digest}\nsize {size}\n".encode()
            )
            return cls(path, source, size, _git_blob_id(len(pointer), [pointer]), digest, True, len(pointer))
        return cls(path, source, size, _git_blob_id(size, path=source), digest, False, 0)

    def tree_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": self.blob_id, "size": self.size, "path": self.path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": self.pointer_size}
        return entry

    def sibling(self, blobs: bool) -> dict[str, Any]:
        sibling: dict[str, Any] = {"rfilename": self.path}
        if blobs:
            sibling.update(size=self.size, blobId=self.blob_id)
            if self.lfs:
                sibling["lfs"] = {"sha256": self.sha256, "size": self.size, "pointerSize": self.pointer_size}
        return sibling


@dataclass(frozen=True)
class _Repo:
    repo_id: str
    commit: str
    files: dict[str, HubFile]
    gated: bool
    last_modified: str
    config: dict[str, Any] | None


class _HubError(HTTPError):
    """An error as the hub says it: a status, ``X-Error-Code``/``X-Error-Message`` and a JSON body."""

    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None) -> None:
        super().__init__(status, message, {"error": message})
        self.headers: dict[str, str] = {"X-Error-Message": message}
        if code is not None:
            self.headers["X-Error-Code"] = code
        if commit is not None:
            self.headers["X-Repo-Commit"] = commit  # huggingface_hub caches a missing file under it


class _HubHandler(LoopbackHandler["HubTestServer"]):
    """The hub's side of a connection: the API, resolve URLs, and (on the content port) LFS bytes."""

    json_content_type = "application/json; charset=utf-8"

    @property
    def hub(self) -> HubTestServer:
        rig = self.server.rig
        return rig.hub if isinstance(rig, _ContentServer) else rig  # type: ignore[return-value]

    def _error(self, status: int, message: str) -> HTTPError:
        return _HubError(status, message)

    def _stream_error(self, error: HTTPError) -> None:
        self._drop(ignore_gone=True)  # the hub never streams errors: a broken body is a cut connection

    def _send_error(self, error: HTTPError) -> None:
        headers = error.headers if isinstance(error, _HubError) else {}
        with contextlib.suppress(ClientGone, ServerStopping):
            self._reply(error.status, dumps(error.body), self.json_content_type, headers)

    def _reply(self, status: int, body: bytes, content_type: str, headers: dict[str, str]) -> None:
        """A whole response with a Content-Length (none of the body for HEAD)."""
        self._head(status, len(body), {"Content-Type": content_type, **headers})
        if self.command != "HEAD":
            self._write(body)

    def _head(self, status: int, length: int, headers: dict[str, str]) -> None:
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(length))
            self.end_headers()
        except OSError:
            raise self._gone() from None

    # -- routes ---------------------------------------------------------------------------------------

    def _route(self, path: str, raw: bytes) -> None:
        hub = self.hub
        hub._record(self.command, self.path, raw, dict(self.headers.items()))
        query = parse_qs(urlsplit(self.path).query)
        if isinstance(self.server.rig, _ContentServer):
            if self.command in ("GET", "HEAD") and (m := _CDN.match(path)):
                self._content(m["sha256"], query)
                return
            raise _HubError(404, "Not Found")
        if self.command in ("GET", "HEAD"):
            if m := _RESOLVE.match(path):
                self._resolve(m["repo"], unquote(m["rev"]), unquote(m["path"]))
                return
            if self.command == "GET" and (m := _TREE.match(path)):
                self._tree(m["repo"], unquote(m["rev"]), unquote(m["path"] or "").strip("/"), query)
                return
            if self.command == "GET" and path == "/api/agent-harnesses":
                # huggingface_hub fetches this registry once a day to name an AI agent in its
                # user agent; the hub answers it, so the rig does (with no harness known).
                self._reply(200, dumps(_NO_HARNESSES), self.json_content_type, {})
                return
            if self.command == "GET" and (m := _INFO.match(path)):
                self._info(m["repo"], unquote(m["rev"] or "main"), query)
                return
        raise _HubError(404, "Sorry, we can't find the page you are looking for.")

    def _info(self, repo_id: str, revision: str, query: dict[str, list[str]]) -> None:
        repo = self.hub._repo(repo_id, revision, files=False)
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        files = sorted(repo.files.values(), key=lambda f: f.path)
        info: dict[str, Any] = {
            "_id": repo.commit[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else None,
            "sha": repo.commit,
            "lastModified": repo.last_modified,
            "createdAt": repo.last_modified,
            "private": False,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "library_name": "transformers",
            "tags": ["transformers", "safetensors", "text-generation"],
            "pipeline_tag": "text-generation",
            "siblings": [f.sibling(blobs) for f in files],
            "spaces": [],
            "usedStorage": sum(f.size for f in files),
        }
        if repo.config is not None:
            info["config"] = repo.config
        self._reply(200, dumps(info), self.json_content_type, {})

    def _tree(self, repo_id: str, revision: str, folder: str, query: dict[str, list[str]]) -> None:
        repo = self.hub._repo(repo_id, revision, files=False)
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        prefix = f"{folder}/" if folder else ""
        below = [f for f in sorted(repo.files.values(), key=lambda f: f.path) if f.path.startswith(prefix)]
        if folder and not below:
            raise _HubError(404, f"{folder} does not exist on {revision!r}", "EntryNotFound", repo.commit)
        folders: set[str] = set()
        entries: list[dict[str, Any]] = []
        for f in below:
            parts = f.path[len(prefix) :].split("/")
            for depth in range(1, len(parts) if recursive else min(2, len(parts))):
                folders.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                entries.append(f.tree_entry())
        for name in sorted(folders):
            oid = hashlib.sha1(f"{repo.commit}:{name}".encode(), usedforsecurity=False).hexdigest()
            entries.append({"type": "directory", "oid": oid, "size": 0, "path": name})
        entries.sort(key=lambda e: e["path"])
        self._reply(200, dumps(entries), self.json_content_type, {})

    def _resolve(self, repo_id: str, revision: str, path: str) -> None:
        hub = self.hub
        repo = hub._repo(repo_id, revision, files=True)
        found = repo.files.get(path)
        hub._record_file(self.command, repo_id, path, self.headers.get("Range"))
        if found is None:
            raise _HubError(404, "Entry not found", "EntryNotFound", repo.commit)
        common = {"X-Repo-Commit": repo.commit, "Accept-Ranges": "bytes"}
        if found.lfs:
            location = hub._content_url(repo_id, found)
            body = f"Found. Redirecting to {location}".encode()
            self._reply(
                302,
                body,
                "text/plain; charset=utf-8",
                {
                    **common,
                    "ETag": f'"{found.blob_id}"',
                    "X-Linked-Etag": f'"{found.sha256}"',
                    "X-Linked-Size": str(found.size),
                    "Location": location,
                },
            )
            return
        self._file(found, {**common, "ETag": f'"{found.blob_id}"'})

    def _content(self, sha256: str, query: dict[str, list[str]]) -> None:
        hub = self.hub
        repo_id, path = query.get("repo", [""])[0], query.get("file", [""])[0]
        found = hub._lfs_file(repo_id, path, sha256)
        hub._record_file(self.command, repo_id, path, self.headers.get("Range"))
        if found is None:
            raise _HubError(404, "Not Found")
        self._file(found, {"ETag": f'"{sha256}"', "Accept-Ranges": "bytes"})

    # -- bodies ---------------------------------------------------------------------------------------

    def _file(self, found: HubFile, headers: dict[str, str]) -> None:
        """A file's bytes: whole (200) or a range (206), throttled and cut as the hub's script says."""
        start, end = 0, found.size  # end exclusive
        wanted = self.headers.get("Range")
        status = 200
        if wanted is not None:
            parsed = _parse_range(wanted, found.size)
            if parsed is None:
                raise_headers = {"Content-Range": f"bytes */{found.size}"}
                self._reply(416, b"", "text/plain", raise_headers)
                return
            start, end = parsed
            status = 206
            headers = {**headers, "Content-Range": f"bytes {start}-{end - 1}/{found.size}"}
        name = found.path.rsplit("/", 1)[-1]
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(name)}; filename=\"{name}\";",
            **headers,
        }
        self._head(status, end - start, headers)
        if self.command == "HEAD":
            return
        drop = self.hub._take_drop(found.path)
        self._body(found.source, start, end - start, drop)

    def _body(self, source: Path, start: int, length: int, drop: int | None) -> None:
        rate = self.hub.bytes_per_s
        step = (
            _FULL_SPEED_WRITE
            if rate is None
            else max(1024, min(64 * 1024, int(rate) // _THROTTLED_WRITES_PER_S))
        )
        limit = length if drop is None else min(length, drop)
        began, sent = time.monotonic(), 0
        with source.open("rb") as f:
            f.seek(start)
            while sent < limit:
                data = f.read(min(step, limit - sent))
                if not data:
                    raise RuntimeError(f"{source} shrank while being served")
                self._write(data)
                sent += len(data)
                self.hub._count_body(len(data))
                if rate is not None:
                    self._wait(sent / rate - (time.monotonic() - began))
        if drop is not None and drop < length:
            self._drop()


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``bytes=N-``, ``bytes=N-M`` or ``bytes=-N`` as [start, end); None if unsatisfiable or unparsed."""
    m = _RANGE.match(header.strip())
    if m is None or (not m[1] and not m[2]):
        return None
    if not m[1]:
        start, end = max(0, size - int(m[2])), size
    else:
        start = int(m[1])
        end = min(size, int(m[2]) + 1) if m[2] else size
    return (start, end) if start < end else None


class _ContentServer(LoopbackServer):
    """The hub's CDN: LFS bytes on a port of their own, so a client stops at the resolve redirect."""

    _handler_class = _HubHandler
    _thread_name = "hub-test-cdn"

    def __init__(self, hub: HubTestServer) -> None:
        super().__init__(verbose=hub.verbose)
        self.hub = hub


class HubTestServer(LoopbackServer):
    """A fake Hugging Face hub on 127.0.0.1 and a free port; see the module docstring.

    Script and observations, read or written at any time:

    - ``drop_after[name] = n``: the next GET of a file whose repo path (or base name) is ``name`` sends
      its headers with the full Content-Length, then ``n`` body bytes, then cuts the connection; the
      entry is consumed.
    - ``bytes_per_s``: None (full speed) or about how fast each file body is sent.
    - ``body_bytes_sent``: file-body bytes sent so far, all files.
    - ``file_requests``: ``(method, repo, filename, range header or None)`` per resolve or content
      request, in order. ``requests`` logs every request (path with its query, headers).
    """

    _handler_class = _HubHandler
    _thread_name = "hub-test"

    def __init__(self, *, port: int = 0, verbose: bool = False) -> None:
        super().__init__(port=port, verbose=verbose)
        self.drop_after: dict[str, int] = {}
        self.bytes_per_s: float | None = None
        self.file_requests: list[tuple[str, str, str, str | None]] = []
        self._body_bytes = 0
        self._repos: dict[str, _Repo] = {}
        self._cdn = _ContentServer(self)

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> HubTestServer:
        self._cdn.start()
        return super().start()

    def stop(self) -> None:
        super().stop()
        self._cdn.stop()

    # -- repos ----------------------------------------------------------------------------------------

    def add_repo(self, repo_id: str, directory: str | Path, *, gated: bool = False) -> str:
        """Serve every file under ``directory`` as ``repo_id`` at "main" and at the returned commit sha.

        The sha is the same for the same repo id and content. Adding a repo again replaces it.
        """
        root = Path(directory)
        if not root.is_dir():
            raise ValueError(f"{root} is not a directory")
        files: dict[str, HubFile] = {}
        for source in sorted(root.rglob("*")):
            if source.is_file():
                name = source.relative_to(root).as_posix()
                files[name] = HubFile.read(name, source)
        listing = "".join(f"{f.path}\0{f.blob_id}\n" for f in files.values())
        commit = hashlib.sha1(f"{repo_id}\n{listing}".encode(), usedforsecurity=False).hexdigest()
        config = None
        if "config.json" in files:
            with contextlib.suppress(ValueError, OSError):
                loaded = json.loads(files["config.json"].source.read_text())
                config = {k: loaded[k] for k in ("architectures", "model_type") if k in loaded}
        modified = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        with self._lock:
            self._repos[repo_id] = _Repo(repo_id, commit, files, gated, modified, config)
        return commit

    @property
    def body_bytes_sent(self) -> int:
        with self._lock:
            return self._body_bytes

    # -- state used by the handler --------------------------------------------------------------------

    def _repo(self, repo_id: str, revision: str, *, files: bool) -> _Repo:
        """The repo at a revision, or the hub's error: unknown repo, gated (for files), unknown revision."""
        with self._lock:
            repo = self._repos.get(repo_id)
        if repo is None:
            raise _HubError(404, "Repository not found", "RepoNotFound")
        if files and repo.gated:
            raise _HubError(
                401,
                f"Access to model {repo_id} is restricted. You must have access to it and be authenticated "
                "to access it. Please log in.",
                "GatedRepo",
            )
        if revision not in ("main", repo.commit):
            raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo

    def _lfs_file(self, repo_id: str, path: str, sha256: str) -> HubFile | None:
        with self._lock:
            repo = self._repos.get(repo_id)
        found = repo.files.get(path) if repo is not None else None
        return found if found is not None and found.lfs and found.sha256 == sha256 else None

    def _content_url(self, repo_id: str, found: HubFile) -> str:
        query = f"repo={quote(repo_id, safe='')}&file={quote(found.path, safe='')}"
        return f"{self._cdn.url}/cdn/{found.sha256}?{query}"

    def _record_file(self, method: str, repo_id: str, path: str, range_header: str | None) -> None:
        with self._lock:
            self.file_requests.append((method, repo_id, path, range_header))

    def _take_drop(self, path: str) -> int | None:
        with self._lock:
            for key in (path, path.rsplit("/", 1)[-1]):
                if key in self.drop_after:
                    return self.drop_after.pop(key)
        return None

    def _count_body(self, n: int) -> None:
        with self._lock:
            self._body_bytes += n


# --- command line ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; print ``READY <url>`` once listening, for the parent process."""
    parser = argparse.ArgumentParser(
        prog="python -m nbchat.testing.hub_server", description="A loopback fake Hugging Face hub."
    )
    parser.add_argument("--repo", action="append", default=[], metavar="ID=DIRECTORY", help="serve a repo")
    parser.add_argument("--bytes-per-s", type=float, default=None, help="throttle file bodies to this rate")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one)")
    parser.add_argument("--verbose", action="store_true", help="log requests to stderr")
    parser.set_defaults(chunk_count=None, chunk_delay=0.0, first_chunk_delay=0.0)  # no chat script here
    args = parser.parse_args(argv)

    server = HubTestServer(port=args.port, verbose=args.verbose)
    for spec in args.repo:
        repo_id, sep, directory = spec.partition("=")
        if not sep or not repo_id or not directory:
            parser.error(f"--repo takes ID=DIRECTORY, not {spec!r}")
        server.add_repo(repo_id, os.path.expanduser(directory))
    server.bytes_per_s = args.bytes_per_s
    return serve_until_signalled(server, args, lambda: server.url)


if __name__ == "__main__":
    sys.exit(main())
