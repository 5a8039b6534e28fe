"""`bpf-auditd advise` on the real kernel, proven by enforcement.

One advise run watches four workloads, each in its own cgroup: a server (reads its config,
writes a log, binds a port below 1024, sets its hostname in a new UTS namespace), a root
process that only maps memory, a process binding a low port as uid 65534 with the capability
ambient, and one changing paths (mkdir, rename across directories, symlink, truncate, unlink,
a unix socket). Then the server runs again under exactly the advice and succeeds, and without
any one advised capability, Landlock rule or its own syscalls it fails at that step.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from _advise import Advise, Session, build_workload, cgroups, confined, free_low_port, run_in
from _workload import scratch_cgroup
from test_deployment import _check_image_keys

from auditd.commands.confine import build_filter
from auditd.model.capabilities import NAMES as CAPABILITIES
from auditd.signals.advice.capabilities import Certainty

pytestmark = [pytest.mark.needs_bpf, pytest.mark.needs_btf]

SERVER_CAPS = {"CAP_NET_BIND_SERVICE", "CAP_SYS_ADMIN"}


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    root = tmp_path_factory.mktemp("advise")
    root.chmod(0o755)
    binary = build_workload(root / "bin")
    (root / "etc").mkdir()
    (root / "etc" / "server.conf").write_text("name=advised\n")
    (root / "log").mkdir()
    (root / "files").mkdir()
    prefix = f"bpf-auditd-advise-{uuid.uuid4().hex[:6]}"
    s = Session(root, binary, free_low_port(), root / "advice")
    with cgroups(prefix, ("server", "mmap", "ambient", "files")) as made:
        s.cgroups = made
        advise = Advise("--duration", "5m", "--service", f"{prefix}-*", "--output", str(s.output))
        try:
            advise.wait_for("advising")
            s.results["server"] = run_in(made["server"], s.server_argv())
            s.results["mmap"] = run_in(made["mmap"], [str(binary), "mmap", "64"])
            ambient = (
                "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                "--inh-caps=+net_bind_service", "--ambient-caps=+net_bind_service", "--",
            )  # fmt: skip
            s.results["ambient"] = run_in(
                made["ambient"], [str(binary), "bind", str(s.port)], ambient
            )
            s.results["files"] = run_in(made["files"], [str(binary), "files", str(root / "files")])
            time.sleep(0.6)  # one poll: the last syscalls' times
        finally:
            s.exit_code = advise.stop()
            s.seconds = time.monotonic() - advise.started
            s.log = advise.lines
    return s


def test_workloads_ran_and_advise_stopped_early_on_sigterm(session: Session) -> None:
    for name, result in session.results.items():
        assert result.returncode == 0, (name, result.stderr)
    assert session.exit_code == 0, session.log[-5:]
    assert session.seconds < 120  # --duration was 5m: SIGTERM ended it
    advised = {e["service"] for e in session.log if e.get("event") == "advised"}
    assert advised == {session.service(n) for n in session.cgroups}


def test_server_advice_is_what_it_used(session: Session) -> None:
    doc = yaml.safe_load(session.file("server", "yaml").read_text())
    caps = doc["capabilities"]

    assert set(caps["certain"]) == SERVER_CAPS
    assert set(caps["bounding_set"]) == SERVER_CAPS
    assert caps["ambient"] == []
    assert doc["namespaces"]["restrict_to"] == ["uts"]
    assert {"bind", "socket", "unshare", "sethostname", "openat", "execve"} <= set(
        doc["syscalls"]["allow"]
    )
    assert "rseq" not in doc["syscalls"]["allow"] or "rseq" in doc["syscalls"]["optional"]
    # The evidence: counts, first and last seen, the window and what is not covered.
    bind = doc["syscalls"]["evidence"]["bind"]
    assert bind["calls"] >= 1
    assert "-" not in (bind["first_seen"], bind["last_seen"])
    assert doc["observed"]["seconds"] > 0
    assert "rare paths not exercised while advising" in doc["coverage"]
    net = [c for c in caps["evidence"] if c["capability"] == "CAP_NET_BIND_SERVICE"]
    assert [(c["certainty"], c["via"]) for c in net] == [("certain", "ns_capable")]
    assert net[0]["count"] >= 1

    ruleset = session.json("server", "landlock")
    rules = {r["path"]: set(r["access"]) for r in ruleset["fs"]}
    root = session.root
    assert rules == {
        str(session.binary): {"execute", "read_file"},
        str(root / "etc/server.conf"): {"read_file"},
        # server.log was created while advising: a rule cannot name it, its directory carries it
        str(root / "log"): {"make_reg", "write_file"},
    }
    assert ruleset["net"] == [{"port": session.port, "access": ["bind_tcp"]}]
    assert ruleset["min_abi"] == 4
    assert any("server.log was created by the service" in n for n in ruleset["notes"])


def test_mmap_only_root_workload_is_not_advised_sys_admin(session: Session) -> None:
    doc = yaml.safe_load(session.file("mmap", "yaml").read_text())
    caps = doc["capabilities"]

    # Every mapping made the overcommit check's no-audit CAP_SYS_ADMIN probe, and it granted.
    probes = [c for c in caps["evidence"] if c["capability"] == "CAP_SYS_ADMIN"]
    assert sum(c["count"] for c in probes) >= 64
    assert {c["certainty"] for c in probes} == {"probe"}
    assert {c["via"] for c in probes} == {"security_vm_enough_memory_mm"}
    assert "CAP_SYS_ADMIN" not in caps["certain"]
    assert "CAP_SYS_ADMIN" in caps["probes_only"]
    assert "CAP_SYS_ADMIN" not in caps["bounding_set"]
    assert "capabilities: []" in session.file("mmap", "linuxkit").read_text()


def test_ambient_capabilities_are_advised_where_the_service_had_them(session: Session) -> None:
    doc = yaml.safe_load(session.file("ambient", "yaml").read_text())

    assert doc["capabilities"]["ambient"] == ["CAP_NET_BIND_SERVICE"]
    dropin = session.file("ambient", "systemd").read_text()
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE\n" in dropin
    assert "AmbientCapabilities" not in session.file("server", "systemd").read_text()


# -- proven by enforcement ---------------------------------------------------------------------


class Enforcer:
    def __init__(self, session: Session, tmp: Path) -> None:
        self.s = session
        self.tmp = tmp
        self.caps = yaml.safe_load(session.file("server", "yaml").read_text())["capabilities"][
            "bounding_set"
        ]
        self.ruleset = session.json("server", "landlock")
        self.profile = session.json("server", "oci-seccomp")
        self.runs = 0

    def run(
        self, caps: list[str] | None = None, ruleset: Any = None, profile: Any = None
    ) -> tuple[str, str]:
        log = self.s.root / "log" / "server.log"
        log.unlink(missing_ok=True)  # created again each run: make_reg is needed every time
        self.runs += 1
        return confined(
            self.s,
            self.s.server_argv(),
            bounding=self.caps if caps is None else caps,
            ruleset=self.ruleset if ruleset is None else ruleset,
            profile=self.profile if profile is None else profile,
            tmp=self.tmp / str(self.runs),
        )

    def without_rule(self, path: str) -> Any:
        ruleset = copy.deepcopy(self.ruleset)
        ruleset["fs"] = [r for r in ruleset["fs"] if r["path"] != path]
        assert len(ruleset["fs"]) == len(self.ruleset["fs"]) - 1
        return ruleset

    def without_syscall(self, name: str) -> Any:
        profile = copy.deepcopy(self.profile)
        own = profile["syscalls"][0]
        assert own["action"] == "SCMP_ACT_ALLOW"
        assert name in own["names"]
        own["names"].remove(name)
        return profile


def test_server_runs_under_exactly_the_advice_and_fails_without_any_part(
    session: Session, tmp_path: Path
) -> None:
    e = Enforcer(session, tmp_path)
    root = session.root
    assert e.run() == ("ok", "")

    # Each advised capability, removed from the bounding set.
    step_of_cap = {"CAP_NET_BIND_SERVICE": "bind", "CAP_SYS_ADMIN": "unshare"}
    for cap in e.caps:
        step, why = e.run(caps=[c for c in e.caps if c != cap])
        assert step == step_of_cap[cap], (cap, why)

    # Each Landlock rule, removed.
    step_of_rule = {
        str(session.binary): "exec",
        str(root / "etc/server.conf"): "open-config",
        str(root / "log"): "open-log",
    }
    for rule in e.ruleset["fs"]:
        step, why = e.run(ruleset=e.without_rule(rule["path"]))
        assert step == step_of_rule[rule["path"]], (rule, why)
        assert "Permission denied" in why
    no_port = copy.deepcopy(e.ruleset)
    no_port["net"] = []
    step, why = e.run(ruleset=no_port)
    assert (step, why) == ("bind", "FAILED at bind: Permission denied")

    # The workload's own syscalls, removed from the seccomp profile (refused with EPERM).
    for name, at in (("bind", "bind"), ("sethostname", "sethostname"), ("unshare", "unshare")):
        step, why = e.run(profile=e.without_syscall(name))
        assert (step, why) == (at, f"FAILED at {at}: Operation not permitted")


def test_confine_keeps_only_the_capabilities_it_is_given(session: Session, tmp_path: Path) -> None:
    rules = tmp_path / "landlock.json"
    rules.write_text(session.file("server", "landlock").read_text())
    base = [
        sys.executable, "-m", "auditd", "confine", "--ruleset", str(rules),
        "--seccomp", str(session.file("server", "oci-seccomp")),
    ]  # fmt: skip
    argv = session.server_argv()
    for caps, want in (("CAP_NET_BIND_SERVICE,CAP_SYS_ADMIN", 0), ("cap_sys_admin", 31)):
        (session.root / "log" / "server.log").unlink(missing_ok=True)
        result = subprocess.run(
            [*base, "--capabilities", caps, "--", *argv],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == want, result.stderr


def test_path_changes_get_the_rights_landlock_checks(session: Session, tmp_path: Path) -> None:
    ruleset = session.json("files", "landlock")
    rules = {r["path"]: set(r["access"]) for r in ruleset["fs"]}
    top = str(session.root / "files")

    # a/ and b/ were made by the workload: everything folds into the directory it ran in.
    assert set(rules) == {str(session.binary), top}
    assert rules[top] >= {
        "make_dir", "make_reg", "write_file", "refer", "make_sym", "truncate", "make_sock",
        "remove_file", "remove_dir",
    }  # fmt: skip
    binary = str(session.binary)
    argv = [binary, "files", top]
    profile = session.json("files", "oci-seccomp")
    caps: list[str] = []
    assert confined(
        session, argv, bounding=caps, ruleset=ruleset, profile=profile, tmp=tmp_path / "1"
    ) == ("ok", "")
    no_refer = copy.deepcopy(ruleset)
    for rule in no_refer["fs"]:
        rule["access"] = [r for r in rule["access"] if r != "refer"]
    step, why = confined(
        session, argv, bounding=caps, ruleset=no_refer, profile=profile, tmp=tmp_path / "2"
    )
    assert step == "rename", why
    shutil.rmtree(top, ignore_errors=True)


# -- the outputs are valid ---------------------------------------------------------------------


def _dump(text: str, unit: str) -> dict[str, str]:
    """The unit's parsed settings from `systemd-analyze verify`'s debug dump (first of each)."""
    settings: dict[str, str] = {}
    lines = iter(text.splitlines())
    for line in lines:
        if line.strip() == f"-> Unit {unit}:":
            break
    for line in lines:
        m = re.match(r"^\t\t([^:\t]+):(?: (.*))?$", line)
        if m is None:
            break
        settings.setdefault(m[1], (m[2] or "").strip())
    return settings


def check_dropin(tmp: Path, dropin: str, exec_start: str) -> tuple[list[str], dict[str, str]]:
    """Problems `systemd-analyze verify` finds with a drop-in next to a unit (it exits 0 on bad
    values, so its output is the finding), and the values it parsed."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: scripts/setup --test installs systemd"
    unit = "bpf-auditd-advised.service"
    (tmp / unit).write_text(
        f"[Unit]\nDescription=advised workload\n\n[Service]\nType=oneshot\nExecStart={exec_start}\n"
    )
    conf = tmp / f"{unit}.d" / "50-bpf-auditd-advice.conf"
    conf.parent.mkdir()
    conf.write_text(dropin)
    command = [analyze, "verify", "--man=no", str(tmp / unit)]
    plain = subprocess.run(command, capture_output=True, text=True, check=False)
    problems = [] if plain.returncode == 0 else [f"exit {plain.returncode}"]
    problems += [line for line in (plain.stdout + plain.stderr).splitlines() if line.strip()]
    debug = subprocess.run(
        command, capture_output=True, text=True, check=False, env={"SYSTEMD_LOG_LEVEL": "debug"}
    )
    # Bad values are only logged at debug level, prefixed with the drop-in's path.
    problems += [line for line in debug.stderr.splitlines() if str(conf) in line]
    return problems, _dump(debug.stdout, unit)


