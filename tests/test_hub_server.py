"""The fake Hugging Face hub is faithful: huggingface_hub and transformers download from it unchanged.

nbchat's first use of ``qwen3`` downloads the checkpoint with ``huggingface_hub``, and no hub can be
reached here, so those downloads are tested against ``nbchat.testing.hub_server``. These tests hold
the rig to the hub's protocol by running the official clients against it: ``snapshot_download``,
``hf_hub_download``, ``HfApi.model_info``/``list_repo_tree`` and ``from_pretrained`` in a process
whose ``HF_ENDPOINT`` points at it, including a connection cut half-way and a download killed
between calls. They also pin down what huggingface_hub 2.4 itself does about interruptions, which
nbchat's download path has to build on.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi, hf_hub_download, hf_hub_url, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import get_hf_file_metadata, http_get
from polling import wait_until

from nbchat.testing.hub_server import HubTestServer

REPO_ROOT = Path(__file__).resolve().parent.parent
REPO = "tiny/Qwen3-test"
MIB = 1024 * 1024
CHUNK = 10 * MIB  # huggingface_hub's DOWNLOAD_CHUNK_SIZE: what a resumed download can keep


def make_repo(root: Path, weights: int = 3 * MIB) -> Path:
    """A few KB of json (one file in a folder) and ``weights`` random bytes of model.safetensors."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(
        json.dumps({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]})
    )
    (root / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 131072, "pad": "x" * 3000}))
    (root / "extra").mkdir()
    (root / "extra" / "notes.txt").write_text("a file in a folder\n")
    (root / "model.safetensors").write_bytes(os.urandom(weights))
    return root


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def gets(hub: HubTestServer, name: str, since: int = 0) -> list[str | None]:
    """The Range header of each GET of ``name`` (from the ``since``-th file request on), in order."""
    return [r for method, _, f, r in hub.file_requests[since:] if method == "GET" and f == name]


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0%b" % (len(data), data), usedforsecurity=False).hexdigest()


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


@pytest.fixture
def hub(repo_dir: Path) -> Iterator[HubTestServer]:
    with HubTestServer() as server:
        server.add_repo(REPO, repo_dir)
        yield server


# --- downloads that go well ------------------------------------------------------------------------------


