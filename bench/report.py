"""The one table: every measurement with its req/s, p50/p99 or value, and its ratios beside the issue's targets.

A :class:`Results` collects :class:`Measure` rows in the order they were run. :data:`RATIOS` says which ratios
are shown next to which row, against which baseline of the same run, and what issue 8 asks of them; a ratio is
reported as ``pass``/``miss`` (the harness reports, it never fails on a number). The same table goes to the
terminal, to the harness-owned section of docs/benchmarks.md (between :data:`BEGIN` and :data:`END`; everything
outside the markers is left as it is) and, as bars, to a PNG chart (matplotlib, Agg backend).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

BEGIN = "<!-- BEGIN make-bench: this section is rewritten by `make bench` (bench/report.py); edit outside the markers -->"
END = "<!-- END make-bench -->"


@dataclass
class Measure:
    key: str
    label: str
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    value: float | None = None  # a figure that is not a rate: seconds, bytes, writes/s …
    unit: str = ""
    note: str = ""  # "absent", "n/a (no --workers yet)", "error: …" or a remark
    tool: str = ""

    @property
    def measured(self) -> bool:
        return self.rps is not None or self.value is not None or self.p50_ms is not None

    def get(self, name: str) -> float | None:
        return getattr(self, name)


@dataclass
class Ratio:
    """``num``/``den`` (each ``(measure key, field)``) shown on row ``row``; ``target`` with ``at_least`` or at most."""

    row: str
    label: str
    num: tuple[str, str]
    den: tuple[str, str]
    target: float | None = None
    at_least: bool = True


# Row keys used by bench.run; a ratio whose measures are missing is left out.
RATIOS: list[Ratio] = [
    Ratio("read.plain.svc.1w", "× etcd range", ("read.plain.svc.1w", "rps"), ("etcd.range", "rps"), 1.5),
    Ratio("read.plain.svc.1w", "× bare ASGI", ("read.plain.svc.1w", "rps"), ("bare", "rps"), 0.35),
    Ratio("read.plain.svc.1w", "p99 × etcd's", ("read.plain.svc.1w", "p99_ms"), ("etcd.range", "p99_ms"), 1.0, at_least=False),
    Ratio("read.plain.root.1w", "× plain (service token)", ("read.plain.root.1w", "rps"), ("read.plain.svc.1w", "rps")),
    Ratio("read.secret.1w", "× plain", ("read.secret.1w", "rps"), ("read.plain.svc.1w", "rps"), 0.85),
    Ratio("read.subtree.1w", "× plain", ("read.subtree.1w", "rps"), ("read.plain.svc.1w", "rps"), 0.5),
    Ratio("read.health.1w", "× FastAPI route", ("read.health.1w", "rps"), ("fastapi", "rps"), 0.8),
    Ratio("read.plain.svc.2w", "× etcd range", ("read.plain.svc.2w", "rps"), ("etcd.range", "rps"), 2.0),
    Ratio("read.plain.svc.2w", "× 1 worker", ("read.plain.svc.2w", "rps"), ("read.plain.svc.1w", "rps")),
    Ratio("read.secret.2w", "× plain (2 workers)", ("read.secret.2w", "rps"), ("read.plain.svc.2w", "rps"), 0.85),
    Ratio("read.subtree.2w", "× plain (2 workers)", ("read.subtree.2w", "rps"), ("read.plain.svc.2w", "rps"), 0.5),
    Ratio("read.health.2w", "× FastAPI route", ("read.health.2w", "rps"), ("fastapi", "rps"), 0.8),
    Ratio("read.audit_off", "audit on/off", ("read.plain.svc.1w", "rps"), ("read.audit_off", "rps"), 0.9),
    Ratio("write.cas", "× etcd put", ("write.cas", "rps"), ("etcd.put", "rps")),
    Ratio("watch.ws", "p99 × etcd watch", ("watch.ws", "p99_ms"), ("watch.etcd", "p99_ms"), 1.0, at_least=False),
    Ratio("watch.longpoll", "p99 × etcd watch", ("watch.longpoll", "p99_ms"), ("watch.etcd", "p99_ms"), 1.5, at_least=False),
    Ratio("parked.tessera.time", "time × FastAPI", ("parked.tessera.time", "value"), ("parked.fastapi.time", "value"), 1.0, at_least=False),
    Ratio("parked.tessera.rss", "RSS/watcher × FastAPI", ("parked.tessera.rss", "value"), ("parked.fastapi.rss", "value"), 1.1, at_least=False),
    Ratio("load.read.watchers", "× without watchers", ("load.read.watchers", "rps"), ("load.read.quiet", "rps"), 0.8),
    Ratio("load.write.watchers", "× without watchers", ("load.write.watchers", "rps"), ("load.write.quiet", "rps"), 0.8),
    Ratio("versions.many", "p50 × few versions", ("versions.many", "p50_ms"), ("versions.few", "p50_ms")),
    Ratio("keys.many", "req/s × small store", ("keys.many", "rps"), ("keys.few", "rps")),
    Ratio("list.many", "time × small listing", ("list.many", "value"), ("list.few", "value"), 10.0, at_least=False),
]


@dataclass
class Results:
    measures: dict[str, Measure] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, measure: Measure) -> Measure:
        self.measures[measure.key] = measure
        return measure

    def ratio(self, spec: Ratio) -> float | None:
        num, den = self.measures.get(spec.num[0]), self.measures.get(spec.den[0])
        if num is None or den is None:
            return None
        a, b = num.get(spec.num[1]), den.get(spec.den[1])
        if a is None or b is None or b == 0:
            return None
        return a / b

    def ratios_for(self, key: str) -> list[str]:
        shown = []
        for spec in RATIOS:
            if spec.row != key:
                continue
            value = self.ratio(spec)
            if value is None:
                continue
            text = f"{value:.2f} {spec.label}"
            if spec.target is not None:
                ok = value >= spec.target if spec.at_least else value <= spec.target
                text += f" ({'≥' if spec.at_least else '≤'} {spec.target:g}: {'pass' if ok else 'miss'})"
            shown.append(text)
        return shown

    def verdicts(self) -> tuple[int, int]:
        passed = missed = 0
        for spec in RATIOS:
            value = self.ratio(spec)
            if value is None or spec.target is None:
                continue
            ok = value >= spec.target if spec.at_least else value <= spec.target
            passed, missed = passed + ok, missed + (not ok)
        return passed, missed


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return ""
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def _value(measure: Measure) -> str:
    if measure.value is None:
        return ""
    unit = measure.unit
    if unit == "s":
        return f"{measure.value:.3f} s" if measure.value < 10 else f"{measure.value:.1f} s"
    if unit == "ms":
        return f"{measure.value:.1f} ms"
    if unit == "B":
        return f"{measure.value / 1024:,.1f} KiB"
    if unit == "MiB":
        return f"{measure.value:,.0f} MiB"
    return f"{measure.value:,.1f} {unit}".strip()


def rows(results: Results) -> list[list[str]]:
    table = []
    for measure in results.measures.values():
        cells = [measure.label]
        if measure.note and not measure.measured:
            cells += ["", "", "", measure.note, ""]
        else:
            value = _value(measure)
            if measure.note:
                value = f"{value} ({measure.note})" if value else measure.note
            cells += [_num(measure.rps), _num(measure.p50_ms, 2), _num(measure.p99_ms, 2), value,
                      "; ".join(results.ratios_for(measure.key))]  # fmt: skip
        table.append(cells)
    return table


HEADER = ["target", "req/s", "p50 ms", "p99 ms", "value", "ratios (issue 8 target: pass/miss)"]


def text_table(results: Results) -> str:
    table = [HEADER, *rows(results)]
    widths = [max(len(row[column]) for row in table) for column in range(len(HEADER))]
    widths[-1] = 0  # the last column is not padded
    lines = []
    for index, row in enumerate(table):
        cells = [cell.rjust(widths[i]) if i in (1, 2, 3) else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths[:-1]) + "  " + "-" * len(HEADER[-1]))
    return "\n".join(lines)


def markdown_table(results: Results) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(["---", "---:", "---:", "---:", "---", "---"]) + "|"]
    for row in rows(results):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines)


def write_section(path: Path, body: str) -> None:
    """Replace what lies between the markers (or append the section); the rest of the file stays as it is."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"{BEGIN}\n{body.rstrip()}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + section + tail
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


