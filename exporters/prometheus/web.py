"""What /metrics is served with: TLS, basic-auth users and extra headers (the daemon reads them
from a web-config file in the Prometheus exporters' format; auditd/config/webconfig.py)."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class TlsServerConfig:
    cert_file: Path
    key_file: Path
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: str = "TLS12"
    max_version: str = "TLS13"


@dataclass(frozen=True, slots=True)
class WebConfig:
    """What /metrics is served with. `context` is built (certificates loaded) by `load`."""

    path: Path
    tls: TlsServerConfig | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash
    headers: Mapping[str, str] = field(default_factory=dict)
    context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)