def test_snapshot_download_gets_every_file_byte_for_byte_and_a_second_call_downloads_nothing(
    hub: HubTestServer, repo_dir: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    folder = snapshot_download(REPO, endpoint=hub.url, cache_dir=cache)
    assert files_of(Path(folder)) == files_of(repo_dir)
    commit = Path(folder).name
    assert commit == (cache / "models--tiny--Qwen3-test" / "refs" / "main").read_text()
    paths = [r["path"].split("?")[0] for r in hub.requests]
    assert paths[:2] == [f"/api/models/{REPO}/revision/main", f"/api/models/{REPO}/tree/{commit}"]
    assert sorted(f for m, _, f, _ in hub.file_requests if m == "GET") == sorted(files_of(repo_dir))
    sent = hub.body_bytes_sent
    assert sent == sum(len(b) for b in files_of(repo_dir).values())

    seen = len(hub.file_requests)
    again = snapshot_download(REPO, endpoint=hub.url, cache_dir=cache)
    assert again == folder
    assert hub.file_requests[seen:] == [], "the cached tree and snapshot answer: no HEAD, no GET"
    assert hub.body_bytes_sent == sent
    assert snapshot_download(REPO, endpoint=hub.url, cache_dir=cache, local_files_only=True) == folder


def test_hf_hub_download_names_blobs_by_git_blob_id_and_lfs_sha256(
    hub: HubTestServer, repo_dir: Path, tmp_path: Path
) -> None:
    config = (repo_dir / "config.json").read_bytes()
    path = Path(hf_hub_download(REPO, "config.json", endpoint=hub.url, cache_dir=tmp_path))
    assert path.read_bytes() == config
    assert path.resolve().name == git_blob_id(config)

    weights = (repo_dir / "model.safetensors").read_bytes()
    path = Path(hf_hub_download(REPO, "model.safetensors", endpoint=hub.url, cache_dir=tmp_path))
    assert path.resolve().name == hashlib.sha256(weights).hexdigest()
    assert path.read_bytes() == weights
    nested = hf_hub_download(REPO, "extra/notes.txt", endpoint=hub.url, cache_dir=tmp_path)
    assert Path(nested).read_text() == "a file in a folder\n"


def test_model_info_and_the_tree_report_sizes_and_lfs_sha256(hub: HubTestServer, repo_dir: Path) -> None:
    api = HfApi(endpoint=hub.url)
    info = api.model_info(REPO, files_metadata=True)
    files = files_of(repo_dir)
    assert info.id == REPO and info.sha is not None and len(info.sha) == 40 and info.gated is False
    assert info.siblings is not None
    assert {s.rfilename: s.size for s in info.siblings} == {name: len(data) for name, data in files.items()}
    lfs = {s.rfilename: s.lfs for s in info.siblings if s.lfs is not None}
    assert list(lfs) == ["model.safetensors"]
    assert lfs["model.safetensors"].sha256 == hashlib.sha256(files["model.safetensors"]).hexdigest()
    assert [s.size for s in api.model_info(REPO).siblings or []] == [None] * len(files)  # sizes only on ask

    flat = {e.path: type(e).__name__ for e in api.list_repo_tree(REPO)}
    assert flat == {
        "config.json": "RepoFile",
        "extra": "RepoFolder",
        "model.safetensors": "RepoFile",
        "tokenizer_config.json": "RepoFile",
    }
    deep = [e.path for e in api.list_repo_tree(REPO, recursive=True, revision=info.sha)]
    assert "extra/notes.txt" in deep
    assert [e.path for e in api.list_repo_tree(REPO, path_in_repo="extra")] == ["extra/notes.txt"]


def test_resolve_answers_as_the_hub_does_with_ranges_and_no_xet_headers(
    hub: HubTestServer, repo_dir: Path
) -> None:
    weights = (repo_dir / "model.safetensors").read_bytes()
    with httpx.Client(timeout=5) as http:
        head = http.head(hf_hub_url(REPO, "model.safetensors", endpoint=hub.url))
        assert head.status_code == 302
        assert head.headers["X-Linked-Etag"] == f'"{hashlib.sha256(weights).hexdigest()}"'
        assert int(head.headers["X-Linked-Size"]) == len(weights)
        assert not [h for h in head.headers if h.lower().startswith("x-xet")]
        content = head.headers["Location"]
        ranged = http.get(content, headers={"Range": "bytes=1000-"})
        assert ranged.status_code == 206
        assert ranged.headers["Content-Range"] == f"bytes 1000-{len(weights) - 1}/{len(weights)}"
        assert ranged.content == weights[1000:]
        assert http.get(content, headers={"Range": "bytes=10-19"}).content == weights[10:20]
        assert http.get(content, headers={"Range": f"bytes={len(weights)}-"}).status_code == 416

        registry = http.get(f"{hub.url}/api/agent-harnesses")  # huggingface_hub asks once a day
        assert registry.json() == {"standardEnvVars": [], "harnesses": {}}
        assert http.get(f"{hub.url}/api/spaces/x/y").status_code == 404

        config = http.get(hf_hub_url(REPO, "config.json", endpoint=hub.url))
        assert config.status_code == 200 and config.content == (repo_dir / "config.json").read_bytes()
        assert config.headers["Accept-Ranges"] == "bytes" and len(config.headers["X-Repo-Commit"]) == 40
        assert config.headers["ETag"] == f'"{git_blob_id(config.content)}"'


# --- interruptions -------------------------------------------------------------------------------------


def test_a_connection_dropped_half_way_is_resumed_by_snapshot_download_with_a_range(tmp_path: Path) -> None:
    """huggingface_hub retries a cut body with ``Range: bytes=<what it kept>-``. It keeps whole reads of
    10 MiB only, so a cut at exactly 10 MiB of a 12 MiB file resumes there and costs nothing twice."""
    repo = make_repo(tmp_path / "repo", weights=12 * MIB)
    with HubTestServer() as hub:
        hub.add_repo(REPO, repo)
        hub.drop_after["model.safetensors"] = CHUNK
        folder = snapshot_download(REPO, endpoint=hub.url, cache_dir=tmp_path / "cache")
        assert files_of(Path(folder)) == files_of(repo)
        assert gets(hub, "model.safetensors") == [None, f"bytes={CHUNK}-"]
        assert hub.body_bytes_sent == sum(len(b) for b in files_of(repo).values())
        assert hub.drop_after == {}, "the drop was consumed"


def test_a_cut_inside_huggingface_hubs_10_mib_read_restarts_that_file_from_zero(
    hub: HubTestServer, repo_dir: Path, tmp_path: Path
) -> None:
    """What nbchat builds on: a cut before the first 10 MiB loses everything received (2.4's chunk size)."""
    hub.drop_after["model.safetensors"] = 1_000_000
    path = hf_hub_download(REPO, "model.safetensors", endpoint=hub.url, cache_dir=tmp_path)
    assert Path(path).read_bytes() == (repo_dir / "model.safetensors").read_bytes()
    assert gets(hub, "model.safetensors") == [None, None]
    assert hub.body_bytes_sent == 1_000_000 + 3 * MIB


def test_a_download_killed_between_calls_is_restarted_and_its_partial_blob_is_left_behind(
    tmp_path: Path,
) -> None:
    """huggingface_hub 2.4 writes to ``<etag>.<random>.incomplete`` and never reuses one: a process
    killed mid-download leaves its partial blob, and the next call downloads the whole file again."""
    repo = make_repo(tmp_path / "repo", weights=16 * MIB)
    cache = tmp_path / "cache"
    blobs = cache / "models--tiny--Qwen3-test" / "blobs"
    sha256 = hashlib.sha256((repo / "model.safetensors").read_bytes()).hexdigest()
    partials = f"{sha256}.*.incomplete"
    code = (
        "import sys, huggingface_hub as h;"
        "h.snapshot_download(sys.argv[1], endpoint=sys.argv[2], cache_dir=sys.argv[3])"
    )
    with HubTestServer() as hub:
        hub.add_repo(REPO, repo)
        hub.bytes_per_s = 8_000_000
        proc = subprocess.Popen(
            [sys.executable, "-c", code, REPO, hub.url, str(cache)], stderr=subprocess.DEVNULL
        )
        try:
            wait_until(lambda: any(p.stat().st_size for p in blobs.glob(partials)), seconds=60)
        finally:
            proc.kill()
            proc.wait()
        (partial,) = blobs.glob(partials)
        kept = partial.stat().st_size
        assert 0 < kept < 16 * MIB
        assert not (blobs / sha256).exists()

        hub.bytes_per_s = None
        before = hub.body_bytes_sent
        seen = len(hub.file_requests)
        folder = snapshot_download(REPO, endpoint=hub.url, cache_dir=cache)
        assert files_of(Path(folder)) == files_of(repo)
        assert gets(hub, "model.safetensors", since=seen) == [None], "no Range: from zero"
        assert hub.body_bytes_sent - before >= 16 * MIB
        assert partial.exists() and partial.stat().st_size == kept, "the orphan stays"


def test_a_partial_blob_resumed_with_http_get_then_moved_into_blobs_is_adopted_by_snapshot_download(
    hub: HubTestServer, repo_dir: Path, tmp_path: Path
) -> None:
    """What a resuming download path can build on: the server honours ``Range`` from a partial file's
    size, and snapshot_download takes a complete ``blobs/<etag>`` as downloaded (one HEAD, no GET)."""
    weights = (repo_dir / "model.safetensors").read_bytes()
    cache = tmp_path / "cache"
    blobs = cache / "models--tiny--Qwen3-test" / "blobs"
    blobs.mkdir(parents=True)
    meta = get_hf_file_metadata(hf_hub_url(REPO, "model.safetensors", endpoint=hub.url), endpoint=hub.url)
    assert meta.etag == hashlib.sha256(weights).hexdigest() and meta.size == len(weights)
    partial = blobs / f"{meta.etag}.incomplete"
    partial.write_bytes(weights[:1_234_567])
    with partial.open("ab") as f:
        http_get(meta.location, f, resume_size=partial.stat().st_size, expected_size=meta.size)
    assert partial.read_bytes() == weights
    assert gets(hub, "model.safetensors") == ["bytes=1234567-"]
    assert hub.body_bytes_sent == len(weights) - 1_234_567
    partial.replace(blobs / meta.etag)

    folder = snapshot_download(REPO, endpoint=hub.url, cache_dir=cache)
    assert files_of(Path(folder)) == files_of(repo_dir)
    assert gets(hub, "model.safetensors") == ["bytes=1234567-"], "the blob in place was not fetched again"


# --- errors ----------------------------------------------------------------------------------------------


def test_an_unknown_repo_a_gated_repo_and_an_unknown_revision_raise_huggingface_hubs_errors(
    hub: HubTestServer, repo_dir: Path, tmp_path: Path
) -> None:
    hub.add_repo("org/gated", repo_dir, gated=True)
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("nobody/nothing", endpoint=hub.url, cache_dir=tmp_path)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("nobody/nothing", "config.json", endpoint=hub.url, cache_dir=tmp_path)
    with pytest.raises(GatedRepoError):
        snapshot_download("org/gated", endpoint=hub.url, cache_dir=tmp_path)
    with pytest.raises(GatedRepoError):
        hf_hub_download("org/gated", "config.json", endpoint=hub.url, cache_dir=tmp_path)
    assert HfApi(endpoint=hub.url).model_info("org/gated").gated == "manual", "as on the hub: info is public"
    with pytest.raises(RevisionNotFoundError):
        snapshot_download(REPO, revision="v9", endpoint=hub.url, cache_dir=tmp_path)
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(REPO, "missing.json", endpoint=hub.url, cache_dir=tmp_path)
    assert hub.body_bytes_sent == 0


# --- throttling and the command line -------------------------------------------------------------------


def test_a_throttled_file_takes_visible_time(hub: HubTestServer, tmp_path: Path) -> None:
    one_mb = tmp_path / "slow"
    one_mb.mkdir()
    (one_mb / "blob.bin").write_bytes(os.urandom(1_000_000))
    hub.add_repo("tiny/slow", one_mb)
    hub.bytes_per_s = 2_000_000
    began = time.monotonic()
    hf_hub_download("tiny/slow", "blob.bin", endpoint=hub.url, cache_dir=tmp_path / "cache")
    assert time.monotonic() - began >= 0.4


@pytest.mark.slow
def test_the_command_line_server_serves_a_repo_given_on_the_command_line(
    repo_dir: Path, tmp_path: Path
) -> None:
    command = [sys.executable, "-m", "nbchat.testing.hub_server", "--repo", f"{REPO}={repo_dir}"]
    proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 10.0)
        assert ready, "no READY line within 10 s"
        word, url = proc.stdout.readline().split()
        assert word == "READY" and url.startswith("http://127.0.0.1:")
        path = hf_hub_download(REPO, "model.safetensors", endpoint=url, cache_dir=tmp_path)
        assert Path(path).read_bytes() == (repo_dir / "model.safetensors").read_bytes()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        assert proc.stderr is not None and proc.stderr.read() == "", "nothing is logged by default"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