def test_systemd_dropin_verifies_with_the_advised_values(session: Session, tmp_path: Path) -> None:
    dropin = session.file("server", "systemd").read_text()
    problems, parsed = check_dropin(tmp_path, dropin, " ".join(session.server_argv()))

    assert problems == []
    assert set(parsed["CapabilityBoundingSet"].upper().split()) == SERVER_CAPS
    profile = session.json("server", "oci-seccomp")
    advised = {n for group in profile["syscalls"][:2] for n in group["names"]}
    assert advised <= set(parsed["SystemCallFilter"].split())  # systemd adds its @default set
    assert parsed["RestrictNamespaces"] == "uts"
    assert parsed["SystemCallErrorNumber"] == "EPERM"


def test_systemd_check_catches_values_systemd_would_ignore(tmp_path: Path) -> None:
    bad = "[Service]\nCapabilityBoundingSet=CAP_NO_SUCH\nSystemCallFilter=bind no_such_call\n"
    problems, parsed = check_dropin(tmp_path, bad, "/bin/true")

    assert any("no_such_call" in p for p in problems)
    assert parsed["CapabilityBoundingSet"] == ""  # the unknown name vanished without a word


def test_seccomp_profiles_load_with_libseccomp(session: Session) -> None:
    for name in session.cgroups:
        path = session.file(name, "oci-seccomp")
        profile = session.json(name, "oci-seccomp")
        assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
        assert "rare paths not exercised" in profile["comment"]
        enosys = [g for g in profile["syscalls"] if g["action"] == "SCMP_ACT_ERRNO"]
        assert all(g["errnoRet"] == 38 for g in enosys)
        assert "clone3" in {n for g in enosys for n in g["names"]}  # glibc falls back on ENOSYS
        build_filter(path)  # libseccomp takes every name and action


