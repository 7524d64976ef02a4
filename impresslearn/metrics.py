"""Continual-learning metrics on an accuracy matrix.

``R[i, j]`` is the accuracy on task ``j`` after learning task ``i`` (rows: training
stages, columns: tasks); NaN where not measured (e.g. tasks not yet learned).
With ``T`` rows, the final row is the state after the last task:

* ACC (average accuracy)  = mean_j R[T-1, j]
* BWT (backward transfer) = 1/(T-1) * sum_{j<T-1} (R[T-1, j] - R[j, j])   (Lopez-Paz & Ranzato 2017)
* forgetting              = 1/(T-1) * sum_{j<T-1} max_{l<T-1} R[l, j] - R[T-1, j]  (Chaudhry et al. 2018)

SupSup and ImpressLearn store a mask or coefficients per task, so an exact
implementation has BWT = 0 and forgetting = 0: the metrics check that claim.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np


def _as_matrix(R) -> np.ndarray:
    R = np.asarray(R.values if isinstance(R, AccuracyMatrix) else R, dtype=np.float64)
    if R.ndim != 2 or R.shape[0] == 0 or R.shape[1] < R.shape[0]:
        raise ValueError(f"accuracy matrix must be 2-d with at least as many tasks as rows, got shape {R.shape}")
    return R


def average_accuracy(R) -> float:
    """Mean final accuracy over the tasks measured in the last row (NaNs ignored)."""
    last = _as_matrix(R)[-1]
    measured = last[~np.isnan(last)]
    if measured.size == 0:
        raise ValueError("the last row of the accuracy matrix has no measurement")
    return float(measured.mean())


def backward_transfer(R) -> float:
    """Mean change of each earlier task's accuracy from just after learning it to the end.

    Negative means forgetting; 0.0 when there is a single task.
    """
    R = _as_matrix(R)
    T = R.shape[0]
    if T < 2:
        return 0.0
    diffs = np.array([R[T - 1, j] - R[j, j] for j in range(T - 1)])
    _require_measured(diffs, "backward transfer needs R[j, j] and R[T-1, j] for every j < T-1")
    return float(diffs.mean())


def forgetting(R) -> float:
    """Mean drop of each earlier task from its best accuracy before the end to its final accuracy."""
    R = _as_matrix(R)
    T = R.shape[0]
    if T < 2:
        return 0.0
    drops = []
    for j in range(T - 1):
        earlier = R[j : T - 1, j]
        earlier = earlier[~np.isnan(earlier)]
        drops.append(earlier.max() - R[T - 1, j] if earlier.size else math.nan)
    drops = np.array(drops)
    _require_measured(drops, "forgetting needs R[j, j] and R[T-1, j] for every j < T-1")
    return float(drops.mean())


def accuracy_summary(R) -> dict[str, float]:
    """``{"bwt", "forgetting"}`` of an accuracy matrix given as nested lists with None where not
    measured (a run's ``accuracy_matrix``), as the experiment runner stores them per run."""
    values = np.array([[math.nan if v is None else float(v) for v in row] for row in R], dtype=np.float64)
    return {"bwt": backward_transfer(values), "forgetting": forgetting(values)}


def _require_measured(values: np.ndarray, message: str) -> None:
    if np.isnan(values).any():
        raise ValueError(f"{message}; missing for task(s) {np.flatnonzero(np.isnan(values)).tolist()}")


class AccuracyMatrix:
    """A growing accuracy matrix: ``record(i, j, acc)`` after learning task ``i``.

    ``values`` is a [num_tasks, num_tasks] float array, NaN where not measured.
    """

    def __init__(self, num_tasks: int, task_names: Sequence[str] | None = None):
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be positive, got {num_tasks}")
        if task_names is not None and len(task_names) != num_tasks:
            raise ValueError(f"{len(task_names)} task names for {num_tasks} tasks")
        self.num_tasks = int(num_tasks)
        self.task_names = list(task_names) if task_names is not None else [str(j) for j in range(num_tasks)]
        self.values = np.full((num_tasks, num_tasks), np.nan)

    def record(self, after_task: int, task: int, accuracy: float) -> None:
        if not (0 <= after_task < self.num_tasks and 0 <= task < self.num_tasks):
            raise IndexError(f"task indices must be in 0..{self.num_tasks - 1}, got ({after_task}, {task})")
        accuracy = float(accuracy)
        if not 0.0 <= accuracy <= 1.0:
            raise ValueError(f"accuracy must be a fraction in [0, 1], got {accuracy}")
        self.values[after_task, task] = accuracy

    def learned(self) -> int:
        """Rows with at least one measurement, counted from the top (the stages reached so far)."""
        rows = np.flatnonzero(~np.isnan(self.values).all(axis=1))
        return int(rows[-1]) + 1 if rows.size else 0

    def _so_far(self) -> np.ndarray:
        n = self.learned()
        if n == 0:
            raise ValueError("no accuracy recorded yet")
        return self.values[:n]

    def average_accuracy(self) -> float:
        return average_accuracy(self._so_far())

    def backward_transfer(self) -> float:
        return backward_transfer(self._so_far())

    def forgetting(self) -> float:
        return forgetting(self._so_far())

    def summary(self) -> dict[str, float]:
        return {"acc": self.average_accuracy(), "bwt": self.backward_transfer(), "forgetting": self.forgetting()}

    def to_dict(self) -> dict:
        """JSON-ready: NaN becomes None."""
        return {"task_names": self.task_names,
                "values": [[None if math.isnan(v) else v for v in row] for row in self.values.tolist()]}

    @classmethod
    def from_dict(cls, d: dict) -> "AccuracyMatrix":
        m = cls(len(d["values"]), d.get("task_names"))
        m.values[:] = np.array([[math.nan if v is None else v for v in row] for row in d["values"]], dtype=np.float64)
        return m

    def to_markdown(self, digits: int = 1) -> str:
        return format_matrix(self.values[: max(self.learned(), 1)], self.task_names, digits)

    def __repr__(self) -> str:
        return f"AccuracyMatrix({self.num_tasks} tasks, {self.learned()} learned)"


def format_matrix(R, task_names: Sequence[str] | None = None, digits: int = 1) -> str:
    """A markdown table of R in percent: one row per stage ("after <task>"), one column per task."""
    R = np.asarray(R, dtype=np.float64)
    names = list(task_names) if task_names is not None else [str(j) for j in range(R.shape[1])]
    lines = ["| after \\ on | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for i, row in enumerate(R):
        cells = ["" if math.isnan(v) else f"{100 * v:.{digits}f}" for v in row]
        lines.append(f"| {names[i]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_table(rows: Iterable[dict], columns: Sequence[str] | None = None, digits: int = 2) -> str:
    """A markdown table of dict rows (floats to ``digits`` places); columns default to the first row's keys."""
    rows = list(rows)
    if not rows:
        return ""
    columns = list(columns) if columns is not None else list(rows[0])

    def cell(v) -> str:
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.{digits}f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
