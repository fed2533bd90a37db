"""What the chat panel costs a real kernel while a reply streams at about 1,000 chunks a second.

    .venv/bin/python bench/ui.py [--json FILE]

A real IPython kernel (started with jupyter_client, its widget messages going out on iopub as
in JupyterLab) streams 3,000-chunk replies from the loopback Ollama server, which runs in a
process of its own. Each round runs one reply with no panel and one with a panel displayed,
side by side; the kernel's CPU time (all threads) of the two is compared:

- ``redraws_per_s``: how often the panel redrew the streaming reply (target ≤ 20);
- ``ui_cost_fraction``: the kernel CPU the panel added ÷ the reply's wall time (target < 0.10).
"""

from __future__ import annotations

import json
import statistics

from common import figures_main, kernel_with_ollama, run_in_kernel

CHUNKS = 3000
CHUNK_DELAY_S = 0.001
ROUNDS = 3

KERNEL_SETUP = """
import gc, json, os, time
os.environ["OLLAMA_HOST"] = {url!r}
os.environ["NBCHAT_DATA_DIR"] = {data!r}
import nbchat
from IPython.display import display
session = nbchat.get_session()
session.register("bench", "correct horse")
session.login("bench", "correct horse")
session.new_conversation("bench")
session.configure(model="ollama:llama3.2:1b", max_new_tokens={max_tokens})
panel = None
redraws = []

def one_reply(with_panel):
    global panel
    if with_panel:  # a fresh panel for this reply, closed after it: plain rounds run with none
        panel = nbchat.ChatPanel()
        display(panel)
        follow = panel._follow
        def counted(reply):
            follow(reply)
            panel._live.observe(lambda change: redraws.append(time.perf_counter()), names="outputs")
        panel._follow = counted
    redraws.clear()
    cpu, wall = time.process_time(), time.perf_counter()
    reply = session.send("go").wait()
    if with_panel:
        while panel._live is not None:
            time.sleep(0.001)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert len(reply.text.split()) == {chunks}, len(reply.text.split())
    if with_panel:
        panel.close()
        panel = None
        gc.collect()
    print("RESULT " + json.dumps({{"cpu": cpu, "wall": wall, "redraws": len(redraws)}}))
"""


def measure() -> dict[str, float]:
    with kernel_with_ollama(CHUNKS, CHUNK_DELAY_S, "nbchat-bench-ui-") as (client, url, data):
        run_in_kernel(client, KERNEL_SETUP.format(url=url, data=data, max_tokens=CHUNKS + 10, chunks=CHUNKS))
        plain, shown = [], []
        for _ in range(ROUNDS):
            for with_panel, results in ((False, plain), (True, shown)):
                line = run_in_kernel(client, f"one_reply({with_panel})")[-1]
                results.append(json.loads(line.removeprefix("RESULT ")))
    extra = [s["cpu"] - p["cpu"] for p, s in zip(plain, shown, strict=True)]
    return {
        "redraws_per_s": statistics.median(s["redraws"] / s["wall"] for s in shown),
        "ui_cost_fraction": max(
            0.0, statistics.median(e / s["wall"] for e, s in zip(extra, shown, strict=True))
        ),
        "ui_reply_wall_s": statistics.median(s["wall"] for s in shown),
        "ui_chunks_per_s": CHUNKS / statistics.median(s["wall"] for s in shown),
    }


def main() -> int:
    return figures_main(__doc__, lambda args: measure())


if __name__ == "__main__":
    raise SystemExit(main())
