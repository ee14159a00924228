"""joblib (and scikit-learn through it) and asyncio, with the real libraries."""

import asyncio
import os
import time

import joblib
import pytest

import clustermgr as cm
import clustermgr.joblib_backend  # noqa: F401 - registers the "clustermgr" backend


def test_joblib_parallel_runs_on_the_workers(cluster):
    with joblib.parallel_config(backend="clustermgr"):
        out = joblib.Parallel(n_jobs=-1)(joblib.delayed(lambda x: (x * x, cm.myid()))(x) for x in range(40))
    assert [v for v, _ in out] == [x * x for x in range(40)]
    assert {w for _, w in out} == set(cluster)  # spread over both workers, none on the master


def test_joblib_errors_and_abort(cluster):
    def fail_at(x):
        if x == 5:
            raise KeyError("five")
        time.sleep(0.01)
        return x

    with joblib.parallel_config(backend="clustermgr"), pytest.raises(KeyError, match="five"):
        joblib.Parallel(n_jobs=2, batch_size=1)(joblib.delayed(fail_at)(x) for x in range(50))
    with joblib.parallel_config(backend="clustermgr"):  # the backend is usable again
        assert joblib.Parallel(n_jobs=2)(joblib.delayed(abs)(-x) for x in range(4)) == [0, 1, 2, 3]


def test_joblib_auto_batching_starts_afresh_for_each_call(cluster):
    # a reused Parallel must not carry the batch size it learnt from tiny tasks into the
    # next call (which may run long tasks)
    p = joblib.Parallel(n_jobs=2, backend="clustermgr")
    p(joblib.delayed(abs)(-x) for x in range(3000))
    backend = p._backend
    assert backend._effective_batch_size == backend._DEFAULT_EFFECTIVE_BATCH_SIZE
    assert backend._smoothed_batch_duration == backend._DEFAULT_SMOOTHED_BATCH_DURATION


def test_joblib_starts_workers_when_there_are_none(fresh):
    with joblib.parallel_config(backend="clustermgr", n_jobs=2):
        out = joblib.Parallel()(joblib.delayed(os.getpid)() for _ in range(10))
    assert os.getpid() not in out and cm.nworkers() == 2
    cm.rmprocs(cm.workers())


def test_scikit_learn_n_jobs_runs_on_the_cluster(cluster):
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    x, y = make_classification(n_samples=200, n_features=8, random_state=0)
    with joblib.parallel_config(backend="clustermgr"):
        scores = cross_val_score(LogisticRegression(), x, y, cv=4, n_jobs=2)
    assert len(scores) == 4 and all(0.5 < s <= 1 for s in scores)


def test_awaitables_do_not_block_the_event_loop(cluster):
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.create_task(ticker())
        a, b = await asyncio.gather(cm.remotecall_async(lambda: (time.sleep(0.5), cm.myid())[1], cluster[0]),
                                    cm.spawnat_async("any", abs, -3))
        direct = await cm.remotecall(pow, cluster[1], 2, 10)   # a Future is awaitable itself
        fetched = await cm.fetch_async(cm.remotecall(abs, cluster[0], -8))
        mapped = await cm.pmap_async(lambda x: x + 1, range(5))
        t.cancel()
        return a, b, direct, fetched, mapped, ticks

    a, b, direct, fetched, mapped, ticks = asyncio.run(main())
    assert (a, b, direct, fetched, mapped) == (cluster[0], 3, 1024, 8, [1, 2, 3, 4, 5])
    assert ticks >= 20  # the loop kept running through the 0.5 s remote call


def test_awaited_errors_raise_like_fetch(cluster):
    async def main():
        with pytest.raises(cm.RemoteError, match="ZeroDivisionError"):
            await cm.remotecall_async(lambda: 1 / 0, cluster[0])

    asyncio.run(main())


def test_the_library_logs_under_clustermgr_and_prints_nothing(fresh, capsys, caplog):
    import logging

    caplog.set_level(logging.DEBUG, logger="clustermgr")
    with cm.ClusterExecutor(2) as ex:
        assert list(ex.map(abs, [-1, -2])) == [1, 2]
        with pytest.raises(cm.WorkerLostError):
            ex.submit(os._exit, 9).result(60)
    assert capsys.readouterr() == ("", "")
    names = {r.name for r in caplog.records}
    assert names == {"clustermgr"}
    assert any("executor worker" in r.message and r.levelno == logging.WARNING for r in caplog.records)


def sklearn_workloads():
    """scikit-learn's parallel entry points on a small problem (also benchmarks/scikit.py)."""
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.inspection import permutation_importance
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, cross_val_score

    x, y = make_classification(n_samples=300, n_features=8, random_state=0)
    grid = GridSearchCV(LogisticRegression(max_iter=500), {"C": [0.1, 1.0, 10.0]}, cv=3, n_jobs=2)
    grid.fit(x, y)
    forest = RandomForestClassifier(n_estimators=20, random_state=0, n_jobs=2).fit(x, y)
    return {
        "grid": (grid.best_params_, list(grid.cv_results_["mean_test_score"])),
        "forest": forest.predict_proba(x).tolist(),
        "cv": list(cross_val_score(LogisticRegression(max_iter=500), x, y, cv=4, n_jobs=2)),
        "importance": permutation_importance(forest, x, y, n_repeats=3, random_state=0,
                                             n_jobs=2).importances_mean.tolist(),
    }


def test_scikit_learn_gives_the_same_results_as_under_loky(cluster):
    from joblib.externals.loky import get_reusable_executor

    with joblib.parallel_config(backend="loky"):
        expected = sklearn_workloads()
    get_reusable_executor().shutdown(wait=True)  # loky's workers end here, not at exit
    with joblib.parallel_config(backend="clustermgr"):
        got = sklearn_workloads()
    assert got == expected


def inner_sum(i):
    with joblib.parallel_config(backend="clustermgr"):
        return sum(joblib.Parallel(n_jobs=2, timeout=60)(joblib.delayed(abs)(-j) for j in range(i)))


def test_joblib_nested_on_the_cluster_does_not_deadlock(cluster):
    """Every worker runs an outer task that waits on inner tasks sent to the workers: the
    waits keep serving those calls (joblib_backend.retrieve_result)."""
    with joblib.parallel_config(backend="clustermgr"):
        got = joblib.Parallel(n_jobs=2, timeout=120)(joblib.delayed(inner_sum)(i) for i in range(6))
    assert got == [sum(range(i)) for i in range(6)]
