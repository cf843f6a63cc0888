"""The figures of a ``bench/run.py`` run: one table per area (rows, targets, met or missed and
by how much), rendered for the JSON document's ``summary`` and for docs/performance.md.

Each area's extractor reads the JSON documents the benchmark scripts printed (see
bench/README.md for their fields); a job that failed or did not run leaves its cells empty ("—")
and its error in the area's notes. Nothing here imports MailDesk.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

DBS = ("sqlite", "postgresql")
DB_TITLES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


@dataclass(frozen=True, slots=True)
class Target:
    op: str  # "<=", "<" or ">="
    value: float
    unit: str = ""

    def met(self, value: float) -> bool:
        if self.op == "<=":
            return value <= self.value
        if self.op == "<":
            return value < self.value
        return value >= self.value

    def text(self) -> str:
        sign = {"<=": "≤", "<": "<", ">=": "≥"}[self.op]
        return f"{sign} {_num(self.value)}{_unit(self.unit)}"

    def verdict(self, value: float) -> str:
        """"met", or "missed by N % (value vs target)"."""
        if self.met(value):
            return "met"
        if self.value == 0:
            return f"missed ({_num(value)} vs {self.text()})"
        share = abs(value - self.value) / abs(self.value) * 100
        return f"missed by {share:.0f} % ({_num(value)} vs {self.text()})"


@dataclass(slots=True)
class Row:
    label: str
    values: dict[str, float | None]  # db → value (None: not measured)
    unit: str = ""
    target: Target | None = None

    def verdicts(self) -> dict[str, str]:
        if self.target is None:
            return {}
        return {db: self.target.verdict(v) for db, v in self.values.items() if v is not None}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"metric": self.label, "unit": self.unit, "values": self.values}
        if self.target is not None:
            out["target"] = self.target.text()
            out["verdict"] = self.verdicts()
        return out


@dataclass(slots=True)
class Area:
    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dbs: tuple[str, ...] = DBS

    def to_json(self) -> dict[str, Any]:
        return {"area": self.name, "title": self.title, "rows": [r.to_json() for r in self.rows],
                "notes": self.notes}


# ------------------------------------------------------------------------------ formatting
def _num(value: float) -> str:
    if float(value).is_integer():
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _unit(unit: str) -> str:
    return "" if not unit else (unit if unit == "%" else f" {unit}")


def markdown_table(area: Area) -> list[str]:
    dbs = area.dbs
    head = ["", *(DB_TITLES[d] for d in dbs), "target", "met?"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in area.rows:
        cells = [f"{row.label}{f' ({row.unit})' if row.unit else ''}"]
        for db in dbs:
            value = row.values.get(db)
            cells.append("—" if value is None else _num(value))
        cells.append(row.target.text() if row.target else "")
        verdicts = row.verdicts()
        if not verdicts:
            cells.append("")
        elif all(v == "met" for v in verdicts.values()):
            cells.append("met" if len(verdicts) == 1 or len(dbs) == 1 else "met (both)")
        else:
            cells.append("; ".join(
                f"{DB_TITLES[db]}: {'**' + v + '**' if v != 'met' else v}"
                for db, v in verdicts.items()))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# ------------------------------------------------------------------------------ extraction
Jobs = list[dict[str, Any]]  # {"label", "db", "document", "error", "seconds", "args"}


def _runs(jobs: Jobs, label: str | None = None) -> dict[str, dict[str, Any]]:
    """db → the first run of that db's document (of the job with ``label``)."""
    out: dict[str, dict[str, Any]] = {}
    for job in jobs:
        if label is not None and job["label"] != label:
            continue
        document = job.get("document") or {}
        for run in document.get("runs", []):
            out.setdefault(run.get("db", job["db"]), run)
    return out


def _get(data: Any, *path: str) -> float | None:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return float(data) if isinstance(data, (int, float)) and not isinstance(data, bool) else None


def _row(label: str, runs: dict[str, dict[str, Any]], path: Iterable[str],
         unit: str = "", target: Target | None = None) -> Row:
    keys = tuple(path)
    return Row(label, {db: _get(runs.get(db), *keys) for db in DBS}, unit, target)


def _failures(jobs: Jobs) -> list[str]:
    return [f"{job['label']} on {DB_TITLES.get(job['db'], job['db'])}: {job['error']}"
            for job in jobs if job.get("error")]


P50 = Target("<=", 50.0, "ms")
P99 = Target("<=", 200.0, "ms")


