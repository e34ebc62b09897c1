"""The paper's comparison on a real pretrained model: SmolLM2-135M-Instruct on ARC-Challenge and StrategyQA.

Runs ``fedspear sweep`` once per task over the algorithms and seeds (every finished run is reused, so the grid can
be completed over several sittings; an interrupted run resumes), then writes ``bench/real_model.md`` and
``bench/real_model/*.png`` from the run folders: held-out accuracy at round 0 and at the end (the sweep's 95%
intervals and paired tests are in each task's ``sweep.md``), the paper's figures (cumulative time, successful
revisions, share of prompts needing a revision), tokens generated and trained, and the resource figures per
client-round (peak memory, bytes down/up) where the run recorded them.

The same script runs on a GPU (the presets' ``model.device_map: auto`` picks CUDA); there the grid takes minutes.

    make model                                                  # once: the offline model
    python bench/real_model.py                                   # ARC x 3 seeds, StrategyQA x 1 seed, 5 algorithms
    python bench/real_model.py --tasks arc_challenge --seeds 0 fl.rounds=4   # a smaller grid (overrides go to every run)
    python bench/real_model.py --report-only                     # rewrite the report from the finished runs
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ALGORITHMS = "spear,feedback_sft,grpo,opsd,rltf_sd"
SEEDS = {"arc_challenge": "0,1,2", "strategy_qa": "0"}


def run_sweep(task: str, algorithms: str, seeds: str, out: Path, overrides: list[str]) -> int:
    """One ``fedspear sweep`` of ``task``'s SmolLM2 preset into ``out/task`` (reusing its finished runs)."""
    cmd = [sys.executable, "-m", "fedspear", "sweep", "--config", f"{task}-smollm2-135m", "--algorithms", algorithms,
           "--seeds", seeds, "--no-progress", f"output_dir={out / task}", *overrides]
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=REPO).returncode


def _rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def runs_of(task_dir: Path) -> dict[tuple[str, int], list[dict]]:
    """{(algorithm, seed): metrics rows} of every finished run folder under a task's sweep folder."""
    import yaml

    out = {}
    for cfg_path in sorted(task_dir.glob("**/config.yaml")):
        cfg = yaml.safe_load(cfg_path.read_text())
        rows = _rows(cfg_path.parent)
        # only finished runs: an interrupted or running one would enter the table with its round-0 accuracy as "end"
        if rows and max(r.get("round", 0) for r in rows) >= int(cfg["fl"]["rounds"]):
            out[(cfg["algorithm"]["name"], int(cfg["data"]["seed"]))] = rows
    return out


