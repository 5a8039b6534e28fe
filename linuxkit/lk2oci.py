#!/usr/bin/env python3
"""A service of a LinuxKit image YAML → the OCI bundle files LinuxKit runs it with.

    lk2oci.py IMAGE_YML SERVICE OUTDIR [--label BUILD_YML] [--cmd JSON] [--env JSON] [--cwd DIR]

writes OUTDIR/config.json (the OCI runtime spec runc runs) and OUTDIR/runtime.json (what
LinuxKit's init prepares around it). The rules are LinuxKit's own, read from its source
(src/cmd/linuxkit/moby/config.go, ConfigToOCI and its assign*/mergeStrings helpers):

- Three sources, highest first: the service entry of the image YAML, the package's label
  (`config:` of build.yml, which `linuxkit pkg build` writes into the image as the
  `org.mobyproject.config` label), and the image's own config (Dockerfile CMD, ENV, WORKDIR:
  --cmd, --env, --cwd here). A key the YAML gives replaces the label's, even with an empty list.
- Mounts: /proc, /dev (tmpfs), /dev/pts, /sys and /sys/fs/cgroup (type cgroup, read-only) by
  default; then `tmpfs`, `binds` and `mounts`, each replacing an earlier mount of the same
  destination; sorted by destination. A YAML `binds` replaces the label's binds and the YAML's
  own `binds.add`; otherwise the list is the label's binds followed by `binds.add`. A bind
  without options is `rw,rbind,rshared`; with options, those plus `rbind`.
- `readonly` makes the root read-only and adds `ro` to /dev and /sys.
- Namespaces: net, ipc, uts and user are the host's unless set (`new`, or a path); pid is new
  unless `host`; mount is always new; there is no cgroup namespace.
- Capabilities: the YAML's `capabilities`, or the label's followed by the YAML's
  `capabilities.add`; `all` and `none` expand; an unknown name is an error. The bounding,
  permitted and inheritable sets are the sorted union with `ambient`.
- runtime.json: `cgroups`, `mounts`, `mkdir`, `interfaces`, `bindNS`, `namespace`, each from
  the YAML or else the label. LinuxKit's init makes the `mkdir` directories before it starts
  the service: a relative path inside the root filesystem, an absolute one on the host.

Not handled, each refused with its line: user or group names (LinuxKit numbers them per image
at build time), `additionalGids` and `devices`. Errors are one line, `file:line: key: message`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# The runtime-spec version LinuxKit's go.mod vendors.
SPEC_VERSION = "1.2.1"
# BuildKit's environment for an image FROM scratch: what an image without ENV gets.
DEFAULT_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
# Every capability LinuxKit knows (moby/sys/capability's ListKnown): an unknown one is an error.
# A copy, as this runs with PyYAML alone; tests/test_lk2oci.py keeps it equal to the daemon's.
ALL_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip
# The keys a service entry (and a label) may have: LinuxKit's schema (moby/schema.go).
KEYS = frozenset((
    "name", "image", "capabilities", "capabilities.add", "ambient", "mounts", "binds",
    "binds.add", "devices", "tmpfs", "command", "env", "cwd", "net", "pid", "ipc", "uts",
    "userns", "readonly", "maskedPaths", "readonlyPaths", "uid", "gid", "additionalGids",
    "noNewPrivileges", "hostname", "oomScoreAdj", "rootfsPropagation", "cgroupsPath",
    "resources", "sysctl", "rlimits", "uidMappings", "gidMappings", "annotations", "runtime",
))  # fmt: skip
RUNTIME_KEYS = ("cgroups", "mounts", "mkdir", "interfaces")
# specs.Mount read by LinuxKit's YAML parser: its field names, lower-cased.
MOUNT_KEYS = frozenset(("destination", "type", "source", "options", "uidmappings", "gidmappings"))
BIND_NAMESPACES = ("cgroup", "ipc", "mnt", "net", "pid", "user", "uts")
RLIMITS = frozenset(
    "RLIMIT_" + name
    for name in (
        "CPU", "FSIZE", "DATA", "STACK", "CORE", "RSS", "NPROC", "NOFILE", "MEMLOCK", "AS",
        "LOCKS", "SIGPENDING", "MSGQUEUE", "NICE", "RTPRIO", "RTTIME",
    )
)  # fmt: skip
UNLIMITED = 2**64 - 1
_DEFAULT_MOUNTPOINTS = {
    "proc": "/proc",
    "devpts": "/dev/pts",
    "sysfs": "/sys",
    "cgroup": "/sys/fs/cgroup",
    "mqueue": "/dev/mqueue",
}


class ConvertError(Exception):
    """A service entry LinuxKit would refuse (or this converter does not handle), located."""

    def __init__(self, file: str, line: int | None, key: str, message: str) -> None:
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


@dataclass(frozen=True, slots=True)
class Entry:
    """A service entry or a label as read: its values, and the line of every key and item."""

    file: str
    values: Mapping[str, Any]
    # "binds" → the line of the key; "binds[2]" → of the third item; "runtime.mkdir[0]" ...
    lines: Mapping[str, int]

    def has(self, key: str) -> bool:
        return key in self.values

    def error(self, key: str, message: str) -> ConvertError:
        return ConvertError(self.file, self.lines.get(key), key, message)

    def strings(self, key: str) -> list[str] | None:
        """A list of strings, or None when the key is absent."""
        if key not in self.values:
            return None
        value = self.values[key]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, "must be a list of strings")
        return list(value)

    def string(self, key: str) -> str:
        value = self.values.get(key, "")
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.error(key, "must be a string")
        return value

    def flag(self, key: str) -> bool | None:
        if key not in self.values:
            return None
        value = self.values[key]
        if not isinstance(value, bool):
            raise self.error(key, "must be true or false")
        return value


EMPTY = Entry("", {}, {})


def _lines(file: str, node: yaml.Node, path: str, out: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            full = f"{path}.{key}" if path else key
            if key in seen:  # LinuxKit's YAML parser refuses this; PyYAML would keep the last
                raise ConvertError(file, key_node.start_mark.line + 1, full, "given twice")
            seen.add(key)
            _lines(file, value_node, full, out)
            out[full] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _lines(file, item, f"{path}[{i}]", out)
    out.setdefault(path, node.start_mark.line + 1)


def _entry(file: str, node: yaml.Node) -> Entry:
    if not isinstance(node, yaml.MappingNode):
        raise ConvertError(file, node.start_mark.line + 1, "", "must be a mapping")
    lines: dict[str, int] = {}
    _lines(file, node, "", lines)
    values = yaml.SafeLoader("").construct_document(node)
    entry = Entry(file, values, lines)
    for key in values:
        if key not in KEYS:
            raise entry.error(key, "not a key LinuxKit knows")
    runtime = values.get("runtime") or {}
    if not isinstance(runtime, dict):
        raise entry.error("runtime", "must be a mapping")
    for key in runtime:
        if key not in (*RUNTIME_KEYS, "bindNS", "namespace"):
            raise entry.error(f"runtime.{key}", "not a key LinuxKit knows")
    mounts = values.get("mounts") or []
    if not isinstance(mounts, list) or not all(isinstance(m, dict) for m in mounts):
        raise entry.error("mounts", "must be a list of mappings")
    for i, mount in enumerate(mounts):
        for key, value in mount.items():
            if key not in MOUNT_KEYS:
                raise entry.error(f"mounts[{i}].{key}", "not a key LinuxKit knows")
            if key == "options" and not (
                isinstance(value, list) and all(isinstance(v, str) for v in value)
            ):
                raise entry.error(f"mounts[{i}].options", "must be a list of strings")
            if key in ("destination", "type", "source") and not isinstance(value, str):
                raise entry.error(f"mounts[{i}].{key}", "must be a string")
    return entry


def _compose(path: Path) -> yaml.MappingNode:
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except OSError as exc:
        raise ConvertError(str(path), None, "", f"cannot read: {exc.strerror}") from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConvertError(str(path), line, "", f"invalid YAML: {exc.problem}") from exc
    if not isinstance(node, yaml.MappingNode):
        raise ConvertError(str(path), None, "", "must be a mapping")
    return node


def _get(node: yaml.MappingNode, key: str) -> yaml.Node | None:
    return next((v for k, v in node.value if k.value == key), None)


def load_service(image_yml: Path, name: str) -> Entry:
    """The entry named `name` in the image YAML's `services`."""
    services = _get(_compose(image_yml), "services")
    for item in services.value if isinstance(services, yaml.SequenceNode) else []:
        found = _get(item, "name") if isinstance(item, yaml.MappingNode) else None
        if found is not None and found.value == name:
            return _entry(str(image_yml), item)
    raise ConvertError(str(image_yml), None, "services", f"no service named {name!r}")


