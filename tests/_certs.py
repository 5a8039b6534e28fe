"""Throwaway X.509 material for TLS tests, made with the openssl command line tool."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _signed(cwd: Path, name: str, subject: str, ext: str, ca: str | None) -> None:
    """<name>.key and <name>.pem: signed by <ca> (or self-signed when ca is None)."""
    (cwd / f"{name}.ext").write_text(ext)
    key_args = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    _openssl("req", "-new", *key_args, "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", subject, cwd=cwd)  # fmt: skip
    if ca is None:
        signer = ["-signkey", f"{name}.key"]
    else:
        signer = ["-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial"]
    _openssl("x509", "-req", "-in", f"{name}.csr", *signer, "-days", "2", "-out", f"{name}.pem",
             "-extfile", f"{name}.ext", cwd=cwd)  # fmt: skip


@dataclass(frozen=True)
class Certs:
    dir: Path
    ca: Path  # CA certificate (PEM), signer of server and client
    server_cert: Path  # for 127.0.0.1, ::1 and localhost
    server_key: Path
    client_cert: Path  # signed by the CA
    client_key: Path
    rogue_cert: Path  # a self-signed client certificate no one trusts
    rogue_key: Path


def make_certs(directory: Path) -> Certs:
    directory.mkdir(parents=True, exist_ok=True)
    ca_ext = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
    server_ext = (
        "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\n"
    )
    client_ext = "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n"
    _signed(directory, "ca", "/CN=bpf-auditd test CA", ca_ext, None)
    _signed(directory, "server", "/CN=localhost", server_ext, "ca")
    _signed(directory, "client", "/CN=prometheus", client_ext, "ca")
    _signed(directory, "rogue", "/CN=rogue", client_ext, None)
    d = directory
    return Certs(
        d,
        d / "ca.pem",
        d / "server.pem",
        d / "server.key",
        d / "client.pem",
        d / "client.key",
        d / "rogue.pem",
        d / "rogue.key",
    )