CHART_ROWS = [
    ("bare", "bare ASGI"),
    ("fastapi", "FastAPI dict"),
    ("etcd.range", "etcd range"),
    ("read.plain.svc.1w", "plain GET"),
    ("read.plain.root.1w", "plain GET (root)"),
    ("read.secret.1w", "secret GET"),
    ("read.subtree.1w", "20-leaf subtree"),
    ("read.health.1w", "/health"),
    ("read.plain.svc.2w", "plain GET, 2 workers"),
    ("read.secret.2w", "secret GET, 2 workers"),
    ("read.subtree.2w", "subtree, 2 workers"),
    ("read.health.2w", "/health, 2 workers"),
    ("read.audit_off", "plain GET, audit off"),
]


def chart(results: Results, path: Path, title: str) -> bool:
    """Read throughput bars and watch latency bars; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    reads = [(label, results.measures[key].rps) for key, label in CHART_ROWS
             if key in results.measures and results.measures[key].rps]  # fmt: skip
    watch_names = {"watch.etcd": "etcd watch", "watch.ws": "Tessera /ws", "watch.longpoll": "Tessera long-poll"}
    watch = [(name, results.measures[key]) for key, name in watch_names.items()
             if key in results.measures and results.measures[key].p99_ms is not None]  # fmt: skip
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [3, 2]})
    if reads:
        names = [name for name, _ in reads][::-1]
        values = [value for _, value in reads][::-1]
        colours = ["#888888" if name in ("bare ASGI", "FastAPI dict", "etcd range") else "#2a6fb0" for name in names]
        bars = left.barh(names, values, color=colours)
        left.set_xscale("log")
        left.set_xlabel("requests/s (log scale; wrk 2 threads, 32 connections)")
        left.set_title("Reads")
        left.set_xlim(right=max(values) * 2.5)  # room for the value labels
        for bar, value in zip(bars, values, strict=True):
            left.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:,.0f}", va="center", fontsize=8)
    if watch:
        names = [name for name, _ in watch]
        positions = range(len(names))
        right.bar([p - 0.2 for p in positions], [m.p50_ms for _, m in watch], width=0.4, label="p50", color="#7fb3e0")
        right.bar([p + 0.2 for p in positions], [m.p99_ms for _, m in watch], width=0.4, label="p99", color="#2a6fb0")
        right.set_xticks(list(positions), names, fontsize=9)
        right.set_ylabel("ms from write to event")
        right.set_title("Watch latency")
        right.legend()
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True
