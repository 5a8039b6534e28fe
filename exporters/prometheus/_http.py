"""The /metrics HTTP(S) server: a thread per connection, TLS handshakes and basic-auth checks done
in that thread (never in the accept loop), with bounded connections and I/O timeouts.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import bcrypt
import structlog

log = structlog.get_logger("bpf-auditd.prometheus")

MAX_CONNECTIONS: Final = 64  # beyond this, new connections are closed at once
IO_TIMEOUT_S: Final = 10.0  # per socket operation, handshake included: slow clients give up
_TLS_HANDSHAKE_RECORD: Final = 0x16  # first byte of every TLS ClientHello
# What Go's net/http (so every Prometheus exporter) answers to plain HTTP on a TLS port.
_PLAIN_ON_TLS: Final = (
    b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
)
_MAX_REMEMBERED: Final = 1024

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class BasicAuth:
    """Checks `Authorization: Basic` against bcrypt hashes.

    bcrypt is slow on purpose (tens of ms), so: credentials that passed are remembered (as an
    HMAC under a per-process key, never in clear) and later scrapes skip bcrypt; checks run one
    at a time, so a password-guessing flood costs one core, not all; unknown users are checked
    against a decoy hash of the same cost, so timing does not tell which user names exist."""

    def __init__(self, users: Mapping[str, bytes]) -> None:
        self._users = dict(users)
        cost = max((int(h.split(b"$")[2]) for h in self._users.values()), default=10)
        self._decoy = bcrypt.hashpw(base64.b64encode(os.urandom(18)), bcrypt.gensalt(cost))
        self._key = os.urandom(32)
        self._passed: set[bytes] = set()
        self._lock = threading.Lock()

    def check(self, header: str | None) -> bool:
        credentials = _basic_credentials(header)
        if credentials is None:
            return False
        user, password = credentials
        token = hmac.new(self._key, user.encode() + b"\0" + password, hashlib.sha256).digest()
        if token in self._passed:
            return True
        hashed = self._users.get(user)
        with self._lock:
            try:
                ok = bcrypt.checkpw(password, hashed or self._decoy)
            except ValueError:  # bcrypt>=5 refuses passwords over 72 bytes: never a match
                ok = False
            ok = ok and hashed is not None
            if ok:
                if len(self._passed) >= _MAX_REMEMBERED:
                    self._passed.clear()
                self._passed.add(token)
        return ok


def _basic_credentials(header: str | None) -> tuple[str, bytes] | None:
    scheme, _, encoded = (header or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
        user, sep, password = decoded.partition(b":")
        return (user.decode(), password) if sep else None
    except (binascii.Error, UnicodeDecodeError):
        return None


_LANDING: Final = (
    b"<!doctype html><html><head><title>bpf-auditd</title></head><body>"
    b'<h1>bpf-auditd</h1><p><a href="metrics">Metrics</a></p></body></html>\n'
)


def make_app(metrics: WsgiApp, auth: BasicAuth | None, headers: Mapping[str, str]) -> WsgiApp:
    """/metrics (and a landing page at /) behind basic auth when users are configured; the
    web-config's extra headers on every response."""
    extra = list(headers.items())

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        def respond(status: str, hdrs: list[tuple[str, str]], *exc_info: Any) -> Any:
            return start_response(status, [*hdrs, *extra], *exc_info)

        if auth is not None and not auth.check(environ.get("HTTP_AUTHORIZATION")):
            respond(
                "401 Unauthorized",
                [
                    ("WWW-Authenticate", 'Basic realm="bpf-auditd"'),
                    ("Content-Type", "text/plain; charset=utf-8"),
                ],
            )
            return [b"Unauthorized\n"]
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, respond)
        if path == "/":
            respond("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [_LANDING]
        respond("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"Not Found: metrics are at /metrics\n"]

    return app


class _Handler(WSGIRequestHandler):
    timeout = IO_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged: Prometheus scrapes every few seconds."""


class MetricsHTTPServer(socketserver.ThreadingMixIn, WSGIServer):
    """Serves `app`; with `tls`, every connection must open with a TLS handshake."""

    daemon_threads = True

    def __init__(self, host: str, port: int, app: WsgiApp, tls: ssl.SSLContext | None) -> None:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, sockaddr = info[0]
        self.address_family = family
        self.tls = tls
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__((str(sockaddr[0]), int(sockaddr[1])), _Handler)
        self.set_app(app)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN: a DNS wait for nothing on edge hosts.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
        self.setup_environ()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("metrics_connections_full", limit=MAX_CONNECTIONS)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        conn: Any = None
        try:
            request.settimeout(IO_TIMEOUT_S)
            conn = request if self.tls is None else self._handshake(request, self.tls)
            if conn is not None:
                self.finish_request(conn, client_address)
        except Exception as exc:  # a client that goes away mid-request is not our error
            log.debug("metrics_request_failed", client=str(client_address[0]), error=str(exc))
        finally:
            if conn is not None:
                self.shutdown_request(conn)
            self._slots.release()

    def _handshake(self, sock: socket.socket, tls: ssl.SSLContext) -> ssl.SSLSocket | None:
        """The TLS connection, or None (socket closed) for plain HTTP or a failed handshake."""
        try:
            first = sock.recv(1, socket.MSG_PEEK)
            if first and first[0] != _TLS_HANDSHAKE_RECORD:
                # Read the request first: closing with unread bytes resets the connection,
                # and the client would never see why.
                with contextlib.suppress(OSError):
                    sock.recv(65536)
                    sock.sendall(_PLAIN_ON_TLS)
                first = b""
        except OSError:
            first = b""
        if not first:
            self.shutdown_request(sock)
            return None
        try:
            return tls.wrap_socket(sock, server_side=True)  # closes the socket on failure
        except (ssl.SSLError, OSError) as exc:
            log.debug("metrics_tls_handshake_failed", error=str(exc))
            return None

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints a traceback to stderr by default; the daemon's stderr is for
        # one-line fatal errors.
        log.debug("metrics_request_failed", client=str(client_address[0]))
