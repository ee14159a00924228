"""Bodies: cloudpickle protocol 5 with large buffers out of band."""

import numpy as np

from clustermgr import serialize


def test_small_objects_are_one_frame():
    frames = serialize.dumps({"a": [1, 2, 3], "b": np.arange(10)})
    assert len(frames) == 1
    out = serialize.loads(frames)
    assert out["a"] == [1, 2, 3] and (out["b"] == np.arange(10)).all()


def test_large_arrays_travel_out_of_band_without_copy():
    arr = np.arange(1_000_000, dtype=np.float64)
    frames = serialize.dumps(arr)
    assert len(frames) == 2
    assert len(frames[0]) < 1000  # the pickle stream holds no data
    # the frame is the array's own memory, not a copy
    assert np.shares_memory(np.frombuffer(frames[1], dtype=np.float64), arr)
    back = serialize.loads(frames)
    assert (back == arr).all()


def test_closures_pickle_by_value():
    k = 3
    frames = serialize.dumps(lambda x: x * k)
    assert serialize.loads(frames)(2) == 6


def test_importable_objects_take_the_c_pickler():
    import pickle

    payload = (abs, [1, 2], {"k": 3})
    assert serialize.pickle_bytes(payload) == pickle.dumps(payload, protocol=5)


def test_a_function_of_the_users_script_goes_by_value():
    # pickle would write a reference to __main__.script_fn, which a worker cannot import
    import sys

    main = sys.modules["__main__"]
    ns = {"__name__": "__main__"}
    exec("def script_fn(x):\n    return x + 41\n", ns)
    fn = ns["script_fn"]
    main.script_fn = fn
    try:
        frames = serialize.dumps(fn)
    finally:
        del main.script_fn
    assert serialize.loads(frames)(1) == 42  # no __main__.script_fn any more: by value


def test_large_buffers_are_not_doubled_when_the_c_pickler_gives_way():
    arr = np.arange(100_000, dtype=np.float64)
    frames = serialize.dumps((arr, lambda: 1))  # the lambda sends it to cloudpickle
    assert len(frames) == 2
    back, fn = serialize.loads(frames)
    assert (back == arr).all() and fn() == 1


def test_a_reference_is_counted_once_when_the_c_pickler_gives_way(cluster):
    import clustermgr as cm
    from clustermgr.cluster import master

    fut = cm.Future()
    serialize.dumps((fut, lambda: 1), 2)  # tried by pickle (refused), then cloudpickle
    holders = master().refs.owned[("f", fut.id)][1]
    assert holders == {2: 1}