def load_label(build_yml: Path) -> Entry:
    """The package's label: the `config:` of its build.yml (`linuxkit pkg build` writes it
    into the image as JSON; it may not name the service or its image)."""
    config = _get(_compose(build_yml), "config")
    if config is None:
        return EMPTY
    label = _entry(str(build_yml), config)
    for key in ("name", "image"):
        if label.has(key):
            raise label.error(key, "cannot be set in the image label")
    # What the label holds is JSON: values JSON cannot hold would not survive it.
    try:
        values = json.loads(json.dumps(dict(label.values)))
    except (TypeError, ValueError) as exc:
        line = config.start_mark.line + 1
        raise ConvertError(label.file, line, "config", f"not JSON: {exc}") from exc
    return Entry(label.file, values, label.lines)


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """What the image itself says (its Dockerfile's ENTRYPOINT + CMD, ENV, WORKDIR)."""

    args: tuple[str, ...] = ()
    env: tuple[str, ...] = DEFAULT_ENV
    cwd: str = ""


def _pick(label: Entry, svc: Entry, key: str) -> Entry | None:
    """Which entry gives `key`: the YAML's if it has the key at all (even empty), else the
    label's (LinuxKit's assign*: a pointer that is set wins)."""
    if svc.has(key):
        return svc
    if label.has(key):
        return label
    return None


