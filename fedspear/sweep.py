"""Grids of runs with statistics: ``fedspear sweep``.

``fedspear sweep --config FILE --grid 'KEY=V1,V2 ...' --algorithms A,B --seeds 0,1,2 [KEY=VALUE ...]`` runs every
*cell* (one algorithm at one point of the grid) once per seed. The seed is ``data.seed``, which fixes the data
shuffle, the partition, the client schedule and every per-(round, client) seed, so for one seed every cell sees the
same partition and the same client schedule and differs only in its algorithm and grid values. Runs live in
``<output_dir>/<algorithm>/<grid point>/seed<S>``, where the grid point names only the values that differ from
the base config (``default`` when none), so equal configurations share one folder; finished runs there are
reused and interrupted ones resumed (:func:`fedspear.compare.run_or_reuse`), so a sweep continues where it stopped
and sweeps over one ``output_dir`` share their runs (``--name`` gives each its own report folder). When
``output_dir`` has ``{time}`` (the default preset), the sweep's folder is ``<parent>/sweep-<config>-<hash of the
sweep's definition>`` (:func:`stable_folder`) instead of a new folder each time, so the same command continues it;
``fedspear sweep`` prints that folder and the command that continues it, also when interrupted.

The report (``sweep.md`` + ``sweep.json`` + ``plots/*.png``) gives, from each run's last evaluation:

- final accuracy per cell, overall and per ``Example.meta["group"]``: mean over seeds with a 95% Student-t interval
  (``scipy.stats.t``);
- paired differences against a reference (``--reference``: an algorithm, compared at the same grid point, or
  ``KEY=V``, the same algorithm at that grid value), pairing runs by seed: the mean difference with its 95% t
  interval and, as the primary test, the paired t test over seeds (each seed is one independent training run, so
  it accounts for run-to-run variance; on item counts, and "no variance" instead of a p when every seed's
  difference is the same); the Wilcoxon signed-rank test over seeds (with three seeds its smallest exact
  two-sided p is 0.25); from five seeds a cluster bootstrap over seeds then items (seeded, deterministic);
- McNemar's test (``statsmodels.stats.contingency_tables.mcnemar``) within each seed on its evaluation items
  (runs of one seed score the same items; the evaluation records their digest), never pooled over seeds:
  pooling treats every (seed, item) pair as independent and overstates (docs/testbed.md, "Statistics");
- Holm's family-wise adjustment (``statsmodels.stats.multitest.multipletests``) of each test's p over the
  sweep's comparisons, printed beside the raw p;
- plots of final accuracy against each swept value, one line per algorithm, with the 95% interval as a band.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

from fedspear.config import ALGORITHMS, Config, ConfigError, known_algorithms, load_config, resolve_algorithm_name

SWEEP_FILE = "sweep.md"
SWEEP_JSON = "sweep.json"
RESERVED = {"algorithm.name": "--algorithms", "data.seed": "--seeds", "output_dir": "the sweep's own folders"}
LEVEL = 0.95
EXACT_BELOW = 25  # McNemar: exact binomial test when fewer discordant pairs than this
BOOTSTRAP_RESAMPLES = 2000  # cluster bootstrap resamples
BOOTSTRAP_MIN_SEEDS = 5  # fewer seeds: no cluster bootstrap (its seed level has too few distinct resamples)


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
        twice = sorted({v for v in vals if vals.count(v) > 1})
        if twice:
            raise ConfigError(f"--grid: {key} lists a value twice ({', '.join(twice)}); list each value once")
        grid.append((key, vals))
    return grid


def parse_list(text: str, what: str) -> list[str]:
    """A comma-separated option (``--algorithms``/``--seeds``) as a list; ConfigError when empty or repeated."""
    items = [t.strip() for t in (text or "").split(",") if t.strip()]
    if not items:
        raise ConfigError(f"{what}: give at least one value (comma-separated)")
    twice = sorted({t for t in items if items.count(t) > 1})
    if twice:
        raise ConfigError(f"{what}: {', '.join(twice)} listed twice; list each value once")
    return items


def parse_seeds(text: str) -> list[int]:
    """``--seeds`` as integers: ``"0,1,2"`` -> ``[0, 1, 2]``, each seed at most once after parsing.

    Raises:
        ConfigError: an empty list, an item that is not an integer, or seeds that are one number however they
            are written (``0,00``, ``1,+1``); the message names them.
    """
    items = [t.strip() for t in (text or "").split(",") if t.strip()]
    if not items:
        raise ConfigError("--seeds: give at least one integer (comma-separated, e.g. --seeds 0,1,2)")
    bad = [t for t in items if not re.fullmatch(r"[+-]?[0-9]+", t)]
    if bad:
        raise ConfigError(f"--seeds: {', '.join(repr(t) for t in bad)} is not an integer; write e.g. --seeds 0,1,2")
    spelled: dict[int, list[str]] = {}
    for t in items:
        spelled.setdefault(int(t), []).append(t)
    twice = [f"{seed} ({' and '.join(texts)})" if len(set(texts)) > 1 else str(seed)
             for seed, texts in spelled.items() if len(texts) > 1]
    if twice:
        raise ConfigError(f"--seeds: {', '.join(twice)} listed more than once; list each seed once")
    return list(spelled)


def plan(config: str | Path | None, overrides: list[str], grid: list[tuple[str, list[str]]], algorithms: list[str],
         seeds: list[int]) -> tuple[Path, dict[tuple[Cell, int], Config]]:
    """Every (cell, seed) run's validated Config, before anything runs (a bad value fails the whole sweep).

    The sweep folder is ``output_dir`` with ``{algorithm}`` = "sweep"; when ``output_dir`` has ``{time}`` (a new
    folder per run, as in the default preset) it is :func:`stable_folder` instead, so running the same sweep
    again continues it.

    Returns:
        (the sweep folder, {(cell, seed): config}) in cell-major order.

    Raises:
        ConfigError: an unknown algorithm, a bad override or grid value (the message names the run), or two values
            of one grid key that are equal once typed (``0,0.0`` for a float key).
    """
    from fedspear.federation.server import expand_output_dir, names_new_folder

    unknown = [a for a in algorithms if ":" not in a and a not in known_algorithms()]
    if unknown:
        raise ConfigError(f"--algorithms: unknown {', '.join(unknown)}; choose from {', '.join(known_algorithms())} "
                          "or a dotted path pkg.mod:Class")
    for algorithm in algorithms:  # a user's algorithm by dotted path: imported and checked now
        resolve_algorithm_name(algorithm, "--algorithms")
    named = load_config(config, overrides)
    named = replace(named, algorithm=replace(named.algorithm, name="sweep"))  # names the folder; a copy
    keys = [k for k, _ in grid]
    default = named.to_dict()
    runs: dict[tuple[Cell, int], Config] = {}
    typed: dict[str, dict[str, Any]] = {k: {} for k in keys}  # key -> {value as written: value as typed}
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
                for k, v in cell.params:
                    typed[k][v] = _lookup(cfg.to_dict(), k)
                runs[(cell, seed)] = replace(cfg, output_dir=str(Path(cell.folder(changed)) / f"seed{seed}"))
    _refuse_equal_values(grid, typed)
    if names_new_folder(named.output_dir):
        base = stable_folder(config, named, grid, typed, algorithms, seeds)
    else:
        base = Path(expand_output_dir(named))
    return base, {key: replace(cfg, output_dir=str(base / cfg.output_dir)) for key, cfg in runs.items()}


def _refuse_equal_values(grid: list[tuple[str, list[str]]], typed: dict[str, dict[str, Any]]) -> None:
    """ConfigError when two values of one grid key are the same setting once typed (two cells, one config)."""
    for key, values in grid:
        for i, a in enumerate(values):
            same = [b for b in values[i + 1:] if typed[key][b] == typed[key][a]]
            if same:
                raise ConfigError(f"--grid: {key}={','.join([a, *same])} are one value once typed "
                                  f"({typed[key][a]!r}); list it once")


def stable_folder(config: str | Path | None, cfg: Config, grid: list[tuple[str, list[str]]],
                  typed: dict[str, dict[str, Any]], algorithms: list[str], seeds: list[int]) -> Path:
    """The folder of a sweep whose ``output_dir`` has ``{time}``: ``<parent>/sweep-<config name>-<hash>``.

    ``<parent>`` is the part of ``output_dir`` before its first placeholder's folder (``runs`` for the default
    preset's ``runs/{dataset}-{algorithm}-{time}``); ``<hash>`` is the first 10 hex digits of the SHA-256 of the
    sweep's definition: the resolved config (without ``output_dir``, ``algorithm.name`` and ``data.seed``, which the
    sweep sets), the grid as typed values, the algorithms and the seeds. The same sweep gets the same folder, so
    running it again continues it; any change of its definition gets another folder.
    """
    parts = Path(cfg.output_dir).parts
    first = next((i for i, part in enumerate(parts) if "{" in part), len(parts))
    parent = Path(*parts[:first]) if first else Path(".")
    definition = cfg.to_dict()
    definition.pop("output_dir", None)
    definition.get("algorithm", {}).pop("name", None)
    definition.get("data", {}).pop("seed", None)
    payload = {"config": definition, "grid": [[k, [typed[k][v] for v in vals]] for k, vals in grid],
               "algorithms": algorithms, "seeds": seeds}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:10]
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", Path(config).stem if config is not None else "default")
    return parent / f"sweep-{name}-{digest}"


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


def _tolerance(values: list[float]) -> float:
    """Two floats closer than this are equal up to rounding (1e-9 of the values' magnitude, at least 1e-9)."""
    return 1e-9 * max([1.0, *(abs(v) for v in values)])


def mean_ci(values: list[float], level: float = LEVEL) -> dict[str, Any]:
    """Mean and Student-t confidence interval (``scipy.stats.t.interval``, df = n - 1, scale = s / sqrt(n)).

    Returns:
        {"mean", "low", "high", "n"}; low/high are None for fewer than two values, equal to the mean when all
        values are equal up to rounding (within :func:`_tolerance`; e.g. 28/50 - 27/50 and 29/50 - 28/50).
    """
    from scipy import stats

    n = len(values)
    if n == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "low": None, "high": None, "n": n}
    if max(values) - min(values) <= _tolerance(values):
        return {"mean": mean, "low": mean, "high": mean, "n": n}
    low, high = stats.t.interval(level, n - 1, loc=mean, scale=float(stats.sem(values)))
    return {"mean": mean, "low": float(low), "high": float(high), "n": n}


