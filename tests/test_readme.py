"""The README's printed examples are what the code prints."""

from __future__ import annotations

from pathlib import Path

import clustermgr as cm
from clustermgr.managers import ElasticManager

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def printed_after(marker: str) -> list[str]:
    """The ``# ...`` lines right after the line *marker* in the README's code."""
    lines = README.splitlines()
    start = next(k for k, line in enumerate(lines) if line.strip() == marker) + 1
    out = []
    for line in lines[start:]:
        if not line.startswith("# "):
            break
        out.append(line[2:])
    return out


def test_the_elastic_managers_printout(fresh, tmp_path):
    shown = printed_after("print(em)")
    assert shown, "the README no longer shows print(em)"
    cookie = tmp_path / "cookie"
    em = ElasticManager(addr="127.0.0.1", port=0)
    try:
        em.write_cookie_file(str(cookie))
        actual = str(em).replace(em.address.removeprefix("tcp://"), "10.1.2.3:9009")
        actual = actual.replace(str(cookie), "/shared/home/me/.clustermgr-cookie")
        assert actual.splitlines() == shown
    finally:
        cm.shutdown()



def shell_block(first_directive: str) -> str:
    """The README's ```sh block of a job script whose second line is *first_directive*."""
    start = README.index(f"```sh\n#!/bin/bash\n{first_directive}") + len("```sh\n")
    return README[start:README.index("```", start)]


def test_the_job_scripts_shown_are_what_job_script_prints():
    from clustermgr.managers.pbs import PBSManager
    from clustermgr.managers.sge import SGEManager
    from clustermgr.managers.slurm import SlurmManager

    slurm = SlurmManager(4, partition="debug", t="00:30:00", mem_per_cpu=2000, exclusive=True,
                         log_dir="/home/me/logs")
    sge = SGEManager(4, qsub_flags=["-P", "proj"], walltime="1:00:00", wd="/scratch", log_dir="/home/me/logs")
    pbs = PBSManager(4, cores=2, walltime="01:00:00", queue="batch", qsub_flags=["-W", "group_list=proj"],
                     log_dir="/home/me/logs", dialect="torque")
    for manager, directive in ((slurm, "#SBATCH --job-name"), (sge, "#$ -S /bin/bash"), (pbs, "#PBS -N")):
        printed = manager.job_script(python="/opt/venv/bin/python", dir="/home/me/project")
        assert shell_block(directive) == printed