def _strings(label: Entry, svc: Entry, key: str, default: list[str]) -> list[str]:
    entry = _pick(label, svc, key)
    value = entry.strings(key) if entry else None
    return value if value is not None else list(default)


def _flag(label: Entry, svc: Entry, key: str) -> bool:
    entry = _pick(label, svc, key)
    return bool(entry.flag(key)) if entry else False


def _value(label: Entry, svc: Entry, key: str) -> Any:
    entry = _pick(label, svc, key)
    return entry.values[key] if entry else None


def _nonempty(default: str, *values: str) -> str:
    """The last non-empty value, else the default (LinuxKit's assignStringEmpty*)."""
    out = default
    for value in values:
        if value:
            out = value
    return out


def _capabilities(sources: list[tuple[Entry, str]]) -> list[str]:
    """The names the sources list, in order; one `all` or `none` expands; unknown names are
    reported where they are written."""
    names = [name for entry, key in sources for name in (entry.strings(key) or [])]
    if len(names) == 1 and names[0].lower() == "none":
        return []
    if len(names) == 1 and names[0].lower() == "all":
        return list(ALL_CAPABILITIES)
    for entry, key in sources:
        for i, name in enumerate(entry.strings(key) or []):
            if name not in ALL_CAPABILITIES:
                raise entry.error(f"{key}[{i}]", f"unknown capability {name}")
    return names


def _mounts(label: Entry, svc: Entry, readonly: bool) -> list[dict[str, Any]]:
    ro = ["ro"] if readonly else []
    mounts: dict[str, dict[str, Any]] = {}

    def add(destination: str, kind: str, source: str, options: list[str] | None) -> None:
        mount: dict[str, Any] = {"destination": destination, "type": kind, "source": source}
        if options:
            mount["options"] = options
        mounts[destination] = mount

    # The defaults (as Docker's, without /dev/shm and /dev/mqueue).
    add("/proc", "proc", "proc", ["nosuid", "nodev", "noexec", "relatime"])
    add("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k", *ro])
    pts = ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]
    add("/dev/pts", "devpts", "devpts", pts)
    add("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", *ro])
    add("/sys/fs/cgroup", "cgroup", "cgroup", ["nosuid", "noexec", "nodev", "relatime", "ro"])

    entry = _pick(label, svc, "tmpfs") or EMPTY
    for i, text in enumerate(entry.strings("tmpfs") or []):
        parts = text.split(":")
        if len(parts) > 2:
            raise entry.error(f"tmpfs[{i}]", f"cannot parse {text!r}: too many ':'")
        add(parts[0], "tmpfs", "tmpfs", parts[1].split(",") if len(parts) == 2 else None)

    # binds: the YAML's own list replaces everything; else the label's, then binds.add.
    if svc.has("binds"):
        binds = [(svc, f"binds[{i}]", b) for i, b in enumerate(svc.strings("binds") or [])]
    else:
        binds = [(label, f"binds[{i}]", b) for i, b in enumerate(label.strings("binds") or [])]
        added = svc.strings("binds.add") or []
        binds += [(svc, f"binds.add[{i}]", b) for i, b in enumerate(added)]
    for where_entry, where, text in binds:
        parts = text.split(":")
        if len(parts) < 2:
            raise where_entry.error(where, f"cannot parse bind {text!r}: missing ':'")
        if len(parts) > 3:
            raise where_entry.error(where, f"cannot parse bind {text!r}: too many ':'")
        options = [*parts[2].split(","), "rbind"] if len(parts) == 3 else ["rw", "rbind", "rshared"]
        add(parts[1], "bind", parts[0], options)

    # mounts: the whole list from the YAML, else the label's.
    entry = _pick(label, svc, "mounts") or EMPTY
    for i, mount in enumerate(entry.values.get("mounts") or []):
        kind = mount.get("type") or ""
        source = mount.get("source") or ""
        destination = mount.get("destination") or ""
        if not kind and source in ("mqueue", "devpts", "proc", "sysfs", "cgroup"):
            kind = source
        if not kind and destination == "/dev":
            kind = "tmpfs"
        if not kind:
            raise entry.error(f"mounts[{i}]", f"mount on {destination!r} has no type")
        destination = destination or _DEFAULT_MOUNTPOINTS.get(kind, "")
        if not destination:
            raise entry.error(f"mounts[{i}]", f"mount of type {kind} has no destination")
        add(destination, kind, source or kind, mount.get("options"))
    return [mounts[d] for d in sorted(mounts)]


