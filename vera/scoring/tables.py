"""The paper's scoring tables (arXiv 2412.01095, CVPR 2025): their settings, the reported values, the layout.

Each table is a list of cells; a cell is one setting of ``compute_auc.py``
(``ScoringOptions`` fields, plus ``scores`` for Table 11's question sets) with
the value the paper reports for it, where it reports one. The paper's ablations
are on UCF-Crime AUC; on another dataset or metric the same settings are
evaluated and the paper column stays empty. Numbering follows the CVPR
version (v3); v1's number is in the title where it differs.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vera.io import write_json_atomic, write_text_atomic
from vera.scoring.sweep import sweep

# The paper's VERA rows of Tables 2, 3 and 10.
PAPER_MAIN = {("ucf", "auc"): 86.55, ("xd", "auc"): 88.26, ("xd", "ap"): 70.54}
TRAFFIC_CLASS, STORE_CLASS = "RoadAccidents", "Shoplifting"  # Table 11's "Traffic" and "Store" videos
RANDOM_K_SEED = 0
# The option each hyper-parameter table varies, and its symbol in the paper.
_VARIED = {"table13_k": ("k_ratio", "K/h"), "table14_window": ("window", "ω"), "table15_sigma1": ("sigma1", "σ₁"),
           "table16_tau": ("tau", "τ"), "table17_sigma2": ("sigma2", "σ₂/F")}


@dataclass(frozen=True)
class Cell:
    row: str  # the row label, as the paper prints it (or "ours" for one-row tables)
    column: str  # the column label
    setting: dict[str, Any]  # options changed from the run's protocol defaults
    paper: float | None = None  # the paper's value, in %


@dataclass
class Table:
    name: str  # file name: <name>.md, <name>.csv, key in tables.json
    title: str
    layout: str  # "wide": settings as columns, a paper row and an ours row; "long": one line per setting; "grid"
    cells: list[Cell]
    notes: list[str] = field(default_factory=list)
    corner: str = "setting"  # the header of the label column
    values: list[float | None] = field(default_factory=list)  # ours, one per cell, filled by the sweep


def _wide(name: str, title: str, option: str, columns: list[tuple[str, Any, float | None]], notes: list[str],
          paper_values: bool) -> Table:
    """A one-row table of the paper: each column one value of ``option`` (or, without one, one setting)."""
    cells = [Cell("ours", label, {option: value} if option else value, paper if paper_values else None)
             for label, value, paper in columns]
    return Table(name, title, "wide", cells, notes, corner=_VARIED[name][1])


def scoring_tables(dataset: str, metric: str, released_xd_ap: bool, anomaly_classes: tuple[str, ...] = (),
                   scores: str = "", traffic: str | None = None, store: str | None = None) -> list[Table]:
    """Every scoring table of the paper for one run.

    ``anomaly_classes``: the test set's anomalous classes (Table 11's "All"
    without normal videos); ``scores``, ``traffic``, ``store``: the Step 1
    folders of Table 11's question sets Q*, Q_traffic and Q_store.
    """
    ucf_auc = (dataset, metric) == ("ucf", "auc")
    no_steps = {"skip_step2": True, "skip_smoothing": True, "skip_position_weighting": True}
    tables = [
        Table("main", "VERA (Tables 2, 3 and 10): the default configuration", "long",
              [Cell("VERA", "value", {}, PAPER_MAIN.get((dataset, metric)))]),
        Table("table6_steps", "Table 6 (v1 Table 7): the inference steps", "long", [
            Cell("Step 1 only", "value", no_steps, 76.10 if ucf_auc else None),
            Cell("+ Step 2 (retrieval and ensemble)", "value", {"skip_smoothing": True, "skip_position_weighting": True},
                 84.53 if ucf_auc else None),
            Cell("+ Gaussian smoothing", "value", {"skip_position_weighting": True}, 85.48 if ucf_auc else None),
            Cell("+ position weighting", "value", {}, 86.55 if ucf_auc else None),
        ]),
        _wide("table13_k", "Table 13: K, the segments retrieved, as a share of h", "", [
            ("0%", {"k_ratio": 0.0}, 85.21), ("5%", {"k_ratio": 0.05}, 86.48), ("10%", {"k_ratio": 0.10}, 86.55),
            ("15%", {"k_ratio": 0.15}, 86.61), ("20%", {"k_ratio": 0.20}, 86.42), ("25%", {"k_ratio": 0.25}, 86.19),
            ("random 10%", {"k_ratio": 0.10, "random_k": RANDOM_K_SEED}, 84.55),
        ], ["0% is no retrieval (smoothing and weighting still applied).",
            f"Random: each segment takes 10% of the segments drawn at random (seed {RANDOM_K_SEED})."], ucf_auc),
        _wide("table14_window", "Table 14: ω, the Gaussian filter size in segments", "window",
              [(str(w), w, p) for w, p in ((5, 86.25), (10, 86.43), (15, 86.55), (20, 86.61), (25, 86.60))],
              [], ucf_auc),
        _wide("table15_sigma1", "Table 15: σ₁ of the smoothing, in segments", "sigma1",
              [(str(s), float(s), p) for s, p in ((1, 86.17), (5, 86.49), (10, 86.55), (15, 86.49), (20, 86.54))],
              [], ucf_auc),
        _wide("table16_tau", "Table 16: τ, the softmax temperature", "tau", [
            ("10e-8", 1e-7, 85.21), ("0.01", 0.01, 86.31), ("0.1", 0.1, 86.55), ("1", 1.0, 86.58),
            ("10", 10.0, None), ("+inf", math.inf, 86.59),
        ], ["'10e-8' is computed as 1e-7, its literal value (the paper means a value near zero).",
            "τ = 10 is not in the paper's table: its appendix B.4 states τ = 10 while the table puts the default "
            "86.55 at 0.1 (docs/scoring.md)."], ucf_auc),
    ]
    if not released_xd_ap:  # the released XD-Violence AP script applies no position weighting
        tables.append(_wide("table17_sigma2", "Table 17: σ₂ of the position weighting, as a share of F", "", [
            ("no weighting", {"skip_position_weighting": True}, 85.48), ("0.25F", {"sigma2": 0.25}, 85.43),
            ("0.5F", {"sigma2": 0.5}, 86.55), ("0.75F", {"sigma2": 0.75}, 86.27),
        ], [], ucf_auc))
    if dataset == "ucf":
        tables.append(_scenario_table(anomaly_classes, scores, traffic, store, ucf_auc))
    return tables


def _scenario_table(anomaly_classes: tuple[str, ...], scores: str, traffic: str | None, store: str | None,
                    paper_values: bool) -> Table:
    """Table 11: question sets × evaluation subsets, each with and without the normal videos."""
    subsets = {"All": tuple(anomaly_classes), "Traffic": (TRAFFIC_CLASS,), "Store": (STORE_CLASS,)}
    rows = [("Q*", scores, (86.55, 70.43, 72.58), ("All", "Traffic", "Store"))]
    if traffic:
        rows.append(("Q_traffic", traffic, (82.59, 67.53), ("All", "Traffic")))
    if store:
        rows.append(("Q_store", store, (76.67, 44.84), ("All", "Store")))
    # A scenario whose class has no test video (a set of your own videos) has no column: its metric is undefined.
    absent = [column for column in ("Traffic", "Store") if subsets[column][0] not in anomaly_classes]
    cells = []
    for questions, folder, paper, columns in rows:
        for with_normal in (True, False):
            label = f"{questions}, {'with' if with_normal else 'without'} normal videos"
            for column, value in zip(columns, paper):
                if column in absent:
                    continue
                setting: dict[str, Any] = {"scores": folder}
                if column != "All" or not with_normal:  # "All" with normal videos is the whole test set
                    setting.update(classes=subsets[column], with_normal=with_normal)
                cells.append(Cell(label, column, setting, value if paper_values and with_normal else None))
    notes = [f"Traffic: the {TRAFFIC_CLASS} test videos; Store: the {STORE_CLASS} test videos. The paper does not "
             "say whether normal videos were included; its values are shown beside the rows with normal videos."]
    if absent:
        notes.append("Left out: " + ", ".join(f"{column} (no {subsets[column][0]} video in the annotations)"
                                              for column in absent) + ".")
    if not (traffic and store):
        notes.append("Q_traffic / Q_store rows: give --traffic-scores / --store-scores (Step 1 run with those "
                     "questions).")
    return Table("table11_scenarios", "Table 11 (v1 Table 12): scenario-specific questions", "grid", cells, notes,
                 corner="questions, videos")


# ---------------------------------------------------------------- rendering


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def _paper(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _grid(table: Table) -> list[list[str]]:
    """The table as rows of strings, header first, shaped like the paper's."""
    if table.layout == "wide":
        return [[table.corner, *[c.column for c in table.cells]],
                ["paper", *[_paper(c.paper) for c in table.cells]],
                ["ours", *[_percent(v) for v in table.values]]]
    if table.layout == "long":
        return [["setting", "paper", "ours", "ours − paper"]] + [
            [c.row, _paper(c.paper), _percent(v),
             "" if c.paper is None or v is None else f"{100 * v - c.paper:+.2f}"]
            for c, v in zip(table.cells, table.values)]
    columns = list(dict.fromkeys(c.column for c in table.cells))
    rows: dict[str, dict[str, str]] = {}  # in order of first appearance: a question set's paper row first
    for cell, value in zip(table.cells, table.values):
        if cell.paper is not None:
            rows.setdefault(cell.row.split(",")[0] + ", paper", {})[cell.column] = _paper(cell.paper)
        rows.setdefault(cell.row, {})[cell.column] = _percent(value)
    return [[table.corner, *columns]] + [[name, *[rows[name].get(c, "–") for c in columns]] for name in rows]


