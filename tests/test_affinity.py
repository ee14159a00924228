"""LocalAffinityManager: each worker's real CPU affinity, as the worker sees it."""

import os

import pytest

import clustermgr as cm
from clustermgr.cluster import master
from clustermgr.managers import affinity
from clustermgr.managers.affinity import AffinityMode, LocalAffinityManager, parse_cpulist, plan

ALLOWED = sorted(os.sched_getaffinity(0))


def affinities_by_index(ids):
    """{launch index: the worker's own os.sched_getaffinity(0)}"""
    return {master().workers[w].launch.handle.index: cm.remotecall_fetch(
        lambda: sorted(os.sched_getaffinity(0)), w) for w in ids}


def test_cpulist_parsing():
    assert parse_cpulist("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]


def test_plans():
    assert plan(3, AffinityMode.COMPACT, [0, 1, 2, 3], 1) == [[0], [1], [2]]
    assert plan(2, AffinityMode.COMPACT, [0, 1, 2, 3], 2) == [[0, 1], [2, 3]]
    assert plan(3, AffinityMode.COMPACT, [4, 5], 1) == [[4], [5], [4]]  # wraps around
    two_nodes = [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert plan(4, AffinityMode.BALANCED, range(8), 1, two_nodes) == [[0], [4], [1], [5]]
    assert plan(2, AffinityMode.BALANCED, range(8), 2, two_nodes) == [[0, 1], [4, 5]]


def test_compact_pins_each_worker(fresh):
    ids = cm.addprocs(LocalAffinityManager(len(ALLOWED), mode=AffinityMode.COMPACT))
    assert affinities_by_index(ids) == {i: [cpu] for i, cpu in enumerate(ALLOWED)}


def test_balanced_spreads_across_nodes(fresh, monkeypatch):
    # this VM has one node; pretend each allowed CPU is a node of its own
    monkeypatch.setattr(affinity, "cpu_groups", lambda allowed: [[c] for c in allowed])
    ids = cm.addprocs(LocalAffinityManager(len(ALLOWED)))
    assert affinities_by_index(ids) == {i: [cpu] for i, cpu in enumerate(ALLOWED)}


def test_explicit_affinities_and_several_cores(fresh):
    last = ALLOWED[-1]
    ids = cm.addprocs(LocalAffinityManager(affinities=[last, last, ALLOWED]))
    assert affinities_by_index(ids) == {0: [last], 1: [last], 2: ALLOWED}
    ids2 = cm.addprocs(LocalAffinityManager(1, cores_per_worker=len(ALLOWED)))
    assert cm.remotecall_fetch(lambda: sorted(os.sched_getaffinity(0)), ids2[0]) == ALLOWED


def test_gpus_are_handed_out(fresh):
    ids = cm.addprocs(LocalAffinityManager(2, mode=AffinityMode.COMPACT, gpus=[3, 5]))
    got = {master().workers[w].launch.handle.index:
           cm.remotecall_fetch(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"), w) for w in ids}
    assert got == {0: "3", 1: "5"}


def test_bad_options():
    with pytest.raises(ValueError, match="not among those this process may use"):
        LocalAffinityManager(affinities=[max(ALLOWED) + 100])
    with pytest.raises(ValueError, match="cores_per_worker"):
        LocalAffinityManager(1, cores_per_worker=0)
    with pytest.raises(ValueError, match="AffinityMode"):
        LocalAffinityManager(1, mode="compact")


def test_missing_taskset_is_a_clear_launch_error(fresh, monkeypatch):
    monkeypatch.setattr(affinity.shutil, "which", lambda name: None)
    with pytest.raises(cm.LaunchError, match="taskset is not installed"):
        cm.addprocs(LocalAffinityManager(1))
