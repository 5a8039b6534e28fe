"""The web-config file of the Prometheus exporters (`--web.config.file`): TLS and basic auth for
/metrics, read and validated into a `WebConfig` whose errors name file, line and key.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import yaml

from auditd.config.schema import Config
from auditd.config.yamlfile import ConfigError, compose, read, resolve_path, scalar
from exporters.prometheus.web import TlsServerConfig, WebConfig

CLIENT_AUTH_TYPES: Final = ("NoClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert")
# Go's crypto/tls can ask for a client certificate and not verify it; Python's ssl module verifies
# every certificate it accepts, so these two are refused rather than quietly made stricter.
_UNVERIFIED_CLIENT_AUTH: Final = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")
TLS_VERSIONS: Final = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# Headers the exporters let a web-config add, with the values allowed where the set is closed.
EXTRA_HEADERS: Final[Mapping[str, tuple[str, ...]]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}
_BCRYPT: Final = re.compile(r"^\$2[abxy]?\$(\d\d)\$[./A-Za-z0-9]{53}$")

_TOP: Final = ("basic_auth_users", "http_server_config", "tls_server_config")
_TLS: Final = ("cert_file", "client_auth_type", "client_ca_file", "key_file", "max_version",
               "min_version")  # fmt: skip
_HTTP: Final = ("headers", "http2")
# Parts of the format this daemon does not implement: named, so the error is not "unknown key".
_UNSUPPORTED: Final = {
    "rate_limit",
    "cert",
    "key",
    "client_ca",
    "cipher_suites",
    "curve_preferences",
    "prefer_server_cipher_suites",
    "client_allowed_sans",
}


def from_config(daemon_config: Config, config_file: Path | None) -> WebConfig | None:
    """The web config `metrics.web_config` names (relative to the daemon's config file), loaded
    and validated; None when the key is unset."""
    if daemon_config.metrics.web_config is None:
        return None
    return load(resolve_path(daemon_config.metrics.web_config, config_file))


def load(path: Path) -> WebConfig:
    """Read, validate and prepare (TLS context with certificates loaded) a web-config file.

    Relative file names inside it are relative to its own directory, as for the exporters.
    Raises ConfigError naming this file, the line and the key."""
    return loads(read(path), str(path), base=path.parent)


def loads(text: str, name: str, base: Path) -> WebConfig:
    node = compose(text, name)
    path = Path(name)
    if node is None:  # an empty file: plain HTTP, no auth (as the exporters read it)
        return WebConfig(path)
    reader = _Reader(name, base)
    top = reader.mapping(node, "", _TOP)
    tls = users = headers = None
    if "tls_server_config" in top:
        tls = reader.tls(*top["tls_server_config"])
    if "basic_auth_users" in top:
        users = reader.users(*top["basic_auth_users"])
    if "http_server_config" in top:
        headers = reader.http(*top["http_server_config"])
    context = None if tls is None else reader.context(tls)
    return WebConfig(path, tls, users or {}, headers or {}, context)


class _Reader:
    """Walks the YAML nodes, so every error can point at a line."""

    def __init__(self, name: str, base: Path) -> None:
        self.name = name
        self.base = base
        self.lines: dict[str, int] = {}

    def error(self, node: yaml.Node | None, key: str, message: str) -> ConfigError:
        line = self.lines.get(key) if node is None else node.start_mark.line + 1
        return ConfigError(self.name, line, key, message)

    def mapping(
        self, node: yaml.Node, prefix: str, valid: tuple[str, ...] | None
    ) -> dict[str, tuple[yaml.Node, str]]:
        """{key: (value node, dotted key)}; `valid=None` accepts any string key."""
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return {}
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, prefix or "(top level)", "expected a mapping of keys to values")
        out: dict[str, tuple[yaml.Node, str]] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            dotted = f"{prefix}.{key}" if prefix else str(key)
            if not isinstance(key, str) or not key:
                raise self.error(key_node, dotted, "expected a non-empty string key")
            if valid is not None and key not in valid:
                if key in _UNSUPPORTED:
                    message = "not supported by bpf-auditd; supported here: " + ", ".join(valid)
                else:
                    message = "unknown key; valid keys here: " + ", ".join(valid)
                raise self.error(key_node, dotted, message)
            if key in out:
                raise self.error(key_node, dotted, "given twice")
            self.lines[dotted] = key_node.start_mark.line + 1
            out[key] = (value_node, dotted)
        return out

    def scalar(self, node: yaml.Node, key: str, kind: type[Any], expected: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(node, key, f"expected {expected}, got a mapping or list")
        value = scalar(node)
        # bool is an int to Python, and YAML reads `no` as false: keep the two apart.
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise self.error(node, key, f"expected {expected}, got {value!r}")
        return value

    def text(self, node: yaml.Node, key: str) -> str:
        value: str = self.scalar(node, key, str, "a string")
        if not value:
            raise self.error(node, key, "expected a non-empty string")
        return value

    def choice(self, node: yaml.Node, key: str, choices: tuple[str, ...]) -> str:
        value = self.text(node, key)
        if value not in choices:
            raise self.error(node, key, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def file(self, node: yaml.Node, key: str) -> Path:
        path = self.base / self.text(node, key)
        if not path.is_file():
            raise self.error(node, key, f"no such file: {path}")
        return path

    def tls(self, node: yaml.Node, key: str) -> TlsServerConfig | None:
        items = self.mapping(node, key, _TLS)
        if not items:  # `tls_server_config: {}`: TLS off, as for the exporters
            return None
        for required in ("cert_file", "key_file"):
            if required not in items:
                raise ConfigError(
                    self.name,
                    self.lines.get(key),  # the line of `tls_server_config:` itself
                    f"{key}.{required}",
                    "missing: TLS needs both cert_file and key_file",
                )
        cert = self.file(*items["cert_file"])
        key_file = self.file(*items["key_file"])
        auth = "NoClientCert"
        if "client_auth_type" in items:
            auth_node, auth_key = items["client_auth_type"]
            auth = self.text(auth_node, auth_key)
            if auth in _UNVERIFIED_CLIENT_AUTH:
                raise self.error(
                    auth_node,
                    auth_key,
                    f"{auth} (accepting client certificates without verifying them) is not "
                    "supported; use VerifyClientCertIfGiven or RequireAndVerifyClientCert "
                    "with client_ca_file",
                )
            auth = self.choice(auth_node, auth_key, CLIENT_AUTH_TYPES)
        ca = self.file(*items["client_ca_file"]) if "client_ca_file" in items else None
        if ca is not None and auth == "NoClientCert":
            raise self.error(
                items["client_ca_file"][0],
                f"{key}.client_ca_file",
                "client CAs are configured but client_auth_type is NoClientCert: set "
                "client_auth_type to VerifyClientCertIfGiven or RequireAndVerifyClientCert",
            )
        versions = tuple(TLS_VERSIONS)
        low = self.choice(*items["min_version"], versions) if "min_version" in items else "TLS12"
        high = self.choice(*items["max_version"], versions) if "max_version" in items else "TLS13"
        if versions.index(low) > versions.index(high):
            where = items.get("max_version") or items["min_version"]
            raise self.error(where[0], where[1], f"min_version {low} is above max_version {high}")
        return TlsServerConfig(cert, key_file, auth, ca, low, high)

    def context(self, tls: TlsServerConfig) -> ssl.SSLContext:
        """The server's TLS context, certificates loaded, so a bad file fails at start-up."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.minimum_version = TLS_VERSIONS[tls.min_version]
            ctx.maximum_version = TLS_VERSIONS[tls.max_version]
        except ValueError as exc:  # an OpenSSL built without that version
            raise self.error(None, "tls_server_config.min_version", str(exc)) from exc
        try:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
        except (ssl.SSLError, OSError) as exc:
            raise self.error(
                None,
                "tls_server_config.key_file",
                f"cannot use cert_file {tls.cert_file} with key_file {tls.key_file}: "
                f"{_ssl_reason(exc)}",
            ) from exc
        if tls.client_auth_type != "NoClientCert":
            ctx.verify_mode = (
                ssl.CERT_REQUIRED
                if tls.client_auth_type == "RequireAndVerifyClientCert"
                else ssl.CERT_OPTIONAL
            )
            ca_key = "tls_server_config.client_ca_file"
            ca_from = str(tls.client_ca_file)
            if tls.client_ca_file is None:
                ca_key, ca_from = "tls_server_config.client_auth_type", "the system CA store"
            try:
                if tls.client_ca_file is None:  # Go verifies against the system roots then
                    ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
                else:
                    ctx.load_verify_locations(cafile=tls.client_ca_file)
            except (ssl.SSLError, OSError) as exc:
                raise self.error(
                    None, ca_key, f"cannot load client CAs from {ca_from}: {_ssl_reason(exc)}"
                ) from exc
            if tls.client_ca_file is not None and not ctx.get_ca_certs():
                raise self.error(None, ca_key, f"no CA certificate found in {ca_from}")
        return ctx

    def users(self, node: yaml.Node, key: str) -> dict[str, bytes]:
        users: dict[str, bytes] = {}
        for user, (value_node, dotted) in self.mapping(node, key, None).items():
            if ":" in user:
                raise self.error(value_node, dotted, "a basic-auth user name cannot contain ':'")
            hashed = self.scalar(value_node, dotted, str, "a bcrypt hash")
            # Never echo the value: an operator may have put the password itself here.
            match = _BCRYPT.match(hashed)
            if match is None or not 4 <= int(match.group(1)) <= 31:
                raise self.error(
                    value_node,
                    dotted,
                    "expected a bcrypt hash like $2y$10$ followed by 53 characters (make one "
                    "with: htpasswd -nBC 10 USER), got a value that is not one",
                )
            users[user] = hashed.encode()
        return users

    def http(self, node: yaml.Node, key: str) -> dict[str, str]:
        items = self.mapping(node, key, _HTTP)
        if "http2" in items:  # accepted for compatibility: /metrics is served over HTTP/1.x
            self.scalar(*items["http2"], bool, "true or false")
        headers: dict[str, str] = {}
        if "headers" in items:
            for header, (value_node, dotted) in self.mapping(*items["headers"], None).items():
                if header not in EXTRA_HEADERS:
                    raise self.error(
                        value_node,
                        dotted,
                        "this header cannot be configured; valid: " + ", ".join(EXTRA_HEADERS),
                    )
                value = self.text(value_node, dotted)
                allowed = EXTRA_HEADERS[header]
                if allowed and value not in allowed:
                    raise self.error(
                        value_node, dotted, f"expected one of {', '.join(allowed)}, got {value!r}"
                    )
                headers[header] = value
        return headers


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
