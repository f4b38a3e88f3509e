"""What the drills found: a table on stdout, docs/drills.md, and one timeline PNG per drill.

    print_table(results, notes)
    write_markdown(results, Path("docs/drills.md"), machine_description(), notes)

The timelines go to docs/drills/<name>.png, so that docs/drills.md links them relatively.
"""

import datetime
import os
import platform
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
from matplotlib import pyplot
from matplotlib.ticker import MaxNLocator

from lab.load import Request

# The paths in the order the timeline stacks them; any other path follows.
PATH_ORDER = ("GET /", "GET /healthz", "POST /visits", "GET /visits")
COLUMNS = (
    "drill", "requests", "failed", "unknown", "error window", "RTO", "full service", "RPO", "pass"
)  # fmt: skip


@dataclass
class DrillResult:
    """One drill's outcome. Times are epoch seconds; durations in seconds, None if the
    quantity did not occur (no error window) or could not be measured."""

    name: str
    hypothesis: str
    fault: str  # one line: what was done
    requests: int
    failed: int
    # Writes whose outcome the client never learned (no answer, or an unanswered COMMIT):
    # neither acknowledged nor lost. The RPO counts acknowledged writes that are missing.
    unknown: int
    error_window_s: float | None
    # From the fault's start to the last failure's sending (RTO), and to its end (full service:
    # every request after it succeeded).
    rto_s: float | None
    full_service_s: float | None
    rpo: str  # "0", "n/a", "3 visits"…
    passed: bool
    reasons: list[str] = field(default_factory=list)  # why it failed; empty if passed
    timeline: Path | None = None
    fault_start: float | None = None
    fault_end: float | None = None
    load_csv: Path | None = None  # the load's requests.csv, for whoever wants the rows

    def cells(self) -> tuple[str, ...]:
        return (
            self.name,
            str(self.requests),
            str(self.failed),
            str(self.unknown),
            _seconds(self.error_window_s, none="-"),
            _seconds(self.rto_s, none="n/a"),
            _seconds(self.full_service_s, none="n/a"),
            self.rpo,
            "pass" if self.passed else "FAIL",
        )


def _seconds(value: float | None, none: str) -> str:
    return none if value is None else f"{value:.1f} s"


