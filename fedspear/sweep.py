"""Grids of runs with statistics: ``fedspear sweep``.

``fedspear sweep --config FILE --grid 'KEY=V1,V2 ...' --algorithms A,B --seeds 0,1,2 [KEY=VALUE ...]`` runs every
*cell* (one algorithm at one point of the grid) once per seed. The seed is ``data.seed``, which fixes the data
shuffle, the partition, the client schedule and every per-(round, client) seed, so for one seed every cell sees the
same partition and the same client schedule and differs only in its algorithm and grid values. Runs live in
``<output_dir>/<algorithm>/<grid point>/seed<S>``, where the grid point names only the values that differ from
the base config (``default`` when none), so equal configurations share one folder; finished runs there are
reused and interrupted ones resumed (:func:`fedspear.compare.run_or_reuse`), so a sweep continues where it stopped
and sweeps over one ``output_dir`` share their runs (``--name`` gives each its own report folder).

The report (``sweep.md`` + ``sweep.json`` + ``plots/*.png``) gives, from each run's last evaluation:

- final accuracy per cell, overall and per ``Example.meta["group"]``: mean over seeds with a 95% Student-t interval
  (``scipy.stats.t``);
- paired differences against a reference (``--reference``: an algorithm, compared at the same grid point, or
  ``KEY=V``, the same algorithm at that grid value), pairing runs by seed: the mean difference with its 95% t
  interval, the paired t test (``scipy.stats.ttest_rel``) and the Wilcoxon signed-rank test
  (``scipy.stats.wilcoxon``); with three seeds no rank test can reach p < 0.05 (the smallest exact two-sided p is
  0.25), so also
- McNemar's test on the evaluation items (``statsmodels.stats.contingency_tables.mcnemar``): the discordant items
  of the two cells (right in one, wrong in the other) pooled over seeds, each seed's items paired by id (runs of
  one seed score the same items; the evaluation records their digest). Exact binomial when fewer than 25
  discordant pairs, else the chi-square with continuity correction. Items of different seeds are not independent
  draws of one population when the evaluation set is the same, so read it as a test on these items;
- plots of final accuracy against each swept value, one line per algorithm, with the 95% interval as a band.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fedspear.config import ALGORITHMS, Config, ConfigError, known_algorithms, load_config, resolve_algorithm_name

SWEEP_FILE = "sweep.md"
SWEEP_JSON = "sweep.json"
RESERVED = {"algorithm.name": "--algorithms", "data.seed": "--seeds", "output_dir": "the sweep's own folders"}
LEVEL = 0.95
EXACT_BELOW = 25  # McNemar: exact binomial test when fewer discordant pairs than this


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Cell:
    """One algorithm at one grid point; ``params`` are (key, value text) pairs in grid order."""

    algorithm: str
    params: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        return " ".join([self.algorithm, *(f"{k}={v}" for k, v in self.params)])

    def folder(self, changed: set[str] | None = None) -> str:
        """``<algorithm>/<k=v_...>`` over the params in ``changed`` (all when None); ``default`` when none.

        Leaving out params equal to the base config's value makes equal configs share one folder (and one
        run), e.g. the paper setting of every ablation sweep.
        """
        point = "_".join(f"{k}={v}" for k, v in self.params if changed is None or k in changed) or "default"
        return f"{self.algorithm}/{re.sub(r'[^A-Za-z0-9_.=+-]', '-', point)}"


def parse_grid(text: str | None) -> list[tuple[str, list[str]]]:
    """``'KEY=V1,V2 KEY2=V3'`` -> ``[("KEY", ["V1", "V2"]), ("KEY2", ["V3"])]`` (values stay text).

    Raises:
        ConfigError: an entry without ``=`` or values, a key given twice, a repeated value, or a key the sweep
            sets itself (algorithm.name, data.seed, output_dir).
    """
    grid: list[tuple[str, list[str]]] = []
    for entry in (text or "").split():
        key, sep, values = entry.partition("=")
        vals = [v for v in values.split(",") if v]
        if not sep or not key or not vals:
            raise ConfigError(f"--grid: '{entry}' is not KEY=V1,V2,... (e.g. --grid 'spear.lambda_lose=0.1,0.3')")
        if key in RESERVED:
            raise ConfigError(f"--grid: {key} is set by {RESERVED[key]}, not by the grid")
        if key in (k for k, _ in grid):
            raise ConfigError(f"--grid: {key} is given twice; list all its values in one entry")
        if len(set(vals)) != len(vals):
            raise ConfigError(f"--grid: {key} lists a value twice")
        grid.append((key, vals))
    return grid


def parse_list(text: str, what: str) -> list[str]:
    """A comma-separated option (``--algorithms``/``--seeds``) as a list; ConfigError when empty or repeated."""
    items = [t.strip() for t in (text or "").split(",") if t.strip()]
    if not items:
        raise ConfigError(f"{what}: give at least one value (comma-separated)")
    if len(set(items)) != len(items):
        raise ConfigError(f"{what}: a value is listed twice")
    return items


def plan(config: str | Path | None, overrides: list[str], grid: list[tuple[str, list[str]]], algorithms: list[str],
         seeds: list[int]) -> tuple[Path, dict[tuple[Cell, int], Config]]:
    """Every (cell, seed) run's validated Config, before anything runs (a bad value fails the whole sweep).

    Returns:
        (the sweep folder, {(cell, seed): config}) in cell-major order.

    Raises:
        ConfigError: an unknown algorithm, a bad override or grid value (the message names the run).
    """
    from fedspear.federation.server import expand_output_dir

    unknown = [a for a in algorithms if ":" not in a and a not in known_algorithms()]
    if unknown:
        raise ConfigError(f"--algorithms: unknown {', '.join(unknown)}; choose from {', '.join(known_algorithms())} "
                          "or a dotted path pkg.mod:Class")
    for algorithm in algorithms:  # a user's algorithm by dotted path: imported and checked now
        resolve_algorithm_name(algorithm, "--algorithms")
    named = load_config(config, overrides)
    named = replace(named, algorithm=replace(named.algorithm, name="sweep"))  # names the folder; a copy
    base = Path(expand_output_dir(named))
    keys = [k for k, _ in grid]
    default = named.to_dict()
    runs: dict[tuple[Cell, int], Config] = {}
    for algorithm in algorithms:
        for values in itertools.product(*(v for _, v in grid)):
            cell = Cell(algorithm, tuple(zip(keys, values, strict=True)))
            for seed in seeds:
                extra = [f"{k}={v}" for k, v in cell.params] + [f"algorithm.name={algorithm}", f"data.seed={seed}"]
                try:
                    cfg = load_config(config, [*overrides, *extra])
                except ConfigError as exc:
                    raise ConfigError(f"sweep cell '{cell.label}' seed {seed}: {exc}") from None
                changed = {k for k in keys if _lookup(cfg.to_dict(), k) != _lookup(default, k)}
                runs[(cell, seed)] = replace(cfg, output_dir=str(base / cell.folder(changed) / f"seed{seed}"))
    return base, runs


def _lookup(data: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        data = data.get(part) if isinstance(data, dict) else None  # type: ignore[assignment]
    return data


def sweep(config: str | Path | None, grid: list[tuple[str, list[str]]], algorithms: list[str], seeds: list[int],
          overrides: list[str] | None = None, reference: str | None = None, progress: bool = True,
          name: str | None = None) -> Path:
    """Run (or reuse) every cell for every seed, then write the report; returns the path of ``sweep.md``.

    The report goes to ``<output_dir>/sweep.md``, or ``<output_dir>/<name>/sweep.md`` with ``name`` (several
    sweeps sharing one folder of runs, each with its own report).

    Raises:
        ConfigError: bad grid, algorithms, seeds, overrides or reference (checked before any run starts).
        RunExistsError: a run folder holds a run with another configuration.
    """
    from tqdm import tqdm

    from fedspear.compare import run_or_reuse

    base, runs = plan(config, list(overrides or []), grid, algorithms, seeds)
    resolve_reference(reference, algorithms, grid)  # fail before running
    dirs: dict[tuple[Cell, int], Path] = {}
    with tqdm(total=len(runs), desc="sweep runs", unit="run", disable=not progress) as bar:
        for (cell, seed), cfg in runs.items():
            bar.set_postfix_str(f"{cell.label} seed {seed}")
            dirs[(cell, seed)] = run_or_reuse(cfg)
            bar.update(1)
    return write_sweep(report_dir(base, name), grid, algorithms, seeds, dirs, reference)


def report_dir(base: Path, name: str | None) -> Path:
    """Where a sweep's report goes: ``base`` or ``base/name``.

    Raises:
        ConfigError: a name that is not one plain folder name or that is an algorithm's run folder.
    """
    if name is None:
        return base
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in ALGORITHMS or name in (".", ".."):
        raise ConfigError(f"--name: '{name}' must be one folder name (letters, digits, _ . -) and not an algorithm")
    return base / name


# --------------------------------------------------------------------------- statistics


def mean_ci(values: list[float], level: float = LEVEL) -> dict[str, Any]:
    """Mean and Student-t confidence interval (``scipy.stats.t.interval``, df = n - 1, scale = s / sqrt(n)).

    Returns:
        {"mean", "low", "high", "n"}; low/high are None for fewer than two values, equal to the mean when all
        values are equal.
    """
    from scipy import stats

    n = len(values)
    if n == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "low": None, "high": None, "n": n}
    sem = float(stats.sem(values))
    if sem == 0.0:
        return {"mean": mean, "low": mean, "high": mean, "n": n}
    low, high = stats.t.interval(level, n - 1, loc=mean, scale=sem)
    return {"mean": mean, "low": float(low), "high": float(high), "n": n}


def paired_tests(cell: list[float], ref: list[float]) -> dict[str, Any]:
    """Paired comparison of per-seed values ``cell`` vs ``ref`` (same seed order): difference = cell - ref.

    Returns:
        {"diff": :func:`mean_ci` of the differences, "t_test": {"name", "statistic", "pvalue"} from
        ``scipy.stats.ttest_rel`` (None below two pairs or when every difference is the same),
        "wilcoxon": the same from ``scipy.stats.wilcoxon`` (exact two-sided; None below two pairs, where its
        p = 1 says nothing, or when every difference is 0)}.
    """
    from scipy import stats

    diffs = [a - b for a, b in zip(cell, ref, strict=True)]
    out: dict[str, Any] = {"diff": mean_ci(diffs), "t_test": None, "wilcoxon": None}
    if len(diffs) >= 2 and len(set(diffs)) > 1:
        res = stats.ttest_rel(cell, ref)
        out["t_test"] = {"name": "paired t (scipy.stats.ttest_rel)", "statistic": float(res.statistic),
                         "pvalue": float(res.pvalue)}
    if len(diffs) >= 2 and any(d != 0 for d in diffs):
        res = stats.wilcoxon(cell, ref)
        out["wilcoxon"] = {"name": "Wilcoxon signed-rank (scipy.stats.wilcoxon)", "statistic": float(res.statistic),
                           "pvalue": float(res.pvalue)}
    return out


def mcnemar_items(pairs: list[tuple[str, str]]) -> dict[str, Any] | None:
    """McNemar's test on per-item correctness of a cell vs its reference, pooled over seeds.

    Args:
        pairs: per seed, (cell's correctness string, reference's), "1"/"0" per item, the same items in order.

    Returns:
        {"name", "items", "cell_only" (right only in the cell), "ref_only", "statistic", "pvalue", "exact"} from
        ``statsmodels.stats.contingency_tables.mcnemar`` (exact binomial below :data:`EXACT_BELOW` discordant
        items, else chi-square with continuity correction); None without pairs.
    """
    from statsmodels.stats.contingency_tables import mcnemar

    if not pairs:
        return None
    table = [[0, 0], [0, 0]]  # rows: reference right/wrong; columns: cell right/wrong
    for cell, ref in pairs:
        for c, r in zip(cell, ref, strict=True):
            table[r != "1"][c != "1"] += 1
    discordant = table[0][1] + table[1][0]
    exact = discordant < EXACT_BELOW
    res = mcnemar(table, exact=exact, correction=True)
    return {"name": "McNemar (statsmodels, " + ("exact binomial" if exact else "chi-square, corrected") + ")",
            "items": sum(map(sum, table)), "cell_only": table[1][0], "ref_only": table[0][1],
            "statistic": float(res.statistic), "pvalue": float(res.pvalue), "exact": exact}


# --------------------------------------------------------------------------- reading runs


def final_eval(run_dir: Path) -> dict[str, Any] | None:
    """The last evaluation of a run folder (its metrics row's ``eval``), or None when it has none."""
    from fedspear.compare import read_rounds

    evals = [r["eval"] for r in read_rounds(run_dir) if isinstance(r.get("eval"), dict)]
    return evals[-1] if evals else None


def resolve_reference(reference: str | None, algorithms: list[str], grid: list[tuple[str, list[str]]]
                      ) -> tuple[str, str, str] | None:
    """("algorithm", name, "") or ("value", key, value); the default is the first algorithm when several are swept,
    else the first value of the first grid key; None when there is nothing to compare.

    Raises:
        ConfigError: a reference that is neither a swept algorithm nor ``KEY=V`` with a swept key and value.
    """
    if reference is None:
        if len(algorithms) > 1:
            return ("algorithm", algorithms[0], "")
        return ("value", grid[0][0], grid[0][1][0]) if grid else None
    if reference in algorithms:
        return ("algorithm", reference, "")
    key, sep, value = reference.partition("=")
    values = dict(grid).get(key)
    if not sep or values is None or value not in values:
        raise ConfigError(f"--reference: '{reference}' is neither a swept algorithm ({', '.join(algorithms)}) nor "
                          "KEY=V with a swept key and one of its values")
    return ("value", key, value)


def reference_of(cell: Cell, ref: tuple[str, str, str]) -> Cell | None:
    """The cell ``cell`` is compared with (None when it is the reference itself)."""
    kind, name, value = ref
    if kind == "algorithm":
        other = Cell(name, cell.params)
    else:
        other = Cell(cell.algorithm, tuple((k, value if k == name else v) for k, v in cell.params))
    return None if other == cell else other


def _fmt_ci(ci: dict[str, Any], spec: str = ".3f") -> str:
    if ci["mean"] is None:
        return "-"
    if ci["low"] is None:
        return f"{ci['mean']:{spec}}"
    return f"{ci['mean']:{spec}} [{ci['low']:{spec}}, {ci['high']:{spec}}]"


def _fmt_p(test: dict[str, Any] | None) -> str:
    return "-" if test is None or math.isnan(test["pvalue"]) else f"{test['pvalue']:.3g}"


def collect(cells: list[Cell], seeds: list[int], dirs: dict[tuple[Cell, int], Path]) -> dict[Cell, dict[str, Any]]:
    """Per cell: the final evaluation of each seed's run and the accuracy statistics, overall and per group.

    Seeds whose run has no evaluation are left out of the cell's statistics and listed under "missing".
    """
    out: dict[Cell, dict[str, Any]] = {}
    for cell in cells:
        evals = {s: e for s in seeds if (cell, s) in dirs and (e := final_eval(dirs[(cell, s)])) is not None}
        groups = sorted({g for e in evals.values() for g in (e.get("groups") or {})})
        out[cell] = {
            "evals": evals, "missing": [s for s in seeds if s not in evals],
            "accuracy": mean_ci([float(e["accuracy"]) for e in evals.values()]),
            "groups": {g: mean_ci([float(e["groups"][g]) for e in evals.values() if g in (e.get("groups") or {})])
                       for g in groups},
        }
    return out


def compare_cells(cell: Cell, ref: Cell, stats: dict[Cell, dict[str, Any]]) -> dict[str, Any]:
    """Paired statistics of ``cell`` vs ``ref`` over their common seeds: overall and per-group differences,
    paired t and Wilcoxon on the overall accuracy, McNemar on the items of seeds whose items match."""
    a, b = stats[cell]["evals"], stats[ref]["evals"]
    common = [s for s in a if s in b]
    out = paired_tests([float(a[s]["accuracy"]) for s in common], [float(b[s]["accuracy"]) for s in common])
    groups = sorted(set(stats[cell]["groups"]) & set(stats[ref]["groups"]))
    out["group_diff"] = {g: mean_ci([a[s]["groups"][g] - b[s]["groups"][g] for s in common
                                     if g in (a[s].get("groups") or {}) and g in (b[s].get("groups") or {})])
                         for g in groups}
    pairs = [(a[s]["correct"], b[s]["correct"]) for s in common
             if a[s].get("correct") and a[s].get("items") and a[s].get("items") == b[s].get("items")]
    out["mcnemar"] = mcnemar_items(pairs)
    out["seeds"] = common
    return out


def _cell_json(cell: Cell) -> dict[str, Any]:
    return {"label": cell.label, "algorithm": cell.algorithm, "params": dict(cell.params)}


def write_sweep(base: Path, grid: list[tuple[str, list[str]]], algorithms: list[str], seeds: list[int],
                dirs: dict[tuple[Cell, int], Path], reference: str | None = None) -> Path:
    """Write ``sweep.md``, ``sweep.json`` and ``plots/`` into ``base`` from finished run folders.

    Returns:
        The path of sweep.md.
    """
    base = Path(base)  # the report folder
    cells = list(dict.fromkeys(cell for cell, _ in dirs))
    stats = collect(cells, seeds, dirs)
    ref = resolve_reference(reference, algorithms, grid)
    comparisons = []
    for cell in cells:
        other = reference_of(cell, ref) if ref else None
        if other is not None and other in stats:
            comparisons.append((cell, other, compare_cells(cell, other, stats)))
    groups = sorted({g for s in stats.values() for g in s["groups"]})
    plots = _plots(base, grid, algorithms, stats)
    grid_text = " ".join(k + "=" + ",".join(v) for k, v in grid) or "(none)"
    lines = ["# Sweep", "", f"- grid: {grid_text}",
             f"- algorithms: {', '.join(algorithms)}; seeds (data.seed): {', '.join(map(str, seeds))}",
             "- every cell of a seed has the same partition and client schedule; final accuracy = the last "
             "evaluation of each run", ""]
    lines += ["## Final accuracy", "", f"Mean over seeds [{LEVEL:.0%} Student-t interval, scipy.stats.t].", ""]
    head = ["cell", "seeds", "accuracy", *groups]
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for cell in cells:
        s = stats[cell]
        n = f"{s['accuracy']['n']}" + (f" (missing {s['missing']})" if s["missing"] else "")
        lines.append("| " + " | ".join([cell.label, n, _fmt_ci(s["accuracy"]),
                                        *(_fmt_ci(s["groups"][g]) if g in s["groups"] else "-" for g in groups)])
                     + " |")
    lines.append("")
    if comparisons:
        kind, name, value = ref  # type: ignore[misc]
        what = f"algorithm {name} at the same grid point" if kind == "algorithm" else f"{name}={value}, same algorithm"
        lines += ["## Paired differences", "", f"Reference: {what}. Difference = cell - reference, paired by seed "
                  f"(mean [{LEVEL:.0%} t interval]); p-values of the paired t test (scipy.stats.ttest_rel), the "
                  "Wilcoxon signed-rank test (scipy.stats.wilcoxon; with 3 seeds its smallest p is 0.25) and "
                  "McNemar's test on the evaluation items pooled over seeds (statsmodels; b = items right only in "
                  "the cell, c = right only in the reference).", ""]
        head = ["cell", "reference", "Δ accuracy", *(f"Δ {g}" for g in groups), "paired t p", "Wilcoxon p",
                "McNemar b/c (test) p"]
        lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for cell, other, c in comparisons:
            mc = c["mcnemar"]
            mc_text = "-" if mc is None else (f"{mc['cell_only']}/{mc['ref_only']} "
                                              f"({'exact' if mc['exact'] else 'chi2'}) {mc['pvalue']:.3g}")
            lines.append("| " + " | ".join([cell.label, other.label, _fmt_ci(c["diff"], "+.3f"),
                                            *(_fmt_ci(c["group_diff"][g], "+.3f") if g in c["group_diff"] else "-"
                                              for g in groups),
                                            _fmt_p(c["t_test"]), _fmt_p(c["wilcoxon"]), mc_text]) + " |")
        lines.append("")
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![final accuracy vs {key}]({path.relative_to(base).as_posix()})\n" for key, path in plots]
    lines += ["## Runs", ""] + [f"- {cell.label} seed {s}: `{d}`" for (cell, s), d in dirs.items()] + [""]
    lines.insert(5, f"- runs: {len(dirs)} (equal configurations share one run folder)")
    base.mkdir(parents=True, exist_ok=True)
    (base / SWEEP_FILE).write_text("\n".join(lines), encoding="utf-8")
    payload = {
        "grid": [{"key": k, "values": v} for k, v in grid], "algorithms": algorithms, "seeds": seeds,
        "reference": list(ref) if ref else None,
        "cells": [{**_cell_json(c), "accuracy": s["accuracy"], "groups": s["groups"], "missing": s["missing"],
                   "per_seed": {str(k): {"accuracy": e["accuracy"], "groups": e.get("groups", {})}
                                for k, e in s["evals"].items()},
                   "runs": {str(k): str(dirs[(c, k)]) for k in seeds if (c, k) in dirs}}
                  for c, s in stats.items()],
        "comparisons": [{"cell": _cell_json(c), "reference": _cell_json(o), **r} for c, o, r in comparisons],
        "plots": [str(p) for _, p in plots],
    }
    (base / SWEEP_JSON).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return base / SWEEP_FILE


def _plots(base: Path, grid: list[tuple[str, list[str]]], algorithms: list[str], stats: dict[Cell, dict[str, Any]]
           ) -> list[tuple[str, Path]]:
    """Final accuracy against each swept value: one line per algorithm (and value of the other keys), with the
    95% interval as a band. Non-numeric values are placed at 0, 1, 2... in grid order."""
    from fedspear.plots import plot_series

    out = []
    for i, (key, values) in enumerate(grid):
        try:
            xs = [float(v) for v in values]
        except ValueError:
            xs = [float(j) for j in range(len(values))]
        series: dict[str, list[tuple[float, float]]] = {}
        spread: dict[str, list[float]] = {}
        for cell, s in stats.items():
            others = [f"{k}={v}" for j, (k, v) in enumerate(cell.params) if j != i]
            label = " ".join([cell.algorithm, *others])
            acc = s["accuracy"]
            if acc["mean"] is None:
                continue
            x = xs[values.index(cell.params[i][1])]
            series.setdefault(label, []).append((x, acc["mean"]))
            half = (acc["high"] - acc["mean"]) if acc["low"] is not None else 0.0
            spread.setdefault(label, []).append(half)
        for label in series:
            order = sorted(range(len(series[label])), key=lambda j, lab=label: series[lab][j][0])
            series[label] = [series[label][j] for j in order]
            spread[label] = [spread[label][j] for j in order]
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
        path = plot_series(series, f"Final accuracy vs {key} ({LEVEL:.0%} t interval)", key, "final accuracy",
                           base / "plots" / f"accuracy_vs_{name}.png", spread=spread)
        if path is not None:
            out.append((key, path))
    return out