def push_area(jobs: Jobs) -> Area:
    area = Area("push", "Push to visible: Gmail and Outlook (`bench/push_latency.py`)")
    runs = _runs(jobs)
    for name, prefix in (("Gmail", ()), ("Outlook", ("outlook",))):
        for stage, key in (("committed", "publish_to_committed_ms"),
                           ("live bus", "publish_to_bus_ms"),
                           ("websocket client", "publish_to_websocket_ms")):
            for pct, target in (("p50", P50), ("p99", P99)):
                area.rows.append(_row(f"{name}: publish → {stage} {pct}, 0 ms RTT", runs,
                                      (*prefix, "latency", key, pct), "ms", target))
        area.rows.append(_row(f"{name}: our overhead above the floor (committed p50 − floor), "
                              "0 ms RTT", runs,
                              (*prefix, "latency", "overhead_above_floor_ms"), "ms"))
        for rtt in _other_rtts(runs, prefix):
            base = (*prefix, "latency_with_rtt_ms", rtt)
            area.rows += [
                _row(f"{name}: publish → websocket p50, {rtt} ms RTT", runs,
                     (*base, "publish_to_websocket_ms", "p50"), "ms"),
                _row(f"{name}: publish → websocket p99, {rtt} ms RTT", runs,
                     (*base, "publish_to_websocket_ms", "p99"), "ms"),
                _row(f"{name}: floor at {rtt} ms RTT (provider round trips × measured RTT)",
                     runs, (*base, "floor_ms"), "ms"),
                _row(f"{name}: our overhead above the floor at {rtt} ms RTT (committed p50)",
                     runs, (*base, "overhead_above_floor_ms"), "ms"),
                _row(f"{name}: … and to the websocket client (websocket p50 − floor)", runs,
                     (*base, "websocket_overhead_above_floor_ms"), "ms"),
            ]
        throughput = (*prefix, "webhook_throughput")
        area.rows += [
            _row(f"{name} webhook: verified notifications/s", runs,
                 (*throughput, "maildesk_requests_per_s"), "req/s"),
            _row(f"{name} webhook: bare Starlette endpoint, same run", runs,
                 (*throughput, "bare_requests_per_s"), "req/s"),
            _row(f"{name} webhook: ratio (ours / bare)", runs, (*throughput, "ratio"), "",
                 Target(">=", 0.5)),
            _row(f"{name} webhook: 202 latency p99 under that load", runs,
                 (*throughput, "maildesk_p99_202_ms"), "ms"),
            _row(f"{name} burst of {_burst_size(runs, prefix)} notifications, one mailbox: "
                 "sync runs", runs, (*prefix, "burst", "sync_runs"), "", Target("<=", 3)),
            _row(f"{name} burst: provider requests until idle", runs,
                 (*prefix, "burst", "provider_requests")),
        ]
    for db, run in runs.items():
        for name, section in (("Gmail", run), ("Outlook", run.get("outlook") or {})):
            burst = section.get("burst")
            if burst:
                area.notes.append(
                    f"{DB_TITLES[db]}, {name} burst: {burst['sync_runs']} sync runs "
                    f"({burst['sync_runs_started_during_burst']} started during the "
                    f"{burst['load_client_seconds']} s of posting, "
                    f"{burst['sync_runs_after_burst']} after), provider requests "
                    f"{burst['provider_requests_by_kind']}, idle "
                    f"{burst['burst_end_to_idle_s']} s after the last answer.")
    area.notes += _failures(jobs)
    return area


def _other_rtts(runs: dict[str, dict[str, Any]], prefix: tuple[str, ...]) -> list[str]:
    found: list[str] = []
    for run in runs.values():
        section: Any = run
        for key in prefix:
            section = section.get(key) or {}
        for rtt in section.get("latency_with_rtt_ms", {}):
            if rtt not in found:
                found.append(rtt)
    return found


def _burst_size(runs: dict[str, dict[str, Any]], prefix: tuple[str, ...]) -> str:
    for run in runs.values():
        value = _get(run, *prefix, "burst", "notifications")
        if value is not None:
            return f"{int(value):,}"
    return "N"


def sync_area(jobs: Jobs) -> Area:
    area = Area("sync", "Initial sync of one Gmail mailbox (`bench/sync_throughput.py`)")
    for label in dict.fromkeys(job["label"] for job in jobs):
        runs = _runs(jobs, label)
        size = next((int(r["messages"]) for r in runs.values() if "messages" in r), None)
        what = f"{size:,} messages" if size else label
        area.rows += [
            _row(f"{what}: initial sync rate", runs, ("rate_msgs_per_s",), "msg/s",
                 Target(">=", 1000.0)),
            _row(f"{what}: peak RSS", runs, ("peak_rss_mb",), "MB", Target("<", 300.0)),
            _row(f"{what}: provider-only baseline (same client, storing nothing)", runs,
                 ("provider_only_rate",), "msg/s"),
            _row(f"{what}: newest INBOX message committed after", runs,
                 ("time_to_first_inbox_s",), "s"),
        ]
    area.notes += _failures(jobs)
    return area


