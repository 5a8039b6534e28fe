"""The policy language: typed loading, the shipped default, and malformed policies that each
give one line naming file:line: key and exit code 2. No kernel."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from auditd.commands import cli
from auditd.config.yamlfile import ConfigError
from auditd.model.alert import Severity
from auditd.model.event import Event, Source
from auditd.policy import fields
from auditd.policy import language as policy
from auditd.signals.allocations.event import AllocationStats
from auditd.signals.denials.event import Denial
from auditd.signals.namespaces.event import NamespaceChange, NamespaceOp

_EXAMPLES: dict[type[Event], Event] = {
    Denial: Denial(
        time_ns=1, cgroup_id=2, pid=3, tid=3, ppid=1, uid=0, gid=0, comm="c",
        source=Source.SYSCALL, syscall="openat", errno=13, target="/t",
    ),
    NamespaceChange: NamespaceChange(
        time_ns=1, cgroup_id=2, pid=3, tid=3, uid=0, comm="c", op=NamespaceOp.UNSHARE,
        flags=0, errno=0, moves=(),
    ),
    AllocationStats: AllocationStats(
        time_ns=1, cgroup_id=2, window=10.0, allocations_per_s=1.0, bytes_per_s=1.0,
        page_bytes_per_s=0.0, outstanding_bytes=None, top_call_site=None,
    ),
}  # fmt: skip

GOOD = """\
version: 1
defaults:
  severity: notice
  cooldown: 5m
  dedup: [service, target]
  rate_limit: {alerts: 5, per: 10s}
ignore:
  services: [noisy.service]
  cgroups: ["/system.slice/*.scope"]
  syscalls: [access]
  errnos: [EPERM, 13]
  sources: [selinux]
rules:
  - name: secret-read
    description: Someone reached for a secret.
    severity: critical
    match: {kind: denial, target: {glob: "**/secret"}}
    unless: [{service: backup.service}]
  - name: flood
    match: {kind: denial}
    threshold: {count: 100, window: 500ms, weight: count}
    cooldown: 0
    enabled: false