def _differences(cell: list[float], ref: list[float], items: list[int] | None) -> tuple[list[float], bool]:
    """(cell - ref per seed, all equal?) with rounding removed: on item counts (``round(accuracy * items)``) when
    ``items`` gives each seed's number of evaluation items and every accuracy is a whole count of them, else with
    differences within :func:`_tolerance` of each other counted equal and those within it of 0 set to 0."""
    if items is not None and len(items) == len(cell) and all(n > 0 for n in items):
        counts = [(a * n, b * n, n) for a, b, n in zip(cell, ref, items, strict=True)]
        if all(abs(x - round(x)) < 1e-6 and abs(y - round(y)) < 1e-6 for x, y, _ in counts):
            exact = [Fraction(round(x) - round(y), n) for x, y, n in counts]
            return [float(d) for d in exact], len(set(exact)) == 1
    raw = [a - b for a, b in zip(cell, ref, strict=True)]
    tol = _tolerance([*cell, *ref])
    diffs = [0.0 if abs(d) <= tol else d for d in raw]
    return diffs, max(diffs) - min(diffs) <= tol


def paired_tests(cell: list[float], ref: list[float], items: list[int] | None = None) -> dict[str, Any]:
    """Paired comparison over seeds of per-seed values ``cell`` vs ``ref`` (same seed order): diff = cell - ref.

    The paired t test over seeds is the sweep's primary test: each seed's run is one independent draw of the
    training randomness, so its p accounts for seed-to-seed variance (docs/testbed.md, "Statistics").

    Args:
        cell, ref: per-seed accuracies.
        items: per seed, the number of evaluation items behind the accuracies; the differences are then taken
            on item counts, so equal gains are exactly equal (27/50 - 26/50 and 28/50 - 27/50 differ in the last
            bit as floats).

    Returns:
        {"diff": :func:`mean_ci` of the differences, "t_test": {"name", "statistic", "pvalue"} from
        ``scipy.stats.ttest_1samp`` on the differences (= ``ttest_rel``), or with ``"pvalue": None`` and a
        ``"reason"`` ("no variance: ...") when every seed's difference is the same (t is undefined; a float
        p there would be rounding noise, e.g. 3e-30), None below two pairs; "wilcoxon": the same from
        ``scipy.stats.wilcoxon`` (exact two-sided; None below two pairs, where its p = 1 says nothing, or when
        every difference is 0)}.
    """
    from scipy import stats

    diffs, constant = _differences(cell, ref, items)
    out: dict[str, Any] = {"diff": mean_ci(diffs), "t_test": None, "wilcoxon": None}
    if len(diffs) < 2:
        return out
    name = "paired t over seeds (scipy.stats.ttest_1samp on the differences)"
    if constant:
        out["t_test"] = {"name": name, "statistic": None, "pvalue": None,
                         "reason": f"no variance: every seed's difference is {diffs[0]:+.4g}"}
    else:
        res = stats.ttest_1samp(diffs, 0.0)
        out["t_test"] = {"name": name, "statistic": float(res.statistic), "pvalue": float(res.pvalue)}
    if any(d != 0 for d in diffs):
        res = stats.wilcoxon(diffs)
        out["wilcoxon"] = {"name": "Wilcoxon signed-rank (scipy.stats.wilcoxon)", "statistic": float(res.statistic),
                           "pvalue": float(res.pvalue)}
    return out


