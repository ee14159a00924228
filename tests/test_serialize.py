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
