"""The pure parts of the advice: which capability checks count, how file accesses become a
Landlock ruleset (widening, its limits, what it never widens into), the optional and ENOSYS
syscalls, and the formats' fixed points."""

from __future__ import annotations

import pytest

from auditd.commands.advise import parse_formats, parts_for
from auditd.policy.advice.advice import advise
from auditd.policy.advice.landlock import Limits, Ruleset, build
from auditd.policy.advice.render import linuxkit, systemd
from auditd.signals.advice.capabilities import Certainty, classify, function_of
from auditd.signals.advice.observation import Observation, ServiceObservation, SyscallUse

# -- capability checks -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("callers", "certainty", "via"),
    [
        (["security_vm_enough_memory_mm", "do_mmap", "vm_mmap_pgoff"], Certainty.PROBE, None),
        (["security_capable", "ns_capable_noaudit", "ptrace_has_cap"], Certainty.PROBE, None),
        (["security_capable", "kallsyms_show_value", "kallsyms_open"], Certainty.PROBE, None),
        (["security_capable", "ns_capable", "__inet_bind"], Certainty.CERTAIN, "ns_capable"),
        (["security_capable", "capable_wrt_inode_uidgid", "x"], Certainty.CERTAIN, None),
        (["cap_capset", "security_capset", "__do_sys_capset"], Certainty.CERTAIN, None),
        (["security_capable", "some_new_caller", "x"], Certainty.UNKNOWN, "some_new_caller"),
        (["somewhere_else"], Certainty.UNKNOWN, "somewhere_else"),
        ([], Certainty.UNKNOWN, None),
    ],
)
def test_checks_are_classified_by_their_callers(
    callers: list[str], certainty: Certainty, via: str | None
) -> None:
    found, by = classify(callers)
    assert found is certainty
    if via is not None:
        assert by == via


def test_symbols_become_function_names() -> None:
    assert function_of("ns_capable+0x2b") == "ns_capable"
    assert function_of("do_mmap.cold+0x5") == "do_mmap"
    assert function_of("ext4_x+0x10 [ext4]") == "ext4_x"


# -- Landlock rulesets -------------------------------------------------------------------------


def _ruleset(
    accesses: dict[str, set[str]], created: set[str] | None = None, **limits: int
) -> Ruleset:
    flat = {(p, r): (1, False) for p, rights in accesses.items() for r in rights}
    return build(flat, created or set(), [], Limits(**limits))


def _rules(ruleset: Ruleset) -> dict[str, set[str]]:
    return {r.path: r.rights for r in ruleset.rules}


def test_a_created_file_is_granted_on_its_directory() -> None:
    rs = _ruleset(
        {"/srv/app/log": {"make_reg"}, "/srv/app/log/x.log": {"write_file"}},
        created={"/srv/app/log/x.log"},
    )
    assert _rules(rs) == {"/srv/app/log": {"make_reg", "write_file"}}
    assert any("x.log was created" in n for n in rs.notes)


def test_created_directories_fold_up_deepest_first() -> None:
    rs = _ruleset(
        {"/data": {"make_dir"}, "/data/a": {"make_reg"}, "/data/a/f": {"write_file"}},
        created={"/data/a", "/data/a/f"},
    )
    assert _rules(rs) == {"/data": {"make_dir", "make_reg", "write_file"}}


def test_many_files_in_one_directory_widen_to_it_with_a_note() -> None:
    files = {f"/opt/app/lib/m{i}.py": {"read_file"} for i in range(3)}
    rs = _ruleset(files)
    assert _rules(rs) == {"/opt/app/lib": {"read_file"}}
    [rule] = rs.rules
    assert sorted(rule.widened_from) == sorted(files)
    assert any(n.startswith("widened to /opt/app/lib: 3 files") for n in rs.notes)


def test_two_files_are_not_widened() -> None:
    files = {f"/opt/app/m{i}": {"read_file"} for i in range(2)}
    assert _rules(_ruleset(files)) == files


def test_never_widened_into_protected_directories() -> None:
    files = {f"/etc/f{i}": {"read_file"} for i in range(5)}
    files |= {f"/tmp/t{i}": {"write_file"} for i in range(5)}
    files |= {f"/usr/lib/lib{i}.so": {"read_file"} for i in range(5)}
    rs = _ruleset(files)
    assert _rules(rs) == files  # not /etc, /tmp, /usr/lib, nor / above them
    assert not rs.notes


