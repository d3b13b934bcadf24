"""/dashboard: its access rules over HTTP, its series, and the page in a real browser.

The browser test runs Debian's chromium headless through chromium-driver and selenium
against a live `jsorc serve` under a loadtest: the charts must hold data points, and a
placement change the policy makes during the test must show in the decisions list and in
the placement series.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from jsorc_live.dashboard import COOKIE, DashboardAccess, service_rows, window_of
from jsorc_live.dashboard_data import Ring, _range_chart, downsample, percentiles
from tests.conftest import REPO
from tests.jsorc_live.binaries import poll
from tests.jsorc_live.servers import jsorc_serving

TOKEN = "dashboard-admin-token"
VIEWER = "dashboard-viewer-token"
ACTIONS = ("bi_enc", "tfm_ner")  # restaurant_chatbot's


# --------------------------------------------------------------------------- pure parts


def test_ring_keeps_series_aligned_and_bounded() -> None:
    ring = Ring(capacity=4)
    ring.add(1.0, {("c", "a"): 10.0})
    ring.add(2.0, {("c", "a"): 11.0, ("c", "b"): 20.0})  # b first seen at the second sample
    for t in (3.0, 4.0, 5.0):
        ring.add(t, {("c", "b"): t})
    times, values = ring.window(since=0.0)
    assert times == [2.0, 3.0, 4.0, 5.0]  # capacity 4: the first sample fell out
    assert values["c", "b"] == [20.0, 3.0, 4.0, 5.0]
    a = values["c", "a"]
    assert a[0] == 11.0 and all(math.isnan(v) for v in a[1:])  # missing: a gap, not a 0
    times, values = ring.window(since=3.5)
    assert times == [4.0, 5.0] and values["c", "b"] == [4.0, 5.0]


def test_downsample_averages_rates_and_keeps_the_last_state() -> None:
    nan = math.nan
    values = [1.0, 3.0, nan, nan, 2.0, 0.0, 4.0]  # 7 samples, buckets of 2: 3 kept
    assert downsample(values, 1) == values
    means = downsample(values, 2)
    assert means[0] == 2.0 and math.isnan(means[1]) and means[2] == 1.0 and len(means) == 3
    assert downsample([0.0, 1.0, 1.0, 2.0], 2, last=True) == [1.0, 2.0]


def test_percentiles_match_numpy_and_are_nan_without_values() -> None:
    rng = np.random.default_rng(3)
    sample = list(rng.exponential(20.0, 501))
    ordered = sorted(sample)
    p50, p95 = percentiles(sample)
    assert p50 == pytest.approx(ordered[250])  # 501 values: the median is the 251st
    assert p95 == pytest.approx(ordered[475])  # (501 - 1) * 0.95 = 475 exactly
    assert all(math.isnan(v) for v in percentiles([]))


def test_prometheus_matrix_becomes_one_chart_with_gaps() -> None:
    result = [{"metric": {"action": "a"}, "values": [[10, "1"], [12, "2"]]},
              {"metric": {"action": "b"}, "values": [[11, "5"]]}]
    chart = _range_chart("x", "t", "u", ("action",), result)
    assert chart.t == (10.0, 11.0, 12.0) and chart.source == "prometheus"
    assert [s.label for s in chart.series] == ["a", "b"]
    assert chart.series[0].values == (1.0, None, 2.0)
    assert chart.series[1].values == (None, 5.0, None)


def test_access_checks() -> None:
    with pytest.raises(ValueError, match="differ"):
        DashboardAccess("same", "same")
    with pytest.raises(ValueError, match="empty"):
        DashboardAccess("admin", " ")
    access = DashboardAccess("admin", "viewer")
    assert access.token_ok("admin") and access.token_ok("viewer")
    assert not access.token_ok("viewer2") and not access.token_ok("")
    cookie = access.session("viewer")
    assert "viewer" not in cookie and access.session_ok(cookie)
    assert not access.session_ok(DashboardAccess.session("guess"))
    assert not DashboardAccess("admin").token_ok("viewer")  # no viewer token: admin only


@pytest.mark.parametrize("raw", ["abc", "nan", "inf", "-5", "0", "9", "7201", "1e400", ""])
def test_a_bad_window_is_refused_naming_it(raw: str) -> None:
    with pytest.raises(ValueError, match="window_s"):
        window_of(raw)


def test_windows_offered_are_accepted() -> None:
    assert [window_of(w) for w in ("300", "1800", "7200")] == [300.0, 1800.0, 7200.0]
    assert window_of(None) == 300.0


def test_service_rows_name_the_last_error() -> None:
    status = {"prometheus": {"state": "READY", "message": "answering", "restarts": 2,
                             "events": [{"state": "BACKOFF", "detail": "exited with -9"},
                                        {"state": "READY", "detail": "answering"}]},
              "mail": {"state": "UNKNOWN", "message": "no such service"}}
    rows = {r["name"]: r for r in service_rows(status)}
    assert rows["prometheus"]["restarts"] == 2
    assert rows["prometheus"]["last_error"] == "exited with -9"
    assert rows["mail"]["last_error"] == "no such service"


# --------------------------------------------------------------------------- over HTTP


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    with jsorc_serving(TOKEN, "--viewer-token", VIEWER) as url:
        yield url


def _login(url: str, token: str) -> httpx.Response:
    return httpx.post(f"{url}/dashboard/login", data={"token": token}, timeout=10)


def test_login_sets_a_path_scoped_httponly_strict_cookie(served: str) -> None:
    page = httpx.get(f"{served}/dashboard", timeout=10)
    assert page.status_code == 200 and 'name="token"' in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert "<script>" not in page.text and "style=" not in page.text  # nothing inline
    answer = _login(served, VIEWER)
    assert answer.status_code == 303 and answer.headers["location"] == "/dashboard"
    cookie = answer.headers["set-cookie"]
    parts = {p.strip().split("=")[0].lower(): p for p in cookie.split(";")}
    assert {"path", "httponly", "samesite"} <= set(parts)
    assert parts["path"].strip() == "Path=/dashboard"
    assert parts["samesite"].strip().lower() == "samesite=strict"
    assert VIEWER not in cookie  # the cookie holds an HMAC of the token, not the token
    value = answer.cookies[COOKIE]
    data = httpx.get(f"{served}/dashboard/data", cookies={COOKIE: value}, timeout=10)
    assert data.status_code == 200 and data.json()["success"] is True
    page = httpx.get(f"{served}/dashboard", cookies={COOKIE: value}, timeout=10)
    assert 'id="charts"' in page.text and "/dashboard/static/dashboard.js" in page.text


@pytest.mark.parametrize("body", [b"token=wrong", b"token=" + VIEWER.encode() + b"x",
                                  b"token=" + TOKEN.encode()[:-1]])
def test_a_wrong_token_is_a_401_page(served: str, body: bytes) -> None:
    answer = httpx.post(f"{served}/dashboard/login", content=body, timeout=10,
                        headers={"content-type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 401 and "wrong token" in answer.text
    assert "set-cookie" not in answer.headers


@pytest.mark.parametrize("body", [b"\xff\xfe\x00token", b"", b"other=1",
                                  b"&".join([b"a=1"] * 50), b"token=%ZZ%"])
def test_hostile_login_bodies_are_4xx(served: str, body: bytes) -> None:
    answer = httpx.post(f"{served}/dashboard/login", content=body, timeout=10)
    assert 400 <= answer.status_code < 500, answer.text


def test_the_viewer_token_opens_the_dashboard_only(served: str) -> None:
    viewer = {"Authorization": f"token {VIEWER}"}
    assert httpx.get(f"{served}/dashboard/data", headers=viewer, timeout=10).status_code == 200
    for path in ("/jsorc/status", "/jsorc/config/get", "/js_admin/config_get"):
        answer = httpx.post(f"{served}{path}", headers=viewer, json={}, timeout=10)
        assert answer.status_code in (401, 403), (path, answer.text)
    cookie = _login(served, VIEWER).cookies[COOKIE]
    answer = httpx.post(f"{served}/jsorc/status", cookies={COOKIE: cookie}, json={},
                        timeout=10)
    assert answer.status_code == 401  # the cookie is nothing to the admin API
    admin = {"Authorization": f"token {TOKEN}"}
    assert httpx.get(f"{served}/dashboard/data", headers=admin, timeout=10).status_code == 200


def test_data_needs_a_token_and_a_good_window(served: str) -> None:
    assert httpx.get(f"{served}/dashboard/data", timeout=10).status_code == 401
    bad = httpx.get(f"{served}/dashboard/data", cookies={COOKIE: "forged"}, timeout=10)
    assert bad.status_code == 401
    forged_page = httpx.get(f"{served}/dashboard", cookies={COOKIE: "forged"}, timeout=10)
    assert forged_page.status_code == 401 and 'name="token"' in forged_page.text
    viewer = {"Authorization": f"token {VIEWER}"}
    for raw in ("abc", "nan", "-1", "1e9", "%00"):
        answer = httpx.get(f"{served}/dashboard/data?window_s={raw}", headers=viewer,
                           timeout=10)
        assert answer.status_code == 400 and "window_s" in answer.json()["message"]


def test_static_serves_the_vendored_files_and_nothing_else(served: str) -> None:
    vendored = REPO / "jsorc_live" / "static" / "uPlot.iife.min.js"
    answer = httpx.get(f"{served}/dashboard/static/uPlot.iife.min.js", timeout=10)
    assert answer.status_code == 200 and answer.content == vendored.read_bytes()
    assert answer.headers["content-type"].startswith("text/javascript")
    for name in ("..%2F..%2Fapi.py", "VENDORED", "uPlot.LICENSE", "x.js", "%00"):
        assert httpx.get(f"{served}/dashboard/static/{name}", timeout=10).status_code == 404


# --------------------------------------------------------------------------- in a browser


def _need_browser() -> tuple[str, str]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        message = ("chromium and chromium-driver are not installed (apt-get install chromium "
                   "chromium-driver; .ci/run does it in CI)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return chromium, driver


@pytest.fixture
def browser() -> Iterator[Any]:
    chromium, driver_path = _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,2400", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _admin(url: str, path: str, **body: Any) -> dict[str, Any]:
    answer = httpx.post(f"{url}{path}", json=body, timeout=60,
                        headers={"Authorization": f"token {TOKEN}"})
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def _chart(driver: Any, chart: str) -> dict[str, Any] | None:
    """What the page drew of `chart`: uPlot's own data and the element's attributes."""
    found: dict[str, Any] | None = driver.execute_script("""
        const plot = (window.jsorcDashboard || {charts: {}}).charts[arguments[0]];
        const box = document.getElementById('chart-' + arguments[0]);
        if (!plot || !box) return null;
        return {labels: plot.series.slice(1).map(s => s.label), data: plot.data,
                points: Number(box.dataset.points), source: box.dataset.source};
    """, chart)
    return found


def _rows(driver: Any, table: str) -> list[list[str]]:
    rows: list[list[str]] = driver.execute_script(
        "return Array.from(document.querySelectorAll('#' + arguments[0] + ' tbody tr'))"
        ".map(tr => Array.from(tr.cells).map(td => td.textContent));", table)
    return rows


def test_the_page_in_chromium_shows_the_load_and_a_placement_change(
        browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    with jsorc_serving(TOKEN, "--viewer-token", VIEWER) as url:
        for action in ACTIONS:
            _admin(url, "/jsorc/actions/config", name=action, config="jsorc_live.actions.config")
            _admin(url, "/jsorc/actions/load", name=action, mode="module")
        load = subprocess.Popen(
            [sys.executable, "-m", "jsorc_live.cli", "loadtest", "--app", "restaurant_chatbot",
             "--clients", "2", "--duration", "90", "--server", url, "--token", TOKEN],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            browser.get(f"{url}/dashboard")
            browser.find_element(By.ID, "token").send_keys(VIEWER)
            browser.find_element(By.CSS_SELECTOR, "#login button").click()
            # Data points under load: walker throughput and local call latency drawn.
            poll(lambda: (_chart(browser, "throughput") or {}).get("points", 0) >= 3,
                 45, "throughput points on the page", every_s=0.5)
            latency = poll(lambda: _chart(browser, "call_latency"), 30, "latency chart")
            assert "bi_enc local p95" in latency["labels"] and latency["points"] > 0
            placement = poll(lambda: _chart(browser, "placement"), 30, "placement chart")
            before = dict(zip(placement["labels"], placement["data"][1:], strict=True))
            assert before["bi_enc"][-1] == 1.0  # local, as loaded above

            # The policy moves every action remote: a decision row and the placement series.
            _admin(url, "/jsorc/config/set", name="backoff_interval", value=1)
            _admin(url, "/jsorc/actionpolicy/set", policy_name="all_remote", policy_params={})
            _admin(url, "/jsorc/config/set", name="automation", value=True)
            decided = poll(lambda: [r for r in _rows(browser, "decisions")
                                    if r[1] == "bi_enc" and r[3].startswith("remote")] or None,
                           45, "the all_remote decision on the page", every_s=0.5)
            assert decided[0][4] == "all_remote" and decided[0][2] == "local", decided

            def remote_on_page() -> dict[str, Any] | None:
                chart = _chart(browser, "placement")
                if chart is None:
                    return None
                series = dict(zip(chart["labels"], chart["data"][1:], strict=True))
                return chart if series.get("bi_enc", [None])[-1] == 2.0 else None

            remote_on_page_chart = poll(remote_on_page, 60, "bi_enc remote in the series")
            status = _admin(url, "/jsorc/status")["actions"]["bi_enc"]
            assert str(status["placement"]).startswith("remote")  # the server agrees
            series = dict(zip(remote_on_page_chart["labels"], remote_on_page_chart["data"][1:],
                              strict=True))
            levels = [v for v in series["bi_enc"] if v is not None]
            assert 1.0 in levels and levels[-1] == 2.0  # local, then remote: the change
            actions = {r[0]: r for r in _rows(browser, "actions")}
            poll(lambda: {r[0]: r for r in _rows(browser, "actions")}["bi_enc"][1]
                 .startswith("remote"), 30, "the placements table")
            assert set(ACTIONS) <= set(actions)
            shot = tmp_path / "dashboard.png"
            browser.save_screenshot(str(shot))
            assert shot.stat().st_size > 10_000
        finally:
            load.terminate()
            try:
                load.wait(timeout=15)
            except subprocess.TimeoutExpired:
                load.kill()
                load.wait()


def test_prometheus_series_when_prometheus_is_kept_alive() -> None:
    from tests.jsorc_live.binaries import need

    need("prometheus")
    viewer = {"Authorization": f"token {VIEWER}"}
    with jsorc_serving(TOKEN, "--viewer-token", VIEWER, "--keep-alive", "prometheus") as url:
        for action in ACTIONS:
            _admin(url, "/jsorc/actions/config", name=action, config="jsorc_live.actions.config")
            _admin(url, "/jsorc/actions/load", name=action, mode="module")

        def charts() -> dict[str, Any] | None:
            for _ in range(20):  # calls for the latency histogram to rate over
                httpx.post(f"{url}/walker_run", json={"name": "restaurant_chatbot"}, timeout=10)
            data = httpx.get(f"{url}/dashboard/data", headers=viewer, timeout=20).json()
            by_id = {c["id"]: c for c in data["charts"]}
            drawn = {c["id"] for c in data["charts"] if c["source"] == "prometheus"
                     and any(v is not None for s in c["series"] for v in s["values"])}
            return by_id if {"prom_memory", "prom_call_latency"} <= drawn else None

        by_id = poll(charts, 60, "Prometheus series in /dashboard/data", every_s=1.0)
        assert {c["source"] for c in by_id.values()} == {"runtime", "prometheus"}
        # Two measurements of the runtime's resident memory: Prometheus' process collector
        # (scraped from /metrics) and the sampler's psutil reading.
        prom = {s["label"]: s for s in by_id["prom_memory"]["series"]}
        runtime = next(s for s in by_id["memory"]["series"] if s["label"] == "runtime (node)")
        prom_mb = [v for v in prom["runtime"]["values"] if v is not None][-1]
        psutil_mb = [v for v in runtime["values"] if v is not None][-1]
        assert prom_mb == pytest.approx(psutil_mb, rel=0.3)
        latency = {s["label"] for s in by_id["prom_call_latency"]["series"]}
        assert {"bi_enc local", "tfm_ner local"} <= latency


def test_the_openapi_document_says_the_viewer_token_opens_the_data(served: str) -> None:
    doc = httpx.get(f"{served}/openapi.json", timeout=30).json()
    data = doc["paths"]["/dashboard/data"]["get"]
    schemes = {name for option in data["security"] for name in option}
    assert schemes == {"token", "viewer", "dashboard_cookie"}  # any one of them opens it
    viewer = doc["components"]["securitySchemes"]["viewer"]
    assert viewer["in"] == "header" and "dashboard only" in viewer["description"]
    assert {"400", "401", "503"} <= set(data["responses"])
    assert "Retry-After" in data["responses"]["503"]["headers"]


@pytest.fixture()
def silent_prometheus() -> Iterator[str]:
    """A TCP listener that takes connections (the kernel completes them) and never answers:
    a Prometheus that hangs."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_viewers_polling_a_hung_prometheus_do_not_slow_the_admin_api(
        silent_prometheus: str) -> None:
    import time
    from concurrent.futures import ThreadPoolExecutor

    from jsorc_live.dashboard import DATA_THREADS, PROMETHEUS_DEADLINE_S

    viewer = {"Authorization": f"token {VIEWER}"}
    admin = {"Authorization": f"token {TOKEN}"}
    with jsorc_serving(TOKEN, "--viewer-token", VIEWER, "--prometheus-url",
                       silent_prometheus) as url:
        def status_s() -> float:
            began = time.monotonic()
            answer = httpx.post(f"{url}/jsorc/status", headers=admin, json={}, timeout=30)
            assert answer.status_code == 200, answer.text
            return time.monotonic() - began

        idle = min(status_s() for _ in range(3))

        def poll_data(i: int) -> tuple[int, float, httpx.Response]:
            began = time.monotonic()  # windows differ: no answer comes from the cache
            answer = httpx.get(f"{url}/dashboard/data?window_s={300 + i}", headers=viewer,
                               timeout=60)
            return answer.status_code, time.monotonic() - began, answer

        with ThreadPoolExecutor(20) as viewers:
            polls = [viewers.submit(poll_data, i) for i in range(20)]
            time.sleep(0.5)  # the polls are in (or refused) by now
            busy = [status_s() for _ in range(3)]
            answers = [p.result() for p in polls]
    assert max(busy) < 1.0, (idle, busy)  # idle is ~0.01-0.05 s here
    served_ = [(s, a) for code, s, a in answers if code == 200]
    refused = [a for code, _, a in answers if code == 503]
    assert len(served_) + len(refused) == 20
    assert 1 <= len(served_) <= DATA_THREADS + 2  # the two threads, and maybe a late poll
    assert all(a.headers["retry-after"] == "1" and "busy" in a.json()["message"]
               for a in refused)
    for took, answer in served_:  # one deadline for all of Prometheus' queries
        assert took < PROMETHEUS_DEADLINE_S + 2.0, took
        error = answer.json()["prometheus"]["error"]
        assert error and "Timeout" in error, error
