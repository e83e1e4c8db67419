"""Fresh-process tests: checkpoint resume and two-process DDP (gloo on CPU) through LayerwiseTrainer."""

import os
import socket
import sys
import warnings

import pytest
import torch
from glue_fixtures import Started

HERE = os.path.dirname(__file__)
RUN = os.path.join(HERE, "trainer_run.py")


def _start(cmd, cwd):
    return Started(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.path.dirname(HERE)}, cwd=cwd)


def _run(cmd, cwd):
    """Run to the end (15 minutes allowed: a loaded 2-core machine slows two gloo processes 3-10x). A rank killed by
    SIGABRT at exit (seen twice in about nine runs on a loaded machine in November 2026; not reproduced in 18 runs
    under load on 2026-12-02; the ranks now meet at a barrier before ending the process group) is run once more, with
    a warning that keeps the first stderr, so a second failure still fails and a flake is on record."""
    done = _start(cmd, cwd).wait(check=False, timeout=900)
    if done.returncode != 0 and "SIGABRT" in done.stderr:
        warnings.warn(f"a rank aborted (SIGABRT); running once more. stderr: {done.stderr[-1500:]}", stacklevel=2)
        done = _start(cmd, cwd).wait(check=False, timeout=900)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-4000:]}"


def _params(path, rank=0):
    return torch.load(os.path.join(path, f"final_rank{rank}.pt"))["params"]


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["--unfreeze-every", "2"]], ids=["gradual"])  # static: tests/test_resume_exact.py
def test_resume_equals_straight_run(tmp_path, extra):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    reference = _start([sys.executable, RUN, str(straight), "--max-steps", "12", *extra], tmp_path)  # meanwhile:
    # first process: stops after the checkpoint at step 6 (as if killed); second: a fresh process resumes
    _run([sys.executable, RUN, str(resumed), "--max-steps", "12", "--save-steps", "6", "--stop-at", "6", *extra],
         tmp_path)
    assert (resumed / "checkpoint-6").is_dir()
    _run([sys.executable, RUN, str(resumed), "--max-steps", "12", "--save-steps", "6", "--resume", *extra], tmp_path)
    reference.wait(timeout=900)
    assert _max_diff(_params(straight), _params(resumed)) <= 1e-6


@pytest.mark.slow
def test_two_process_gradual_unfreezing_matches_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--max-steps", "10", "--unfreeze-every", "2", "--no-dropout"]
    reference = _start([sys.executable, RUN, str(one), "--batch", "8", *common], tmp_path)  # both at once
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
          RUN, str(two), "--batch", "4", *common], tmp_path)
    reference.wait(timeout=900)
    rank0, rank1 = _params(two, 0), _params(two, 1)
    assert _max_diff(rank0, rank1) == 0.0  # blocks unfrozen mid-run were synchronized, not trained per rank
    assert _max_diff(_params(one), rank0) <= 1e-5
    # and the unfrozen blocks really trained
    start = torch.load(os.path.join(two, "final_rank0.pt"))["log"]
    assert any("grad_norm/depth1" in h for h in start)
