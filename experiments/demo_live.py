"""The live demo (`make demo-live`): a real jsorc server on this machine, a loadtest of one app
under `all_remote`, then under `model_based`, with the two benchmark reports side by side.

    python experiments/demo_live.py [--app restaurant_chatbot] [--clients 4] [--duration 20]

It starts `jsorc serve` on a free 127.0.0.1 port with a fresh admin token, configures the
app's example actions (numpy "models", scaled down to fit: JSORC_ACTION_SCALE), turns the
controller on (every 2 s), sets `all_remote` and waits until every action is served by a
replica process, drives the loadtest, switches to `model_based`, shows the placements it
chooses, loadtests again, prints both reports, and stops everything (the server stops its
replica processes). All through the `jsorc` CLI, as a user would.

Before it stops the server it opens the dashboard (`/dashboard`, signed in with a viewer
token) in headless Chromium, writes its screenshot (`--screenshot`, default
docs/dashboard.png) and prints the dashboard's URL while it is served; the last line printed
is that URL again, said to have been served during the demo (the server has stopped by
then). Without chromium, chromium-driver or selenium it says so and skips the screenshot.

The server gets a temporary --state-dir, removed at the end: the default
(~/.local/state/jsorc) would keep this run's state and hand it to a later server that
happens to get the same port.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jsorc_live import cli

APPS = {  # the loadtest apps' actions, as in jsorc_live.runtime
    "restaurant_chatbot": ("bi_enc", "tfm_ner"),
    "sentence_pairing": ("sbert_sim", "bi_enc"),
    "discussion_analysis": ("bi_enc", "cl_summer"),
    "flow_analysis": ("text_seg", "tfm_ner", "use_enc"),
}


def jsorc(url: str, token: str, *argv: str) -> Any:
    """Run one `jsorc` command in-process and return its JSON answer (exit on refusal)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = cli.main([*argv, "--server", url, "--token", token, "--json"])
    if code != 0:
        raise SystemExit(f"jsorc {' '.join(argv)} failed (exit {code})")
    return json.loads(buffer.getvalue())


@contextlib.contextmanager
def server(token: str, *serve_args: str, stop_s: float = 20.0) -> Iterator[str]:
    """`jsorc serve` (with `serve_args`) on a free 127.0.0.1 port, its log in a temporary
    file (a pipe nobody reads would stall a talkative server); stopped with SIGTERM, after
    which the server stops what its backend started."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "JSORC_TOKEN": token}
    fd, log = tempfile.mkstemp(prefix="jsorc-serve-", suffix=".log")
    state = tempfile.TemporaryDirectory(prefix="jsorc-demo-state-")
    proc = subprocess.Popen([sys.executable, "-m", "jsorc_live.cli", "serve", "--port",
                             str(port), "--state-dir", state.name, *serve_args], env=env,
                            stdout=fd, stderr=subprocess.STDOUT)
    os.close(fd)  # the server holds its own copy
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        import httpx

        while True:
            if proc.poll() is not None:
                raise SystemExit(f"jsorc serve exited: {Path(log).read_text()[-2000:]}")
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("jsorc serve did not answer within 60 s")
            time.sleep(0.2)
        print(f"jsorc serve {' '.join(serve_args)} is up at {url}".replace("  ", " "),
              file=sys.stderr)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=stop_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        state.cleanup()
        print(f"jsorc serve stopped (and what its backend started with it); log {log}",
              file=sys.stderr)


def wait_placements(url: str, token: str, actions: tuple[str, ...], want: str,
                    timeout_s: float = 90.0) -> dict[str, str]:
    """Poll `jsorc status` until every action's placement starts with `want` and is settled."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = jsorc(url, token, "status")["actions"]
        shown = {a: str(status[a].get("placement")) for a in actions if a in status}
        settled = all(not status[a].get("transition") for a in shown)
        if settled and (not want or all(p.startswith(want) for p in shown.values())):
            return shown
        if time.monotonic() > deadline:
            print(f"  (still moving after {timeout_s:g} s: {shown})", file=sys.stderr)
            return shown
        time.sleep(1.0)