def to_markdown(table: Table, defaults: str = "") -> str:
    grid = _grid(table)
    lines = [f"### {table.title}", "", "| " + " | ".join(grid[0]) + " |", "|" + "---|" * len(grid[0])]
    lines += ["| " + " | ".join(row) + " |" for row in grid[1:]]
    notes = table.notes + ([defaults] if defaults else [])
    return "\n".join(lines + ([""] + [f"- {note}" for note in notes] if notes else [])) + "\n"


def to_csv(table: Table) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(_grid(table))
    return buffer.getvalue()


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return "inf"  # JSON has no infinity; the command line reads "inf"
    if isinstance(value, tuple):
        return list(value)
    return value


def to_json(tables: list[Table]) -> dict[str, list[dict]]:
    """``{table: [{"setting": {option: value}, "value": fraction or None, "paper": fraction or None}]}``."""
    return {table.name: [{"setting": {k: _json_value(v) for k, v in cell.setting.items()}, "value": value,
                          "paper": None if cell.paper is None else round(cell.paper / 100, 6)}
                         for cell, value in zip(table.cells, table.values)]
            for table in tables}


# ---------------------------------------------------------------- running and writing


def reproduce(videos, base, anomaly_classes: tuple[str, ...], scores_dir: Path, features_dir: Path,
              traffic_dir: Path | None = None, store_dir: Path | None = None, gt_frames_path: Path | None = None,
              allow_missing: bool = False) -> list[Table]:
    """Every table for this run's dataset, metric and protocol (``base``), with our values filled in.

    One sweep per Step 1 folder (Table 11's other question sets have their own).
    """
    tables = scoring_tables(base.dataset, base.metric, base.released_xd_ap, anomaly_classes, str(scores_dir),
                            None if traffic_dir is None else str(traffic_dir),
                            None if store_dir is None else str(store_dir))
    cells = [(table, index, cell) for table in tables for index, cell in enumerate(table.cells)]
    for table in tables:
        table.values = [None] * len(table.cells)
    for folder in dict.fromkeys(cell.setting.get("scores", str(scores_dir)) for _, _, cell in cells):
        mine = [(table, index, cell) for table, index, cell in cells
                if cell.setting.get("scores", str(scores_dir)) == folder]
        settings = [replace(base, **{k: v for k, v in cell.setting.items() if k != "scores"}) for _, _, cell in mine]
        values = sweep(videos, Path(folder), features_dir, settings, gt_frames_path, allow_missing)
        for (table, index, _), value in zip(mine, values):
            table.values[index] = value
    return tables


