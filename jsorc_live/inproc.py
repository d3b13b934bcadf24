"""An ASGI app served by uvicorn in a thread of this process, for as long as a block runs.

The fuzzer (jsorc_live.fuzz) and the tests serve a real app over real HTTP on loopback this
way: a free port unless one is given, ready once `GET /healthz` answers 200 (a bounded wait
that also notices the server thread dying), stopped at the block's end.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx

from jsorc_live.backend import free_port


@contextlib.contextmanager
def app_in_thread(app: Any, *, host: str = "127.0.0.1", port: int | None = None,
                  ready_timeout_s: float = 60.0, stop_timeout_s: float = 30.0
                  ) -> Iterator[str]:
    """Serve `app` on `host:port` (a free port when None) until the block ends; its URL.
    RuntimeError when it does not answer /healthz within `ready_timeout_s`."""
    import uvicorn

    port = free_port(host) if port is None else port
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    url = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            if not thread.is_alive():
                raise RuntimeError(f"the server at {url} stopped before it answered /healthz")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server at {url} did not answer /healthz within "
                                   f"{ready_timeout_s:g} s")
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=stop_timeout_s)