def cluster_bootstrap(pairs: list[tuple[str, str]], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                      level: float = LEVEL) -> dict[str, Any] | None:
    """Hierarchical (cluster) bootstrap of the accuracy difference over seeds and items.

    Each resample draws seeds with replacement, then, for each drawn seed, that seed's items with replacement;
    the statistic is the mean over drawn seeds of (cell - reference accuracy on the drawn items), so both the
    run-to-run (seed) and the item variance enter. The interval is the percentile interval; the two-sided p is
    the share of resamples at least as far from the observed difference as the observed difference is from 0
    (the resampling distribution shifted to the null), (1 + count) / (1 + resamples). ``numpy.random`` with
    ``seed`` makes it deterministic. With few seeds the seed level has few distinct resamples and the interval
    is too narrow (docs/testbed.md, "Statistics"), so it is computed only from :data:`BOOTSTRAP_MIN_SEEDS` seeds.

    Args:
        pairs: per seed, (cell's correctness string, reference's), "1"/"0" per item, the same items in order.

    Returns:
        {"name", "seeds", "resamples", "seed", "mean", "low", "high", "pvalue"}, or None below
        :data:`BOOTSTRAP_MIN_SEEDS` seeds.
    """
    import numpy as np

    if len(pairs) < BOOTSTRAP_MIN_SEEDS:
        return None
    diffs = [np.array([int(c) - int(r) for c, r in zip(cell, ref, strict=True)], dtype=float) for cell, ref in pairs]
    observed = float(np.mean([d.mean() for d in diffs]))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(diffs), size=(resamples, len(diffs)))
    total = np.zeros(resamples)
    for slot in range(len(diffs)):
        for s, d in enumerate(diffs):
            rows = np.flatnonzero(picks[:, slot] == s)
            if rows.size:
                total[rows] += d[rng.integers(0, d.size, size=(rows.size, d.size))].mean(axis=1)
    boot = total / len(diffs)
    low, high = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    far = int(np.sum(np.abs(boot - observed) >= abs(observed) - 1e-12))
    return {"name": "cluster bootstrap over seeds then items (numpy)", "seeds": len(diffs), "resamples": resamples,
            "seed": seed, "mean": observed, "low": float(low), "high": float(high),
            "pvalue": 1.0 if observed == 0 else (1 + far) / (1 + resamples)}