def _namespaces(label: Entry, svc: Entry) -> list[dict[str, str]]:
    namespaces = []
    for kind, key, default, new in (
        ("network", "net", "root", ("new", "none")),
        ("ipc", "ipc", "root", ("new",)),
        ("uts", "uts", "root", ("new",)),
        ("pid", "pid", "", ("new", "")),
        ("user", "userns", "root", ("new",)),
    ):
        value = _nonempty(default, label.string(key), svc.string(key))
        if value in ("host", "root"):
            continue
        namespace = {"type": kind}
        if value not in new:
            namespace["path"] = value
        namespaces.append(namespace)
    namespaces.append({"type": "mount"})  # always; and no cgroup namespace (a LinuxKit TODO)
    return namespaces


def _numeric_id(label: Entry, svc: Entry, key: str) -> int:
    entry = _pick(label, svc, key) or EMPTY
    value = entry.values.get(key)
    if value in (None, "", "root"):
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise entry.error(key, f"{value!r}: `linuxkit build` numbers names; not handled here")
    return value


def _rlimits(label: Entry, svc: Entry) -> list[dict[str, Any]]:
    entry = _pick(label, svc, "rlimits") or EMPTY
    out = []
    for i, text in enumerate(entry.strings("rlimits") or []):
        parts = [p.strip() for p in text.split(",", 2)]
        if len(parts) != 3:
            raise entry.error(f"rlimits[{i}]", f"cannot parse {text!r}: not name,soft,hard")
        name = parts[0].upper()
        name = name if name.startswith("RLIMIT_") else "RLIMIT_" + name
        if name not in RLIMITS:
            raise entry.error(f"rlimits[{i}]", f"unknown limit {parts[0]}")
        try:
            soft, hard = (UNLIMITED if v.lower() == "unlimited" else int(v) for v in parts[1:])
        except ValueError:
            raise entry.error(f"rlimits[{i}]", f"cannot parse {text!r}") from None
        out.append({"type": name, "soft": soft, "hard": hard})
    return out