def test_linuxkit_lists_pass_the_image_yaml_checks(session: Session) -> None:
    for name in session.cgroups:
        text = session.file(name, "linuxkit").read_text()
        service = yaml.safe_load(text)
        _check_image_keys(service, f"advice for {name}")
        assert isinstance(service["capabilities"], list)
        assert set(service["capabilities"]) <= set(CAPABILITIES)
        assert "rare paths not exercised while advising" in text
    server = yaml.safe_load(session.file("server", "linuxkit").read_text())
    assert set(server["capabilities"]) == SERVER_CAPS


def test_advise_probes_are_gone_after_advise(session: Session) -> None:
    out = subprocess.run(["bpftool", "prog", "show"], capture_output=True, text=True, check=True)
    assert not re.search(r"name adv_(enter|exit|cap)\b", out.stdout)


# -- each part alone (what a single format needs) ----------------------------------------------


@pytest.mark.parametrize("part", ["capabilities", "syscalls", "files"])
def test_each_part_observes_alone(session: Session, part: str) -> None:
    import structlog

    from auditd.kernel.paths import KernelPaths
    from auditd.signals.advice.observer import Observer, Parts

    parts = Parts(**{name: name == part for name in ("capabilities", "syscalls", "files")})
    with scratch_cgroup("bpf-auditd-advise-part") as cgroup:
        observer = Observer(KernelPaths(), structlog.get_logger(), parts=parts, pattern=cgroup.name)
        observer.start()
        try:
            result = run_in(cgroup, [str(session.binary), "bind", str(session.port)])
        finally:
            observation = observer.finish()
    assert result.returncode == 0, result.stderr
    assert observation.parts == (part,)
    [seen] = observation.services
    certain = {c.capability for c in seen.capabilities if c.certainty is Certainty.CERTAIN}
    assert ("CAP_NET_BIND_SERVICE" in certain) == (part == "capabilities")
    assert ("bind" in seen.syscalls) == (part == "syscalls")
    assert ((session.port, "bind_tcp") in seen.ports) == (part == "files")
    assert ((str(session.binary), "execute") in seen.files) == (part == "files")