def _default_note(table: Table, base) -> str:
    if table.name not in _VARIED:
        return ""
    option, symbol = _VARIED[table.name]
    value = base.hyperparameters()[option]
    shown = f"{100 * value:g}%" if option == "k_ratio" else f"{value:g}"
    return f"This run's {base.protocol} protocol uses {symbol} = {shown} when the option is not given."


def write_tables(tables: list[Table], base, output_dir: Path) -> str:
    """``<name>.md``, ``<name>.csv``, ``tables.md`` and ``tables.json`` in ``output_dir``; returns tables.md."""
    output_dir = Path(output_dir)
    header = (f"# Scoring tables: {base.dataset.upper()} {base.metric.upper()}, {base.protocol} protocol\n\n"
              "Ours and the paper's values in %. Table numbers as in the CVPR version (arXiv v3).\n")
    parts = [header]
    for table in tables:
        markdown = to_markdown(table, _default_note(table, base))
        write_text_atomic(output_dir / f"{table.name}.md", markdown)
        write_text_atomic(output_dir / f"{table.name}.csv", to_csv(table))
        parts.append(markdown)
    combined = "\n".join(parts)
    write_text_atomic(output_dir / "tables.md", combined)
    write_json_atomic(output_dir / "tables.json", to_json(tables))
    return combined