def _num(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def summarize(rows: list[dict]) -> dict:
    """One run's figures: accuracies, seconds per round, the rollout totals and the resource figures."""
    evals = [r for r in rows if isinstance((r.get("eval") or {}).get("accuracy"), (int, float))]
    trained = [r for r in rows if r.get("round", 0) >= 1]
    agg = [r.get("aggregate", {}) for r in trained]
    total = lambda key: sum(_num(a.get(key)) or 0 for a in agg)  # noqa: E731
    res = [r.get("resources", {}) for r in trained]
    # the update's own peak: the process's lifetime peak carries over between the runs of one sweep process
    peaks = [_num(x.get("update_rss_peak_mb_max")) for x in res if _num(x.get("update_rss_peak_mb_max"))]
    down = [_num(x.get("bytes_down_per_client")) for x in res if _num(x.get("bytes_down_per_client"))]
    up = [_num(x.get("bytes_up_per_client")) for x in res if _num(x.get("bytes_up_per_client"))]
    return {
        "rounds": len(trained), "before": evals[0]["eval"]["accuracy"] if evals else None,
        "after": evals[-1]["eval"]["accuracy"] if evals else None, "last_round": evals[-1]["round"] if evals else None,
        "correct_before": evals[0]["eval"].get("correct") if evals else None,
        "correct_after": evals[-1]["eval"].get("correct") if evals else None,
        "round_s": (sum(r["time"]["round_s"] for r in trained) / len(trained)) if trained else None,
        # group methods (GRPO, RLTF-SD) count samples, several per prompt: the share is of first samples
        "prompts": total("samples_y0") or total("prompts"), "needs_revision": total("needs_revision"),
        "wins_revision": total("wins_revision"), "revision_successes": total("revision_successes"),
        "tokens_generated": total("tokens_generated"), "tokens_trained": total("tokens_trained"),
        "peak_rss_mb": max(peaks) if peaks else None, "bytes_down": down[-1] if down else None,
        "bytes_up": up[-1] if up else None,
    }


def _fmt(x, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def plot_task(task: str, runs: dict[tuple[str, int], list[dict]], out_dir: Path) -> list[Path]:
    """The paper's three figures for one task, seed 0 of each algorithm: cumulative time, successful revisions,
    share of prompts needing a revision, each against the round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for (algorithm, seed), rows in sorted(runs.items()):
        if seed != min(s for a, s in runs if a == algorithm):
            continue
        trained = [r for r in rows if r.get("round", 0) >= 1]
        xs = [r["round"] for r in trained]
        cum, t = [], 0.0
        for r in trained:
            t += r["time"]["round_s"]
            cum.append(t / 60)
        agg = [r.get("aggregate", {}) for r in trained]
        fixed = [a.get("wins_revision") or a.get("revision_successes") or 0 for a in agg]
        firsts = [a.get("samples_y0") or a.get("prompts") or 0 for a in agg]  # group methods: first samples
        share = [(a.get("needs_revision") or 0) / n if n else 0 for a, n in zip(agg, firsts)]
        axes[0].plot(xs, cum, marker="o", label=algorithm)
        axes[1].plot(xs, fixed, marker="o", label=algorithm)
        axes[2].plot(xs, share, marker="o", label=algorithm)
    for ax, title in zip(axes, ("cumulative time (min)", "successful revisions per round",
                                "share of prompts needing a revision")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"SmolLM2-135M-Instruct on {task} (seed {min(s for _, s in runs)})", fontsize=11)
    fig.tight_layout()
    path = out_dir / f"{task}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def _ci(values: list[float], spec: str = ".3f") -> str:
    """``mean [low, high]`` (95% Student-t over seeds, :func:`fedspear.sweep.mean_ci`); the mean alone for one seed."""
    from fedspear.sweep import format_ci, mean_ci

    return format_ci(mean_ci(values), spec)


def base_accuracy(runs: dict[tuple[str, int], list[dict]]) -> dict[int, tuple[float, int]]:
    """Per seed, the base model's accuracy and number of items: every run's round-0 evaluation of that seed (the
    same model on the same items, so they must agree; a disagreement is an error, not averaged away)."""
    out: dict[int, tuple[float, int, str]] = {}
    for (algorithm, seed), rows in runs.items():
        first = next((r["eval"] for r in rows if r.get("round") == 0 and (r.get("eval") or {}).get("n")), None)
        if first is None:
            continue
        got = (first["accuracy"], first["n"], first.get("correct", ""))
        if seed in out and out[seed] != got:
            raise SystemExit(f"seed {seed}: {algorithm}'s round-0 evaluation differs from another run's "
                             "(same base model and items expected); rerun that run")
        out[seed] = got
    return {seed: (acc, n) for seed, (acc, n, _) in out.items()}


def summary_table(runs: dict[tuple[str, int], list[dict]]) -> list[str]:
    """One row per algorithm (and the base model): accuracy before/after as mean [95% t interval] over seeds, the
    paired difference to no training (end - round 0 per seed, on item counts) with the paired t p over seeds and
    its Holm adjustment over the algorithms, and the mean cost figures per round / client-round."""
    from fedspear.sweep import format_ci, holm, mcnemar_items, paired_tests

    base = base_accuracy(runs)
    algorithms = sorted({a for a, _ in runs})
    rows, pvalues = [], []
    for algorithm in algorithms:
        seeds = sorted(s for a, s in runs if a == algorithm and s in base)
        sums = {s: summarize(runs[(algorithm, s)]) for s in seeds}
        end = [sums[s]["after"] for s in seeds]
        test = paired_tests(end, [base[s][0] for s in seeds], [base[s][1] for s in seeds])
        t = test["t_test"]
        pvalues.append(t["pvalue"] if t else None)
        fixed = sum((x["wins_revision"] or x["revision_successes"]) for x in sums.values())
        needs = sum(x["needs_revision"] for x in sums.values())
        rounds = sum(x["rounds"] for x in sums.values()) or 1
        # within each seed, the run's end vs round 0 on the same items (a test of that run, never pooled over seeds)
        mcn = [(s, mcnemar_items(sums[s]["correct_after"], sums[s]["correct_before"])) for s in seeds
               if sums[s]["correct_after"] and sums[s]["correct_before"]
               and len(sums[s]["correct_after"]) == len(sums[s]["correct_before"])]
        test["mcnemar"] = "; ".join(f"s{s}: {m['cell_only']}/{m['ref_only']} {m['pvalue']:.2g}" for s, m in mcn) or "-"
        rows.append((algorithm, seeds, sums, end, test, fixed, needs, rounds))
    adjusted = holm(pvalues)
    n_items = sorted({n for _, n in base.values()})
    lines = [f"Accuracy on {'/'.join(map(str, n_items))} held-out items per seed: mean over seeds [95% Student-t "
             "interval]. Δ = end - no training, paired by seed on item counts; p = paired t over seeds (Holm over "
             "the algorithms in parentheses; \"no var.\" when every seed moved by the same count, \"-\" with one "
             "seed). Costs: mean per round (s, tokens) or per client-round (bytes), peak = the largest client update's "
             "RSS high-water mark.", "",
             "| algorithm | seeds | acc round 0 | acc end | Δ vs no training | p (Holm) | McNemar per seed | hint fixed | s/round | "
             "tokens gen./round | tokens trained/round | update peak RSS MB | MB down/up per client-round |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    seeds0 = sorted(base)
    lines.append(f"| no training (base model) | {','.join(map(str, seeds0))} | {_ci([base[s][0] for s in seeds0])} | "
                 f"{_ci([base[s][0] for s in seeds0])} | 0 | - | - | - | 0 | 0 | 0 | - | 0 / 0 |")
    for (algorithm, seeds, sums, end, test, fixed, needs, rounds), p_holm in zip(rows, adjusted, strict=True):
        t = test["t_test"]
        p = "-" if t is None else ("no var." if t["pvalue"] is None else f"{t['pvalue']:.2g} ({p_holm:.2g})")
        per_round = lambda key: sum(x[key] for x in sums.values()) / rounds  # noqa: E731, B023
        peaks = [x["peak_rss_mb"] for x in sums.values() if x["peak_rss_mb"] is not None]
        down = [x["bytes_down"] for x in sums.values() if x["bytes_down"] is not None]
        up = [x["bytes_up"] for x in sums.values() if x["bytes_up"] is not None]
        lines.append(
            f"| {algorithm} | {','.join(map(str, seeds))} | {_ci([sums[s]['before'] for s in seeds])} | {_ci(end)} | "
            f"{format_ci(test['diff'], '+.3f')} | {p} | {test['mcnemar']} | "
            f"{f'{fixed:.0f}/{needs:.0f} ({fixed / needs:.0%})' if needs else '-'} | "
            f"{_ci([x['round_s'] for x in sums.values() if x['round_s'] is not None], '.0f')} | "
            f"{per_round('tokens_generated'):.0f} | {per_round('tokens_trained'):.0f} | "
            f"{f'{max(peaks):.0f}' if peaks else '-'} | "
            f"{f'{sum(down) / len(down) / 1e6:.2f} / {sum(up) / len(up) / 1e6:.2f}' if down and up else '-'} |")
    return lines + [""]


def write_report(out: Path, tasks: list[str], report: Path, note: str = "") -> None:
    """``bench/real_model.md``: per task and algorithm, the mean over seeds of each figure (per-seed rows below),
    and a copy of each task's ``sweep.md`` (the sweep's paired tests against SPEAR) next to its figure."""
    lines = ["# SmolLM2-135M-Instruct: the comparison on real data", "",
             f"Written by `python bench/real_model.py` from the runs in `{out}`. The sweep's own report of each task "
             "(every algorithm against SPEAR: paired t over seeds, Holm, McNemar per seed) is copied to "
             "`real_model/<task>-sweep.md`.", "", *([note, ""] if note else [])]
    for task in tasks:
        runs = runs_of(out / task)
        if not runs:
            lines += [f"## {task}", "", "no finished runs yet", ""]
            continue
        plots = plot_task(task, runs, report.parent / "real_model")
        if (out / task / "sweep.md").is_file():
            (report.parent / "real_model" / f"{task}-sweep.md").write_text((out / task / "sweep.md").read_text())
        lines += [f"## {task}", "", *summary_table(runs), "Per run:", "", "| algorithm | seed | rounds | acc round 0 | acc end | s/round | needs revision | "
                  "fixed by revision | tokens gen. | tokens trained | update peak RSS MB | bytes down/up per client-round |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for (algorithm, seed), rows in sorted(runs.items()):
            s = summarize(rows)
            fixed = s["wins_revision"] or s["revision_successes"]
            rate = f"{fixed:.0f} ({fixed / s['needs_revision']:.0%})" if s["needs_revision"] else "-"
            bytes_ = (f"{s['bytes_down'] / 1e6:.2f} / {s['bytes_up'] / 1e6:.2f} MB" if s["bytes_down"] is not None
                      and s["bytes_up"] is not None else "-")
            lines.append(f"| {algorithm} | {seed} | {s['rounds']} | {_fmt(s['before'])} | {_fmt(s['after'])} "
                         f"(r{s['last_round']}) | {_fmt(s['round_s'], '.0f')} | {s['needs_revision']:.0f} of "
                         f"{s['prompts']:.0f} | {rate} | {s['tokens_generated']:.0f} | {s['tokens_trained']:.0f} | "
                         f"{_fmt(s['peak_rss_mb'], '.0f')} | {bytes_} |")
        lines += ["", *[f"![{task}]({p.relative_to(report.parent)})" for p in plots], ""]
    report.write_text("\n".join(lines) + "\n")
    print(report)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="arc_challenge,strategy_qa")
    ap.add_argument("--algorithms", default=ALGORITHMS)
    ap.add_argument("--seeds", default=None, help="comma-separated; default: 0,1,2 on ARC, 0 on StrategyQA")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "real_model")
    ap.add_argument("--report", type=Path, default=REPO / "bench" / "real_model.md")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--note", default="", help="a paragraph under the report's title: the conditions of the runs")
    ap.add_argument("overrides", nargs="*", help="KEY=VALUE applied to every run")
    args = ap.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    rc = 0
    if not args.report_only:
        for task in tasks:
            rc = run_sweep(task, args.algorithms, args.seeds or SEEDS.get(task, "0"), args.out, args.overrides) or rc
    write_report(args.out, tasks, args.report, args.note)
    return rc


if __name__ == "__main__":
    sys.exit(main())
