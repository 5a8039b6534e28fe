"""linuxkit/lk2oci.py: LinuxKit's rules for turning a service entry (and its image's label) into
the OCI spec runc runs. Each rule as LinuxKit's moby/config.go writes it; then the conversion
of our own service entry, which tests/test_linuxkit_runc.py runs for real.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _import() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lk2oci", ROOT / "linuxkit" / "lk2oci.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["lk2oci"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


lk2oci = _import()


def _files(tmp_path: Path, service: str, label: str = "") -> tuple[Path, Path]:
    image = tmp_path / "image.yml"
    image.write_text("services:\n  - name: svc\n    image: x/y:1\n" + textwrap.indent(
        textwrap.dedent(service), "    "))  # fmt: skip
    build = tmp_path / "build.yml"
    build.write_text("image: y\nconfig:\n" + textwrap.indent(textwrap.dedent(label), "  "))
    return image, build


def _convert(
    tmp_path: Path, service: str = "", label: str = "", **image: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    image_yml, build_yml = _files(tmp_path, service, label or "{}")
    config = lk2oci.ImageConfig(**image)
    spec: dict[str, Any]
    runtime: dict[str, Any]
    spec, runtime = lk2oci.convert(
        lk2oci.load_service(image_yml, "svc"), lk2oci.load_label(build_yml), config
    )
    return spec, runtime


def _error(tmp_path: Path, service: str = "", label: str = "") -> str:
    with pytest.raises(lk2oci.ConvertError) as caught:
        _convert(tmp_path, service, label)
    return str(caught.value)


def _mounts(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["destination"]: m for m in spec["mounts"]}


# --- defaults -------------------------------------------------------------------------------------


def test_defaults_are_linuxkits_own(tmp_path: Path) -> None:
    spec, runtime = _convert(tmp_path)

    assert [m["destination"] for m in spec["mounts"]] == [
        "/dev", "/dev/pts", "/proc", "/sys", "/sys/fs/cgroup",
    ]  # fmt: skip
    mounts = _mounts(spec)
    assert mounts["/sys/fs/cgroup"]["type"] == "cgroup"
    assert "ro" in mounts["/sys/fs/cgroup"]["options"]
    assert "ro" not in mounts["/sys"]["options"]
    assert spec["root"] == {"path": "rootfs", "readonly": False}
    # A new pid and mount namespace; the host's net, ipc, uts and user; no cgroup namespace.
    assert spec["linux"]["namespaces"] == [{"type": "pid"}, {"type": "mount"}]
    assert spec["process"]["user"] == {"uid": 0, "gid": 0}
    assert spec["process"]["cwd"] == "/"
    assert spec["process"]["noNewPrivileges"] is False
    assert spec["process"]["capabilities"]["bounding"] == []
    # No seccomp, AppArmor or masked paths: a LinuxKit service has none unless given.
    assert "seccomp" not in spec["linux"]
    assert "maskedPaths" not in spec["linux"]
    assert runtime["mkdir"] == []
    assert runtime["bindNS"] == dict.fromkeys(lk2oci.BIND_NAMESPACES, "")


def test_readonly_makes_the_root_dev_and_sys_read_only(tmp_path: Path) -> None:
    spec, _ = _convert(tmp_path, "readonly: true\n")

    mounts = _mounts(spec)
    assert spec["root"]["readonly"] is True
    assert mounts["/dev"]["options"][-1] == "ro"
    assert mounts["/sys"]["options"][-1] == "ro"
    assert "ro" not in mounts["/proc"]["options"]


# --- three sources: YAML over label over image ----------------------------------------------------


def test_command_env_cwd_come_from_yaml_then_label_then_image(tmp_path: Path) -> None:
    image = {"args": ("/img",), "env": ("A=img",), "cwd": "/img"}

    spec, _ = _convert(tmp_path, **image)
    assert (spec["process"]["args"], spec["process"]["env"]) == (["/img"], ["A=img"])
    assert spec["process"]["cwd"] == "/img"

    spec, _ = _convert(tmp_path, "", "command: [/label]\nenv: [A=label]\ncwd: /label\n", **image)
    assert (spec["process"]["args"], spec["process"]["env"]) == (["/label"], ["A=label"])
    assert spec["process"]["cwd"] == "/label"

    spec, _ = _convert(
        tmp_path, "command: [/yaml]\nenv: []\ncwd: /yaml\n", "command: [/label]\nenv: [A=x]\n"
    )
    assert spec["process"]["args"] == ["/yaml"]
    assert spec["process"]["env"] == [], "a YAML key replaces the label's even when empty"
    assert spec["process"]["cwd"] == "/yaml"


def test_yaml_capabilities_replace_the_labels_and_the_labels_cwd_applies(tmp_path: Path) -> None:
    # LinuxKit's own TestOverrides.
    spec, _ = _convert(
        tmp_path, "capabilities: [CAP_SYS_ADMIN]\n", "capabilities: [CAP_SYS_CHROOT]\ncwd: /l\n"
    )

    assert spec["process"]["capabilities"]["bounding"] == ["CAP_SYS_ADMIN"]
    assert spec["process"]["cwd"] == "/l"


def test_booleans_yaml_over_label(tmp_path: Path) -> None:
    spec, _ = _convert(tmp_path, "", "noNewPrivileges: true\nreadonly: true\n")
    assert spec["process"]["noNewPrivileges"] is True
    assert spec["root"]["readonly"] is True

    spec, _ = _convert(tmp_path, "noNewPrivileges: false\n", "noNewPrivileges: true\n")
    assert spec["process"]["noNewPrivileges"] is False


# --- capabilities ---------------------------------------------------------------------------------


def test_capabilities_add_appends_to_the_label_and_ambient_joins_the_bounding_set(
    tmp_path: Path,
) -> None:
    spec, _ = _convert(
        tmp_path,
        "capabilities.add: [CAP_BPF]\nambient: [CAP_SYSLOG]\n",
        "capabilities: [CAP_PERFMON]\n",
    )

    caps = spec["process"]["capabilities"]
    assert caps["effective"] == ["CAP_PERFMON", "CAP_BPF"]  # in the order given
    assert caps["bounding"] == ["CAP_BPF", "CAP_PERFMON", "CAP_SYSLOG"]  # sorted union
    assert caps["permitted"] == caps["inheritable"] == caps["bounding"]
    assert caps["ambient"] == ["CAP_SYSLOG"]


def test_all_and_none_expand(tmp_path: Path) -> None:
    spec, _ = _convert(tmp_path, "capabilities: [all]\nambient: [none]\n")

    caps = spec["process"]["capabilities"]
    assert len(caps["effective"]) == 41
    assert {"CAP_BPF", "CAP_PERFMON", "CAP_CHECKPOINT_RESTORE"} <= set(caps["effective"])
    assert caps["ambient"] == []


def test_an_unknown_capability_is_an_error_at_its_line(tmp_path: Path) -> None:
    # LinuxKit's own TestInvalidCap: in the label.
    message = _error(tmp_path, "", "capabilities:\n  - CAP_BPF\n  - NOT_A_CAP\n")
    assert message == f"{tmp_path}/build.yml:5: capabilities[1]: unknown capability NOT_A_CAP"

    message = _error(tmp_path, "ambient: [cap_bpf]\n")
    assert message == f"{tmp_path}/image.yml:4: ambient[0]: unknown capability cap_bpf"


# --- binds, tmpfs, mounts -------------------------------------------------------------------------


def test_yaml_binds_replace_the_labels_and_binds_add(tmp_path: Path) -> None:
    spec, _ = _convert(
        tmp_path, "binds: [/a:/a]\nbinds.add: [/b:/b]\n", "binds: [/c:/c]\n"
    )  # fmt: skip

    binds = [m["destination"] for m in spec["mounts"] if m["type"] == "bind"]
    assert binds == ["/a"]


def test_without_yaml_binds_the_labels_come_first_then_binds_add(tmp_path: Path) -> None:
    spec, _ = _convert(tmp_path, "binds.add: [/b:/b, /x:/c:ro]\n", "binds: [/c:/c]\n")

    mounts = _mounts(spec)
    assert [m["destination"] for m in spec["mounts"] if m["type"] == "bind"] == ["/b", "/c"]
    assert mounts["/c"]["source"] == "/x", "a later bind of the same destination wins"


def test_bind_options(tmp_path: Path) -> None:
    spec, _ = _convert(tmp_path, "binds: [/a:/a, '/b:/b:ro,nosuid']\n")

    mounts = _mounts(spec)
    assert mounts["/a"]["options"] == ["rw", "rbind", "rshared"]
    assert mounts["/b"]["options"] == ["ro", "nosuid", "rbind"]


def test_a_bind_replaces_a_default_mount(tmp_path: Path) -> None:
    spec, _ = _convert(tmp_path, "binds: [/sys/fs/cgroup:/sys/fs/cgroup:ro]\n")

    cgroup = _mounts(spec)["/sys/fs/cgroup"]
    assert (cgroup["type"], cgroup["source"]) == ("bind", "/sys/fs/cgroup")


def test_bad_binds_are_errors_at_their_line(tmp_path: Path) -> None:
    assert _error(tmp_path, "binds:\n  - /a\n") == (
        f"{tmp_path}/image.yml:5: binds[0]: cannot parse bind '/a': missing ':'"
    )
    assert _error(tmp_path, "binds.add:\n  - /a:/b:ro:x\n") == (
        f"{tmp_path}/image.yml:5: binds.add[0]: cannot parse bind '/a:/b:ro:x': too many ':'"
    )


def test_tmpfs(tmp_path: Path) -> None:
    spec, _ = _convert(tmp_path, "tmpfs: ['/run:size=1m,mode=700', /tmp]\n")

    mounts = _mounts(spec)
    assert mounts["/run"] == {"destination": "/run", "type": "tmpfs", "source": "tmpfs",
                              "options": ["size=1m", "mode=700"]}  # fmt: skip
    assert "options" not in mounts["/tmp"]


def test_mounts_replace_as_a_whole_and_infer_type_and_destination(tmp_path: Path) -> None:
    spec, _ = _convert(
        tmp_path,
        "mounts:\n  - source: mqueue\n  - type: tracefs\n    destination: /t\n",
        "mounts:\n  - {type: bpf, source: bpf, destination: /sys/fs/bpf}\n",
    )

    mounts = _mounts(spec)
    assert "/sys/fs/bpf" not in mounts
    assert mounts["/dev/mqueue"] == {"destination": "/dev/mqueue", "type": "mqueue",
                                     "source": "mqueue"}  # fmt: skip
    assert (mounts["/t"]["type"], mounts["/t"]["source"]) == ("tracefs", "tracefs")


def test_a_mount_without_type_is_an_error(tmp_path: Path) -> None:
    assert _error(tmp_path, "mounts:\n  - source: /x\n    destination: /y\n") == (
        f"{tmp_path}/image.yml:5: mounts[0]: mount on '/y' has no type"
    )


# --- namespaces, ids, limits, runtime -------------------------------------------------------------


def test_namespaces(tmp_path: Path) -> None:
    spec, _ = _convert(tmp_path, "pid: host\nnet: new\nuts: /proc/1/ns/uts\n", "ipc: new\n")

    assert spec["linux"]["namespaces"] == [
        {"type": "network"},
        {"type": "ipc"},
        {"type": "uts", "path": "/proc/1/ns/uts"},
        {"type": "mount"},
    ]


def test_numeric_ids_and_names_refused(tmp_path: Path) -> None:
    spec, _ = _convert(tmp_path, "uid: 100\n", "gid: 7\n")
    assert spec["process"]["user"] == {"uid": 100, "gid": 7}

    assert "uid: 'daemon': `linuxkit build` numbers names" in _error(tmp_path, "uid: daemon\n")


def test_rlimits(tmp_path: Path) -> None:
    spec, _ = _convert(tmp_path, "rlimits: ['nofile,1024,unlimited', 'RLIMIT_CORE,0,0']\n")
    assert spec["process"]["rlimits"] == [
        {"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 2**64 - 1},
        {"type": "RLIMIT_CORE", "soft": 0, "hard": 0},
    ]
    assert "unknown limit bogus" in _error(tmp_path, "rlimits: ['bogus,1,1']\n")


def test_runtime_is_taken_field_by_field(tmp_path: Path) -> None:
    _, runtime = _convert(
        tmp_path,
        "runtime:\n  mkdir: [/a]\n",
        "runtime:\n  mkdir: [/b]\n  cgroups: [c]\n  bindNS: {net: /run/netns/x}\n",
    )

    assert runtime["mkdir"] == ["/a"]
    assert runtime["cgroups"] == ["c"]
    assert runtime["bindNS"]["net"] == "/run/netns/x"


def test_host_directories_absolute_on_the_host_relative_in_the_root(tmp_path: Path) -> None:
    _, runtime = _convert(tmp_path, "runtime:\n  mkdir: [/var/lib/x, var/y]\n")

    assert lk2oci.host_directories(runtime, Path("/b/rootfs")) == [
        Path("/var/lib/x"), Path("/b/rootfs/var/y"),
    ]  # fmt: skip


# --- what LinuxKit refuses ------------------------------------------------------------------------


def test_unknown_and_repeated_keys_and_names_in_the_label_are_errors(tmp_path: Path) -> None:
    assert _error(tmp_path, "capabilites: [CAP_BPF]\n") == (
        f"{tmp_path}/image.yml:4: capabilites: not a key LinuxKit knows"
    )
    assert _error(tmp_path, "pid: host\npid: new\n") == (
        f"{tmp_path}/image.yml:5: pid: given twice"
    )
    assert _error(tmp_path, "", "image: other\n") == (
        f"{tmp_path}/build.yml:3: image: cannot be set in the image label"
    )
    assert _error(tmp_path, "binds: /a:/a\n") == (
        f"{tmp_path}/image.yml:4: binds: must be a list of strings"
    )


# --- our service ----------------------------------------------------------------------------------

PKG = ROOT / "linuxkit" / "pkg" / "bpf-auditd"
REQUIRED_CAPS = ["CAP_BPF", "CAP_PERFMON", "CAP_SYSLOG", "CAP_AUDIT_CONTROL", "CAP_AUDIT_READ"]


@pytest.mark.parametrize("source", ["yaml", "label"])
def test_our_service_converts_to_the_spec_runc_runs(tmp_path: Path, source: str) -> None:
    """The YAML's entry and an entry naming only `image:` (so the label gives everything)
    convert to the same spec."""
    if source == "yaml":
        image_yml = ROOT / "linuxkit" / "bpf-auditd.yml"
    else:
        image_yml = tmp_path / "only-image.yml"
        image_yml.write_text("services:\n  - name: bpf-auditd\n    image: x/bpf-auditd:1\n")
    out = tmp_path / "bundle"
    code = lk2oci.main([str(image_yml), "bpf-auditd", str(out), "--label", str(PKG / "build.yml")])
    assert code == 0
    spec = json.loads((out / "config.json").read_text())
    runtime = json.loads((out / "runtime.json").read_text())

    caps = spec["process"]["capabilities"]
    assert caps["effective"] == caps["ambient"] == REQUIRED_CAPS
    assert caps["bounding"] == caps["permitted"] == sorted(REQUIRED_CAPS)
    assert spec["process"]["noNewPrivileges"] is True
    assert spec["root"]["readonly"] is True
    # pid: host, and the host's net (metrics are scraped from the host).
    assert spec["linux"]["namespaces"] == [{"type": "mount"}]
    mounts = _mounts(spec)
    assert {d: (m["type"], m["source"]) for d, m in mounts.items()} == {
        "/dev": ("tmpfs", "tmpfs"),
        "/dev/pts": ("devpts", "devpts"),
        "/etc/resolv.conf": ("bind", "/etc/resolv.conf"),
        "/lib/modules": ("bind", "/lib/modules"),
        "/proc": ("proc", "proc"),
        "/run/bpf-auditd": ("bind", "/run/bpf-auditd"),
        "/sys": ("sysfs", "sysfs"),
        "/sys/fs/cgroup": ("bind", "/sys/fs/cgroup"),
        "/sys/kernel/tracing": ("tracefs", "tracefs"),
        "/usr/src": ("bind", "/usr/src"),
        "/var/lib/bpf-auditd": ("bind", "/var/lib/bpf-auditd"),
    }
    assert mounts["/var/lib/bpf-auditd"]["options"] == ["rw", "rbind", "rshared"]
    assert mounts["/usr/src"]["options"] == ["ro", "rbind"]
    assert runtime["mkdir"] == ["/var/lib/bpf-auditd", "/run/bpf-auditd"]


def test_the_command_line_reports_one_located_line(tmp_path: Path) -> None:
    image_yml, _ = _files(tmp_path, "pid: host\nambient: [CAP_NOPE]\n")
    result = subprocess.run(
        [sys.executable, str(ROOT / "linuxkit" / "lk2oci.py"), str(image_yml), "svc",
         str(tmp_path / "out")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip

    assert result.returncode == 2
    assert result.stderr == f"lk2oci: {image_yml}:5: ambient[0]: unknown capability CAP_NOPE\n"
    assert not (tmp_path / "out").exists()


def test_the_converter_knows_the_capabilities_the_daemon_names() -> None:
    """lk2oci keeps its own copy of LinuxKit's capability list (it runs with PyYAML alone, at
    image build time): the copy must not drift from the daemon's one table."""
    from auditd.model.capabilities import NAMES

    assert tuple(lk2oci.ALL_CAPABILITIES) == tuple(NAMES)
