"""What a benchmark reports: figures, each beside the machine ceiling it is compared with.

A figure alone (5,000 messages/s) says little across machines; its ratio to a ceiling
measured in the same run (the database's 500-row claim rate, `/healthz` requests/s)
does. `Report` holds the ceilings and every bench's figures, and prints them as a table
or as JSON. A figure may carry a `Target` (at most 250 ms, at least 15 % of a ceiling):
the table then marks it PASS or FAIL. `Progress` is the bar drawn on stderr while a bench
runs.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

CEILINGS = "ceilings"


@dataclass(frozen=True)
class Target:
    """What a figure should be: at most (`most`) or at least `bound`, compared with its value,
    or with its ratio to its ceiling when `of_ratio` (then `bound` is a fraction)."""

    bound: float
    most: bool = True
    of_ratio: bool = False

    def text(self, unit: str) -> str:
        sign = "≤" if self.most else "≥"
        if self.of_ratio:
            return f"{sign} {self.bound:.0%}"
        return f"{sign} {_number(self.bound)} {unit}"

    def met(self, value: float) -> bool:
        """Whether `value` is on the right side of the bound; a value not measured is not."""
        if math.isnan(value):
            return False
        return value <= self.bound if self.most else value >= self.bound


@dataclass(frozen=True)
class Figure:
    """One measured value; `ceiling` names the ceiling it is divided by (or is None)."""

    name: str
    value: float
    unit: str
    ceiling: str | None = None
    # A fixed yardstick instead of a measured ceiling (a provider's contracted rate).
    against: float | None = None
    target: Target | None = None


@dataclass
class Section:
    """One bench's figures, and the lines that say what it ran and what it saw."""

    bench: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def add(
        self,
        name: str,
        value: float,
        unit: str,
        ceiling: str | None = None,
        against: float | None = None,
        target: Target | None = None,
    ) -> None:
        self.figures.append(Figure(name, value, unit, ceiling, against, target))