"""


def test_a_policy_loads_into_typed_values() -> None:
    p = policy.loads(GOOD, "p.yaml")
    assert p.defaults.severity is Severity.NOTICE
    assert (p.defaults.cooldown, p.defaults.dedup) == (300.0, ("service", "target"))
    assert (p.defaults.rate_limit.alerts, p.defaults.rate_limit.per) == (5, 10.0)
    assert p.ignore.errnos == ("EPERM", "EACCES")
    assert p.ignore.sources == (Source.SELINUX,)
    secret, flood = p.rules
    assert secret.severity is Severity.CRITICAL
    assert secret.cooldown is None
    assert secret.matches({"kind": "denial", "target": "/tmp/x/secret", "service": "a"})
    assert not secret.matches(
        {"kind": "denial", "target": "/tmp/x/secret", "service": "backup.service"}
    )
    assert flood.threshold is not None
    assert (flood.threshold.count, flood.threshold.window) == (100, 0.5)
    assert (flood.threshold.by, flood.threshold.weight) == (("service",), "count")
    assert flood.cooldown == 0.0
    assert p.active_rules == (secret,)


def test_the_shipped_default_policy_loads() -> None:
    p = policy.load(policy.DEFAULT_POLICY)
    names = {r.name for r in p.rules}
    assert {"host-namespace-join", "denied-admin-capability", "denial-flood"} <= names
    assert p.ignore.empty
    escape = next(r for r in p.rules if r.name == "host-namespace-join")
    assert escape.severity is Severity.CRITICAL
    assert escape.matches({"kind": "namespace_change", "escape": True})
    assert not escape.matches({"kind": "namespace_change", "escape": False})


RULE = "rules:\n  - name: r\n    match: {kind: denial}\n"

# The ten (and more) malformed policies of the acceptance list: (file name, text, line, says).
MALFORMED = [
    ("bad-yaml", "rules:\n  - name: r\n    match: {kind: denial\n", 4, "invalid YAML"),
    (
        "unknown-operator",
        "rules:\n  - name: r\n    match:\n      target: {startswith: /etc}\n",
        4,
        "rules[0].match.target.startswith: unknown operator; valid: eq, ne, in, glob",
    ),
    (
        "wrong-type",
        RULE + "    threshold: {count: many, window: 1s}\n",
        4,
        "rules[0].threshold.count: expected an integer, got a string 'many'",
    ),
    (
        "unknown-field",
        RULE + "    sevrity: critical\n",
        4,
        "rules[0].sevrity: unknown key; valid keys here: cooldown, dedup, description",
    ),
    (
        "bad-regex",
        "rules:\n  - name: r\n    match:\n      comm: {regex: '(oops'}\n",
        4,
        "rules[0].match.comm.regex: bad regex '(oops': missing )",
    ),
    (
        "bad-glob",
        "rules:\n  - name: r\n    match:\n      target: {glob: '/etc/[ab'}\n",
        4,
        "rules[0].match.target.glob: bad glob '/etc/[ab': unclosed '[' at position 6",
    ),
    # What RE2 (linear time) cannot do, or only slowly: refused, with the line.
    (
        "regex-backreference",
        "rules:\n  - name: r\n    match:\n      comm: {regex: '(a)\\1'}\n",
        4,
        "rules[0].match.comm.regex: bad regex '(a)\\\\1': invalid escape sequence: \\1",
    ),
    (
        "regex-lookahead",
        "rules:\n  - name: r\n    match:\n      target: {regex: '/etc/(?!ssh)'}\n",
        4,
        "invalid perl operator: (?!",
    ),
    (
        "regex-possessive",
        "rules:\n  - name: r\n    match:\n      target: {regex: 'a++'}\n",
        4,
        "bad repetition operator: ++",
    ),
    (
        "regex-open-lower-bound",
        "rules:\n  - name: r\n    match:\n      target: {regex: 'a{,3}'}\n",
        4,
        "`{,n}` is literal text in RE2; write `{0,n}`",
    ),
    (
        "regex-too-complex",
        "rules:\n  - name: r\n    match:\n      target: {regex: '(?:a?){300}a{300}'}\n",
        4,
        "too complex for linear-time matching: RE2 program size 904, limit 500",
    ),
    (
        "glob-too-complex",
        "rules:\n  - name: r\n    match:\n      target: {glob: '/" + "a" * 600 + "'}\n",
        4,
        "rules[0].match.target.glob: bad glob",
    ),
    (
        "ignore-cgroup-glob-too-complex",
        "ignore:\n  cgroups: ['/" + "*a" * 100 + "']\n" + RULE,
        2,
        "ignore.cgroups[0]: bad glob",
    ),
    (
        "ignore-cgroup-not-absolute",
        "ignore:\n  cgroups: [system.slice]\n" + RULE,
        2,
        "ignore.cgroups[0]: expected a cgroup v2 path or glob starting with '/', "
        "got 'system.slice'",
    ),
    (
        "negative-window",
        RULE + "    threshold: {count: 5, window: -5}\n",
        4,
        "rules[0].threshold.window: expected a duration like 500ms",
    ),
    (
        "unknown-severity",
        RULE + "    severity: urgent\n",
        4,
        "rules[0].severity: expected one of info, notice, warning, critical, got a string 'urgent'",
    ),
    (
        "duplicate-rule",
        RULE + "  - name: r\n    match: {kind: denial}\n",
        4,
        "rules[1].name: 'r' is given twice",
    ),
    ("missing-match", "rules:\n  - name: r\n", 2, "rules[0].match: missing"),
    ("rules-not-a-list", "rules: {name: r}\n", 1, "rules: expected a list, got a mapping"),
    (
        "bad-duration",
        RULE + "    cooldown: soon\n",
        4,
        "rules[0].cooldown: expected a duration like 500ms, 10s, 5m, 1h, 1d",
    ),
    ("bad-version", "version: 2\n" + RULE, 1, "version: expected 1 (the only policy version)"),
    ("bad-errno", "ignore: {errnos: [EWHAT]}\n" + RULE, 1, "ignore.errnos[0]: expected an errno"),
    (
        "bad-source",
        "ignore:\n  sources: [apparmor]\n" + RULE,
        2,
        "ignore.sources[0]: expected one of syscall, capability, landlock",
    ),
    (
        "bad-rule-name",
        "rules:\n  - name: 'a b'\n    match: {}\n",
        2,
        "rules[0].name: expected a name",
    ),
    ("empty", "# nothing\n", None, "empty policy"),
    # A field no event has: the rule could never fire. Named, with what exists.
    (
        "unknown-field-any-kind",
        "rules:\n  - name: r\n    match: {bogus_operator_zz: 1}\n",
        3,
        "rules[0].match.bogus_operator_zz: no event field 'bogus_operator_zz'",
    ),
    (
        "unknown-field-of-the-kind",
        "rules:\n  - name: r\n    match:\n      kind: denial\n      any:\n"
        "        - {target: /a}\n        - {op: setns}\n",
        7,
        "rules[0].match.any[1].op: no event field 'op': this rule could never match it; "
        "fields of kind denial: cause, cgroup,",
    ),
    (
        "unknown-field-in-unless",
        RULE + "    unless:\n      - {not: {servce: x}}\n",
        5,
        "rules[0].unless[0].not.servce: no event field 'servce'",
    ),
    (
        "unknown-threshold-by",
        RULE + "    threshold: {count: 2, window: 10s, by: [servce]}\n",
        4,
        "rules[0].threshold.by[0]: no event field 'servce'",
    ),
]


@pytest.mark.parametrize("case", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_policy_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: tuple[str, str, int | None, str]
) -> None:
    name, text, line, says = case
    f = tmp_path / f"{name}.yaml"
    f.write_text(text)
    assert cli.main(["check-policy", str(f)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    where = f"{f}:{line}: " if line is not None else f"{f}: "
    assert lines[0].startswith(f"bpf-auditd: {where}"), lines[0]
    assert says in lines[0], lines[0]


def test_fields_of_one_kind_and_nested_fields_are_accepted() -> None:
    text = (
        "rules:\n  - name: ns\n    match: {kind: namespace_change, op: setns, "
        "namespaces.net.after: {exists: true}}\n"
        "  - name: cap\n    match: {detail.capability: CAP_SYS_ADMIN}\n    dedup: [service, pid]\n"
    )
    assert [r.name for r in policy.loads(text).rules] == ["ns", "cap"]


def test_errors_carry_file_line_and_key() -> None:
    with pytest.raises(ConfigError) as info:
        policy.loads(RULE + "    dedup: [service, 'not a field']\n", "p.yaml")
    assert (info.value.file, info.value.line, info.value.key) == ("p.yaml", 4, "rules[0].dedup[1]")


def test_check_policy_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(GOOD)
    assert cli.main(["check-policy", str(f)]) == 0
    assert capsys.readouterr().out == f"{f}: ok (1 rules)\n"


def test_missing_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-policy", str(tmp_path / "nope.yaml")]) == 2
    assert (
        capsys.readouterr().err
        == f"bpf-auditd: {tmp_path}/nope.yaml: cannot read: No such file or directory\n"
    )


@pytest.mark.parametrize("command", ["check-policy", "run"])
def test_cli_processes_exit_2_with_one_line(tmp_path: Path, command: str) -> None:
    """As a process, before any probe is loaded: `run --policy` refuses a broken policy too."""
    f = tmp_path / "p.yaml"
    f.write_text(RULE + "    severity: urgent\n")
    argv = [command, str(f)] if command == "check-policy" else ["run", "--policy", str(f)]
    proc = subprocess.run(
        [sys.executable, "-m", "auditd", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"bpf-auditd: {f}:4: rules[0].severity: expected one of info, notice, warning, critical, "
        "got a string 'urgent'"
    ]


def test_config_names_the_policy_relative_to_itself(tmp_path: Path) -> None:
    from auditd.config import schema as config
    from auditd.policy.alerting import policy_path

    c = config.loads("policy:\n  file: rules/p.yaml\n")
    assert policy_path(c.policy, tmp_path / "c.yaml", None) == tmp_path / "rules" / "p.yaml"
    assert policy_path(c.policy, tmp_path / "c.yaml", Path("/o.yaml")) == Path("/o.yaml")
    assert policy_path(config.Config().policy, None, None) == policy.DEFAULT_POLICY


@pytest.mark.parametrize("kind", fields.EVENT_KINDS, ids=lambda k: k.kind)
def test_each_kind_lists_exactly_the_fields_it_logs(kind: type[Event]) -> None:
    # FIELDS is what a policy may name; log_fields() is what it is matched against.
    example = _EXAMPLES[kind]
    assert set(example.log_fields()) == kind.FIELDS
    assert isinstance(example, kind)


def test_a_kind_unknown_here_stays_matchable_and_is_noted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A learner or a newer daemon may write rules for kinds this one does not produce.
    f = tmp_path / "p.yaml"
    f.write_text("rules:\n  - name: r\n    match: {kind: capability_use, capability: CAP_X}\n")
    assert cli.main(["check-policy", str(f)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{f}: ok (1 rules)\n"
    assert err.startswith(f"bpf-auditd: note: {f}:3: rules[0].match.kind: this daemon produces")
    assert "'capability_use'" in err
