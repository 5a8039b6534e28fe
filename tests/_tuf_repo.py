"""A TUF repository of policies for tests: written with the publisher's own code
(`auditd.commands.repository`, `signing`), served by a static HTTP server on loopback that can
misbehave (HTTP 500, a slow drip, garbage), plus what an attacker or a broken mirror does to it
(corrupt a signature, sign with too few keys, replay old metadata, swap a target's bytes)."""

from __future__ import annotations

import http.server
import json
import shutil
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from tuf.api.metadata import Metadata

from auditd.commands import signing
from auditd.commands.repository import Repository
from auditd.commands.signing import Ed25519Signer

TARGET = "policies/fleet.yaml"


class _Handler(http.server.SimpleHTTPRequestHandler):
    mode = "ok"  # ok | 500 | drip | garbage

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.mode == "500":
            self.send_error(500)
            return
        if self.mode == "drip" and self.path.endswith("timestamp.json"):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            for _ in range(400):  # one byte per 0.25 s: never a gap long enough to time out
                try:
                    self.wfile.write(b" ")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.25)
            return
        if self.mode == "garbage" and self.path.endswith("timestamp.json"):
            body = b"{not json"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()


class StaticServer:
    """Serves `root` on 127.0.0.1; `stop()` then `start()` comes back on the same port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = 0
        self.handler: type[_Handler] = type("Handler", (_Handler,), {"mode": "ok"})
        self._httpd: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> StaticServer:
        self._httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", self.port), partial(self.handler, directory=str(self.root))
        )
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def mode(self, mode: str) -> None:
        self.handler.mode = mode


class Publisher:
    """Key files in `<dir>/keys`, the repository in `<dir>/repo`: root (1 key), targets (2 keys,
    threshold 2), snapshot and timestamp (1 key each)."""

    ROLE_KEYS: ClassVar[dict[str, list[str]]] = {
        "root": ["root-1"], "targets": ["targets-1", "targets-2"],
        "snapshot": ["snapshot-1"], "timestamp": ["timestamp-1"],
    }  # fmt: skip

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.keys_dir = directory / "keys"
        self.repo_dir = directory / "repo"
        self.keys: dict[str, Ed25519Signer] = {}
        for names in self.ROLE_KEYS.values():
            for name in names:
                self.keys[name] = signing.generate(self.keys_dir / f"{name}.pem")
        Repository(self.repo_dir).create(
            {role: [self.keys[n] for n in names] for role, names in self.ROLE_KEYS.items()},
            {"targets": 2},
        )
        self.pinned = self.repo_dir / "metadata" / "1.root.json"

    def repo(self, *, strict: bool = True, **lifetimes: float) -> Repository:
        return Repository(self.repo_dir, lifetimes, strict=strict)

    def signers(self, *names: str) -> list[Ed25519Signer]:
        return [self.keys[n] for n in names or self.keys]

    def key(self, name: str) -> Ed25519Signer:
        if name not in self.keys:
            self.keys[name] = signing.generate(self.keys_dir / f"{name}.pem")
        return self.keys[name]

    def add(self, text: str, *names: str, strict: bool = True, **lifetimes: float) -> bytes:
        """Publish `text` as the target (signed by key `names`, default all)."""
        data = text.encode()
        self.repo(strict=strict, **lifetimes).add_target(TARGET, data, self.signers(*names))
        return data

    def timestamp(self, **lifetimes: float) -> None:
        repo = self.repo(**lifetimes)
        repo.publish(repo.root().signed, self.signers(), snapshot=False)

    # -- what an attacker or a broken mirror does --------------------------------------------

    def write(self, md: Metadata[Any], *names: str) -> None:
        """Serve `md` signed by exactly the keys `names`, whatever the root says of them."""
        md.signatures.clear()
        for name in names:
            md.sign(self.keys[name], append=True)
        role, data = md.signed.type, md.to_bytes()
        name = "timestamp.json" if role == "timestamp" else f"{md.signed.version}.{role}.json"
        (self.repo_dir / "metadata" / name).write_bytes(data)

    def corrupt_signature(self, name: str = "timestamp.json") -> None:
        """Flip one hex digit of the first signature of a served metadata file."""
        path = self.repo_dir / "metadata" / name
        md = json.loads(path.read_text())
        sig = md["signatures"][0]["sig"]
        md["signatures"][0]["sig"] = ("0" if sig[0] != "0" else "1") + sig[1:]
        path.write_text(json.dumps(md))

    def tamper_target(self, data: bytes) -> None:
        """Replace the served bytes of the current target (its name keeps the old hash)."""
        info = self.repo().targets().signed.targets[TARGET]
        (
            self.repo_dir / "targets" / "policies" / f"{info.hashes['sha256']}.fleet.yaml"
        ).write_bytes(data)

    def save_metadata(self, name: str) -> Path:
        copy = self.dir / f"saved-{name}"
        shutil.copytree(self.repo_dir / "metadata", copy)
        return copy

    def serve_metadata(self, saved: Path) -> None:
        """Serve a saved copy of the metadata (a replay), the current one moved aside."""
        current = self.repo_dir / "metadata"
        shutil.rmtree(current)
        shutil.copytree(saved, current)

    def current_root(self) -> Metadata[Any]:
        return self.repo().root()
