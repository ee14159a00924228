"""The public names: none is shadowed by a submodule, whatever is imported first."""

import importlib
import pkgutil
import subprocess
import sys
import types

import clustermgr as cm


def _all_submodules() -> list[str]:
    return [m.name for m in pkgutil.walk_packages(cm.__path__, "clustermgr.")]


def test_no_public_name_is_a_submodule_after_importing_every_submodule():
    code = (
        "import importlib, pkgutil, types, clustermgr as cm\n"
        "for m in pkgutil.walk_packages(cm.__path__, 'clustermgr.'):\n"
        "    try:\n"
        "        importlib.import_module(m.name)\n"
        "    except ImportError:\n"
        "        pass  # an optional back end's library is missing: not a name clash\n"
        "bad = [n for n in cm.__all__ if isinstance(getattr(cm, n), types.ModuleType)]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_every_lazy_name_resolves_to_its_definition():
    for name in cm.__all__:
        value = getattr(cm, name)
        assert not isinstance(value, types.ModuleType), name
    for name, module in cm._LAZY.items():
        assert getattr(cm, name) is getattr(importlib.import_module(f"clustermgr.{module}"), name)
    assert not set(cm.__all__) & {m.rsplit(".", 1)[1] for m in _all_submodules()}


def _nested_pmap(x):
    import clustermgr

    return sum(clustermgr.pmap(abs, [-x, -x]))


def test_nested_pmap_after_a_pmap_batch(cluster):
    import clustermgr.mapping  # noqa: F401 - the import that once shadowed cm.pmap

    assert cm.pmap(abs, [-1, -2]) == [1, 2]  # each worker has run a pmap batch
    assert cm.pmap(_nested_pmap, [1, 2, 3]) == [2, 4, 6]
    assert callable(cm.pmap) and cm.pmap.__module__ == "clustermgr.mapping"
