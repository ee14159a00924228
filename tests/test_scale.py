"""Many workers on a 2-core machine."""

import pytest

import clustermgr as cm


@pytest.mark.slow
def test_50_workers_join_and_run_pmap(fresh):
    ids = cm.addprocs(50, timeout=120)
    assert ids == list(range(2, 52)) and cm.nworkers() == 50
    where = cm.pmap(lambda x: (x, cm.myid()), range(500))
    assert [x for x, _ in where] == list(range(500))
    assert len({w for _, w in where}) > 25  # the work reached most of them
    cm.rmprocs(ids)
    assert cm.workers() == [1]
