"""The playground's streaming speed with its page open in Chromium, against the command line's on the same model."""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


PROMPT = "The history of natural language processing"


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


# Runs in the page: click Generate and note when the status line first says the run finished.
CLICK_AND_TIME = """() => new Promise(resolve => {
  const status = document.querySelector('.opt-status');
  const start = performance.now();
  const seen = new MutationObserver(() => {
    if (status.innerText.includes('finished:')) { seen.disconnect(); resolve((performance.now() - start) / 1000); }
  });
  seen.observe(status, {subtree: true, childList: true, characterData: true});
  document.querySelector('.opt-generate button, button.opt-generate').click();
})"""


def model_folder(model: str, base: Path) -> str:
    """`model` as a folder: 'tiny' (the tests' tiny OPT), a size (random weights in its real shape), or a folder."""
    from tiny_models import save_tiny_model

    from helpers.opt.random_weights import random_model
    from helpers.opt.sizes import SIZES
    from helpers.opt.tokenizer import opt_tokenizer

    if model == "tiny":
        return str(save_tiny_model(base / "tiny", "pre-ln"))
    if model in SIZES:
        import torch

        folder = base / model
        random_model(model, dtype=torch.float32).save_pretrained(folder)
        opt_tokenizer().save_pretrained(folder)
        return str(folder)
    return model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def voila(folder: str, log: Path):
    """The playground served as the README's `make playground` serves it; stopped with all it started."""
    port = free_port()
    env = {**os.environ, "OPT_MODEL": folder, "OPT_DEVICE": "cpu", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "voila", str(REPO / "notebooks" / "05_playground.ipynb"),
                                "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1", "--ServerApp.allow_root=True",
                                # who may use it, as in the Makefile (docs/app-server.md)
                                '--Voila.tornado_settings={"allow_remote_access": False, '
                                '"local_hostnames": ["localhost", "127.0.0.1"]}',
                                "--Voila.identity_provider_class=helpers.playground.server.AppIdentityProvider"],
                               env=env, cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5):
                    break
            except OSError:
                if process.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"Voila did not start:\n{log.read_text()[-2000:]}") from None
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


def command_line_run(folder: str, new_tokens: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "helpers", "generate", "--model", folder, "--device", "cpu",
                          "--greedy", "--max-new-tokens", str(new_tokens), "--json", PROMPT],
                         capture_output=True, text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads(out.stdout)


def prepare_page(page, new_tokens: int) -> None:
    page.wait_for_function("() => (document.querySelector('.opt-model-status')?.innerText || '').includes('loaded in')",
                           timeout=300_000)
    page.select_option(".opt-preset select", "the tutorial's greedy")
    page.fill(".opt-prompt textarea", PROMPT)
    page.locator(".opt-max-new-tokens .widget-readout").click()
    page.keyboard.press("Control+A")
    page.keyboard.type(str(new_tokens))
    page.keyboard.press("Enter")
    page.wait_for_function(f"() => document.querySelector('.opt-max-new-tokens .widget-readout').innerText.trim() "
                           f"=== '{new_tokens}'")


def playground_run(page) -> dict:
    seconds = page.evaluate(CLICK_AND_TIME)
    status = page.inner_text(".opt-status")
    tokens = int(status.split(" tokens")[0])
    shown = float(status.split(" \u00b7 ")[1].split(" tokens/s")[0])
    page.wait_for_function("() => !document.querySelector('.opt-generate button, button.opt-generate').disabled")
    return {"new_tokens": tokens, "tokens_per_second": shown, "page_seconds": seconds,
            "page_tokens_per_second": tokens / seconds, "status": status}


def measure(model: str, new_tokens: int, repeats: int, chromium: str) -> dict:
    from playwright.sync_api import sync_playwright

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="opt-playground-bench-") as tmp:
        folder = model_folder(model, Path(tmp))
        with voila(folder, Path(tmp) / "voila.log") as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS, headless=True)
            page = browser.new_page(viewport={"width": 1300, "height": 1100})
            page.goto(url, timeout=300_000)
            prepare_page(page, new_tokens)
            playground_run(page)  # warm-up: first-call costs on both sides
            command_line_run(folder, new_tokens)
            cli, pg = [], []
            for _ in range(repeats):
                cli.append(command_line_run(folder, new_tokens))
                pg.append(playground_run(page))
            browser.close()
    cli_rate = statistics.median(r["tokens_per_second"] for r in cli)
    pg_rate = statistics.median(r["tokens_per_second"] for r in pg)
    page_rate = statistics.median(r["page_tokens_per_second"] for r in pg)
    # each playground run against the command-line run just before it: a shared machine drifts between pairs
    pairs = [p["tokens_per_second"] / c["tokens_per_second"] for c, p in zip(cli, pg)]
    page_pairs = [p["page_tokens_per_second"] / c["tokens_per_second"] for c, p in zip(cli, pg)]
    return {
        "schema": "playground-speed/1", "model": model, "new_tokens": new_tokens, "repeats": repeats,
        "device": "cpu", "dtype": "float32", "cpus": os.cpu_count(), "machine": platform.machine(),
        "load_average": [load_before, os.getloadavg()[0]],  # a shared machine: what else was running
        "command_line_tokens_per_second": cli_rate, "playground_tokens_per_second": pg_rate,
        "page_tokens_per_second": page_rate, "ratio": statistics.median(pairs),
        "page_ratio": statistics.median(page_pairs), "pair_ratios": pairs, "page_pair_ratios": page_pairs,
        "command_line_runs": [{k: r[k] for k in ("new_tokens", "tokens_per_second", "total_seconds")} for r in cli],
        "playground_runs": pg,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tests/playground_bench.py", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="opt-125m", help="'tiny', an OPT size (random weights) or a folder")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    parser.add_argument("--json", help="write the row to this file")
    args = parser.parse_args(argv)
    if not Path(args.chromium).exists():
        print(f"Chromium is not at {args.chromium}: install it (sudo apt-get install -y chromium) or pass --chromium.",
              file=sys.stderr)
        return 1
    row = measure(args.model, args.new_tokens, args.repeats, args.chromium)
    print(f"{args.model}: command line {row['command_line_tokens_per_second']:.1f} tokens/s, playground "
          f"{row['playground_tokens_per_second']:.1f} ({row['ratio']:.2f}x), as the page saw it "
          f"{row['page_tokens_per_second']:.1f} ({row['page_ratio']:.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