def mcnemar_items(cell: str, ref: str) -> dict[str, Any]:
    """McNemar's test on one seed's per-item correctness of a cell vs its reference.

    Only within one seed: the two runs of a seed share the partition and client schedule and score the same
    items, so the items are the pairs. Items of different seeds are never pooled (pooling treats every
    (seed, item) pair as independent and ignores run-to-run variance: at a nominal 5% it rejects a true null far
    more often, tests/test_sweep.py); its p is a statement about these two training runs on these items.

    Args:
        cell, ref: correctness strings, "1"/"0" per item, the same items in order.

    Returns:
        {"name", "items", "cell_only" (right only in the cell), "ref_only", "statistic", "pvalue", "exact"} from
        ``statsmodels.stats.contingency_tables.mcnemar`` (exact binomial below :data:`EXACT_BELOW` discordant
        items, else chi-square with continuity correction).
    """
    from statsmodels.stats.contingency_tables import mcnemar

    table = [[0, 0], [0, 0]]  # rows: reference right/wrong; columns: cell right/wrong
    for c, r in zip(cell, ref, strict=True):
        table[r != "1"][c != "1"] += 1
    discordant = table[0][1] + table[1][0]
    exact = discordant < EXACT_BELOW
    res = mcnemar(table, exact=exact, correction=True)
    return {"name": "McNemar (statsmodels, " + ("exact binomial" if exact else "chi-square, corrected") + ")",
            "items": sum(map(sum, table)), "cell_only": table[1][0], "ref_only": table[0][1],
            "statistic": float(res.statistic), "pvalue": float(res.pvalue), "exact": exact}


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm's step-down family-wise adjustment (``statsmodels.stats.multitest.multipletests``, method "holm")
    of the p-values that exist; None (no test) stays None and does not count in the family."""
    from statsmodels.stats.multitest import multipletests

    present = [i for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    out: list[float | None] = [None] * len(pvalues)
    if present:
        adjusted = multipletests([pvalues[i] for i in present], method="holm")[1]
        for i, p in zip(present, adjusted, strict=True):
            out[i] = float(p)
    return out


def adjust_sweep(results: list[dict[str, Any]]) -> None:
    """Add ``pvalue_holm`` beside each ``pvalue`` of a sweep's comparisons (:func:`compare_cells` results), one
    Holm family per test over all comparisons: the paired t, the Wilcoxon, the bootstrap and, per seed, McNemar."""
    for key in ("t_test", "wilcoxon", "bootstrap"):
        tests = [r.get(key) for r in results]
        for test, p in zip(tests, holm([t["pvalue"] if t else None for t in tests]), strict=True):
            if test is not None:
                test["pvalue_holm"] = p
    for seed in sorted({s for r in results for s in r.get("mcnemar") or {}}):
        tests = [(r.get("mcnemar") or {}).get(seed) for r in results]
        for test, p in zip(tests, holm([t["pvalue"] if t else None for t in tests]), strict=True):
            if test is not None:
                test["pvalue_holm"] = p


# --------------------------------------------------------------------------- reading runs


def final_eval(run_dir: Path) -> dict[str, Any] | None:
    """The last evaluation of a run folder (its metrics row's ``eval``), or None when it has none."""
    from fedspear.compare import read_rounds

    evals = [r.eval for r in read_rounds(run_dir) if r.eval is not None]
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


def format_ci(ci: dict[str, Any], spec: str = ".3f") -> str:
    """A :func:`mean_ci` result as ``mean [low, high]`` (the mean alone without an interval, "-" without a mean)."""
    if ci["mean"] is None:
        return "-"
    if ci["low"] is None:
        return f"{ci['mean']:{spec}}"
    return f"{ci['mean']:{spec}} [{ci['low']:{spec}}, {ci['high']:{spec}}]"


def _fmt_p(test: dict[str, Any] | None) -> str:
    """``p (Holm p)``; "no variance" for a test without one; "-" for no test."""
    if test is None or (test["pvalue"] is not None and math.isnan(test["pvalue"])):
        return "-"
    if test["pvalue"] is None:
        return "no variance"
    holm_p = test.get("pvalue_holm")
    return f"{test['pvalue']:.3g}" + ("" if holm_p is None else f" ({holm_p:.3g})")


def _fmt_mcnemar(tests: dict[str, dict[str, Any]]) -> str:
    return "; ".join(f"s{seed}: {mc['cell_only']}/{mc['ref_only']} {_fmt_p(mc)}" for seed, mc in tests.items()) \
        or "-"


def _fmt_bootstrap(test: dict[str, Any] | None) -> str:
    if test is None:
        return "-"
    return f"{format_ci(test, '+.3f')} {_fmt_p(test)}"


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
    """Paired statistics of ``cell`` vs ``ref`` over their common seeds: overall and per-group differences, the
    paired t (primary) and Wilcoxon tests over seeds on the overall accuracy (on item counts when every
    evaluation says how many items it scored), the cluster bootstrap over seeds and items, and McNemar per seed
    (``"mcnemar"``: {seed: result}) on the items of seeds whose items match. Holm's adjustment is added over a
    whole sweep by :func:`adjust_sweep`."""
    a, b = stats[cell]["evals"], stats[ref]["evals"]
    common = [s for s in a if s in b]
    sizes = [a[s].get("n") for s in common]
    items = sizes if all(isinstance(n, int) and n == b[s].get("n") for n, s in zip(sizes, common, strict=True)) \
        else None
    out = paired_tests([float(a[s]["accuracy"]) for s in common], [float(b[s]["accuracy"]) for s in common], items)
    groups = sorted(set(stats[cell]["groups"]) & set(stats[ref]["groups"]))
    out["group_diff"] = {g: mean_ci([a[s]["groups"][g] - b[s]["groups"][g] for s in common
                                     if g in (a[s].get("groups") or {}) and g in (b[s].get("groups") or {})])
                         for g in groups}
    paired = [s for s in common
              if a[s].get("correct") and a[s].get("items") and a[s].get("items") == b[s].get("items")]
    out["bootstrap"] = cluster_bootstrap([(a[s]["correct"], b[s]["correct"]) for s in paired]) \
        if len(paired) == len(common) else None
    out["mcnemar"] = {str(s): mcnemar_items(a[s]["correct"], b[s]["correct"]) for s in paired}
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
    adjust_sweep([c for _, _, c in comparisons])
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
        lines.append("| " + " | ".join([cell.label, n, format_ci(s["accuracy"]),
                                        *(format_ci(s["groups"][g]) if g in s["groups"] else "-" for g in groups)])
                     + " |")
    lines.append("")
    if comparisons:
        kind, name, value = ref  # type: ignore[misc]
        what = f"algorithm {name} at the same grid point" if kind == "algorithm" else f"{name}={value}, same algorithm"
        lines += ["## Paired differences", "", f"Reference: {what}. Difference = cell - reference, paired by seed "
                  f"(mean [{LEVEL:.0%} t interval]). Each p is followed by its Holm-adjusted value over this "
                  "sweep's comparisons (statsmodels multipletests), in parentheses. Primary test: the paired t test "
                  "over seeds (each seed is one independent training run; \"no variance\" when every seed's "
                  "difference is the same); also the Wilcoxon signed-rank test over seeds (with 3 seeds its "
                  "smallest p is 0.25), the cluster bootstrap over seeds then items "
                  f"(from {BOOTSTRAP_MIN_SEEDS} seeds; Δ [{LEVEL:.0%} percentile interval] p) and McNemar's test "
                  "within each seed on its evaluation items (s<seed>: b/c p; b = items right only in the cell, "
                  "c = right only in the reference), never pooled over seeds: it tests these two runs, not "
                  "the methods, and ignores run-to-run variance (docs/testbed.md, \"Statistics\").", ""]
        head = ["cell", "reference", "Δ accuracy", *(f"Δ {g}" for g in groups), "paired t p (Holm)",
                "Wilcoxon p (Holm)", "bootstrap Δ p (Holm)", "McNemar per seed b/c p (Holm)"]
        lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for cell, other, c in comparisons:
            lines.append("| " + " | ".join([cell.label, other.label, format_ci(c["diff"], "+.3f"),
                                            *(format_ci(c["group_diff"][g], "+.3f") if g in c["group_diff"] else "-"
                                              for g in groups),
                                            _fmt_p(c["t_test"]), _fmt_p(c["wilcoxon"]),
                                            _fmt_bootstrap(c["bootstrap"]), _fmt_mcnemar(c["mcnemar"])]) + " |")
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
