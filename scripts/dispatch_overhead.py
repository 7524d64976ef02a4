"""Per-call cost of choosing a backend (``impresslearn.backends.select``), cached against deciding anew.

Every op call selects its kernel. Run: ``OMP_NUM_THREADS=1 python scripts/dispatch_overhead.py``.
Prints, per case, the best-of-repeats microseconds per call of the full decision (what every
call paid before the cache: read the request, parse the device, probe the kernels; timed as
``select`` right after ``clear_selection_cache``) and of ``select`` with its cache, and their
ratio, all in one run. Then the part of a cached ``select`` that reads ``IMPRESSLEARN_BACKEND``
(it reads the variable on every call, so that setting it takes effect at once), unset and set,
next to one whole ``combine_masks`` call on a small layer, the smallest op call a step makes.
"""

from __future__ import annotations

import argparse
import os
import platform
import timeit

import torch

from impresslearn import backends, ops  # importing ops registers them

CASES = (  # (label, op, backend argument, IMPRESSLEARN_BACKEND, dtype)
    ("automatic fp32", "combine_masks", None, None, torch.float32),
    ("automatic fp64 (falls back)", "combine_masks", None, None, torch.float64),
    ("explicit backend='cpp'", "combine_masks", "cpp", None, torch.float32),
    ("IMPRESSLEARN_BACKEND=cpp", "topk_mask", None, "cpp", torch.float32),
)


SMALL_LAYER, SMALL_K = 64, 3  # a combine this small is all call overhead


def _uncached(op, device, backend, dtype):
    backends.clear_selection_cache()
    return backends.select(op, device, backend, dtype)


def _set_request(value: str | None) -> None:
    """Set ``IMPRESSLEARN_BACKEND`` to ``value``, or unset it for None."""
    if value is None:
        os.environ.pop(backends.ENV_VAR, None)
    else:
        os.environ[backends.ENV_VAR] = value


def _small_combine():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(SMALL_LAYER, generator=generator)
    bank = ops.pack_masks(torch.rand(SMALL_K, SMALL_LAYER, generator=generator) < 0.5)
    alpha = torch.rand(SMALL_K, generator=generator)
    return lambda: ops.combine_masks(weight, bank, alpha)


def _per_call_us(fn, number: int, repeat: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20000, help="calls per timing")
    parser.add_argument("--repeat", type=int, default=5, help="timings per case; the best is kept")
    args = parser.parse_args(argv)
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, python {platform.python_version()}, {cpu}, load average {os.getloadavg()[0]:.2f}")
    device = torch.empty(0).device  # what the ops pass: a tensor's device
    saved = os.environ.get(backends.ENV_VAR)
    print(f"{'case':<30} {'decide (us)':>12} {'select (us)':>12} {'ratio':>7}")
    try:
        for label, op, backend, env, dtype in CASES:
            _set_request(env)
            chosen = backends.select(op, device, backend, dtype)
            assert chosen == _uncached(op, device, backend, dtype)
            decide = _per_call_us(lambda: _uncached(op, device, backend, dtype), args.number, args.repeat)
            cached = _per_call_us(lambda: backends.select(op, device, backend, dtype), args.number, args.repeat)
            print(f"{label:<30} {decide:>12.2f} {cached:>12.2f} {decide / cached:>6.1f}x  ({op} -> {chosen})")
        read = {}
        for state, value in (("unset", None), ("set", "cpp")):
            _set_request(value)
            read[state] = _per_call_us(backends.requested_backend, args.number, args.repeat)
        _set_request(None)
        call = _per_call_us(_small_combine(), max(1, args.number // 20), args.repeat)
        print(f"reading {backends.ENV_VAR} (backends.requested_backend, in every select): {read['unset']:.2f} us "
              f"unset, {read['set']:.2f} us set; one combine_masks call ({SMALL_LAYER} weights, K = {SMALL_K}): "
              f"{call:.1f} us, of which the read unset is {100 * read['unset'] / call:.1f}%")
    finally:
        _set_request(saved)


if __name__ == "__main__":
    main()