def test_cgroups_made_while_advising_are_decided_from_their_first_syscall(
    session: Session,
) -> None:
    import structlog

    from auditd.kernel.paths import KernelPaths
    from auditd.signals.advice.observer import Observer

    prefix = f"bpf-auditd-advise-late-{uuid.uuid4().hex[:6]}"
    observer = Observer(KernelPaths(), structlog.get_logger(), pattern=f"{prefix}-*")
    observer.start()
    try:
        with scratch_cgroup(prefix) as late, scratch_cgroup("bpf-auditd-advise-other") as other:
            busy = subprocess.Popen(
                ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec timeout 1.5 cat /dev/zero',
                 str(other)],
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            result = run_in(late, [str(session.binary), "bind", str(session.port)])
            for _ in range(3):
                time.sleep(0.3)
                observer.poll()
            # The cgroup advise leaves alone keeps no syscall counts, however busy it is.
            kept = {cgroup for cgroup, _ in observer._require_maps().syscalls()}
            assert other.stat().st_ino not in kept
            busy.wait(timeout=60)
    finally:
        observation = observer.finish()
    assert result.returncode == 0, result.stderr
    [seen] = observation.services
    assert seen.service == late.name
    assert "execve" in seen.syscalls  # the exec right after joining the cgroup
    assert (str(session.binary), "execute") in seen.files