def loadtest(url: str, token: str, app: str, clients: int, duration: float) -> dict[str, Any]:
    answer = jsorc(url, token, "loadtest", "--app", app, "--clients", str(clients),
                   "--duration", str(duration))
    stats: dict[str, Any] = answer["benchmark"]["walker_run"][app]
    stats["failed"] = answer["failed"]
    return stats


def dashboard_screenshot(url: str, token: str, path: Path, timeout_s: float = 30.0) -> str:
    """Sign in to `url`/dashboard with `token` in headless Chromium, wait until the charts
    hold points, and save the page to `path`. What happened, as one line (a missing browser
    is a skip, not an error)."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        return ("no screenshot: chromium and chromium-driver are not installed "
                "(apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
    except ImportError:
        return "no screenshot: selenium is not installed (pip install -e '.[dev]')"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,2000", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(f"{url}/dashboard")
        driver.find_element(By.ID, "token").send_keys(token)
        driver.find_element(By.CSS_SELECTOR, "#login button").click()
        deadline = time.monotonic() + timeout_s
        drawn = "return Number((document.getElementById('chart-throughput') || " \
                "{dataset: {}}).dataset.points || 0)"
        while driver.execute_script(drawn) < 3 and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(1.0)  # the polls after the first draw settle the tables
        # The whole page, decisions and services below the charts included.
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, min(int(height) + 300, 6000))  # + the window frame
        time.sleep(0.5)
        path.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(path))
    finally:
        driver.quit()
    return f"screenshot of the dashboard: {path}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", default="restaurant_chatbot", choices=sorted(APPS))
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--screenshot", type=Path,
                        default=Path(__file__).resolve().parent.parent / "docs" / "dashboard.png",
                        help="where the dashboard's screenshot goes (default %(default)s)")
    args = parser.parse_args(argv)
    actions = APPS[args.app]
    token = secrets.token_hex(16)
    viewer = secrets.token_hex(16)  # the dashboard's read-only token
    # With Prometheus kept alive the dashboard adds its range queries beside its own series.
    keep = ("--keep-alive", "prometheus") if shutil.which("prometheus") else ()
    with server(token, "--viewer-token", viewer, *keep) as url:
        for action in actions:
            jsorc(url, token, "actions", "config", action, "jsorc_live.actions.config")
        jsorc(url, token, "config", "set", "backoff_interval", "2")
        jsorc(url, token, "config", "set", "automation", "true")

        reports = {}
        for policy in ("all_remote", "model_based"):
            jsorc(url, token, "actionpolicy", "set", policy)
            print(f"\npolicy {policy}: waiting for its placements ...", file=sys.stderr)
            want = "remote" if policy == "all_remote" else ""
            time.sleep(5)  # let the controller observe and decide at least twice
            shown = wait_placements(url, token, actions, want)
            print(f"  placements: {shown}", file=sys.stderr)
            print(f"  loadtest: {args.app}, {args.clients} clients, {args.duration:g} s ...",
                  file=sys.stderr)
            reports[policy] = loadtest(url, token, args.app, args.clients, args.duration)
            if policy == "model_based":
                shown = wait_placements(url, token, actions, "")
                print(f"  placements after the loadtest: {shown}", file=sys.stderr)
        print(f"  {dashboard_screenshot(url, viewer, args.screenshot)}", file=sys.stderr)
        print(f"  dashboard, served now: {url}/dashboard (the admin token or the viewer "
              f"token {viewer})", file=sys.stderr, flush=True)

    keys = ("throughput", "average_latency", "50th_latency", "95th_latency", "99th_latency",
            "failed")
    print(f"\nJSORC benchmark reports, live, app {args.app}, {args.clients} closed-loop "
          f"clients, {args.duration:g} s each (latency in ms)")
    print(f"{'':16s}" + "".join(f"{k:>17s}" for k in keys))
    for policy, stats in reports.items():
        print(f"{policy:16s}" + "".join(f"{_fmt(stats.get(k)):>17s}" for k in keys))
    # After a blank line, so that the README's block (the table's paragraph) stays the table.
    print(f"\ndashboard: {url}/dashboard (served during the demo; jsorc serve has stopped "
          f"now, a running `jsorc serve` serves it at /dashboard; screenshot {args.screenshot})")
    return 0


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f}"


if __name__ == "__main__":
    raise SystemExit(main())
