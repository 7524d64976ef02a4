"""Box plots in the style of the paper's figures (matplotlib, Agg backend, PNG beside the results).

Left panel: accuracy on the new tasks by impression set: ``X`` = incorrect mask, ``SupSup`` =
one mask per task, ``N`` heterogeneous, ``N^`` homogeneous, ``rN`` random, ``mN`` mixture, a
trailing ``h`` = hybrid. Each box holds one point per (seed, density): the run's mean over the
new tasks, as in the paper ("averages over all these settings and sparsities").
Right panel: basis-GN accuracy by impression-set size next to the true basis mask's accuracy.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

from ..banks import COEFFICIENT_DTYPES
from ..tasks import granularity_words

KIND_MARK = {"heterogeneous": "{n}", "homogeneous": "{n}^", "random": "r{n}", "mixture": "m{n}"}
KIND_ORDER = ("heterogeneous", "homogeneous", "random", "mixture")


def category(spec: dict) -> str | None:
    kind = spec["run_kind"]
    if kind == "incorrect_mask":
        return "X"
    if kind == "supsup":
        return "SupSup"
    if kind == "impress":
        label = KIND_MARK[spec["basis_kind"]].format(n=spec["count"])
        return label + ("h" if spec.get("hybrid") else "")
    return None


def _sort_key(spec: dict):
    kind = spec["run_kind"]
    order = {"incorrect_mask": 0, "supsup": 1, "impress": 2}.get(kind, 9)
    return (order, KIND_ORDER.index(spec["basis_kind"]) if spec.get("basis_kind") in KIND_ORDER else 0,
            bool(spec.get("hybrid")), spec.get("count") or 0)


def grouped_accuracies(records: list[dict], key: str = "mean_accuracy") -> "OrderedDict[str, list[float]]":
    groups: OrderedDict[str, list[float]] = OrderedDict()
    for rec in sorted(records, key=lambda r: _sort_key(r["spec"])):
        cat = category(rec["spec"])
        value = rec["result"].get(key)
        if cat is None or value is None:
            continue
        groups.setdefault(cat, []).append(100.0 * value)
    return groups


def basis_gn_groups(records: list[dict]):
    fit: OrderedDict[str, list[float]] = OrderedDict()
    ref: OrderedDict[str, list[float]] = OrderedDict()
    for rec in sorted((r for r in records if r["spec"]["run_kind"] == "basis_gn"), key=lambda r: r["spec"]["count"]):
        label = KIND_MARK[rec["spec"]["basis_kind"]].format(n=rec["spec"]["count"])
        fit.setdefault(label, []).append(100.0 * rec["result"]["mean_accuracy"])
        ref.setdefault(label, []).append(100.0 * rec["result"]["mean_reference_accuracy"])
    return fit, ref


def frontier_points(records: list[dict]) -> list[dict]:
    """The accuracy-per-byte frontier of a sweep: one point per (impression set, coefficient dtype)
    and SupSup's, each with the bytes per new task, test accuracies (%) of its runs (one per seed
    and density: the run's mean over its new tasks) and the candidates chosen on validation.
    ``coefficients`` names the dtype and, when alpha is finer than per layer, the granularity.
    Empty unless the sweep ran with ``evaluate.frontier``."""
    if not any("frontier" in r["result"] for r in records):
        return []
    points: OrderedDict[tuple, dict] = OrderedDict()
    for rec in sorted(records, key=lambda r: _sort_key(r["spec"])):
        spec, res = rec["spec"], rec["result"]
        cat = category(spec)
        chosen = (res.get("validation") or {}).get("chosen_override")
        if spec["run_kind"] == "supsup" and res.get("mean_accuracy") is not None:
            entries = [("fp32", res["mean_accuracy"], res["bytes_per_task"])]
        elif "frontier" in res:
            dtypes = res["frontier"]["dtypes"]  # stored with sorted keys: list them widest first, as banks does
            entries = [(dtype, dtypes[dtype]["mean_accuracy"], dtypes[dtype]["bytes_per_task"]["total"])
                       for dtype in sorted(dtypes, key=list(COEFFICIENT_DTYPES).index)]  # fmt: skip
        else:
            continue
        granularity = spec.get("alpha_granularity", "layer")  # in a run's spec only when finer
        for dtype, accuracy, nbytes in entries:
            coefficients = dtype if granularity == "layer" else f"{dtype}, {granularity_words(granularity)}"
            point = points.setdefault((cat, coefficients), {
                "label": cat, "basis_kind": spec.get("basis_kind") or "supsup", "count": spec.get("count"),
                "hybrid": bool(spec.get("hybrid")), "dtype": dtype, "coefficients": coefficients,
                "bytes": [], "accuracies": [], "chosen": [],
                "basis_owned_bank_bytes": (res.get("frontier") or {}).get("basis_owned_bank_bytes")})
            point["bytes"].append(nbytes)
            point["accuracies"].append(100.0 * accuracy)
            point["chosen"].append(chosen)
    return list(points.values())


def plot_frontier(points: list[dict], path: Path, title: str) -> Path:
    """Accuracy on new tasks against bytes per new task (log x), mean and sd over runs; one line per
    kind of impression set and dtype through its sizes, SupSup's point as a star."""
    import statistics

    import matplotlib.pyplot as plt

    def stats(p):
        acc = p["accuracies"]
        return statistics.fmean(p["bytes"]), statistics.fmean(acc), statistics.stdev(acc) if len(acc) > 1 else 0.0

    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    series: OrderedDict[tuple, list] = OrderedDict()
    for p in points:
        if p["basis_kind"] != "supsup":
            series.setdefault((p["basis_kind"], p["hybrid"], p["dtype"], p["coefficients"]), []).append(p)
    markers = {"fp32": "o", "fp16": "s", "bf16": "^"}
    for (kind, hybrid, dtype, coefficients), pts in series.items():
        pts = sorted(pts, key=lambda p: stats(p)[0])
        xs, ys, sds = zip(*(stats(p) for p in pts))
        ax.errorbar(xs, ys, yerr=sds, marker=markers[dtype], capsize=3, linestyle="-" if dtype == "fp32" else ":",
                    label=f"{kind}{' hybrid' if hybrid else ''}, alpha in {coefficients}")
        if dtype == "fp32":
            for p, x, y in zip(pts, xs, ys):
                ax.annotate(p["label"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    for p in points:
        if p["basis_kind"] == "supsup":
            x, y, sd = stats(p)
            ax.errorbar([x], [y], yerr=[sd], marker="*", markersize=13, color="k", linestyle="none", capsize=3,
                        label="SupSup (dedicated mask)")
            ax.axhline(y - 2, color="grey", linestyle="--", linewidth=0.8, label="SupSup - 2 points")
    ax.set_xscale("log")
    ax.set_xlabel("bytes per new task (log scale; impresslearn.accounting)")
    ax.set_ylabel("test accuracy on new tasks (%)")
    ax.set_title(f"{title}: accuracy per byte (mean +- sd over runs)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_experiment(out_dir: str | Path) -> list[Path]:
    """Draw the figures of one results directory; returns the PNG paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    payload = json.loads((out_dir / "results.json").read_text())
    records = payload["runs"]
    name = payload["experiment"]
    written = []
    groups = grouped_accuracies(records)
    if groups:
        fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * len(groups) + 2), 4))
        ax.boxplot(list(groups.values()), tick_labels=list(groups.keys()), showmeans=True)
        ax.set_ylabel("accuracy on new tasks (%)")
        ax.set_xlabel("impression set (X: incorrect mask, N: heterogeneous, N^: homogeneous, rN: random, h: hybrid)",
                      fontsize=7)
        ax.set_title(f"{name}: new tasks")
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        path = out_dir / "accuracy_by_impressions.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    fit, ref = basis_gn_groups(records)
    if fit:
        labels = list(fit.keys())
        fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(labels) + 2), 4))
        pos = list(range(len(labels)))
        b1 = ax.boxplot(list(fit.values()), positions=[p - 0.18 for p in pos], widths=0.3, patch_artist=True)
        b2 = ax.boxplot(list(ref.values()), positions=[p + 0.18 for p in pos], widths=0.3, patch_artist=True)
        for patch in b1["boxes"]:
            patch.set_facecolor("#8ecae6")
        for patch in b2["boxes"]:
            patch.set_facecolor("#ffb703")
        ax.set_xticks(pos, labels)
        ax.legend([b1["boxes"][0], b2["boxes"][0]], ["basis-GN (alpha fit)", "true basis mask"], fontsize=8)
        ax.set_ylabel("accuracy on basis tasks (%)")
        ax.set_xlabel("impression-set size")
        ax.set_title(f"{name}: basis-GN")
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        path = out_dir / "basis_gn.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    points = frontier_points(records)
    if points:
        written.append(plot_frontier(points, out_dir / "frontier.png", name))
    return written
