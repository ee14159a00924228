"""scikit-learn's n_jobs under joblib's "clustermgr" backend, next to loky, in one run.

    python -m benchmarks.scikit [--quick] [--jobs 2] [--repeats 3]

Times GridSearchCV, RandomForestClassifier(n_jobs=...), cross_val_score and
permutation_importance on one synthetic problem with each backend (after a warm-up call
that starts the workers), checks that both give the same results, and writes
``benchmarks/results/scikit.{json,md}`` with the time ratios (the goal: ≤ 1.0).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def workloads(quick: bool, jobs: int) -> dict[str, Callable[[], Any]]:
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.inspection import permutation_importance
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, cross_val_score

    x, y = make_classification(n_samples=500 if quick else 3000, n_features=20, random_state=0)
    trees = 20 if quick else 200
    forest = RandomForestClassifier(n_estimators=trees, random_state=0, n_jobs=jobs).fit(x, y)

    def grid() -> Any:
        g = GridSearchCV(LogisticRegression(max_iter=1000), {"C": [0.01, 0.1, 1.0, 10.0, 100.0]},
                         cv=5, n_jobs=jobs).fit(x, y)
        return list(g.cv_results_["mean_test_score"])

    return {
        "GridSearchCV (5 C × 5 folds)": grid,
        f"RandomForestClassifier({trees} trees).fit":
            lambda: RandomForestClassifier(n_estimators=trees, random_state=0, n_jobs=jobs)
            .fit(x, y).predict_proba(x[:50]).tolist(),
        "cross_val_score (10 folds)":
            lambda: list(cross_val_score(LogisticRegression(max_iter=1000), x, y, cv=10, n_jobs=jobs)),
        "permutation_importance (5 repeats)":
            lambda: permutation_importance(forest, x, y, n_repeats=5, random_state=0,
                                           n_jobs=jobs).importances_mean.tolist(),
    }


def run(backend: str, quick: bool, jobs: int, repeats: int) -> dict[str, tuple[float, Any]]:
    import joblib

    out: dict[str, tuple[float, Any]] = {}
    with joblib.parallel_config(backend=backend):
        for name, fn in workloads(quick, jobs).items():
            result = fn()  # warm-up: workers started, imports done
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            out[name] = (statistics.median(times), result)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller problem, one repeat")
    parser.add_argument("--jobs", type=int, default=2, help="n_jobs (default 2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    from joblib.externals.loky import get_reusable_executor

    import clustermgr as cm
    import clustermgr.joblib_backend  # noqa: F401 - registers "clustermgr"

    cm.configure(output=None)
    loky = run("loky", args.quick, args.jobs, repeats)
    get_reusable_executor().shutdown(wait=True)
    ours = run("clustermgr", args.quick, args.jobs, repeats)
    cm.shutdown()
    rows = {name: {"loky_s": loky[name][0], "clustermgr_s": ours[name][0],
                   "ratio": ours[name][0] / loky[name][0], "same_results": ours[name][1] == loky[name][1]}
            for name in loky}
    lines = [f"| scikit-learn call (n_jobs={args.jobs}) | loky (s) | clustermgr (s) | ratio | same results |",
             "|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['loky_s']:.3f} | {r['clustermgr_s']:.3f} | {r['ratio']:.2f} "
                     f"| {'yes' if r['same_results'] else 'NO'} |")
    text = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scikit.json").write_text(json.dumps(rows, indent=2))
    (args.out / "scikit.md").write_text(text + "\n")
    print(text)
    if not all(r["same_results"] for r in rows.values()):
        raise SystemExit("clustermgr and loky gave different results")


if __name__ == "__main__":
    main()
