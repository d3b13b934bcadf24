"""A huge request body sent the way a hostile client would, over a raw socket.

httpx cannot read an answer that arrives while it is still writing the body (a server that
refuses early answers 413 and closes): it reports a write error instead. So the body is
written in chunks here, and before every chunk the socket is checked for an answer; once one
arrives the sending stops and the answer is read.
"""

from __future__ import annotations

import json
import select
import socket
import time
from dataclasses import dataclass
from typing import Any

CHUNK = 1 << 20


@dataclass(frozen=True)
class BodyAnswer:
    status: int | None  # None: the connection closed without an HTTP answer
    body: Any  # parsed JSON, or the raw text when it is not JSON
    sent_bytes: int
    seconds: float
    error: str = ""


def post_huge(port: int, path: str, total_bytes: int, *, chunked: bool,
              timeout_s: float = 60.0) -> BodyAnswer:
    """POST a syntactically valid JSON walker request of ``total_bytes`` to ``path`` on
    127.0.0.1:``port``, with Content-Length or (``chunked``) Transfer-Encoding: chunked."""
    prefix = b'{"name": "fast_walk", "ctx": {"pad": "'
    suffix = b'"}}'
    pad = total_bytes - len(prefix) - len(suffix)
    head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}",
            "Content-Type: application/json", "Connection: close"]
    head.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {total_bytes}")
    start = time.monotonic()
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        pieces = _pieces(prefix, pad, suffix)
        try:
            for piece in pieces:
                if _readable(sock):
                    break
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
            else:
                if chunked:
                    sock.sendall(b"0\r\n\r\n")
        except OSError as exc:  # the server closed while we wrote: read what it said
            error = f"{type(exc).__name__} after {sent} bytes"
        else:
            error = ""
        raw = _read_all(sock, time.monotonic() + timeout_s)
    status, body = _parse(raw)
    return BodyAnswer(status, body, sent, time.monotonic() - start, error)


def _pieces(prefix: bytes, pad: int, suffix: bytes) -> list[bytes]:
    block = b"a" * CHUNK
    out = [prefix]
    full, rest = divmod(pad, CHUNK)
    out += [block] * full
    if rest:
        out.append(b"a" * rest)
    out.append(suffix)
    return out


def _readable(sock: socket.socket) -> bool:
    ready, _, _ = select.select([sock], [], [], 0)
    return bool(ready)


def _read_all(sock: socket.socket, deadline: float) -> bytes:
    data = bytearray()
    while time.monotonic() < deadline:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            piece = sock.recv(65536)
        except TimeoutError:
            break
        except OSError:
            break
        if not piece:
            break
        data += piece
        if _complete(bytes(data)):
            break
    return bytes(data)


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip() or 0)
    return False


def _parse(raw: bytes) -> tuple[int | None, Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/"):
        return None, raw[:200].decode(errors="replace")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None, head[:200].decode(errors="replace")
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body[:200].decode(errors="replace")


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2:]
    return bytes(out)
