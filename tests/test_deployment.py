"""Deployment files: the systemd unit (verified by systemd-analyze, installed by its script) and the
LinuxKit package and image YAML (keys checked against LinuxKit's own schema). Their structure is
what these tests hold to; both run for real in tests/test_linuxkit_runc.py (the image's root,
under runc) and tests/test_systemd_nspawn.py (the unit, under systemd in a container).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_capabilities import unit_settings

from auditd.audit import source as audit
from auditd.config.schema import Config
from auditd.daemon.daemon import STOP_DEADLINE_S
from auditd.kernel import privileges as capabilities
from auditd.kernel.paths import KernelPaths

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "bpf-auditd.service"
PKG = ROOT / "linuxkit" / "pkg" / "bpf-auditd"
IMAGE_YAML = ROOT / "linuxkit" / "bpf-auditd.yml"
CONFIG_PATH = "/etc/bpf-auditd/config.yaml"


# --- systemd ------------------------------------------------------------------------------------


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail("systemd-analyze is missing: scripts/setup --test installs systemd")
    return found


def _exec_commands(unit: Path) -> list[str]:
    """The executable of every Exec*= line (prefixes like '-' or '!' stripped)."""
    return [
        value.split()[0].lstrip("-@:+!|")
        for key, values in unit_settings(unit).items()
        if key.startswith("Exec")
        for value in values
    ]


def _verify_root(root: Path, unit: Path) -> Path:
    """Fill `root` for `systemd-analyze verify --root`: the host's system units (so targets
    resolve), the unit under /etc/systemd/system, and stubs for its commands not there yet."""
    units = next(
        p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()
    )
    shutil.copytree(units, root / "usr/lib/systemd/system", symlinks=True, dirs_exist_ok=True)
    installed = root / "etc/systemd/system" / unit.name
    if installed != unit:
        installed.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(unit, installed)
    for command in _exec_commands(unit):
        target = root / command.lstrip("/")
        if not target.exists() and not target.is_symlink():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("#!/bin/sh\n")
            target.chmod(0o755)
    return root


def _verify(root: Path, unit_name: str = "bpf-auditd.service") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_systemd_analyze(), "verify", f"--root={root}", f"/etc/systemd/system/{unit_name}"],
        capture_output=True,
        text=True,
        check=False,
    )


def test_systemd_analyze_verify_passes_without_a_warning(tmp_path: Path) -> None:
    result = _verify(_verify_root(tmp_path, UNIT))

    assert result.returncode == 0, result.stdout + result.stderr
    # verify exits 0 on unknown keys (it only warns): any output is a finding.
    assert (result.stdout + result.stderr).strip() == ""


def test_systemd_analyze_verify_would_catch_a_misspelt_key(tmp_path: Path) -> None:
    broken = tmp_path / "bpf-auditd.service"
    broken.write_text(UNIT.read_text().replace("ProtectHome=", "ProtectHomes="))

    result = _verify(_verify_root(tmp_path, broken))

    assert "Unknown key 'ProtectHomes'" in result.stdout + result.stderr


def test_unit_is_type_notify_with_watchdog_restart_and_sandbox() -> None:
    s = unit_settings()

    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert int(s["WatchdogSec"][0].removesuffix("s")) >= 10
    assert s["Restart"] == ["on-failure"]
    assert s["RestartPreventExitStatus"] == ["2"]  # the CLI's "config unusable"
    assert float(s["TimeoutStopSec"][0].removesuffix("s")) > STOP_DEADLINE_S + 0.5
    assert s["ExecStart"] == [f"/usr/local/bin/bpf-auditd run --config {CONFIG_PATH}"]
    assert s["NoNewPrivileges"] == ["yes"]
    assert s["ProtectSystem"] == ["strict"]
    assert s["ProtectHome"] == ["yes"]
    # Writable: exactly the directories the code writes, as systemd-managed directories.
    assert "ReadWritePaths" not in s
    assert Path("/var/lib", s["StateDirectory"][0]) == Path(Config().state_dir)
    assert Path("/run", s["RuntimeDirectory"][0]) == audit.DEFAULT_STATE_DIR
    # Would hide what the daemon reads: /lib/modules (BCC's headers), /proc/kallsyms.
    assert "ProtectKernelModules" not in s
    assert "ProtectKernelTunables" not in s


@pytest.mark.needs_root
def test_install_script_installs_a_unit_that_verifies_with_the_real_command(
    tmp_path: Path,
) -> None:
    dest = tmp_path / "dest"
    result = subprocess.run(
        [str(ROOT / "scripts" / "install-systemd")],
        env={**os.environ, "DESTDIR": str(dest)},
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr

    installed = dest / "etc/systemd/system/bpf-auditd.service"
    assert installed.read_text() == UNIT.read_text()
    assert (dest / CONFIG_PATH.lstrip("/")).read_text() == (
        ROOT / "auditd" / "config" / "default-config.yaml"
    ).read_text()
    link = dest / "usr/local/bin/bpf-auditd"
    assert os.readlink(link) == "/opt/bpf-auditd/bin/bpf-auditd"
    command = dest / "opt/bpf-auditd/bin/bpf-auditd"
    check = subprocess.run(
        [str(command), "check-config", str(dest / CONFIG_PATH.lstrip("/"))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip().endswith(": ok")

    # The unit as installed, its ExecStart the installed link into the venv (not a stub).
    verified = _verify(_verify_root(dest, installed))
    assert verified.returncode == 0, verified.stdout + verified.stderr


# --- LinuxKit -----------------------------------------------------------------------------------
# Keys from LinuxKit's own source: src/cmd/linuxkit/moby/schema.go (the image YAML, validated
# with additionalProperties false) and src/cmd/linuxkit/pkglib/build.go (pkgInfo, decoded
# with KnownFields(true)).

TOP_KEYS = {"kernel", "init", "onboot", "onshutdown", "services", "trust", "files"}
KERNEL_KEYS = {"image", "cmdline", "binary", "tar", "ucode"}
FILE_KEYS = {
    "path", "directory", "symlink", "contents", "source", "metadata", "optional", "mode",
    "uid", "gid",
}  # fmt: skip
IMAGE_KEYS = {
    "name", "image", "capabilities", "capabilities.add", "ambient", "mounts", "binds",
    "binds.add", "devices", "tmpfs", "command", "env", "cwd", "net", "pid", "ipc", "uts",
    "userns", "readonly", "maskedPaths", "readonlyPaths", "uid", "gid", "additionalGids",
    "noNewPrivileges", "hostname", "oomScoreAdj", "rootfsPropagation", "cgroupsPath",
    "resources", "sysctl", "rlimits", "uidMappings", "gidMappings", "annotations", "runtime",
}  # fmt: skip
MOUNT_KEYS = {"destination", "type", "source", "options", "uidmappings", "gidmappings"}
RUNTIME_KEYS = {"cgroups", "mounts", "mkdir", "interfaces", "bindNS", "namespace"}
BUILD_KEYS = {
    "image", "org", "tag", "dockerfile", "arches", "extra-sources", "gitrepo", "network",
    "disable-cache", "buildArgs", "depends", "config",
}  # fmt: skip
# runc applies only namespaced sysctls in a container; kernel.kptr_restrict is not one.
NAMESPACED_SYSCTL = re.compile(r"^(net\.|fs\.mqueue\.|kernel\.(msg|sem|shm|hostname|domainname))")


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _image() -> dict[str, Any]:
    data: dict[str, Any] = _load(IMAGE_YAML)
    return data


def _service(name: str = "bpf-auditd") -> dict[str, Any]:
    return next(s for s in _image()["services"] if s["name"] == name)


def _label() -> dict[str, Any]:
    config: dict[str, Any] = _load(PKG / "build.yml")["config"]
    return config


def _effective() -> dict[str, Any]:
    """The service as LinuxKit runs it: the image label's config, each key the YAML gives
    replacing the label's (moby/config.go assign*). The YAML's `binds` replaces the label's and
    its own `binds.add`; without it, `binds.add` is appended to the label's.
    (tests/test_lk2oci.py holds linuxkit/lk2oci.py to all of LinuxKit's rules.)"""
    service = _service()
    merged = {**_label(), **service}
    if "binds" not in service:
        merged["binds"] = [*merged.get("binds", []), *service.get("binds.add", [])]
    merged.pop("binds.add", None)
    return merged


def _check_image_keys(image: dict[str, Any], where: str) -> None:
    assert set(image) <= IMAGE_KEYS, f"{where}: {set(image) - IMAGE_KEYS}"
    for mount in image.get("mounts", []):
        assert set(mount) <= MOUNT_KEYS, f"{where}.mounts: {set(mount) - MOUNT_KEYS}"
    assert set(image.get("runtime", {})) <= RUNTIME_KEYS, where
    for bind in [*image.get("binds", []), *image.get("binds.add", [])]:
        assert 2 <= len(bind.split(":")) <= 3, f"{where}: bind {bind!r} is not src:dst[:opts]"
    for key in image.get("sysctl", {}):
        assert NAMESPACED_SYSCTL.match(key), f"{where}: runc refuses sysctl {key} in a container"


def test_image_yaml_keys_are_linuxkits() -> None:
    image = _image()

    assert set(image) <= TOP_KEYS
    assert set(image["kernel"]) <= KERNEL_KEYS
    for section in ("onboot", "onshutdown", "services"):
        for entry in image.get(section, []):
            assert {"name", "image"} <= set(entry), section
            _check_image_keys(entry, f"{section}.{entry['name']}")
    for entry in image.get("files", []):
        assert set(entry) <= FILE_KEYS
    names = [s["name"] for s in image["services"]]
    assert len(names) == len(set(names)), "service names must be unique"


def test_build_yml_keys_are_linuxkits_and_its_sources_exist() -> None:
    build = _load(PKG / "build.yml")

    assert set(build) <= BUILD_KEYS
    assert build["image"]
    _check_image_keys(_label(), "build.yml config")
    assert not {"name", "image"} & set(_label()), "a label may not set name or image"
    # The daemon's source reaches the build context: every package pyproject installs, and
    # the files the build reads (pyproject.toml, its readme).
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = {
        "/src/" + package.split(".")[0] for package in project["tool"]["setuptools"]["packages"]
    } | {"/src/pyproject.toml", f"/src/{project['project']['readme']}"}
    sources = {}
    for entry in build["extra-sources"]:
        src, dst = entry.split(":")
        assert (PKG / src).resolve().exists(), src
        sources[dst] = (PKG / src).resolve()
    assert set(sources) == wanted
    assert sources["/src/auditd"] == ROOT / "auditd"


def test_service_has_pid_host_and_exactly_the_daemons_capabilities() -> None:
    required = {need.name for need in capabilities.required(Config())}
    service, label = _effective(), _label()

    assert service["pid"] == "host"
    assert label["pid"] == "host"
    assert set(service["capabilities"]) == required
    assert set(service["ambient"]) == required
    assert service["noNewPrivileges"] is True
    # The example spells out the label: the two must not drift apart.
    for key in set(_service()) - {"name", "image"}:
        assert _service()[key] == label[key], key


def _required_host_paths(paths: KernelPaths) -> dict[str, tuple[str, bool]]:
    """What the daemon reads or writes that a service container lacks by itself (a new mount
    namespace with its own root, a fresh /proc and /sys, /sys/fs/cgroup its own), from the
    paths the code uses: path -> (why, written)."""
    return {
        str(paths.modules): ("BCC's kernel headers: /lib/modules/<release>/build", False),
        # On LinuxKit kernels the build link points into /usr/src (kernel-bcc's headers).
        "/usr/src": ("the headers the build link points to", False),
        "/sys/fs/cgroup": ("cgroup id -> path -> service (the whole hierarchy)", False),
        Config().state_dir: ("state_dir (the MQTT spool)", True),
        str(audit.DEFAULT_STATE_DIR): ("the audit-enable lease", True),
        # LinuxKit puts a placeholder in every image; the host's resolves names.
        "/etc/resolv.conf": ("name resolution: an MQTT broker named by host name", False),
    }


def _covered(path: str, destinations: list[str]) -> str | None:
    return next(
        (d for d in destinations if path == d or path.startswith(d.rstrip("/") + "/")), None
    )


def test_every_path_the_daemon_needs_is_bound_in() -> None:
    service, paths = _effective(), KernelPaths()
    binds = {b.split(":")[1]: b.split(":") for b in service["binds"]}
    mounts = {m["destination"]: m for m in service.get("mounts", [])}

    for path, (why, written) in _required_host_paths(paths).items():
        dest = _covered(path, list(binds))
        assert dest is not None, f"no bind for {path} ({why})"
        src, _, *opts = binds[dest]
        assert src == dest, f"{dest} must be the host's own {src}"
        assert ("ro" in ",".join(opts).split(",")) != written, f"{dest}: read-only is {not written}"
    # tracefs: a filesystem of its own, at one of the places BCC looks.
    tracefs = [m for d, m in mounts.items() if Path(d) in paths.tracefs]
    assert tracefs
    assert tracefs[0]["type"] == "tracefs"
    # The rest comes from the container's fresh /proc and /sys: nothing may shadow them.
    for path in (paths.btf, paths.kallsyms, paths.proc / "self" / "status"):
        shadow = _covered(str(path), [*binds, *mounts])
        assert shadow is None, f"{shadow} hides {path}"
    for directory in ("/var/lib/bpf-auditd", "/run/bpf-auditd"):
        assert directory in service["runtime"]["mkdir"]


def test_kptr_restrict_is_relaxed_by_the_onboot_sysctl() -> None:
    image = _image()
    sysctl = next(s for s in image["onboot"] if s["name"] == "sysctl")
    files = {f["path"]: f for f in image["files"]}

    [bound] = sysctl["binds.add"]
    src, dst = bound.split(":")[:2]
    assert src == dst
    assert src.startswith("/etc/sysctl.d/")
    # LinuxKit's sysctl reads /etc/sysctl.d in name order: ours must come after 00-linuxkit.conf.
    assert Path(dst).name > "00-linuxkit.conf"
    settings = dict(
        (part.strip() for part in line.split("=", 1))
        for line in files[src.lstrip("/")]["contents"].splitlines()
        if "=" in line
    )
    assert int(settings["kernel.kptr_restrict"]) <= 1


def test_kernel_bcc_in_init_matches_the_kernel() -> None:
    image = _image()
    kernel_tag = image["kernel"]["image"].split(":")[1]

    assert f"linuxkit/kernel-bcc:{kernel_tag}" in image["init"]


def test_dockerfile_builds_the_root_with_the_tested_recipe_into_scratch() -> None:
    text = (PKG / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.MULTILINE | re.IGNORECASE)

    assert froms == [("debian:bookworm", "build"), ("scratch", "")]
    # The root is what ./mkroot makes (tests/test_linuxkit_runc.py builds it the same way).
    assert re.search(r"^COPY mkroot /mkroot$", text, re.MULTILINE)
    assert re.search(r"^RUN /mkroot all /out /src$", text, re.MULTILINE)
    assert (PKG / "mkroot").stat().st_mode & 0o111, "mkroot must be executable"
    final = text[text.rindex("FROM scratch") :]
    assert re.findall(r"^COPY --from=(\S+) /out/ /$", final, re.MULTILINE) == ["build"]
    # No init in front of the daemon: with pid: host it is not PID 1.
    assert "ENTRYPOINT" not in final
    cmd = re.findall(r"^CMD (\[.*\])$", final, re.MULTILINE)
    assert [yaml.safe_load(c) for c in cmd] == [
        ["/usr/local/bin/bpf-auditd", "run", "--config", CONFIG_PATH]
    ]
    recipe = (PKG / "mkroot").read_text()
    assert '"$out/usr/local/bin/bpf-auditd"' in recipe
    assert f'"$out{CONFIG_PATH}"' in recipe, "the image must hold the config its CMD names"
