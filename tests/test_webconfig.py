"""Web-config files (the Prometheus exporters' --web.config.file): validation that points at
file, line and key, and /metrics served over real TLS with basic auth."""

from __future__ import annotations

import asyncio
import base64
import http.client
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from _certs import Certs, make_certs
from _daemon import value

from auditd.config import schema as config
from auditd.config import webconfig
from auditd.config.yamlfile import ConfigError
from exporters.families import counter
from exporters.prometheus import MetricsServer

HITS = counter("test_hits", "Hits.", "service")
PASSWORD = "s3cret-scrape"
# Cost 4 (bcrypt's minimum) keeps the suite fast; the daemon accepts any cost 4..31.
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def _write(directory: Path, text: str, name: str = "web.yml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def _tls_block(certs: Certs, extra: str = "") -> str:
    return (
        "tls_server_config:\n"
        f"  cert_file: {certs.server_cert}\n"
        f"  key_file: {certs.server_key}\n"
        f"{extra}"
    )


# -- validation --------------------------------------------------------------------------------


def test_full_file_loads_with_paths_relative_to_itself(tmp_path: Path, certs: Certs) -> None:
    for f in (certs.server_cert, certs.server_key, certs.ca):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    web = webconfig.load(
        _write(
            tmp_path,
            "tls_server_config:\n"
            "  cert_file: server.pem\n"
            "  key_file: server.key\n"
            "  client_auth_type: RequireAndVerifyClientCert\n"
            "  client_ca_file: ca.pem\n"
            "  min_version: TLS13\n"
            "http_server_config:\n"
            "  http2: false\n"
            "  headers:\n"
            "    X-Frame-Options: deny\n"
            "basic_auth_users:\n"
            f"  alice: {HASH}\n",
        )
    )
    assert web.tls is not None
    assert (web.tls.cert_file, web.tls.client_ca_file) == (
        tmp_path / "server.pem",
        tmp_path / "ca.pem",
    )
    assert (web.tls.client_auth_type, web.tls.min_version) == (
        "RequireAndVerifyClientCert",
        "TLS13",
    )
    assert web.users == {"alice": HASH.encode()}
    assert web.headers == {"X-Frame-Options": "deny"}
    assert web.context is not None
    assert web.context.verify_mode == ssl.CERT_REQUIRED
    assert web.context.minimum_version == ssl.TLSVersion.TLSv1_3


@pytest.mark.parametrize(
    "text", ["", "# nothing\n", "tls_server_config: {}\n", "basic_auth_users:\n"]
)
def test_empty_parts_mean_plain_http_without_auth(tmp_path: Path, text: str) -> None:
    web = webconfig.load(_write(tmp_path, text))
    assert (web.tls, web.context, dict(web.users)) == (None, None, {})


def _bad_cases(certs: Certs) -> list[Any]:
    tls = _tls_block(certs)
    return [
        pytest.param("tls_server_config:\n  cert_file: a.pem\n  cert_fil: b\n", 3,
                     "tls_server_config.cert_fil", "unknown key; valid keys here: cert_file",
                     id="misspelt"),
        pytest.param(f"{tls}  cipher_suites: [TLS_AES_128_GCM_SHA256]\n", 4,
                     "tls_server_config.cipher_suites", "not supported by bpf-auditd",
                     id="unsupported-key"),
        pytest.param("rate_limit:\n  burst: 1\n", 1, "rate_limit", "not supported",
                     id="unsupported-top-key"),
        pytest.param(f"tls_server_config:\n  cert_file: {certs.server_cert}\n", 1,
                     "tls_server_config.key_file", "missing: TLS needs both", id="no-key"),
        pytest.param("tls_server_config:\n  cert_file: /nonexistent/c.pem\n  key_file: k\n", 2,
                     "tls_server_config.cert_file", "no such file: /nonexistent/c.pem",
                     id="no-cert-file"),
        pytest.param(f"tls_server_config:\n  cert_file: {certs.server_cert}\n"
                     f"  key_file: {certs.rogue_key}\n", 3, "tls_server_config.key_file",
                     "cannot use cert_file", id="key-does-not-match"),
        pytest.param(f"tls_server_config:\n  cert_file: {certs.server_key}\n"
                     f"  key_file: {certs.server_key}\n", 3, "tls_server_config.key_file",
                     "cannot use cert_file", id="key-as-cert"),
        pytest.param(f"{tls}  client_auth_type: Sometimes\n", 4,
                     "tls_server_config.client_auth_type",
                     "expected one of NoClientCert, VerifyClientCertIfGiven, "
                     "RequireAndVerifyClientCert", id="client-auth-typo"),
        pytest.param(f"{tls}  client_auth_type: RequireAnyClientCert\n", 4,
                     "tls_server_config.client_auth_type", "is not supported", id="unverified"),
        pytest.param(f"{tls}  client_ca_file: {certs.ca}\n", 4,
                     "tls_server_config.client_ca_file", "client_auth_type is NoClientCert",
                     id="ca-without-auth"),
        pytest.param(f"{tls}  client_auth_type: VerifyClientCertIfGiven\n"
                     f"  client_ca_file: {certs.server_key}\n", 5,
                     "tls_server_config.client_ca_file", "cannot load client CAs",
                     id="ca-not-a-cert"),
        pytest.param(f"{tls}  min_version: TLS14\n", 4, "tls_server_config.min_version",
                     "expected one of TLS10, TLS11, TLS12, TLS13", id="version"),
        pytest.param(f"{tls}  min_version: TLS13\n  max_version: TLS12\n", 5,
                     "tls_server_config.max_version", "min_version TLS13 is above max_version",
                     id="versions-crossed"),
        pytest.param("basic_auth_users:\n  alice: hunter2\n", 2, "basic_auth_users.alice",
                     "expected a bcrypt hash", id="plain-password"),
        pytest.param("basic_auth_users:\n  alice: [a]\n", 2, "basic_auth_users.alice",
                     "expected a bcrypt hash", id="list"),
        pytest.param(f"basic_auth_users:\n  'a:b': {HASH}\n", 2, "basic_auth_users.a:b",
                     "cannot contain ':'", id="colon-in-user"),
        pytest.param("basic_auth_users:\n  alice: x\n  alice: y\n", 3, "basic_auth_users.alice",
                     "given twice", id="twice"),
        pytest.param("http_server_config:\n  headers:\n    Server: me\n", 3,
                     "http_server_config.headers.Server", "cannot be configured",
                     id="header-name"),
        pytest.param("http_server_config:\n  headers:\n    X-Frame-Options: allow\n", 3,
                     "http_server_config.headers.X-Frame-Options", "expected one of deny",
                     id="header-value"),
        pytest.param("http_server_config:\n  http2: maybe\n", 2, "http_server_config.http2",
                     "expected true or false", id="http2"),
        pytest.param("tls_server_config: yes\n", 1, "tls_server_config",
                     "expected a mapping", id="not-a-mapping"),
        pytest.param("basic_auth_users: {alice: x\n", 2, "", "invalid YAML", id="yaml"),
    ]  # fmt: skip


def test_errors_name_file_line_and_key(tmp_path: Path, certs: Certs) -> None:
    # One test over all cases: the certificates are made once per module, after collection.
    for case in _bad_cases(certs):
        text, line, key, says = case.values
        path = _write(tmp_path, text)
        with pytest.raises(ConfigError) as info:
            webconfig.load(path)
        err = info.value
        assert (err.file, err.line, err.key) == (str(path), line, key), (case.id, str(err))
        assert says in err.message, (case.id, str(err))
        assert "\n" not in str(err)
        assert "hunter2" not in str(err), "a password put where a hash belongs must not be echoed"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yml: cannot read: No such file"):
        webconfig.load(tmp_path / "nope.yml")


def test_daemon_config_names_it_relative_to_itself(tmp_path: Path, certs: Certs) -> None:
    _write(tmp_path, _tls_block(certs))
    main = _write(tmp_path, "metrics:\n  web_config: web.yml\n", "config.yaml")
    web = webconfig.from_config(config.load(main), main)
    assert web is not None
    assert web.path == tmp_path / "web.yml"
    assert webconfig.from_config(config.Config(), None) is None


def test_check_config_validates_the_web_config(tmp_path: Path) -> None:
    _write(tmp_path, "basic_auth_users:\n  alice: hunter2\n")
    main = _write(tmp_path, "metrics:\n  web_config: web.yml\n", "config.yaml")
    proc = subprocess.run(
        [sys.executable, "-m", "auditd", "check-config", str(main)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"bpf-auditd: {tmp_path / 'web.yml'}:2: basic_auth_users.alice: expected a bcrypt hash "
        "like $2y$10$ followed by 53 characters (make one with: htpasswd -nBC 10 USER), got a "
        "value that is not one"
    ]


def test_run_refuses_a_bad_web_config_before_loading_probes(tmp_path: Path) -> None:
    _write(tmp_path, "tls_server_config:\n  cert_file: missing.pem\n  key_file: missing.key\n")
    main = _write(tmp_path, "metrics:\n  web_config: web.yml\n", "config.yaml")
    proc = subprocess.run(
        [sys.executable, "-m", "auditd", "run", "--config", str(main)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        f"bpf-auditd: {tmp_path / 'web.yml'}:2: tls_server_config.cert_file: no such file: "
        f"{tmp_path / 'missing.pem'}"
    ]
    assert '"event": "ready"' not in proc.stdout


@pytest.mark.needs_prometheus
def test_promtool_agrees(tmp_path: Path, certs: Certs) -> None:
    """What we accept, the Prometheus tooling accepts, and files that both reject."""
    good = [
        _tls_block(certs) + f"basic_auth_users:\n  alice: {HASH}\n",
        _tls_block(certs, f"  client_auth_type: RequireAndVerifyClientCert\n"
                   f"  client_ca_file: {certs.ca}\n  min_version: TLS13\n"),
        "http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n",
        "",
    ]  # fmt: skip
    bad = [
        "basic_auth_users:\n  alice: hunter2\n",
        f"tls_server_config:\n  cert_file: {certs.server_cert}\n",
        _tls_block(certs, f"  client_ca_file: {certs.ca}\n"),
        _tls_block(certs, "  client_auth_type: Sometimes\n"),
        "tls_server_config:\n  cert_fil: x\n",
    ]
    for i, text in enumerate(good + bad):
        path = _write(tmp_path, text, f"web-{i}.yml")
        ours = True
        try:
            webconfig.load(path)
        except ConfigError:
            ours = False
        proc = subprocess.run(
            ["promtool", "check", "web-config", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert ours == (i < len(good)), text
        assert (proc.returncode == 0) == ours, (text, proc.stdout, proc.stderr)


# -- serving -----------------------------------------------------------------------------------


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[str], MetricsServer]]:
    """Starts a MetricsServer on a free loopback port with the given web-config text."""
    loop = asyncio.new_event_loop()
    servers: list[MetricsServer] = []

    def start(text: str) -> MetricsServer:
        web = webconfig.load(_write(tmp_path, text, f"web-{len(servers)}.yml"))
        server = MetricsServer(
            "127.0.0.1", 0, lambda: [HITS.with_samples({("a",): 7})], [HITS], web
        )
        loop.run_until_complete(server.__aenter__())
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            loop.run_until_complete(server.__aexit__(None, None, None))
        loop.close()


def _client_context(certs: Certs, cert: Path | None = None, key: Path | None = None) -> Any:
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def _get(
    url: str, *, auth: tuple[str, str] | None = None, context: Any = None
) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def test_tls_and_basic_auth(serve: Callable[[str], MetricsServer], certs: Certs) -> None:
    server = serve(_tls_block(certs) + f"basic_auth_users:\n  alice: {HASH}\n")
    assert server.url.startswith("https://127.0.0.1:")
    ctx = _client_context(certs)

    status, headers, body = _get(server.url, auth=("alice", "wrong"), context=ctx)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Basic")
    assert "bpf_auditd" not in body
    for auth in (None, ("mallory", PASSWORD), ("alice", ""), ("alice", "x" * 100)):
        assert _get(server.url, auth=auth, context=ctx)[0] == 401, auth

    for _ in range(2):  # the second time from the cache of passed credentials
        status, _, body = _get(server.url, auth=("alice", PASSWORD), context=ctx)
        assert status == 200
        assert value(body, "bpf_auditd_test_hits_total", service="a") == 7

    # Plain HTTP to the TLS port: refused with the answer Go servers give, and no metrics.
    plain = server.url.replace("https://", "http://")
    status, _, body = _get(plain, auth=("alice", PASSWORD))
    assert status == 400
    assert body.strip() == "Client sent an HTTP request to an HTTPS server."

    # A client that does not trust the server's certificate gives up.
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        _get(server.url, auth=("alice", PASSWORD), context=ssl.create_default_context())


def test_a_raw_garbage_connection_does_not_stop_the_server(
    serve: Callable[[str], MetricsServer], certs: Certs
) -> None:
    server = serve(_tls_block(certs))
    host, port = server.address.rsplit(":", 1)
    for payload in (b"", b"\x16\x03\x01\x00\x05garbage", b"\x00" * 10):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            sock.recv(1024)
    assert _get(server.url, context=_client_context(certs))[0] == 200


def test_client_certificates(serve: Callable[[str], MetricsServer], certs: Certs) -> None:
    server = serve(
        _tls_block(
            certs,
            f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {certs.ca}\n",
        )
    )
    trusted = _client_context(certs, certs.client_cert, certs.client_key)
    assert _get(server.url, context=trusted)[0] == 200
    for ctx in (
        _client_context(certs),
        _client_context(certs, certs.rogue_cert, certs.rogue_key),
    ):
        # TLS 1.3 reports the refusal on the first read: a reset or an alert, not a response.
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            _get(server.url, context=ctx)


def test_min_version(serve: Callable[[str], MetricsServer], certs: Certs) -> None:
    server = serve(_tls_block(certs, "  min_version: TLS13\n"))
    old = _client_context(certs)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(urllib.error.URLError):
        _get(server.url, context=old)
    assert _get(server.url, context=_client_context(certs))[0] == 200


def test_basic_auth_over_plain_http_and_headers(serve: Callable[[str], MetricsServer]) -> None:
    server = serve(
        f"basic_auth_users:\n  alice: {HASH}\n"
        "http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n"
    )
    assert server.url.startswith("http://")
    status, headers, _ = _get(server.url, auth=("alice", "nope"))
    assert (status, headers["X-Content-Type-Options"]) == (401, "nosniff")
    status, headers, body = _get(server.url, auth=("alice", PASSWORD))
    assert (status, headers["X-Content-Type-Options"]) == (200, "nosniff")
    assert value(body, "bpf_auditd_test_hits_total", service="a") == 7
    root = server.url.removesuffix("metrics")
    assert _get(root, auth=("alice", PASSWORD))[0] == 200
    assert _get(root + "other", auth=("alice", PASSWORD))[0] == 404


def test_gzip_when_asked(serve: Callable[[str], MetricsServer]) -> None:
    server = serve("")
    host, port = server.address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
        resp = conn.getresponse()
        assert resp.getheader("Content-Encoding") == "gzip"
        import gzip

        assert b"bpf_auditd_test_hits_total" in gzip.decompress(resp.read())
    finally:
        conn.close()
