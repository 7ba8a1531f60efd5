"""A TCP proxy that a test can cut and restore: a database (or any server) going away.

``TcpProxy(port)`` listens on a free loopback port and forwards every connection to
``127.0.0.1:port``. ``cut()`` stops listening and resets every open connection, so
the client sees exactly what a crashed or unreachable server looks like: the
sessions it holds break and new connections are refused. ``restore()`` listens
again on the same port. Each connection is pumped by one thread per direction;
``close()`` ends them all.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

from tests.support.ports import free_port


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._accepting: threading.Thread | None = None
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._closed = False
        self.accepted = 0
        self.latency = 0.0
        self.restore()

    @property
    def cut_off(self) -> bool:
        return self._listener is None

    def url_for(self, database_url: str) -> str:
        """``database_url`` with its host:port replaced by this proxy's."""
        from sqlalchemy.engine import make_url

        url = make_url(database_url).set(host="127.0.0.1", port=self.port)
        return url.render_as_string(hide_password=False)

    # --- switching ------------------------------------------------------------------------
    def restore(self) -> None:
        """Listen (again) on the proxy's port."""
        with self._lock:
            if self._listener is not None or self._closed:
                return
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(64)
            listener.settimeout(0.1)
            self._listener = listener
            self._accepting = threading.Thread(target=self._accept, args=(listener,),
                                               name=f"proxy-{self.port}", daemon=True)
            self._accepting.start()

    def cut(self) -> None:
        """Refuse new connections and reset every open one."""
        with self._lock:
            listener, self._listener = self._listener, None
            accepting, self._accepting = self._accepting, None
            pairs, self._pairs = self._pairs, set()
        if listener is not None:
            listener.close()
        if accepting is not None:
            accepting.join(2)
        for pair in pairs:
            for sock in pair:
                _reset(sock)

    def close(self) -> None:
        self._closed = True
        self.cut()

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    # --- pumping --------------------------------------------------------------------------
    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                if self._listener is not listener:
                    return
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            pair = (client, upstream)
            with self._lock:
                if self._listener is not listener:
                    _reset(client)
                    _reset(upstream)
                    return
                self._pairs.add(pair)
                self.accepted += 1
            for source, sink, slow in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pump, args=(source, sink, pair, slow),
                                 name=f"proxy-pump-{self.port}", daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket,
              pair: tuple[socket.socket, socket.socket], slow: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if slow and self.latency > 0:
                    time.sleep(self.latency)
                sink.sendall(data)
        except OSError:
            pass
        with self._lock:
            self._pairs.discard(pair)
        for sock in pair:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): the peer sees the connection broken, not ended."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
