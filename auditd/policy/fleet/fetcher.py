"""HTTP downloads for the TUF client, each bounded in total time.

python-tuf's own fetcher has only a gap timeout (between two reads) and urllib3's retries: a
server that drips one byte per gap holds the update thread for ever, and a silent one costs
four timeouts per file (measured: still blocked after 30 s on a 1 byte / 0.5 s drip; 8 s per
request at a 2 s timeout). This one gives every download one deadline, reads with `read1` (one
`recv`, so the deadline is checked at least once per read timeout), never retries and can be
aborted from another thread (daemon shutdown).
A download takes at most `timeout` seconds from its start, connecting included.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import urllib3
from tuf.api import exceptions
from tuf.ngclient import FetcherInterface

_CHUNK = 16 << 10
# Seconds the server may take to accept a connection (bounded by the download's deadline too).
_CONNECT_TIMEOUT = 10.0


class DeadlineFetcher(FetcherInterface):
    """`FetcherInterface` on one urllib3 pool: `timeout` seconds per download, in all."""

    def __init__(self, timeout: float, user_agent: str) -> None:
        self.timeout = timeout
        # No retries: a refused attempt is retried at the next interval anyway, and a retry
        # would multiply the time one download may take. Redirects (a CDN) are followed.
        self._pool = urllib3.PoolManager(
            retries=urllib3.Retry(total=3, connect=0, read=0, status=0, other=0, redirect=3),
            headers={"User-Agent": user_agent},
        )
        self._aborted = threading.Event()
        # The last metadata file downloaded: a signature refusal is told apart (a bad signature
        # or too few) by looking at it again.
        self.last_metadata: bytes | None = None

    def abort(self) -> None:
        """Make the download in progress (and any later one) fail at its next read."""
        self._aborted.set()
        self._pool.clear()

    def download_bytes(self, url: str, max_length: int) -> bytes:
        # python-tuf fetches metadata through here, targets through download_file.
        self.last_metadata = None
        data = super().download_bytes(url, max_length)
        self.last_metadata = data
        return data

    def _fetch(self, url: str) -> Iterator[bytes]:
        if self._aborted.is_set():
            raise exceptions.DownloadError("the daemon is stopping")
        deadline = time.monotonic() + self.timeout
        timeout = urllib3.Timeout(connect=min(_CONNECT_TIMEOUT, self.timeout), read=self.timeout)
        try:
            response = self._pool.request(
                "GET", url, preload_content=False, timeout=timeout, redirect=True
            )
        except urllib3.exceptions.MaxRetryError as exc:
            raise _download_error(url, exc.reason or exc) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise _download_error(url, exc) from exc
        if response.status >= 400:
            response.close()  # not drained: the body of an error may drip too
            # python-tuf reads 403/404 on `N.root.json` as "no newer root".
            raise exceptions.DownloadHTTPError(f"{url}: HTTP {response.status}", response.status)
        return self._chunks(url, response, deadline)

    def _chunks(
        self, url: str, response: urllib3.BaseHTTPResponse, deadline: float
    ) -> Iterator[bytes]:
        try:
            while True:
                if self._aborted.is_set():
                    raise exceptions.DownloadError("the daemon is stopping")
                if time.monotonic() > deadline:
                    raise exceptions.SlowRetrievalError(
                        f"{url}: not downloaded within {self.timeout:g} s"
                    )
                # Each read waits at most for what is left of the deadline.
                _read_timeout(response, deadline - time.monotonic())
                try:
                    data = response.read1(_CHUNK)
                except urllib3.exceptions.HTTPError as exc:
                    raise _download_error(url, exc) from exc
                if not data:
                    return
                yield data
        finally:
            response.release_conn()


def _read_timeout(response: urllib3.BaseHTTPResponse, seconds: float) -> None:
    connection = getattr(response, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        sock.settimeout(max(seconds, 0.01))


def _download_error(url: str, exc: BaseException) -> exceptions.DownloadError:
    """A urllib3 failure as python-tuf's download error, with urllib3's words (python-tuf's
    own fetcher turns a refused connection into a SlowRetrievalError without any)."""
    # urllib3 2 makes NewConnectionError (refused, unreachable, DNS) a ConnectTimeoutError.
    slow = isinstance(exc, urllib3.exceptions.TimeoutError) and not isinstance(
        exc, urllib3.exceptions.NewConnectionError
    )
    kind = exceptions.SlowRetrievalError if slow else exceptions.DownloadError
    return kind(f"{url}: {exc}")