def test_read_only_directories_widen_up_the_tree_but_write_rights_do_not() -> None:
    read = {f"/opt/app/share/d{i}": {"read_dir"} for i in range(3)}
    read |= {f"/opt/app/share/d{i}/f": {"read_file"} for i in range(3)}
    write = {f"/opt/app/state/s{i}": {"write_file"} for i in range(2)}
    rs = _ruleset(read | write)
    rules = _rules(rs)
    # d0..d2 become one rule on share; each single file below them keeps its own.
    assert rules["/opt/app/share"] == {"read_dir"}
    assert {p for p in rules if p.startswith("/opt/app/share/")} == {
        f"/opt/app/share/d{i}/f" for i in range(3)
    }
    assert {p for p in rules if p.startswith("/opt/app/state")} == set(write)


def test_the_size_limit_merges_siblings_and_says_so() -> None:
    files = {f"/opt/a/d{d}/f{i}": {"write_file"} for d in range(4) for i in range(2)}
    rs = _ruleset(files, max_rules=4)
    assert len(rs.rules) <= 4
    assert any("over 4 rules" in n for n in rs.notes)


def test_rules_an_ancestor_grants_are_dropped_and_file_rules_carry_file_rights_only() -> None:
    rs = _ruleset({"/opt/a": {"read_file", "read_dir"}, "/opt/a/b/c": {"read_file"}})
    assert _rules(rs) == {"/opt/a": {"read_file", "read_dir"}}
    for rule in _ruleset({"/opt/x/bin": {"execute", "read_file"}}).rules:
        assert not rule.directory


# -- advice and formats ------------------------------------------------------------------------


def _observation(seen: ServiceObservation) -> Observation:
    return Observation(0, 10**9, None, (seen,), ("capabilities", "syscalls"), ())


def test_libc_syscalls_are_marked_optional_and_fallbacks_get_enosys() -> None:
    seen = ServiceObservation("x.service")
    seen.add_syscalls(
        [SyscallUse(n, 1, 0, 1, 2) for n in ("read", "rseq", "clone3", "set_robust_list")]
    )
    advice = advise(seen, _observation(seen))
    assert advice.allow == ("clone3", "execve", "read", "rseq", "set_robust_list")
    assert advice.optional == ("clone3", "rseq", "set_robust_list")
    assert "clone3" not in advice.enosys
    assert {"faccessat2", "statx"} <= set(advice.enosys)


def test_no_capabilities_is_an_empty_list_not_null() -> None:
    seen = ServiceObservation("x.service")
    text = linuxkit(advise(seen, _observation(seen)))
    assert "capabilities: []\n" in text
    dropin = systemd(advise(seen, _observation(seen)))
    assert "CapabilityBoundingSet=\n" in dropin
    assert "CapabilityBoundingSet=CAP" not in dropin
    assert "RestrictNamespaces=yes\n" in dropin


def test_setns_with_type_zero_leaves_namespaces_unrestricted() -> None:
    seen = ServiceObservation("x.service")
    seen.setns_any = 2
    dropin = systemd(advise(seen, _observation(seen)))
    assert "RestrictNamespaces" not in dropin.split("[Service]")[1]
    assert "setns(fd, 0) seen 2 times" in dropin


def test_formats_choose_what_is_observed() -> None:
    assert parse_formats(None) == ("systemd", "linuxkit", "oci-seccomp", "landlock", "yaml")
    assert parse_formats(["landlock,oci-seccomp", "landlock"]) == ("landlock", "oci-seccomp")
    with pytest.raises(ValueError, match="unknown format 'json'"):
        parse_formats(["json"])
    only_landlock = parts_for(("landlock",))
    assert only_landlock.names() == ("files",)
    assert parts_for(("linuxkit",)).names() == ("capabilities",)
    assert parts_for(("yaml",)).names() == ("capabilities", "syscalls", "files")


# -- no cost while not advising ----------------------------------------------------------------


def test_only_the_advise_command_loads_the_advise_probes() -> None:
    from test_architecture import ROOT, import_graph

    graph = import_graph(ROOT)
    users = {m for m, imports in graph.items() if "auditd.signals.advice.observer" in imports}
    assert users == {"auditd.commands.advise"}
    assert "auditd.commands.advise" not in graph["auditd.daemon.wiring"]


@pytest.mark.needs_btf
def test_the_daemons_probe_set_has_no_advise_program() -> None:
    import structlog

    from auditd.config.schema import Config
    from auditd.daemon.wiring import build_monitors, build_probe_set
    from auditd.kernel.cgroups import CgroupResolver
    from auditd.kernel.paths import KernelPaths
    from auditd.model.labels import LabelCap

    config = Config()
    monitors = build_monitors(config, CgroupResolver(None), LabelCap(1))
    probes = build_probe_set(config, monitors, KernelPaths(), structlog.get_logger())

    assert {s.name for s in probes.specs} == {"denials", "namespaces", "allocations"}
    assert "adv_" not in probes.text
