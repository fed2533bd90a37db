"""Long conversations stay fast: opening 1,000 messages in the browser, streaming into them.

    .venv/bin/python bench/long_chat.py [--json FILE]

- ``open_1000_messages_s``: real JupyterLab + Debian's Chromium; the panel switches from a
  2-message conversation to a 1,000-message one, timed from the choice until the newest message
  is on screen (with *Show earlier* above it); median of several opens, alternating.
- ``stream_cost_ratio_long_vs_new``: a real kernel (jupyter_client; the panel's widget messages
  go out on iopub as in JupyterLab) with a panel displayed streams a 3,000-chunk reply into the
  1,000-message conversation and into a new one, side by side; the ratio of the kernel's CPU
  time (all threads) of the two. 1 means a long conversation costs a reply nothing extra.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import figures_main, kernel_with_ollama, run_in_kernel

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the browser suites' JupyterLab and Chromium helpers

MESSAGES = 1000
OPENS = 5
CHUNKS = 3000
CHUNK_DELAY_S = 0.001
ROUNDS = 3
PASSWORD = "correct horse"  # noqa: S105  (a scratch account in a temp dir)

#: Two conversations of one user, made through the store: "long" (1,000 messages) and "short".
SEED = """
import os
from nbchat import Message
from nbchat.session import get_session
session = get_session()
session.register("bench", {password!r})
session.login("bench", {password!r})
store = session._store()
long = session.new_conversation("long")
session.configure(model="ollama:llama3.2:1b", max_new_tokens={max_tokens})
for i in range({messages} // 2):
    store.append(long.id, Message("user", f"question {{i}}: " + "words " * 20))
    store.append(long.id, Message("assistant", f"answer {{i}}\\n\\n" + "Some **Markdown** text. " * 10))
short = session.new_conversation("short")
session.configure(model="ollama:llama3.2:1b", max_new_tokens={max_tokens})
for text in ("hello", "hi there"):
    store.append(short.id, Message("user" if text == "hello" else "assistant", text))
print("seeded", len(session.select(long.id).messages), len(session.select(short.id).messages))
"""

KERNEL_REPLY = """
import gc, json, time
import nbchat
from IPython.display import display
panel = nbchat.ChatPanel()
display(panel)

def one_reply(conversation_id):
    session.select(conversation_id)  # the panel shows it, as after a click
    cpu, wall = time.process_time(), time.perf_counter()
    reply = session.send("go").wait()
    while panel._live is not None:
        time.sleep(0.001)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert len(reply.text.split()) == {chunks}, len(reply.text.split())
    print("RESULT " + json.dumps({{"cpu": cpu, "wall": wall, "shown": len(session.history())}}))
"""


def measure_open(messages: int = MESSAGES, opens: int = OPENS) -> dict[str, float]:
    from browser import CHROMIUM, CHROMIUM_ARGS, KERNEL_IDLE, choose, notebook, running_lab
    from playwright.sync_api import expect, sync_playwright

    from nbchat.testing.ollama_server import OllamaTestServer

    seed = SEED.format(password=PASSWORD, messages=messages, max_tokens=512)
    times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="nbchat-bench-long-") as scratch, OllamaTestServer() as ollama:
        env = {"NBCHAT_DATA_DIR": str(Path(scratch) / "data"), "OLLAMA_HOST": ollama.url}
        chat = notebook(seed, "import nbchat; nbchat.panel()", ids=["seed", "panel"])
        with running_lab(Path(scratch), {"chat.ipynb": chat}, env) as lab, sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = chromium.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(120_000)
            page.goto(f"{lab['url']}/lab/tree/chat.ipynb?token={lab['token']}")
            page.wait_for_selector(KERNEL_IDLE, timeout=120_000)
            page.click(".jp-Notebook .jp-Cell .jp-InputArea-editor")
            page.keyboard.press("Shift+Enter")
            expect(page.locator(".jp-Cell").nth(0).locator(".jp-OutputArea-output")).to_contain_text(
                "seeded", timeout=120_000
            )
            page.keyboard.press("Shift+Enter")
            page.wait_for_selector(".nbchat-messages .nbchat-message")
            newest = page.locator(".nbchat-messages .nbchat-message", has_text=f"answer {messages // 2 - 1}")
            for _ in range(opens):
                choose(page, ".nbchat-conversations", "short")
                page.wait_for_selector(".nbchat-messages .nbchat-message:has-text('hi there')")
                started = time.perf_counter()
                choose(page, ".nbchat-conversations", "long")
                newest.wait_for(state="visible")
                page.wait_for_selector(".nbchat-show-earlier", state="visible")
                times.append(time.perf_counter() - started)
            shown = page.locator(".nbchat-messages .nbchat-message").count()
            chromium.close()
    return {"open_1000_messages_s": statistics.median(times), "open_1000_messages_shown": float(shown)}


def measure_stream(messages: int = MESSAGES, rounds: int = ROUNDS) -> dict[str, float]:
    with kernel_with_ollama(CHUNKS, CHUNK_DELAY_S, "nbchat-bench-long-") as (client, url, data):
        setup = f"import os\nos.environ['OLLAMA_HOST'] = {url!r}\nos.environ['NBCHAT_DATA_DIR'] = {data!r}\n"
        run_in_kernel(
            client, setup + SEED.format(password=PASSWORD, messages=messages, max_tokens=CHUNKS + 10)
        )
        run_in_kernel(client, KERNEL_REPLY.format(chunks=CHUNKS))
        ids = run_in_kernel(client, "print(long.id, short.id)")[-1].split()
        results: dict[str, list[dict[str, float]]] = {"long": [], "new": []}
        for _ in range(rounds):
            fresh = run_in_kernel(client, "print(session.new_conversation('new').id)")[-1]
            run_in_kernel(
                client, f"session.configure(model='ollama:llama3.2:1b', max_new_tokens={CHUNKS + 10})"
            )
            for kind, conversation_id in (("new", fresh), ("long", ids[0])):
                line = run_in_kernel(client, f"one_reply({conversation_id!r})")[-1]
                results[kind].append(json.loads(line.removeprefix("RESULT ")))
    long_cpu = statistics.median(r["cpu"] for r in results["long"])
    new_cpu = statistics.median(r["cpu"] for r in results["new"])
    return {
        "stream_cost_ratio_long_vs_new": long_cpu / new_cpu,
        "stream_cpu_long_s": long_cpu,
        "stream_cpu_new_s": new_cpu,
    }


def measure() -> dict[str, float]:
    return {**measure_stream(), **measure_open()}


def main() -> int:
    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--only", choices=("open", "stream"), help="measure one of the two")

    steps = {"open": measure_open, "stream": measure_stream, None: measure}
    return figures_main(__doc__, lambda args: steps[args.only](), options=options)


if __name__ == "__main__":
    raise SystemExit(main())