def scheduler_area(jobs: Jobs) -> Area:
    area = Area("scheduler", "Scheduler cost (`bench/scheduler_tick.py`)")
    runs = _runs(jobs)
    sizes = sorted({int(s) for r in runs.values() for s in r.get("sizes", {})})
    for size in sizes:
        largest = size == sizes[-1]
        area.rows.append(_row(f"one tick (claim + renewal + silence + lifecycle), "
                              f"{size:,} mailboxes/subscriptions", runs,
                              ("sizes", str(size), "tick_ms"), "ms",
                              Target("<=", 20.0) if largest else None))
    if sizes:
        for part in ("claim_ms", "renewal_select_ms", "silence_select_ms", "lifecycle_select_ms"):
            area.rows.append(_row(f"  {part.removesuffix('_ms').replace('_', ' ')}, "
                                  f"{sizes[-1]:,}", runs, ("sizes", str(sizes[-1]), part), "ms"))
    if len(sizes) > 1:
        area.rows.append(_row(
            f"tick growth {sizes[0]:,} → {sizes[-1]:,} rows, same 40 due rows (×)", runs,
            ("growth_ratio", "tick_ms"), "", Target("<=", 2.0)))
    area.rows += [
        _row("idle worker CPU, 1,000 connected mailboxes", runs, ("idle", "cpu_percent"), "%"),
        _row("  the same seconds asleep (floor)", runs, ("idle", "sleep_floor_percent"), "%"),
    ]
    area.notes.append("The growth target (≤ 2×) is how this table checks \"grows with due "
                      "rows, not with all rows\": the due rows are the same 40 at every size.")
    area.notes += _failures(jobs)
    return area


def imap_area(jobs: Jobs) -> Area:
    area = Area("imap", "IMAP IDLE latency and IMAP initial sync (`bench/imap_latency.py`)")
    runs = _runs(jobs)
    second = Target("<=", 1000.0, "ms")
    for pct in ("p50", "p95", "p99"):
        area.rows.append(_row(f"APPEND → committed {pct}", runs,
                              ("latency", "append_to_committed_ms", pct), "ms", second))
    size = next((int(r["initial_sync"]["messages"]) for r in runs.values()
                 if "messages" in r.get("initial_sync", {})), None)
    area.rows += [
        _row("floor: APPEND → EXISTS on a bare IDLE connection, p50", runs,
             ("latency", "floor_append_to_exists_ms", "p50"), "ms"),
        _row("our overhead above that floor, p50", runs,
             ("latency", "overhead_above_floor_ms", "p50"), "ms"),
        _row(f"initial sync rate{f', {size:,} messages' if size else ''}", runs,
             ("initial_sync", "rate_msgs_per_s"), "msg/s", Target(">=", 1000.0)),
        _row("  bare UID FETCH of the same metadata (floor)", runs,
             ("initial_sync", "floor_rate_msgs_per_s"), "msg/s"),
    ]
    area.notes += _failures(jobs)
    return area


def fuzz_area(jobs: Jobs) -> Area:
    area = Area("fuzz", "Webhook fuzzing, long run (`bench/fuzz_webhooks.py`)")
    runs = _runs(jobs)
    area.dbs = tuple(db for db in DBS if db in runs) or ("sqlite",)
    for name in ("gmail", "outlook"):
        title = name.capitalize()
        area.rows += [
            _row(f"{title}: hypothesis cases", runs, (name, "cases"), "",
                 Target(">=", 10_000.0)),
            Row(f"{title}: broken properties (status, exception, log leak)",
                {db: float(len(r[name]["problems"])) if name in r else None
                 for db, r in runs.items()}, "", Target("<=", 0.0)),
            _row(f"{title}: seconds", runs, (name, "seconds"), "s"),
        ]
        for db, run in runs.items():
            if name in run:
                area.notes.append(f"{title} on {DB_TITLES[db]}: answers "
                                  f"{run[name]['statuses']}" + "".join(
                                      f"; problem: {p}" for p in run[name]["problems"][:3]))
    area.notes += _failures(jobs)
    return area


EXTRACTORS: dict[str, Callable[[Jobs], Area]] = {
    "push": push_area, "imap": imap_area, "sync": sync_area, "scheduler": scheduler_area,
    "fuzz": fuzz_area,
}


# ------------------------------------------------------------------------------ the document
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
_AREA = re.compile(r"<!-- bench:area (\w+) -->\n.*?<!-- bench:area-end \1 -->\n", re.S)


def area_block(area: Area, header: str) -> str:
    lines = [f"<!-- bench:area {area.name} -->", f"### {area.title}", "", header, "",
             *markdown_table(area)]
    if area.notes:
        lines += ["", *(f"- {note}" for note in area.notes)]
    lines.append(f"<!-- bench:area-end {area.name} -->")
    return "\n".join(lines) + "\n"


def write_performance(existing: str, head: str, blocks: dict[str, str],
                      order: Iterable[str]) -> str:
    """``existing`` (docs/performance.md) with its generated part replaced: ``head`` (machine,
    command) and the areas' blocks — those of this run replace the same area's earlier block,
    areas this run did not measure keep theirs. Everything outside the markers is kept."""
    before, found, rest = existing.partition(BEGIN)
    kept: dict[str, str] = {}
    after = existing
    if found:
        generated, _, after = rest.partition(END)
        kept = {m.group(1): m.group(0) for m in _AREA.finditer(generated)}
    else:
        before = "# Performance\n\n"
        after = "\n" + existing.removeprefix("# Performance\n").lstrip("\n")
    kept.update(blocks)
    names = [n for n in order if n in kept] + [n for n in kept if n not in order]
    body = "\n".join(kept[n] for n in names)
    return f"{before}{BEGIN}\n{head}\n{body}{END}{after}"