# --- the path users run ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_from_pretrained_loads_a_tiny_qwen3_from_the_hub_named_by_hf_endpoint(tmp_path: Path) -> None:
    from nbchat.testing.tiny_qwen3 import tiny_qwen3

    checkpoint = tiny_qwen3(tmp_path / "tiny")
    config = json.loads((checkpoint / "config.json").read_text())
    script = """if True:
        import json, torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained("tiny/Qwen3-test")
        model = AutoModelForCausalLM.from_pretrained("tiny/Qwen3-test")
        ids = tokenizer("Hello there! How are you?", return_tensors="pt").input_ids
        with torch.no_grad():
            logits = model(ids).logits
        print(json.dumps({"hidden": model.config.hidden_size, "layers": model.config.num_hidden_layers,
                          "shape": list(logits.shape), "tokens": ids.shape[1], "eos": tokenizer.eos_token}))
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    with HubTestServer() as hub:
        hub.add_repo(REPO, checkpoint)
        env.update(HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(tmp_path / "cache"), HF_HOME=str(tmp_path / "home"))
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, check=False
        )
        assert done.returncode == 0, done.stderr[-3000:]
        loaded = json.loads(done.stdout.strip().splitlines()[-1])
        assert loaded["hidden"] == config["hidden_size"] and loaded["layers"] == config["num_hidden_layers"]
        assert loaded["shape"] == [1, loaded["tokens"], config["vocab_size"]]
        assert loaded["eos"] == "<|im_end|>"
        assert "model.safetensors" in [f for m, _, f, _ in hub.file_requests if m == "GET"]
        assert hub.body_bytes_sent >= (checkpoint / "model.safetensors").stat().st_size
