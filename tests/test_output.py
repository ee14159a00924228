"""Worker stdout/stderr forwarded to the master."""

import sys

import clustermgr as cm


def test_print_is_forwarded_with_prefix(cluster, capsys):
    cm.remotecall_fetch(lambda: print("hello from a task"), 2)
    assert "From worker 2: hello from a task" in capsys.readouterr().out


def test_output_precedes_the_result(cluster):
    lines = []
    cm.configure(output=lambda wid, line, stream: lines.append((wid, line, stream)))
    try:
        def chatty():
            print("partial line without newline", end="")
            print("to stderr", file=sys.stderr)
            return "done"

        assert cm.remotecall_fetch(chatty, 3) == "done"
        assert (3, "to stderr", "stderr") in lines
        assert (3, "partial line without newline", "stdout") in lines
    finally:
        cm.configure(output="print")


def test_output_can_be_silenced(cluster, capsys):
    cm.configure(output=None)
    try:
        cm.remotecall_fetch(lambda: print("nobody sees this"), 2)
        assert "nobody sees this" not in capsys.readouterr().out
    finally:
        cm.configure(output="print")


def test_bad_setting_lists_valid_ones():
    import pytest

    with pytest.raises(TypeError, match="valid settings"):
        cm.configure(heartbeat=3)
