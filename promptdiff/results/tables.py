"""Seed statistics over the output layout and tables of them laid out like the CoOp/CoCoOp/MaPLe
papers (base2new, xd, dg, few_shot), rendered for the terminal, Markdown, CSV or LaTeX.

Values are means over seeds; HM is the harmonic mean of the seed-averaged Base and New
accuracies, and the Average row's HM is the harmonic mean of the averaged Base and New, as the
papers compute it.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tabulate import tabulate

from promptdiff.results.layout import SEED_DIR_RE, SHOTS_DIR_RE, subdirs
from promptdiff.results.record import ResultsError, RunResult, read_run, warn
from promptdiff.trainer_names import split_diff

# Paper order, so tables read like the CoOp/CoCoOp/MaPLe papers without a --datasets flag; the
# scripts' run_*_all loops take their datasets from here too (python -m promptdiff.results).
BASE2NEW_DATASETS = (
    "imagenet",
    "caltech101",
    "oxford_pets",
    "stanford_cars",
    "oxford_flowers",
    "food101",
    "fgvc_aircraft",
    "sun397",
    "dtd",
    "eurosat",
    "ucf101",
)
XD_SOURCE = "imagenet"
DG_TARGETS = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")
# The methods in the papers' order. Each *Diff variant sits right after its baseline, and a
# trainer not listed here (a new one) follows them alphabetically, so it needs no entry.
METHOD_ORDER = ("ZeroshotCLIP", "CoOp", "CoCoOp", "VPT", "MaPLe", "IVLP", "PromptSRC", "GenPT")


@dataclass(frozen=True)
class Stat:
    """Mean and population std over seeds (numpy's default ddof=0, as upstream)."""

    mean: float
    std: float
    n: int
    seeds: tuple[int, ...] = ()


def stat(values: list[float], seeds: tuple[int, ...] = ()) -> Stat:
    """Mean and population std of a non-empty list."""
    arr = np.asarray(values, dtype=float)
    return Stat(float(arr.mean()), float(arr.std()), len(values), seeds)


def harmonic_mean(base: float | None, new: float | None) -> float | None:
    """2BN/(B+N), the base-to-new HM; None when either side is missing."""
    if base is None or new is None:
        return None
    if base + new == 0:
        return 0.0
    return 2.0 * base * new / (base + new)


def mean_or_none(values: list[float]) -> float | None:
    """Mean of the values, None for an empty list."""
    return float(np.mean(values)) if values else None


@dataclass
class Cell:
    """Seed results of one (dataset, shots, trainer, cfg) folder of the layout."""

    runs: list[tuple[int, RunResult]]

    def stat(self, metric: str) -> Stat | None:
        """Seed statistics of a metric, None when no seed has it."""
        pairs = [(seed, r.metrics[metric]) for seed, r in self.runs if metric in r.metrics]
        if not pairs:
            return None
        return stat([v for _, v in pairs], tuple(s for s, _ in pairs))


CellKey = tuple[str, int, str, str]  # dataset, shots, trainer, cfg


def discover(
    tree: Path,
    seeds: set[int] | None = None,
    check: Callable[[RunResult], None] | None = None,
) -> dict[CellKey, Cell]:
    """Runs under <tree>/<dataset>/shots_<K>/<Trainer>/<cfg>/seed<S>/ keyed by (dataset, K, trainer, cfg)."""
    found: dict[CellKey, Cell] = {}
    if not tree.is_dir():
        return found
    for dataset_dir in subdirs(tree):
        for shots_dir in subdirs(dataset_dir):
            shots_match = SHOTS_DIR_RE.match(shots_dir.name)
            if not shots_match:
                continue
            for trainer_dir in subdirs(shots_dir):
                for cfg_dir in subdirs(trainer_dir):
                    runs: list[tuple[int, RunResult]] = []
                    for seed_dir in subdirs(cfg_dir):
                        seed_match = SEED_DIR_RE.match(seed_dir.name)
                        if not seed_match:
                            continue
                        seed = int(seed_match.group(1))
                        if seeds is not None and seed not in seeds:
                            continue
                        result = read_run(seed_dir)
                        if result is None:
                            warn(f"no result yet in {seed_dir} (skipped)")
                            continue
                        recorded = result.meta.get("seed")
                        if isinstance(recorded, int) and recorded != seed:
                            # counting it under the folder's seed would mix two seeds' figures
                            warn(
                                f"{result.source} records seed {recorded} but lies in "
                                f"{seed_dir.name} (skipped); move it to seed{recorded} or run "
                                f"seed {seed} again"
                            )
                            continue
                        if check is not None:
                            check(result)
                        runs.append((seed, result))
                    if runs:
                        key = (
                            dataset_dir.name,
                            int(shots_match.group(1)),
                            trainer_dir.name,
                            cfg_dir.name,
                        )
                        found[key] = Cell(runs)
    return found


def trainer_rank(name: str) -> tuple[int, str, bool]:
    """Sort key of a trainer name: its method's place in METHOD_ORDER, then its name, the
    baseline before its Diff variant."""
    rank = {method: i for i, method in enumerate(METHOD_ORDER)}
    method, diff = split_diff(name)
    return rank.get(method, len(rank)), method.lower(), diff


def order_trainers(names: set[str] | list[str]) -> list[str]:
    """Trainers in the papers' order, each *Diff variant after its baseline."""
    return sorted(set(names), key=trainer_rank)


def order_datasets(names: set[str] | list[str]) -> list[str]:
    """Datasets in paper order (base-to-new, then DG variants), unknown ones alphabetically."""
    known = BASE2NEW_DATASETS + DG_TARGETS
    rank = {name: i for i, name in enumerate(known)}
    return sorted(set(names), key=lambda n: (rank.get(n, len(rank)), n))


def fmt_value(value: float | None, std: float | None = None, digits: int = 2) -> str:
    """A table value with 2 decimals, '-' when missing, optional '± std'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value:.{digits}f}"
    if std is not None:
        text += f" ± {std:.{digits}f}"
    return text


PROTOCOLS = ("base2new", "xd", "dg", "few_shot")
FORMATS = ("terminal", "markdown", "csv", "latex")
PROTOCOL_TITLES = {
    "base2new": "Base-to-new generalisation",
    "xd": "Cross-dataset transfer (trained on {source})",
    "dg": "Domain generalisation (trained on {source})",
    "few_shot": "Few-shot classification",
}


@dataclass
class Value:
    """One table cell: a number (None shows '-') and its std over seeds when it has one."""

    mean: float | None
    std: float | None = None
    n: int = 0


@dataclass
class Table:
    """A rendered-format-independent table; the first column holds row labels."""

    title: str
    shots: int
    headers: list[str]
    rows: list[list[str | Value]]
    notes: list[str] = field(default_factory=list)
    # Terminal output breaks "CoOp Base" into two header lines so wide base2new tables fit.
    split_headers: bool = False


@dataclass
class Selection:
    """What to include: None means everything found."""

    trainers: list[str] | None = None
    datasets: list[str] | None = None
    shots: list[int] | None = None
    seeds: set[int] | None = None
    metric: str = "accuracy"
    # xd/dg: the dataset trained on (its xd/train folder is the Source column)
    source: str = XD_SOURCE


@dataclass
class Base2NewEntry:
    """Seed-averaged Base and New of one trainer column on one dataset, and their HM."""

    base: Stat | None
    new: Stat | None

    @property
    def hm(self) -> float | None:
        """Harmonic mean of the seed-averaged Base and New."""
        return harmonic_mean(
            self.base.mean if self.base else None, self.new.mean if self.new else None
        )


@dataclass
class Base2NewAverage:
    """Mean Base and New over the datasets where a column has both, and the HM of those means."""

    base: float | None
    new: float | None
    hm: float | None
    datasets: list[str]


@dataclass
class Base2NewResult:
    """Base-to-new numbers for one shot count."""

    shots: int
    columns: list[str]
    datasets: list[str]
    entries: dict[tuple[str, str], Base2NewEntry]
    average: dict[str, Base2NewAverage]
    notes: list[str]


def _tree_checker(expected_subsample: str, notes: list[str]) -> Callable[[RunResult], None]:
    # A run under test_new that evaluated base classes would silently give New == Base.
    def check(result: RunResult) -> None:
        found = result.meta.get("subsample_classes")
        if found is not None and found != expected_subsample:
            notes.append(
                f"{result.source} says subsample_classes={found} but its folder implies "
                f"{expected_subsample}."
            )

    return check


def _protocol_tree(root: Path | str, name: str) -> Path:
    """root/<name>, the folder one protocol's scripts write into, once root is known to exist."""
    root = Path(root)
    if not root.is_dir():
        raise ResultsError(
            f"results root {root} does not exist; pass --root pointing at the folder the scripts "
            f"write into (default: output)"
        )
    return root / name


RUN_LAYOUT = "<dataset>/shots_<K>/<Trainer>/<cfg>/seed<S>/"


def _no_results(what: str, where: Path, expected: str, scripts: str) -> ResultsError:
    """The error for a protocol tree with nothing to tabulate."""
    return ResultsError(
        f"no {what} results under {where} (expected {expected}{RUN_LAYOUT}); run {scripts} or "
        f"check --root"
    )


def _shot_groups(
    keys: set[CellKey],
    sel: Selection,
    tree: Path,
    dataset_keys: set[CellKey] | None = None,
    datasets_where: Path | None = None,
) -> Iterator[tuple[int, list[str], list[tuple[str, str, str]]]]:
    """Per selected shot count of the cells found: (shots, datasets, columns). The datasets come
    from dataset_keys where given (xd/dg: the targets, not the source), else from keys."""
    for shots in _pick_shots({k[1] for k in keys}, sel.shots, tree):
        in_shots = [k for k in keys if k[1] == shots]
        named = {
            k[0] for k in (in_shots if dataset_keys is None else dataset_keys) if k[1] == shots
        }
        datasets = _pick_datasets(named, sel.datasets, datasets_where or tree)
        columns = _column_labels({(k[2], k[3]) for k in in_shots}, sel.trainers, tree)
        yield shots, datasets, columns


def _cell_stat(cells: dict[CellKey, Cell], key: CellKey, metric: str) -> Stat | None:
    """Seed statistics of the cell at key, None when there is no such cell or no such metric."""
    return cells[key].stat(metric) if key in cells else None


def _column_labels(
    keys: set[tuple[str, str]], wanted: list[str] | None, where: Path
) -> list[tuple[str, str, str]]:
    """(label, trainer, cfg) per column; a trainer with one cfg is labelled by its name only."""
    by_trainer: dict[str, list[str]] = {}
    for trainer, cfg in keys:
        by_trainer.setdefault(trainer, []).append(cfg)
    if wanted is None:
        chosen = [(t, c) for t in order_trainers(by_trainer) for c in sorted(by_trainer[t])]
    else:
        chosen = []
        lower = {t.lower(): t for t in by_trainer}
        for item in wanted:
            name, _, cfg = item.partition("/")
            trainer = name if name in by_trainer else lower.get(name.lower())
            if trainer is None or (cfg and cfg not in by_trainer[trainer]):
                found = ", ".join(
                    f"{t}/{c}" for t in order_trainers(by_trainer) for c in sorted(by_trainer[t])
                )
                raise ResultsError(
                    f"trainer '{item}' has no results under {where}; found: {found or 'none'}"
                )
            for c in [cfg] if cfg else sorted(by_trainer[trainer]):
                if (trainer, c) not in chosen:
                    chosen.append((trainer, c))
    cfgs_per_trainer: dict[str, int] = {}
    for t, _ in chosen:
        cfgs_per_trainer[t] = cfgs_per_trainer.get(t, 0) + 1
    return [(t if cfgs_per_trainer[t] == 1 else f"{t}/{c}", t, c) for t, c in chosen]


def _pick_datasets(found: set[str], wanted: list[str] | None, where: Path) -> list[str]:
    if wanted is None:
        return order_datasets(found)
    lower = {d.lower(): d for d in found}
    picked = []
    for name in wanted:
        if name.lower() not in lower:
            raise ResultsError(
                f"dataset '{name}' has no results under {where}; found: "
                f"{', '.join(order_datasets(found)) or 'none'}"
            )
        picked.append(lower[name.lower()])
    return picked


def _pick_shots(found: set[int], wanted: list[int] | None, where: Path) -> list[int]:
    if wanted is None:
        return sorted(found)
    missing = [k for k in wanted if k not in found]
    if missing:
        raise ResultsError(
            f"no {missing[0]}-shot results under {where}; found shots: "
            f"{', '.join(map(str, sorted(found))) or 'none'}"
        )
    return list(wanted)


def _seed_notes(stats: list[tuple[str, Stat | None]]) -> list[str]:
    """Flag cells averaged over fewer seeds than the fullest cell of the table."""
    present = [(where, s) for where, s in stats if s is not None]
    if not present:
        return []
    most = max(s.n for _, s in present)
    short = [
        f"{where} ({s.n}: seeds {', '.join(map(str, s.seeds))})"
        for where, s in present
        if s.n < most
    ]
    if not short:
        return []
    return [f"Fewer than {most} seeds in: " + "; ".join(short) + "."]


def base2new_results(root: Path | str, sel: Selection | None = None) -> list[Base2NewResult]:
    """Seed-averaged Base/New/HM per dataset and trainer column, one result per shot count."""
    sel = sel or Selection()
    tree = _protocol_tree(root, "base2new")
    notes: list[str] = []
    base = discover(tree / "train_base", sel.seeds, _tree_checker("base", notes))
    new = discover(tree / "test_new", sel.seeds, _tree_checker("new", notes))
    if not base and not new:
        raise _no_results("base2new", tree, "train_base/ and test_new/", "the base2new scripts")
    results = []
    for shots, datasets, columns in _shot_groups(set(base) | set(new), sel, tree):
        entries: dict[tuple[str, str], Base2NewEntry] = {}
        seed_stats: list[tuple[str, Stat | None]] = []
        for ds in datasets:
            for label, trainer, cfg in columns:
                key = (ds, shots, trainer, cfg)
                b = _cell_stat(base, key, sel.metric)
                n = _cell_stat(new, key, sel.metric)
                entries[(ds, label)] = Base2NewEntry(b, n)
                seed_stats += [(f"{label} {ds} Base", b), (f"{label} {ds} New", n)]
        average = {}
        table_notes = list(notes)
        for label, _, _ in columns:
            covered = [
                ds for ds in datasets if entries[(ds, label)].base and entries[(ds, label)].new
            ]
            b_avg = mean_or_none([entries[(ds, label)].base.mean for ds in covered])
            n_avg = mean_or_none([entries[(ds, label)].new.mean for ds in covered])
            average[label] = Base2NewAverage(b_avg, n_avg, harmonic_mean(b_avg, n_avg), covered)
            if len(covered) < len(datasets):
                missing = [ds for ds in datasets if ds not in covered]
                table_notes.append(
                    f"{label}: Average covers {len(covered)} of {len(datasets)} datasets "
                    f"(no Base and New for {', '.join(missing)})."
                )
        table_notes += _seed_notes(seed_stats)
        results.append(
            Base2NewResult(shots, [c[0] for c in columns], datasets, entries, average, table_notes)
        )
    return results


def base2new_tables(root: Path | str, sel: Selection | None = None) -> list[Table]:
    """Dataset rows, and per trainer column the Base, New and HM, plus an Average row."""
    sel = sel or Selection()
    tables = []
    for res in base2new_results(root, sel):
        headers = ["Dataset"]
        for label in res.columns:
            headers += [f"{label} Base", f"{label} New", f"{label} HM"]
        rows: list[list[str | Value]] = []
        for ds in res.datasets:
            row: list[str | Value] = [ds]
            for label in res.columns:
                e = res.entries[(ds, label)]
                row += [_stat_value(e.base), _stat_value(e.new), Value(e.hm)]
            rows.append(row)
        avg_row: list[str | Value] = ["Average"]
        for label in res.columns:
            a = res.average[label]
            avg_row += [Value(a.base), Value(a.new), Value(a.hm)]
        rows.append(avg_row)
        title = f"{PROTOCOL_TITLES['base2new']}, {_shots_text(res.shots)}, {sel.metric} (%)"
        tables.append(Table(title, res.shots, headers, rows, res.notes, split_headers=True))
    return tables


def _shots_text(shots: int) -> str:
    if shots < 0:
        return "all training data"
    return f"{shots} shot" + ("" if shots == 1 else "s")


def _stat_value(s: Stat | None) -> Value:
    return Value(s.mean, s.std, s.n) if s else Value(None)


def transfer_tables(root: Path | str, protocol: str, sel: Selection | None = None) -> list[Table]:
    """xd/dg: a row per trainer column with Source (ImageNet), each target and the target Average."""
    sel = sel or Selection()
    tree = _protocol_tree(root, "xd")
    notes: list[str] = []
    source = {
        k: v
        for k, v in discover(tree / "train", sel.seeds, _tree_checker("all", notes)).items()
        if k[0] == sel.source
    }
    tests = discover(tree / "test", sel.seeds, _tree_checker("all", notes))
    # dg targets: ImageNet's variants, or the --datasets given (e.g. the miniworld's domains)
    dg_targets = tuple(sel.datasets) if sel.datasets else DG_TARGETS
    if protocol == "dg":
        tests = {k: v for k, v in tests.items() if k[0] in dg_targets}
    else:
        tests = {k: v for k, v in tests.items() if k[0] not in dg_targets + (sel.source,)}
    if not tests:
        raise _no_results(f"{protocol} target", tree / "test", "", "the xd test script")
    tables = []
    groups = _shot_groups(set(source) | set(tests), sel, tree, set(tests), tree / "test")
    for shots, targets, columns in groups:
        rows: list[list[str | Value]] = []
        table_notes = list(notes)
        seed_stats: list[tuple[str, Stat | None]] = []
        for label, trainer, cfg in columns:
            src_key = (sel.source, shots, trainer, cfg)
            src = _cell_stat(source, src_key, sel.metric)
            row: list[str | Value] = [label, _stat_value(src)]
            seed_stats.append((f"{label} source", src))
            got = []
            for ds in targets:
                key = (ds, shots, trainer, cfg)
                s = _cell_stat(tests, key, sel.metric)
                seed_stats.append((f"{label} {ds}", s))
                row.append(_stat_value(s))
                if s is not None:
                    got.append(s.mean)
            row.append(Value(mean_or_none(got)))
            if len(got) < len(targets):
                table_notes.append(f"{label}: Average covers {len(got)} of {len(targets)} targets.")
            rows.append(row)
        table_notes += _seed_notes(seed_stats)
        headers = ["Trainer", f"Source ({sel.source})", *targets, "Average"]
        trained_on = "ImageNet" if sel.source == XD_SOURCE else sel.source
        title = (
            f"{PROTOCOL_TITLES[protocol].format(source=trained_on)}, {_shots_text(shots)}, "
            f"{sel.metric} (%)"
        )
        tables.append(Table(title, shots, headers, rows, table_notes))
    return tables


def few_shot_tables(root: Path | str, sel: Selection | None = None) -> list[Table]:
    """Dataset rows by trainer columns, one table per shot count, plus an Average row."""
    sel = sel or Selection()
    tree = _protocol_tree(root, "few_shot")
    notes: list[str] = []
    cells = discover(tree, sel.seeds, _tree_checker("all", notes))
    if not cells:
        raise _no_results("few_shot", tree, "", "the few-shot scripts")
    tables = []
    for shots, datasets, columns in _shot_groups(set(cells), sel, tree):
        rows: list[list[str | Value]] = []
        per_column: dict[str, list[float]] = {label: [] for label, _, _ in columns}
        seed_stats: list[tuple[str, Stat | None]] = []
        for ds in datasets:
            row: list[str | Value] = [ds]
            for label, trainer, cfg in columns:
                key = (ds, shots, trainer, cfg)
                s = _cell_stat(cells, key, sel.metric)
                seed_stats.append((f"{label} {ds}", s))
                row.append(_stat_value(s))
                if s is not None:
                    per_column[label].append(s.mean)
            rows.append(row)
        rows.append(["Average"] + [Value(mean_or_none(per_column[c[0]])) for c in columns])
        table_notes = list(notes)
        for label, _, _ in columns:
            if len(per_column[label]) < len(datasets):
                table_notes.append(
                    f"{label}: Average covers {len(per_column[label])} of {len(datasets)} datasets."
                )
        table_notes += _seed_notes(seed_stats)
        title = f"{PROTOCOL_TITLES['few_shot']}, {_shots_text(shots)}, {sel.metric} (%)"
        tables.append(Table(title, shots, ["Dataset"] + [c[0] for c in columns], rows, table_notes))
    return tables


def build_tables(root: Path | str, protocol: str, sel: Selection | None = None) -> list[Table]:
    """Tables for one protocol."""
    sel = sel or Selection()
    if protocol == "base2new":
        tables = base2new_tables(root, sel)
    elif protocol in ("xd", "dg"):
        tables = transfer_tables(root, protocol, sel)
    elif protocol == "few_shot":
        tables = few_shot_tables(root, sel)
    else:
        raise ResultsError(f"unknown protocol '{protocol}'; use one of: {', '.join(PROTOCOLS)}")
    if not any(
        isinstance(c, Value) and c.mean is not None for t in tables for r in t.rows for c in r
    ):
        raise ResultsError(
            f"no '{sel.metric}' values in the {protocol} results under {root}; "
            f"use --metric accuracy, macro_f1 or error"
        )
    return tables


def _display_rows(table: Table, show_std: bool) -> list[list[str]]:
    return [
        [c if isinstance(c, str) else fmt_value(c.mean, c.std if show_std else None) for c in row]
        for row in table.rows
    ]


def render_text(tables: list[Table], fmt: str, show_std: bool = False) -> str:
    """Terminal (tabulate) or Markdown (pipe table) text of the tables and their notes."""
    parts = []
    for table in tables:
        align = ["left"] + ["right"] * (len(table.headers) - 1)
        headers = table.headers
        if fmt != "markdown" and table.split_headers:
            headers = [h[::-1].replace(" ", "\n", 1)[::-1] for h in headers]
        body = tabulate(
            _display_rows(table, show_std),
            headers=headers,
            tablefmt="pipe" if fmt == "markdown" else "simple",
            disable_numparse=True,
            colalign=align,
        )
        if fmt == "markdown":
            text = f"### {table.title}\n\n{body}\n"
            if table.notes:
                text += "\n" + "\n".join(f"- {n}" for n in table.notes) + "\n"
        else:
            text = f"{table.title}\n\n{body}\n"
            if table.notes:
                text += "\n" + "\n".join(f"Note: {n}" for n in table.notes) + "\n"
        parts.append(text)
    return "\n".join(parts)


def render_csv(tables: list[Table], show_std: bool = False) -> str:
    """One CSV with a leading shots column; with show_std each seed-averaged column gets a std column."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header_written: list[str] | None = None
    for table in tables:
        std_cols = [
            i
            for i in range(1, len(table.headers))
            if any(isinstance(r[i], Value) and r[i].std is not None for r in table.rows)
        ]
        header = ["shots", table.headers[0]]
        for i in range(1, len(table.headers)):
            header.append(table.headers[i])
            if show_std and i in std_cols:
                header.append(f"{table.headers[i]} std")
        if header != header_written:
            if header_written is not None:
                out.write("\n")
            writer.writerow(header)
            header_written = header
        for row in table.rows:
            line = [str(table.shots), row[0]]
            for i in range(1, len(row)):
                cell = row[i]
                if isinstance(cell, str):
                    line.append(cell)
                else:
                    line.append("" if cell.mean is None else f"{cell.mean:.2f}")
                if show_std and i in std_cols:
                    line.append(
                        "" if isinstance(cell, str) or cell.std is None else f"{cell.std:.2f}"
                    )
            writer.writerow(line)
    return out.getvalue()


LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """Text with LaTeX's special characters escaped (dataset and trainer names hold '_')."""
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)