@dataclass
class Report:
    ceilings: Section | None = None
    sections: list[Section] = field(default_factory=list)

    def add(self, part: Section) -> None:
        """A bench's section; one named `ceilings` (a ceiling a bench measured itself, such as
        fanout's COPY of its recipients) joins the ceilings measured before the benches."""
        if part.bench != CEILINGS:
            self.sections.append(part)
        elif self.ceilings is None:
            self.ceilings = part
        else:
            self.ceilings.figures.extend(part.figures)
            self.ceilings.notes.extend(part.notes)

    def ceiling(self, name: str) -> float | None:
        if self.ceilings is None:
            return None
        for figure in self.ceilings.figures:
            if figure.name == name:
                return figure.value
        return None

    def ratio(self, figure: Figure) -> float | None:
        base = figure.against if figure.against is not None else None
        if base is None and figure.ceiling is not None:
            base = self.ceiling(figure.ceiling)
        if not base or math.isnan(figure.value):
            return None
        return figure.value / base

    def verdict(self, figure: Figure) -> bool | None:
        """Whether the figure meets its target; None when it has none, or when its target is
        a share of a ceiling this run did not measure."""
        target = figure.target
        if target is None:
            return None
        if not target.of_ratio or math.isnan(figure.value):
            return target.met(figure.value)
        ratio = self.ratio(figure)
        return None if ratio is None else target.met(ratio)

    def as_json(self) -> dict[str, Any]:
        def section(part: Section) -> dict[str, Any]:
            return {
                "bench": part.bench,
                "figures": [
                    {
                        "name": f.name,
                        "value": _finite(f.value),
                        "unit": f.unit,
                        "ceiling": f.ceiling,
                        "against": f.against,
                        "ratio": self.ratio(f),
                        **self._target_json(f),
                    }
                    for f in part.figures
                ],
                "notes": part.notes,
                **({"details": part.details} if part.details else {}),
            }

        return {
            "ceilings": section(self.ceilings) if self.ceilings else None,
            "benches": [section(part) for part in self.sections],
        }

    def _target_json(self, figure: Figure) -> dict[str, Any]:
        if figure.target is None:
            return {}
        target = figure.target
        bound = {"max" if target.most else "min": target.bound, "of_ratio": target.of_ratio}
        return {"target": bound, "met": self.verdict(figure)}

    def print_table(self, out: TextIO = sys.stdout) -> None:
        parts = ([self.ceilings] if self.ceilings else []) + self.sections
        # A target column only when some figure has a target: the other benches' tables
        # stay as they were.
        targets = any(f.target is not None for part in parts for f in part.figures)
        header: tuple[str, ...] = ("figure", "value", "ratio", "of")
        if targets:
            header += ("target",)
        rows: list[tuple[str, ...]] = []
        for part in parts:
            rows.append((part.bench, *[""] * (len(header) - 1)))
            for f in part.figures:
                ratio = self.ratio(f)
                base = f.ceiling or (f"{f.against:g}" if f.against is not None else "")
                shown = (
                    f"  {f.name}",
                    f"{_number(f.value)} {f.unit}",
                    "" if ratio is None else f"{ratio:.1%}",
                    base if ratio is not None or f.ceiling is None else f"{base} (unmeasured)",
                )
                rows.append((*shown, self._target_cell(f)) if targets else shown)
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
        line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
        print(line.rstrip(), file=out)
        print("  ".join("-" * w for w in widths), file=out)
        for row in rows:
            cells = (row[0].ljust(widths[0]), row[1].rjust(widths[1]), row[2].rjust(widths[2]))
            rest = (row[3].ljust(widths[3]), *row[4:]) if targets else (row[3],)
            print("  ".join((*cells, *rest)).rstrip(), file=out)
        for part in parts:
            if part.notes:
                print(f"\n{part.bench}:", file=out)
                for note in part.notes:
                    print(f"  {note}", file=out)

    def _target_cell(self, figure: Figure) -> str:
        if figure.target is None:
            return ""
        verdict = self.verdict(figure)
        mark = "?" if verdict is None else "PASS" if verdict else "FAIL"
        return f"{figure.target.text(figure.unit)}  {mark}"


def _number(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.2f}"


def _finite(value: float) -> float | None:
    return None if math.isnan(value) or math.isinf(value) else value


def print_json(report: Report, out: TextIO = sys.stdout) -> None:
    print(json.dumps(report.as_json(), indent=2), file=out)


class Progress:
    """A one-line bar on stderr: the current stage and, when known, how far it is.

    On a terminal the line is redrawn in place (at most 10 times a second); elsewhere
    (a log file, CI) each stage is printed once, so the output stays readable.
    """

    def __init__(self, stages: int, out: TextIO = sys.stderr) -> None:
        self.stages = max(1, stages)
        self.done = 0
        self.label = ""
        self.out = out
        self.live = out.isatty()
        self._drawn = 0.0
        self._began = time.monotonic()

    def stage(self, label: str) -> None:
        """Start the next stage (the previous one is finished)."""
        if self.label:
            self.done = min(self.stages, self.done + 1)
        self.label = label
        if self.live:
            self._draw(0.0, force=True)
        else:
            print(f"[{self.done + 1}/{self.stages}] {label}", file=self.out, flush=True)

    def update(self, done: float, total: float) -> None:
        """How far the current stage is (done of total)."""
        if self.live and total > 0:
            self._draw(min(1.0, done / total), suffix=f" {done:,.0f}/{total:,.0f}")

    def close(self) -> None:
        if self.live:
            self.out.write("\r\033[K")
            self.out.flush()

    def _draw(self, fraction: float, suffix: str = "", force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._drawn < 0.1:
            return
        self._drawn = now
        overall = (self.done + fraction) / self.stages
        width = 30
        filled = int(overall * width)
        elapsed = now - self._began
        bar = "#" * filled + "-" * (width - filled)
        text = f"\r\033[K[{bar}] {overall:4.0%} {elapsed:5.0f}s {self.label}{suffix}"
        self.out.write(text)
        self.out.flush()
