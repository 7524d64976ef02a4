"""Sweeps: a config expands into runs with stable ids; finished runs are never recomputed.

Each run is one point of the sweep (an evaluation kind x seed x density x basis kind x count);
its id is a hash of everything that determines its result (scenario, model, training phases,
the run's own parameters), never of paths or the experiment's name. A finished run writes
``<out>/runs/<id>.json`` atomically (temp file, fsync, rename), so a sweep killed at any point
restarts where it stopped: a run whose file exists, parses, belongs to the run and matches the
checksum stored in it is skipped; any other file (truncated, not UTF-8, not a JSON object, a
foreign or hand-edited record) is logged and the run is repeated. A half-written temp file is
ignored and overwritten.

One runner at a time owns an output folder: ``run_sweep`` holds ``<out>/.lock`` (an OS file
lock, released when the process ends, however it ends) and records in ``<out>/.lock.owner``
who holds it, so a second runner stops at once and says which process has the folder.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import platform
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from .._atomic import atomic_write
from .._integers import is_count
from ._config import ExperimentConfig, stable_hash

log = logging.getLogger(__name__)

RESULT_FORMAT = 1
RUN_KINDS = ("supsup", "incorrect_mask", "impress", "basis_gn", "gn")


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep. ``resolved()`` is what the id hashes and what the runner reads."""

    experiment: str
    run_kind: str
    seed: int
    density: float
    basis_kind: str | None = None
    count: int | None = None
    hybrid: bool = False
    shared: tuple = ()  # (key, value) pairs copied from the config that this run depends on

    @property
    def params(self) -> dict:
        return dict(self.shared)

    def resolved(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("experiment")
        d.pop("shared")
        d.update(self.params)
        d["format"] = RESULT_FORMAT
        return d

    @property
    def run_id(self) -> str:
        return f"{self.run_kind}-{stable_hash(self.resolved())}"

    def label(self) -> str:
        parts = [self.run_kind, f"seed={self.seed}", f"s={self.density:g}"]
        if self.basis_kind:
            parts.append(f"{self.basis_kind}x{self.count}")
        if self.hybrid:
            parts.append("hybrid")
        return " ".join(parts)


def expand(config: ExperimentConfig) -> list[RunSpec]:
    """All runs of a config, ordered so runs sharing a backbone and density are adjacent
    (the mask cache is then hot) and cheap runs come first."""
    ev = config.evaluate
    common = {
        "scenario": config.scenario,
        "model": config.model,
        "mask_train": config.mask_train.to_dict(),
    }
    alpha = {"alpha_train": config.alpha_train.to_dict()}
    new_tasks = {"new_tasks": list(config.new_task_indices)}
    mixture = {"mixture_homogeneous": config.basis.mixture_homogeneous}
    # Opt-in settings join a run's parameters (and so its id) only when they are on: runs of
    # configs without them keep their ids, and their finished results are reused.
    validation = {} if config.validation is None else {
        "validation": {**dataclasses.asdict(config.validation), "choice_seed": config.seeds[0]}}
    frontier = {"coefficient_dtypes": list(ev.coefficient_dtypes)} if ev.frontier else {}
    granularity = {} if config.alpha_granularity == "layer" else {"alpha_granularity": config.alpha_granularity}

    def shared(*parts: dict) -> tuple:
        merged: dict = {}
        for p in parts:
            merged.update(p)
        plain = json.loads(json.dumps(_jsonable(merged), sort_keys=True))
        return tuple(sorted(plain.items()))

    runs: list[RunSpec] = []
    for seed in config.seeds:
        for density in config.densities:
            base = dict(experiment=config.name, seed=seed, density=float(density))
            if ev.supsup:
                runs.append(RunSpec(run_kind="supsup", shared=shared(common, new_tasks, validation), **base))
            if ev.incorrect_mask:
                runs.append(RunSpec(run_kind="incorrect_mask", shared=shared(common, new_tasks), **base))
            if ev.new_tasks:
                for kind in config.basis.kinds:
                    extra = dict(mixture if kind == "mixture" else {}, label_free_matrix=ev.label_free_matrix,
                                 full_matrix=ev.full_matrix)
                    for count in config.basis.counts_for(kind):
                        for hybrid in ((False, True) if ev.hybrid else (False,)):
                            runs.append(RunSpec(run_kind="impress", basis_kind=kind, count=count, hybrid=hybrid,
                                                shared=shared(common, alpha, new_tasks, extra, validation,
                                                              frontier, granularity), **base))
            if ev.basis_gn:
                for kind in ev.basis_gn_kinds:
                    extra = mixture if kind == "mixture" else {}
                    for count in config.basis.counts_for(kind):
                        n = min(config.basis.heterogeneous_tasks(kind, count), ev.basis_gn_max_tasks)
                        runs.append(RunSpec(run_kind="basis_gn", basis_kind=kind, count=count,
                                            shared=shared(common, alpha, extra, {"basis_gn_tasks": n}), **base))
            if ev.gn:
                gn = {
                    "gn_num_tasks": ev.gn_num_tasks,
                    "gn_methods": list(ev.gn_methods),
                    "gn_batch_size": ev.gn_batch_size,
                    "gn_batches_per_task": ev.gn_batches_per_task,
                    "gn_with_supsup": ev.gn_with_supsup,
                }
                extra = mixture if ev.gn_basis_kind == "mixture" else {}
                runs.append(RunSpec(run_kind="gn", basis_kind=ev.gn_basis_kind, count=ev.gn_basis_count,
                                    shared=shared(common, alpha, gn, extra), **base))
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):  # would silently merge two runs' results
        raise RuntimeError("two runs of the sweep resolve to the same id; the config repeats a point")
    return runs


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------- files


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same directory, fsync, rename: a reader sees all or nothing."""
    atomic_write(path, text, make_parents=True)


def run_path(out_dir: Path, run: RunSpec) -> Path:
    return Path(out_dir) / "runs" / f"{run.run_id}.json"


def record_checksum(record: dict) -> str:
    """SHA-256 of a run record's canonical JSON, without its own ``checksum`` field."""
    body = {k: v for k, v in record.items() if k != "checksum"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def check_record(record: Any, run_id: str) -> str | None:
    """Why ``record`` is not the finished result of run ``run_id``, or None if it is."""
    if not isinstance(record, dict):
        return f"not a JSON object but {type(record).__name__}"
    if record.get("run_id") != run_id:
        return f"run_id is {record.get('run_id')!r}, expected {run_id!r}"
    if record.get("status") != "done":
        return f"status is {record.get('status')!r}, not 'done'"
    for key, kind in (("spec", dict), ("result", dict)):
        if not isinstance(record.get(key), kind):
            return f"{key!r} is missing or not a JSON object"
    if "checksum" not in record:
        return "no checksum (written by an older version, or edited)"
    if record["checksum"] != record_checksum(record):
        return "checksum mismatch: the file was changed after the run wrote it"
    return None


def load_finished(out_dir: Path, run: RunSpec) -> dict | None:
    """The stored result of a run, or None if absent or not trustworthy (then it is run again)."""
    path = run_path(out_dir, run)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        log.warning("%s: unreadable (%s); the run will be repeated", path, exc)
        return None
    problem = check_record(record, run.run_id)
    if problem is not None:
        log.warning("%s: %s; the run will be repeated", path, problem)
        return None
    return record


# ----------------------------------------------------------------------------- the folder lock


class OutputFolderLocked(RuntimeError):
    """Another runner holds the output folder; the message says which process."""


LOCK_NAME = ".lock"
LOCK_OWNER_NAME = ".lock.owner"


@contextmanager
def output_folder_lock(out_dir: Path):
    """Hold ``<out>/.lock`` for the duration; refuse at once if another runner holds it.

    The lock is the operating system's (``filelock``: flock on POSIX), so a runner killed with
    SIGKILL releases it; ``.lock.owner`` says who holds it (pid, host, start time) for the
    error message of the runner that is refused.
    """
    from filelock import FileLock, Timeout

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out_dir / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        try:
            owner = json.loads((out_dir / LOCK_OWNER_NAME).read_text())
            who = f"pid {owner['pid']} on host {owner['host']} since {owner['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            who = "another process (owner file unreadable)"
        raise OutputFolderLocked(
            f"{out_dir}: another runner is using this output folder ({who}); wait for it to finish, "
            f"or choose another --out") from None
    try:
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        atomic_write_text(out_dir / LOCK_OWNER_NAME, json.dumps(owner))
        yield
    finally:
        try:
            (out_dir / LOCK_OWNER_NAME).unlink()
        except FileNotFoundError:
            pass
        lock.release()


Executor = Callable[[RunSpec, dict], dict]


@dataclass
class SweepOutcome:
    out_dir: Path
    records: list[dict]
    executed: list[str]
    skipped: list[str]


def run_sweep(
    config: ExperimentConfig,
    out_dir: str | Path,
    executor: Executor | None = None,
    *,
    context: dict | None = None,
    progress: bool = True,
    max_runs: int | None = None,
) -> SweepOutcome:
    """Run every unfinished run of ``config``; write each result as it finishes; aggregate.

    ``executor(run, context) -> result dict`` does the work (default: the real runner);
    ``context`` is shared by all runs of this call (the runner keeps its mask cache there).
    ``max_runs`` stops after that many executed runs (to split a long sweep across sessions).
    Raises ``OutputFolderLocked`` if another runner is using ``out_dir``.
    """
    if max_runs is not None and not is_count(max_runs, 1):
        raise ValueError(f"max_runs must be a positive integer or None, got {max_runs!r}")
    with output_folder_lock(Path(out_dir)):
        return _run_sweep_locked(config, Path(out_dir), executor, context, progress, max_runs)


def _run_sweep_locked(config: ExperimentConfig, out_dir: Path, executor: Executor | None, context: dict | None,
                      progress: bool, max_runs: int | None) -> SweepOutcome:
    from tqdm.auto import tqdm

    atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    if executor is None:
        from ._runner import execute_run as executor
    context = {} if context is None else context
    context.setdefault("out_dir", out_dir)

    runs = expand(config)
    records: dict[str, dict] = {}
    todo: list[RunSpec] = []
    for run in runs:
        record = load_finished(out_dir, run)
        if record is None:
            todo.append(run)
        else:
            records[run.run_id] = record
    skipped = list(records)
    if skipped:
        log.info("%s: %d of %d runs already finished, %d to go", config.name, len(skipped), len(runs), len(todo))
    executed: list[str] = []
    bar = tqdm(todo, desc=config.name, unit="run", disable=not progress, dynamic_ncols=True)
    for run in bar:
        if max_runs is not None and len(executed) >= max_runs:
            break
        bar.set_postfix_str(run.label())
        start = time.perf_counter()
        result = executor(run, context)
        record = {
            "format": RESULT_FORMAT,
            "status": "done",
            "run_id": run.run_id,
            "experiment": config.name,
            "label": run.label(),
            "spec": _jsonable(run.resolved()),
            "result": _jsonable(result),
            "elapsed_s": round(time.perf_counter() - start, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "host": {"python": platform.python_version(), "machine": platform.machine()},
        }
        record["checksum"] = record_checksum(record)
        atomic_write_text(run_path(out_dir, run), json.dumps(record, indent=1, sort_keys=True))
        records[run.run_id] = record
        executed.append(run.run_id)
    ordered = [records[r.run_id] for r in runs if r.run_id in records]
    write_aggregates(out_dir, config, ordered, complete=len(ordered) == len(runs))
    return SweepOutcome(out_dir, ordered, executed, skipped)


# ----------------------------------------------------------------------------- aggregates

SUMMARY_FIELDS = (
    "run_id", "run_kind", "seed", "density", "basis_kind", "count", "hybrid",
    "mean_accuracy", "mean_accuracy_no_labels", "mean_reference_accuracy", "pick_rate",
    "identification_rate", "bytes_per_new_task", "bytes_per_new_task_with_basis_masks", "elapsed_s",
)


def recorded_task_bytes(record: dict) -> tuple[float | None, float | None]:
    """(bytes per new task, the same plus the basis masks it needs) of a run record, both
    ``impresslearn.accounting``'s as the runner recorded them (``_runner.new_task_bytes``):

    - bytes per new task: its coefficients, BN statistics, fingerprint and its share of the bank
      masks no basis task owns (the frontier's figure, at the learner's coefficient dtype);
    - with the basis masks: the basis tasks' own masks added, spread over the run's new tasks (the
      run's learner, which stores no basis task, reports this: ``accounting.learner_task_bytes``).

    SupSup's task stores its own mask and no basis mask: both are its bytes. None where the run
    measured none (the incorrect mask, basis-GN, GN)."""
    res = record["result"]
    if record["spec"]["run_kind"] == "supsup":
        supsup = res.get("bytes_per_task")
        return supsup, supsup
    with_basis = res.get("bytes_per_task")
    with_basis = with_basis.get("total") if isinstance(with_basis, dict) else None
    new = (res.get("bytes_per_new_task") or {}).get("total")
    if new is None and with_basis is not None and "frontier" in res:
        # a run recorded before bytes_per_new_task: its frontier holds the same figure per dtype
        # (the runner's learners keep fp32 coefficients)
        new = res["frontier"]["dtypes"].get("fp32", {}).get("bytes_per_task", {}).get("total")
    return new, with_basis


def summary_row(record: dict) -> dict:
    spec, res = record["spec"], record["result"]
    row = {k: spec.get(k) for k in ("run_kind", "seed", "density", "basis_kind", "count", "hybrid")}
    row["run_id"] = record["run_id"]
    row["elapsed_s"] = record.get("elapsed_s")
    row["bytes_per_new_task"], row["bytes_per_new_task_with_basis_masks"] = recorded_task_bytes(record)
    for k in SUMMARY_FIELDS:
        if k not in row:
            row[k] = res.get(k)
    return row


def matrix_rows(record: dict) -> Iterable[dict]:
    """One CSV row per entry of each accuracy matrix a run stored (with / without task labels)."""
    res = record["result"]
    for key, labels in (("accuracy_matrix", "given"), ("accuracy_matrix_no_labels", "inferred")):
        matrix = res.get(key)
        if not matrix:
            continue
        tasks = res.get("tasks") or list(range(len(matrix[0])))
        for i, row in enumerate(matrix):
            for j, acc in enumerate(row):
                if acc is None:
                    continue
                yield {"run_id": record["run_id"], "task_labels": labels, "after_task": tasks[i] if i < len(tasks) else i,
                       "task": tasks[j], "accuracy": acc}


def write_aggregates(out_dir: Path, config: ExperimentConfig, records: list[dict], complete: bool) -> None:
    out_dir = Path(out_dir)
    payload = {"format": RESULT_FORMAT, "experiment": config.name, "complete": complete,
               "config": config.to_dict(), "runs": records}
    atomic_write_text(out_dir / "results.json", json.dumps(payload, indent=1, sort_keys=True))
    _write_csv(out_dir / "results.csv", SUMMARY_FIELDS, (summary_row(r) for r in records))
    _write_csv(out_dir / "matrices.csv", ("run_id", "task_labels", "after_task", "task", "accuracy"),
               (row for r in records for row in matrix_rows(r)))


def _write_csv(path: Path, fields: Iterable[str], rows: Iterable[dict]) -> None:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())
