"""Running the API: bind a socket, then serve the app on it with uvicorn, here or in a background thread.

We bind before uvicorn starts so that the URL printed is the real one (`--port 0` picks a free port)
and a taken port is a one-line error. The socket is marked as TCP so that asyncio turns Nagle's algorithm
off on each connection (TCP_NODELAY): otherwise a response's body, written after its headers, waited for
the client's delayed ACK, some 40 ms on every request. The default host is 127.0.0.1: reachable from this
machine only until someone asks for more. `running` is for tests and benchmarks: a real server on loopback for the
duration of a `with` block.
"""
from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from chatpipe.tasks.common.errors import InputError

DEFAULT_HOST = "127.0.0.1"


def bind(host: str = DEFAULT_HOST, port: int = 8000) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        listener = socket.create_server((host, port), family=family)
    except (OSError, OverflowError) as e:
        raise InputError(f"cannot listen on {host}:{port}: {getattr(e, 'strerror', None) or e}") from None
    # create_server leaves proto 0, which accepted sockets inherit, and asyncio sets TCP_NODELAY only on
    # sockets whose proto says TCP
    return socket.socket(listener.family, listener.type, socket.IPPROTO_TCP, fileno=listener.detach())


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _server(app: FastAPI, log_level: str) -> uvicorn.Server:
    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))


def serve_forever(app: FastAPI, sock: socket.socket, log_level: str = "info") -> None:
    """Serve until Ctrl-C or SIGTERM, then shut down gracefully and return."""
    try:
        _server(app, log_level).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it has already handled
        pass


@contextlib.contextmanager
def running(app: FastAPI, host: str = DEFAULT_HOST, port: int = 0, log_level: str = "warning") -> Iterator[str]:
    """The base URL of `app` served in a background thread; stopped when the block ends."""
    sock = bind(host, port)
    server = _server(app, log_level)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server stopped while starting; see its log")
        time.sleep(0.01)
    try:
        yield url(sock)
    finally:
        server.should_exit = True
        thread.join()