def timeline_png(
    requests: Iterable[Request],
    fault_start: float | None,
    fault_end: float | None,
    title: str,
    path: Path,
) -> Path:
    """Draw successes and failures per second, one panel per path, with the fault shaded
    (or marked by a line if it has no end), and save it as a 900x500 PNG at `path`."""
    requests = sorted(requests, key=lambda request: request.at)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    origin = requests[0].at if requests else fault_start or 0.0
    names = sorted({r.name for r in requests}, key=_path_rank)
    last_second = int(requests[-1].at - origin) if requests else 0
    seconds = list(range(last_second + 1))

    figure, axes = pyplot.subplots(
        max(1, len(names)), 1, figsize=(9, 5), dpi=100, sharex=True, squeeze=False
    )
    for ax, name in zip(axes[:, 0], names or [""], strict=True):
        ok = Counter(int(r.at - origin) for r in requests if r.name == name and r.ok)
        failed = Counter(int(r.at - origin) for r in requests if r.name == name and not r.ok)
        # Steps, not lines: each second's count holds from that second to the next.
        edges = [*seconds, len(seconds)]
        ok_counts = [ok[s] for s in seconds]
        failed_counts = [failed[s] for s in seconds]
        ax.stairs(ok_counts, edges, baseline=None, color="tab:green", lw=1.5, label="succeeded")
        ax.stairs(failed_counts, edges, baseline=None, color="tab:red", lw=1.5, label="failed")
        _mark_fault(ax, origin, fault_start, fault_end)
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
        top = max([*ok_counts, *failed_counts, 1])
        ax.set_ylim(bottom=-0.06 * top, top=1.15 * top)  # a zero count shows above the axis
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=3))
        ax.tick_params(labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    axes[-1, 0].set_xlabel("seconds since the load started (requests sent per second)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="upper right", fontsize=8, ncols=3)
    figure.suptitle(title, x=0.02, ha="left", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    # No "Software" key: the PNG stays the same from one matplotlib patch release to the next.
    figure.savefig(path, format="png", metadata={"Software": None})
    pyplot.close(figure)
    return path


def _path_rank(name: str) -> tuple[int, str]:
    rank = PATH_ORDER.index(name) if name in PATH_ORDER else len(PATH_ORDER)
    return rank, name


def _mark_fault(ax, origin: float, start: float | None, end: float | None) -> None:
    if start is None:
        return
    if end is None or end <= start:
        ax.axvline(start - origin, color="tab:orange", linestyle="--", label="fault")
    else:
        ax.axvspan(start - origin, end - origin, color="tab:orange", alpha=0.2, label="fault")


def format_table(results: list[DrillResult]) -> list[str]:
    """The results as aligned plain text: header, rule, one line per drill."""
    rows = [COLUMNS, *(result.cells() for result in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]

    def line(cells):
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))

    rule = "  ".join("-" * width for width in widths)
    return [line(COLUMNS).rstrip(), rule, *(line(cells).rstrip() for cells in rows[1:])]


def print_table(results: list[DrillResult], notes: Iterable[str] = (), file=None) -> None:
    """Print the table, then each note (budgets: lab up time, suite time, memory) on a line."""
    file = file or sys.stdout
    for text in (*format_table(results), *notes):
        print(text, file=file)


def write_markdown(
    results: list[DrillResult],
    path: Path,
    machine: str,
    notes: Iterable[str] = (),
    now: datetime.datetime | None = None,
) -> Path:
    """Write docs/drills.md: when and where the drills ran, the table (each drill linked to
    its timeline), the notes, and a section per drill."""
    path = Path(path)
    now = now or datetime.datetime.now(datetime.UTC)
    lines = [
        "# Drills: faults injected under load",
        "",
        "Generated by `make drills` (lab/report.py); do not edit by hand.",
        "",
        f"- Run: {now:%Y-%m-%d %H:%M} UTC",
        f"- Machine: {machine}",
        *(f"- {note}" for note in notes),
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for result in results:
        cells = [cell.replace("|", "\\|") for cell in result.cells()]
        if result.timeline is not None:
            cells[0] = f"[{result.name}]({_relative(result.timeline, path)})"
        lines.append("| " + " | ".join(cells) + " |")
    for result in results:
        lines += _section(result, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _section(result: DrillResult, markdown: Path) -> list[str]:
    name, requests, failed, unknown, window, rto, full_service, rpo, verdict = result.cells()
    lines = [
        "",
        f"## {name}",
        "",
        f"- Hypothesis: {result.hypothesis}",
        f"- Fault: {result.fault}",
        f"- Result: **{verdict}**. {requests} requests, {failed} failed, {unknown} writes of"
        f" unknown outcome; error window {window}, RTO {rto}, full service {full_service},"
        f" RPO {rpo}.",
    ]
    if result.reasons:
        lines += ["", "Why it failed:", "", *(f"- {reason}" for reason in result.reasons)]
    if result.timeline is not None:
        lines += ["", f"![{name} timeline]({_relative(result.timeline, markdown)})"]
    return lines


def _relative(target: Path, markdown: Path) -> str:
    return Path(os.path.relpath(Path(target).resolve(), markdown.resolve().parent)).as_posix()


def machine_description() -> str:
    """Cores, memory, kernel and Docker version of this machine, on one line."""
    memory = "memory unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024**2:.1f} GiB memory"
    except OSError:
        pass
    return ", ".join(
        (
            f"{os.cpu_count()} cores",
            memory,
            f"{platform.system()} {platform.release()}",
            f"Docker {_docker_version()}",
        )
    )


def _docker_version() -> str:
    try:
        version = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "not available"
    return version.stdout.strip() or "not available"