def _latex_cell(cell: str | Value, show_std: bool) -> str:
    if isinstance(cell, str):
        return latex_escape(cell)
    if cell.mean is None:
        return "-"
    if show_std and cell.std is not None:
        return f"{cell.mean:.2f} $\\pm$ {cell.std:.2f}"
    return f"{cell.mean:.2f}"


def render_latex(tables: list[Table], show_std: bool = False) -> str:
    """One booktabs tabular per table (\\usepackage{booktabs}); notes become % comments."""
    parts = []
    for table in tables:
        lines = [
            "\\begin{table}[t]",
            "\\centering",
            f"\\caption{{{latex_escape(table.title)}}}",
            "\\begin{tabular}{l" + "r" * (len(table.headers) - 1) + "}",
            "\\toprule",
            " & ".join(latex_escape(h) for h in table.headers) + " \\\\",
            "\\midrule",
        ]
        for row in table.rows:
            if row[0] == "Average":
                lines.append("\\midrule")
            lines.append(" & ".join(_latex_cell(c, show_std) for c in row) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
        lines += [f"% {n}" for n in table.notes]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def render(tables: list[Table], fmt: str, show_std: bool = False) -> str:
    """Text of the tables in one of FORMATS."""
    if fmt == "csv":
        return render_csv(tables, show_std)
    if fmt == "latex":
        return render_latex(tables, show_std)
    return render_text(tables, fmt, show_std)
