"""A loopback TCP proxy that can add latency, stall or cut connections (network faults)."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time

LOOPBACK = "127.0.0.1"


class FaultyProxy:
    """Forwards 127.0.0.1:<port> to a target port; faults can be switched on at any time.

    - ``latency``: seconds added before each chunk is forwarded (either direction);
    - ``stall()``: keep connections open but drop everything sent (a black hole);
    - ``cut()``: close every connection and refuse new ones until ``heal()``;
    - ``drop_replies(n)``: the server's next ``n`` replies never arrive: each is
      swallowed and its connection reset, after the server acted on the request.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.latency = 0.0
        self._stalled = threading.Event()
        self._cut = threading.Event()
        self._closing = threading.Event()
        self._conns: set[socket.socket] = set()
        self._replies_to_drop = 0
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((LOOPBACK, 0))
        self._listener.listen(64)
        self._listener.settimeout(0.05)  # so the accept loop notices close()
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name="faulty-proxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def stall(self) -> None:
        """Drop every byte from now on; connections stay open."""
        self._stalled.set()

    def cut(self) -> None:
        """Drop every open connection and refuse new ones."""
        self._cut.set()
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
        for s in conns:
            _reset(s)

    def drop_replies(self, n: int = 1) -> None:
        """Swallow the server's next ``n`` replies, resetting their connections."""
        with self._lock:
            self._replies_to_drop = n

    def _take_drop(self) -> bool:
        with self._lock:
            if self._replies_to_drop <= 0:
                return False
            self._replies_to_drop -= 1
            return True

    def heal(self) -> None:
        """Back to a clean link with no added latency."""
        self.latency = 0.0
        self._stalled.clear()
        self._cut.clear()

    def close(self) -> None:
        self._closing.set()
        self.cut()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._thread.join(2)

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            if self._cut.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection((LOOPBACK, self.target_port), timeout=2)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns.update((client, upstream))
            threading.Thread(
                target=self._pump, args=(client, upstream), name="faulty-proxy-pump", daemon=True
            ).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peer = {a: b, b: a}
        try:
            while not self._cut.is_set() and not self._closing.is_set():
                try:
                    ready, _, _ = select.select([a, b], [], [], 0.05)
                except (OSError, ValueError):
                    return
                for src in ready:
                    try:
                        data = src.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    if self._stalled.is_set():
                        continue  # lost in the black hole, as dropped packets would be
                    if src is b and self._take_drop():
                        _reset(a)  # the reply is lost with the connection
                        return
                    if self.latency:
                        time.sleep(self.latency)
                    if self._cut.is_set():
                        return
                    if self._stalled.is_set():
                        continue
                    try:
                        peer[src].sendall(data)
                    except OSError:
                        return
        finally:
            with self._lock:
                self._conns.discard(a)
                self._conns.discard(b)
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()


def _reset(s: socket.socket) -> None:
    """Close with RST rather than FIN, as a dead peer or a firewall would do."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
