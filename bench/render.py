"""bench/report.py's results as Markdown and as a bar chart (matplotlib: the `bench` extra)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SETTINGS = ("bpf-auditd", "empty programs", "floor (bpftrace)", "Linux auditd", "BCC tool")


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    """median [min-max]"""
    if not values:
        return "-"
    med = fmt.format(statistics.median(values))
    if len(values) == 1:
        return med
    return f"{med} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


@dataclass
class Results:
    machine: dict[str, str]
    rounds: int
    workloads: dict[str, str]  # name -> label
    alone: dict[str, list[float]] = field(default_factory=dict)  # name -> values
    units: dict[str, str] = field(default_factory=dict)
    ratios: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # (w, setting)
    unavailable: dict[tuple[str, str], str] = field(default_factory=dict)
    stats: list[dict[str, Any]] = field(default_factory=list)
    footprint: list[tuple[str, str, str]] = field(default_factory=list)  # figure, value, target
    targets: dict[str, str] = field(default_factory=dict)  # workload -> bpf-auditd's target
    others: list[tuple[str, str]] = field(default_factory=list)  # (command, output)
    missing: list[str] = field(default_factory=list)


def markdown(r: Results, chart: str | None) -> str:
    out = ["# Benchmark report (bench/report.py)", ""]
    out.append(", ".join(f"{k}: {v}" for k, v in r.machine.items()))
    out += [
        "",
        "## What watching costs",
        "",
        f"Each figure is the workload's cost with the setting over its cost alone (1.00: free),"
        f" median [range] of {r.rounds} interleaved rounds (alone, with, alone: each ratio is"
        " over the mean of the runs either side). Loops are timed in their own CPU time"
        " (the BPF programs run in their syscalls), redis by its throughput. Each setting is"
        " timed a little after it attached and each alone run a few seconds after the setting"
        " left (`--settle`): a start or stop keeps kernel workers busy for seconds.",
        "",
    ]
    if chart:
        out += [f"![ratios]({chart})", ""]
    head = ["workload", "alone", *SETTINGS, "bpf-auditd target"]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, label in r.workloads.items():
        cells = [label, f"{spread(r.alone.get(name, []), '{:.0f}')} {r.units.get(name, '')}"]
        for setting in SETTINGS:
            key = (name, setting)
            if r.ratios.get(key):
                cells.append(spread(r.ratios[key]) + "x")
            else:
                cells.append("n/a" if key in r.unavailable else "-")
        cells.append(r.targets.get(name, ""))
        out.append("| " + " | ".join(cells) + " |")
    if r.stats:
        out += [
            "",
            "## Per program (kernel.bpf_stats)",
            "",
            "ns per run of each program while the workload ran (BPF_ENABLE_STATS on only then),"
            " median [range]. Every figure includes the accounting and dispatch themselves: see"
            " the empty program's.",
            "",
            "| workload | setting | program | runs per op | ns per run |",
            "|---|---|---|---|---|",
        ]
        for row in r.stats:
            out.append(
                f"| {row['workload']} | {row['setting']} | {row['program']} | "
                f"{row['runs_per_op']:.2f} | {spread(row['ns'], '{:.0f}')} |"
            )
    if r.footprint:
        out += ["", "## Footprint and start-up", "", "| figure | value | target |", "|---|---|---|"]
        out += [f"| {f} | {v} | {t} |" for f, v, t in r.footprint]
    if r.unavailable or r.missing:
        out += ["", "## Not measured here", ""]
        seen = set()
        for (w, s), why in sorted(r.unavailable.items()):
            if (s, why) not in seen:
                seen.add((s, why))
                out.append(f"- {s} ({r.workloads.get(w, w)}): {why}")
        out += [f"- {m}" for m in r.missing]
    for command, text in r.others:
        out += ["", f"### `{command}`", "", "```text", text.rstrip(), "```"]
    return "\n".join(out) + "\n"


def chart(r: Results, path: Path) -> str | None:
    """The ratios as grouped bars (median, range as error bars); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = list(r.workloads)
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    width = 0.8 / len(SETTINGS)
    for i, setting in enumerate(SETTINGS):
        xs, meds, lo, hi = [], [], [], []
        for j, name in enumerate(names):
            values = r.ratios.get((name, setting))
            if not values:
                continue
            med = statistics.median(values)
            xs.append(j + (i - (len(SETTINGS) - 1) / 2) * width)
            meds.append(med)
            lo.append(med - min(values))
            hi.append(max(values) - med)
        if xs:
            ax.bar(xs, meds, width, yerr=[lo, hi], capsize=2, label=setting)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(names)), [r.workloads[n] for n in names], fontsize=8)
    ax.set_ylabel("cost with / alone (1 = free)")
    ax.set_yscale("log")
    ax.legend(fontsize=7, ncols=3)
    ax.set_title("What watching costs (median and range of interleaved rounds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name
