"""``impresslearn report DIR [DIR ...]``: render results directories into markdown tables + plots.

Each DIR is an output folder of ``impresslearn run`` (``results.json`` or ``accounting.json``).
Plots are (re)drawn and copied next to the markdown (``--assets``) and linked relatively.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import shutil
import statistics
import sys
from pathlib import Path

from ..tasks import granularity_words
from ._plots import KIND_MARK, basis_gn_groups, category, frontier_points, grouped_accuracies, plot_experiment
from ._sweep import record_checksum, recorded_task_bytes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", help="output directories of `impresslearn run`")
    parser.add_argument("--out", default="docs/results.md", help="markdown file to write")
    parser.add_argument("--assets", default=None, help="folder for the plots (default: <out without .md>/)")
    parser.add_argument("--intro", default=None, help="markdown file to put first (discussion, scale)")
    parser.add_argument("--title", default="Results")


def _pct(x) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return ""
    m = statistics.fmean(values)
    if len(values) == 1:
        return f"{100 * m:.1f}"
    return f"{100 * m:.1f} ± {100 * statistics.stdev(values):.1f}"


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _scale(config: dict) -> str:
    sc, mt, at = config["scenario"], config["mask_train"], config["alpha_train"]
    parts = [
        f"scenario `{sc['name']}` ({sc['num_tasks']} tasks; train subset {sc['train_subset'] or 'all'}, "
        f"test subset {sc['test_subset'] or 'all'} per task)",
        f"model `{config['model']['name']}` {config['model'].get('kwargs') or ''}".rstrip(),
        f"densities {config['densities']}", f"seeds {config['seeds']}",
        f"masks: {mt['optimizer']} lr {mt['lr']}, {mt['epochs']} epoch(s), batch {mt['batch_size']}",
        f"alpha: {at['optimizer']} lr {at['lr']} lam {at['lam']}, {at['epochs']} epoch(s), batch {at['batch_size']}"
        + ("" if config.get("alpha_granularity", "layer") == "layer"  # opt-in: older reports read as before
           else f", coefficients {granularity_words(config['alpha_granularity'])}"),
        f"{config['num_new_tasks']} new tasks",
    ]
    validation = config.get("validation")
    if validation:  # opt-in: reports of configs without it are unchanged
        def names(key):
            return " / ".join(_override_label(c) for c in validation[key]) or "as configured"

        parts.append(f"the last {validation['images']} training images of each new task validate (not trained on); "
                     f"chosen there on the first seed: alpha among {names('alpha_candidates')}, SupSup's mask among "
                     f"{names('mask_candidates')}")
    return "; ".join(parts) + "."


# One label per bytes figure, the same in every table (both figures: _sweep.recorded_task_bytes)
BYTES_PER_NEW_TASK = "bytes per new task (B)"
BYTES_WITH_BASIS_MASKS = "bytes per new task + the basis masks it needs, spread over the run's new tasks (B)"
BYTES_NOTE = (f"\"{BYTES_PER_NEW_TASK}\" is what one more new task stores (`impresslearn.accounting.task_bytes`): "
              "its coefficients, BN statistics, fingerprint and its share of the bank masks no basis task owns; the "
              "basis tasks' own masks are stored by those tasks and not charged. "
              f"\"{BYTES_WITH_BASIS_MASKS}\" adds those masks, divided by the run's number of new tasks (what the "
              "run's learner, which stores no basis task, reports: `impresslearn.accounting.learner_task_bytes`). "
              "SupSup's task stores its own mask: the two figures are equal.")


def _mean_bytes(values: list) -> str:
    values = [v for v in values if isinstance(v, (int, float))]
    return f"{statistics.fmean(values):,.0f}" if values else ""


def new_task_table(records: list[dict]) -> str:
    groups: dict[str, dict[str, list]] = {}
    for rec in records:
        cat = category(rec["spec"])
        if cat is None:
            continue
        g = groups.setdefault(cat, {"acc": [], "nolab": [], "ident": [], "new": [], "with_basis": [], "n": 0})
        res = rec["result"]
        g["n"] += 1
        g["acc"].append(res.get("mean_accuracy"))
        g["nolab"].append(res.get("mean_accuracy_no_labels"))
        g["ident"].append(res.get("identification_rate"))
        new, with_basis = recorded_task_bytes(rec)
        g["new"].append(new)
        g["with_basis"].append(with_basis)
    order = list(grouped_accuracies(records, "mean_accuracy").keys())
    rows = []
    for cat in order:
        g = groups[cat]
        rows.append([cat, g["n"], _mean_sd(g["acc"]), _mean_sd(g["nolab"]), _mean_sd(g["ident"]),
                     _mean_bytes(g["new"]), _mean_bytes(g["with_basis"])])
    return _table(["impressions", "runs", "acc. with task label (%)", "acc. task inferred (%)",
                   "task identified (%)", BYTES_PER_NEW_TASK, BYTES_WITH_BASIS_MASKS], rows)


def by_density_table(records: list[dict]) -> str:
    cats: dict[str, dict[float, list]] = {}
    densities = sorted({r["spec"]["density"] for r in records})
    for rec in records:
        cat = category(rec["spec"])
        if cat is None or rec["result"].get("mean_accuracy") is None:
            continue
        cats.setdefault(cat, {}).setdefault(rec["spec"]["density"], []).append(rec["result"]["mean_accuracy"])
    order = list(grouped_accuracies(records).keys())
    rows = [[c] + [_mean_sd(cats[c].get(d, [])) for d in densities] for c in order]
    return _table(["impressions"] + [f"s={d:g}" for d in densities], rows)


def basis_gn_table(records: list[dict]) -> str:
    rows = []
    for rec in sorted((r for r in records if r["spec"]["run_kind"] == "basis_gn"),
                      key=lambda r: (r["spec"]["count"], r["spec"]["density"], r["spec"]["seed"])):
        s, res = rec["spec"], rec["result"]
        rows.append([KIND_MARK[s["basis_kind"]].format(n=s["count"]), f"{s['density']:g}", s["seed"],
                     len(res["tasks"]), _pct(res["pick_rate"]), _pct(res["mean_accuracy"]),
                     _pct(res["mean_reference_accuracy"]), _pct(res["better_or_equal_rate"])])
    return _table(["impressions", "density", "seed", "basis tasks", "right mask picked (%)", "alpha-fit acc. (%)",
                   "true mask acc. (%)", "fit >= true mask (%)"], rows)


def gn_table(records: list[dict]) -> str:
    rows = []
    for rec in (r for r in records if r["spec"]["run_kind"] == "gn"):
        s, res = rec["spec"], rec["result"]
        for m in s["gn_methods"]:
            rows.append([f"{s['basis_kind']} x{s['count']}", f"{s['density']:g}", s["seed"], res["num_stored_tasks"],
                         m, _pct(res[f"identification_rate_{m}"]), _pct(res["mean_accuracy"]),
                         _pct(res[f"gn_accuracy_{m}"]), res[f"gn_seconds_{m}"]])
        if "supsup_identification_rate" in res:
            rows.append([f"SupSup (1 mask/task)", f"{s['density']:g}", s["seed"], res["num_stored_tasks"],
                         s["gn_methods"][0], _pct(res["supsup_identification_rate"]), _pct(res["supsup_gg_accuracy"]),
                         _pct(res["supsup_gn_accuracy"]), ""])
    return _table(["basis", "density", "seed", "stored tasks", "GN method", "task identified (%)",
                   "acc. task given (%)", "acc. task inferred (%)", "GN seconds"], rows)


def _override_label(override) -> str:
    if override is None:
        return "-"
    # "adam lr 0.003" as impresslearn.validation.candidate_name writes it, other keys after
    head = [str(override["optimizer"])] if "optimizer" in override else []
    return " ".join(head + [f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in sorted(override.items()) if k != "optimizer"]) or "as configured"


def frontier_table(points: list[dict]) -> str:
    """One row per frontier point: bytes per new task (``BYTES_PER_NEW_TASK``), the saving over SupSup,
    test accuracy mean and sd over runs, the candidates chosen on validation (how many runs chose each)."""
    supsup = next((p for p in points if p["basis_kind"] == "supsup"), None)
    supsup_bytes = statistics.fmean(supsup["bytes"]) if supsup else None
    supsup_acc = statistics.fmean(supsup["accuracies"]) if supsup else None
    rows = []
    for p in points:
        nbytes = statistics.fmean(p["bytes"])
        acc = statistics.fmean(p["accuracies"])
        sd = f" ± {statistics.stdev(p['accuracies']):.1f}" if len(p["accuracies"]) > 1 else ""
        chosen = collections.Counter(_override_label(c) for c in p["chosen"])
        owned = p.get("basis_owned_bank_bytes")
        rows.append([
            "SupSup" if p["basis_kind"] == "supsup" else p["label"], p["count"] if p["count"] else "-",
            p["coefficients"],
            f"{nbytes:,.0f}", f"{supsup_bytes / nbytes:.1f}" if supsup_bytes else "",
            f"{owned:,}" if owned else "-", f"{acc:.1f}{sd}", len(p["accuracies"]),
            f"{acc - supsup_acc:+.1f}" if supsup_acc is not None and p is not supsup else "-",
            "; ".join(f"{k} ({n})" for k, n in chosen.items()),
        ])
    return _table(["impressions", "K", "coefficients", BYTES_PER_NEW_TASK, "x fewer than SupSup",
                   "basis tasks' own masks (B, not charged)", "test acc. (%, mean ± sd)", "runs",
                   "vs SupSup (points)", "chosen on validation (runs)"], rows)


def accounting_table(rows: list[dict]) -> str:
    out = []
    for r in rows:
        out.append([r["dataset"], r["max_tasks"], f"`{r['model']}`", f"{r['weights']:,}", f"{r['mask_kB']:.1f}",
                    r["basis_size"], r["layers"], r["alpha_per_task"], f"{r['phi_kB']:.2f}", f"{r['compression']:.2f}",
                    f"{r['bn_stats_kB_per_task']:.2f}", f"{r['compression_with_bn']:.2f}", f"{r['bank_plane_kB']:.1f}"])
    return _table(["data set", "max tasks", "model", "O (weights)", "mask (kB)", "|M|", "layers", "|alpha|",
                   "Phi (kB)", "Cx", "BN stats / task (kB)", "Cx with BN", "our bank plane / mask (kB)"], out)


class ResultsEdited(ValueError):
    """A run record in results.json no longer matches the checksum its run stored."""


def check_records(path: Path, records: list) -> None:
    """Refuse a results file whose run records were changed after their runs wrote them."""
    for record in records:
        # a record without its checksum is refused too: dropping the field must not pass a hand edit
        if not isinstance(record, dict) or record.get("checksum") != record_checksum(record):
            run_id = record.get("run_id") if isinstance(record, dict) else None
            raise ResultsEdited(f"{path}: run {run_id!r} was changed after the run wrote it "
                                "(checksum missing or mismatched); rerun `impresslearn run` on this folder to rebuild it")


def render_dir(directory: Path, assets: Path, out_file: Path) -> str:
    directory = Path(directory)
    if (directory / "accounting.json").is_file():
        payload = json.loads((directory / "accounting.json").read_text())
        text = [f"## {payload['experiment']}", ""]
        if payload.get("description"):
            text += [payload["description"], ""]
        text += [accounting_table(payload["rows"]), ""]
        return "\n".join(text)
    payload = json.loads((directory / "results.json").read_text())
    records, config = payload["runs"], payload["config"]
    check_records(directory / "results.json", records)
    name = payload["experiment"]
    text = [f"## {name}", ""]
    if config.get("paper_figure"):
        text += [f"Paper: {config['paper_figure']}.", ""]
    if config.get("description"):
        text += [config["description"].strip(), ""]
    text += [f"Scale: {_scale(config)}", ""]
    if not payload.get("complete", True):
        text += ["**Incomplete sweep**: only the finished runs are shown.", ""]
    if any(category(r["spec"]) for r in records):
        text += ["New tasks (each run's mean over the new tasks; mean ± sd over runs; bytes: mean over runs):", "",
                 new_task_table(records), "", BYTES_NOTE, ""]
        if len({r["spec"]["density"] for r in records}) > 1:
            text += ["By density (accuracy with task label, %):", "", by_density_table(records), ""]
    points = frontier_points(records)
    if points:
        text += [f"Accuracy per byte (frontier; \"{BYTES_PER_NEW_TASK}\" as in the new-task table, its coefficients "
                 "in the dtype shown; the basis tasks' own masks in their own column, not charged):",
                 "", frontier_table(points), ""]
    if any(r["spec"]["run_kind"] == "basis_gn" for r in records):
        text += ["basis-GN (alpha fitted on an unnamed basis task):", "", basis_gn_table(records), ""]
    if any(r["spec"]["run_kind"] == "gn" for r in records):
        text += ["GN task inference among stored alpha tasks (one test batch per task):", "", gn_table(records), ""]
    pngs = plot_experiment(directory)
    target = assets / name
    target.mkdir(parents=True, exist_ok=True)
    data_links = []
    for data_file in ("results.csv", "matrices.csv"):  # the raw numbers travel with the report
        if (directory / data_file).is_file():
            shutil.copy2(directory / data_file, target / data_file)
            data_links.append(f"[{data_file}]({os.path.relpath(target / data_file, out_file.parent)})")
    if data_links:
        text += ["Raw results: " + ", ".join(data_links) + ".", ""]
    if pngs:
        for png in pngs:
            shutil.copy2(png, target / png.name)
            rel = os.path.relpath(target / png.name, out_file.parent)
            text += [f"![{name}: {png.stem}]({rel})", ""]
    return "\n".join(text)


# Sections of the results file that benchmark scripts write (task inference, the frontier) sit
# below this line; a report regenerates what is above it and keeps the rest word for word.
KEEP_MARKER = "<!-- impresslearn report keeps everything below this line -->"


def kept_tail(out_file: Path) -> str | None:
    """The marker and what follows it in an existing results file, or None."""
    if not out_file.is_file():
        return None
    text = out_file.read_text()
    at = text.find(KEEP_MARKER)
    return text[at:] if at >= 0 else None


def render(directories: list[Path], out_file: Path, assets: Path | None = None, intro: str | None = None,
           title: str = "Results") -> str:
    out_file = Path(out_file)
    assets = Path(assets) if assets else out_file.with_suffix("")
    parts = [f"# {title}", ""]
    if intro:
        parts += [intro.strip(), ""]
    for d in directories:
        parts.append(render_dir(Path(d), assets, out_file))
    tail = kept_tail(out_file)
    if tail is not None:
        parts += ["", tail.strip()]
    text = "\n".join(parts).rstrip() + "\n"
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(text)
    return text


def main(args: argparse.Namespace) -> int:
    missing = [d for d in args.results
               if not (Path(d) / "results.json").is_file() and not (Path(d) / "accounting.json").is_file()]
    if missing:
        print(f"impresslearn report: no results.json or accounting.json in {missing}", file=sys.stderr)
        return 2
    intro = Path(args.intro).read_text() if args.intro else None
    try:
        render([Path(d) for d in args.results], Path(args.out), Path(args.assets) if args.assets else None, intro,
               args.title)
    except ResultsEdited as exc:
        print(f"impresslearn report: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0