def convert(
    svc: Entry, label: Entry = EMPTY, image: ImageConfig = ImageConfig()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The OCI spec (config.json) and LinuxKit's runtime config (runtime.json) of a service."""
    for key in ("devices", "additionalGids"):
        entry = _pick(label, svc, key)
        if entry and entry.values[key]:
            raise entry.error(key, "not handled by this converter")
    readonly = _flag(label, svc, "readonly")

    if svc.has("capabilities"):
        caps = _capabilities([(svc, "capabilities")])
    else:
        caps = _capabilities([(label, "capabilities"), (svc, "capabilities.add")])
    entry = _pick(label, svc, "ambient")
    ambient = _capabilities([(entry, "ambient")]) if entry else []
    bounding = sorted(set(caps) | set(ambient))

    process: dict[str, Any] = {
        "user": {"uid": _numeric_id(label, svc, "uid"), "gid": _numeric_id(label, svc, "gid")},
        "args": _strings(label, svc, "command", list(image.args)),
        "env": _strings(label, svc, "env", list(image.env)),
        "cwd": _nonempty("/", image.cwd, label.string("cwd"), svc.string("cwd")),
        "capabilities": {
            "bounding": bounding,
            "effective": caps,
            "inheritable": bounding,
            "permitted": bounding,
            "ambient": ambient,
        },
        "noNewPrivileges": _flag(label, svc, "noNewPrivileges"),
    }
    if rlimits := _rlimits(label, svc):
        process["rlimits"] = rlimits
    if (oom := _value(label, svc, "oomScoreAdj")) is not None:
        process["oomScoreAdj"] = oom

    # Empty values are left out, as Go's omitempty does.
    linux: dict[str, Any] = {}
    for key in ("uidMappings", "gidMappings", "sysctl"):
        if value := _value(label, svc, key):
            linux[key] = value
    linux["resources"] = _value(label, svc, "resources") or {}
    if value := _value(label, svc, "cgroupsPath"):
        linux["cgroupsPath"] = value
    linux["namespaces"] = _namespaces(label, svc)
    if value := _value(label, svc, "rootfsPropagation"):
        linux["rootfsPropagation"] = value
    for key in ("maskedPaths", "readonlyPaths"):
        if paths := _strings(label, svc, key, []):
            linux[key] = paths

    spec: dict[str, Any] = {
        "ociVersion": SPEC_VERSION,
        "process": process,
        "root": {"path": "rootfs", "readonly": readonly},
    }
    if hostname := _nonempty("", label.string("hostname"), svc.string("hostname")):
        spec["hostname"] = hostname
    spec["mounts"] = _mounts(label, svc, readonly)
    if annotations := _value(label, svc, "annotations"):
        spec["annotations"] = annotations
    spec["linux"] = linux
    return spec, _runtime(label, svc)


def _runtime(label: Entry, svc: Entry) -> dict[str, Any]:
    """runtime.json: each field from the YAML's `runtime`, else the label's."""
    ours: Mapping[str, Any] = svc.values.get("runtime") or {}
    theirs: Mapping[str, Any] = label.values.get("runtime") or {}
    runtime: dict[str, Any] = {}
    for key in RUNTIME_KEYS:
        value = ours.get(key, theirs.get(key))
        runtime[key] = value if value is not None else []
    entry = svc if "mkdir" in ours else label
    for i, directory in enumerate(runtime["mkdir"]):
        if not isinstance(directory, str) or not directory:
            raise entry.error(f"runtime.mkdir[{i}]", "must be a path")
    ours_ns: Mapping[str, Any] = ours.get("bindNS") or {}
    theirs_ns: Mapping[str, Any] = theirs.get("bindNS") or {}
    runtime["bindNS"] = {k: ours_ns.get(k, theirs_ns.get(k, "")) for k in BIND_NAMESPACES}
    runtime["namespace"] = ours.get("namespace", theirs.get("namespace", ""))
    return runtime


def host_directories(runtime: Mapping[str, Any], rootfs: Path) -> list[Path]:
    """The directories LinuxKit's init makes for `runtime.mkdir` before it starts the service
    (pkg/init/cmd/service/prepare.go): absolute paths on the host, relative ones in rootfs."""
    return [Path(d) if Path(d).is_absolute() else rootfs / d for d in runtime["mkdir"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("image_yml", type=Path, help="the LinuxKit image YAML")
    parser.add_argument("service", help="the name of the service entry")
    parser.add_argument("outdir", type=Path, help="where config.json and runtime.json go")
    parser.add_argument("--label", type=Path, help="the package's build.yml (its config:)")
    parser.add_argument("--cmd", default="[]", help="the image's ENTRYPOINT+CMD, as JSON")
    parser.add_argument("--env", default=json.dumps(DEFAULT_ENV), help="the image's ENV, JSON")
    parser.add_argument("--cwd", default="", help="the image's WORKDIR")
    args = parser.parse_args(argv)
    try:
        cmd, env = json.loads(args.cmd), json.loads(args.env)
    except ValueError as exc:
        parser.error(f"--cmd/--env: not JSON: {exc}")
    try:
        svc = load_service(args.image_yml, args.service)
        label = load_label(args.label) if args.label else EMPTY
        spec, runtime = convert(svc, label, ImageConfig(tuple(cmd), tuple(env), args.cwd))
    except ConvertError as exc:
        print(f"lk2oci: {exc}", file=sys.stderr)
        return 2
    args.outdir.mkdir(parents=True, exist_ok=True)
    (args.outdir / "config.json").write_text(json.dumps(spec, indent=4) + "\n")
    (args.outdir / "runtime.json").write_text(json.dumps(runtime, indent=4) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
