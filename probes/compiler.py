"""Compiling probe C into an image (probes/image.py) with BCC's compiler, in this process or in
a short-lived child.

The daemon never imports BCC: its LLVM and clang would stay mapped for the daemon's whole life
(~150 MB resident). It runs `python -m probes.compiler` instead, which reads the request
(JSON: text, cflags) on stdin, writes the image on stdout and exits. Short-lived commands and
tests may compile in their own process (`compile_image`).

Nothing is loaded into the kernel here beyond what BCC creates while compiling (its maps, for
the instructions to refer to), and that is released before returning.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from probes import bpfsys
from probes.image import Function, Image, ImageError, MapSpec, relocate


class CompileError(Exception):
    """BCC refused the text (the message carries what it said, where it could be caught)."""


def _lib() -> Any:
    try:
        from bcc.libbcc import lib
    except ImportError as exc:
        raise CompileError(
            "the BCC Python binding is missing (Debian package python3-bpfcc)"
        ) from exc
    lib.bpf_num_tables.restype = ctypes.c_ulonglong
    lib.bpf_num_tables.argtypes = (ctypes.c_void_p,)
    lib.bpf_table_name.restype = ctypes.c_char_p
    lib.bpf_table_name.argtypes = (ctypes.c_void_p, ctypes.c_ulonglong)
    return lib


def bcc_version() -> str:
    """BCC's version as its binding declares it, without importing it (the daemon computes
    cache keys with it); "" when it is not installed."""
    import importlib.util

    spec = importlib.util.find_spec("bcc")
    if spec is None or not spec.submodule_search_locations:
        return ""
    for location in spec.submodule_search_locations:
        try:
            with open(os.path.join(location, "version.py")) as f:
                text = f.read()
        except OSError:
            continue
        return text.strip()
    return ""


def compile_image(text: str, cflags: Sequence[str]) -> Image:
    """Compile in this process (imports BCC). Raises CompileError."""
    lib = _lib()
    args = (ctypes.c_char_p * len(cflags))(*(flag.encode() for flag in cflags))
    module = lib.bpf_module_create_c_from_string(text.encode(), 0, args, len(cflags), True, None)
    if not module:
        raise CompileError("BCC could not compile the probes (its messages are on stderr)")
    try:
        maps: list[MapSpec] = []
        names_by_fd: dict[int, str] = {}
        for i in range(lib.bpf_num_tables(module)):
            name = lib.bpf_table_name(module, i)
            fd = lib.bpf_table_fd(module, name)
            info = bpfsys.map_info(fd)
            names_by_fd[fd] = name.decode()
            maps.append(
                MapSpec(
                    name=name.decode(),
                    type=info.type,
                    key_size=info.key_size,
                    value_size=info.value_size,
                    max_entries=info.max_entries,
                    flags=info.flags,
                    key_desc=json.loads(lib.bpf_table_key_desc(module, name) or b'"int"'),
                    leaf_desc=json.loads(lib.bpf_table_leaf_desc(module, name) or b'"int"'),
                )
            )
        functions = []
        for i in range(lib.bpf_num_functions(module)):
            name = lib.bpf_function_name(module, i)
            start = lib.bpf_function_start(module, name)
            size = lib.bpf_function_size(module, name)
            insns, refs = relocate(ctypes.string_at(start, size), names_by_fd)
            functions.append(Function(name.decode(), insns, refs))
        license_ = (lib.bpf_module_license(module) or b"GPL").decode()
    except ImageError as exc:
        raise CompileError(f"compiled code the loader cannot reproduce: {exc}") from exc
    finally:
        lib.bpf_module_destroy(module)
    image = Image(tuple(maps), tuple(functions), license_)
    image.check()
    return image


def compile_in_child(text: str, cflags: Sequence[str], *, timeout: float = 600.0) -> Image:
    """Compile in a child process (this one never imports BCC). Raises CompileError with the
    child's last messages."""
    request = json.dumps({"text": text, "cflags": list(cflags)}).encode()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "probes.compiler"],
            input=request,
            capture_output=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "PYTHONPATH": _import_root()},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CompileError(f"the compiler process failed: {exc}") from exc
    if done.returncode != 0:
        said = [line for line in done.stderr.decode(errors="replace").splitlines() if line.strip()]
        tail = "; ".join(said[-6:]) or f"exit status {done.returncode}"
        raise CompileError(tail)
    try:
        return Image.from_json(done.stdout)
    except ImageError as exc:
        raise CompileError(f"the compiler process answered with no image: {exc}") from exc


def _import_root() -> str:
    """Where this package is imported from, first on the child's path (the child must compile
    with this very code, whatever the environment says)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rest = os.environ.get("PYTHONPATH", "")
    return here + (os.pathsep + rest if rest else "")


def main() -> int:
    request = json.loads(sys.stdin.buffer.read())
    try:
        image = compile_image(str(request["text"]), [str(f) for f in request["cflags"]])
    except CompileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(image.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
