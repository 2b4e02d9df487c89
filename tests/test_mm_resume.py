"""A run killed with SIGKILL and continued with ``--resume`` follows the uninterrupted run (issue 14
item 5): the checkpoint carries the random generators' states (``DiNATRNGStateHook``), so the
resumed run draws the same drop-path masks, RPN / RoI samples and flips, and logs the same losses.
Real mmdet / mmengine on the toy COCO data (CPU); no mocks, no skips."""
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import torch

from test_mm_train import (  # noqa: F401  (toy_data: the module's autouse fixture, makes the data)
    DET_CFG, ROOT, TOOLS, _assert_weights_only_loadable, _opts, _scalars, mm_train_tool, toy_data)

ITERS, KILL_AFTER = 8, 4


def _losses(work):
    """{iteration: logged loss} of the newest run in ``work`` (logged every iteration)."""
    return {r["iter"]: r["loss"] for r in _scalars(work) if "loss" in r}


def _train_until_checkpoint_then_sigkill(work, opts, env):
    """tools/train.py in a subprocess, killed with SIGKILL as soon as the iteration-KILL_AFTER
    checkpoint is complete (mmengine writes ``last_checkpoint`` after the file)."""
    proc = subprocess.Popen([sys.executable, os.path.join(TOOLS, "train.py"), DET_CFG, "--work-dir", work, *opts],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    marker = os.path.join(work, "last_checkpoint")

    def latest():
        if not os.path.exists(marker):
            return ""
        with open(marker) as f:
            return f.read().strip()  # empty while mmengine is still writing it

    deadline = time.time() + 900
    try:
        while not latest() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        out = proc.communicate()[0]
    assert proc.returncode == -signal.SIGKILL, out[-4000:]
    assert latest().endswith(f"iter_{KILL_AFTER}.pth"), (latest(), out[-4000:])
    return latest()


def test_sigkill_and_resume_logs_the_losses_of_the_uninterrupted_run(tmp_path):
    threads = torch.get_num_threads()  # the same in both processes: float sums depend on it
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=ROOT)

    def opts():  # a loss logged every iteration, no validation; a new visualizer per run
        return _opts(ITERS, KILL_AFTER, log=1)

    whole = str(tmp_path / "uninterrupted")
    mm_train_tool.main([DET_CFG, "--work-dir", whole, *opts()])
    reference = _losses(whole)
    assert sorted(reference) == list(range(1, ITERS + 1))

    killed = str(tmp_path / "killed")
    ckpt_path = _train_until_checkpoint_then_sigkill(killed, opts(), env)
    ckpt = _assert_weights_only_loadable(ckpt_path)  # the generator states add no pickled globals
    states = ckpt["meta"]["rng_states"]
    assert len(states) == 1 and set(states[0]) >= {"python", "numpy", "torch"}
    assert _losses(killed) == {i: reference[i] for i in range(1, KILL_AFTER + 1)}  # the same run so far

    # the test process's own generators must not matter: the checkpoint's states are used
    random.seed(123), np.random.seed(123), torch.manual_seed(123)
    mm_train_tool.main([DET_CFG, "--work-dir", killed, "--resume", *opts()])
    resumed = _losses(killed)
    assert sorted(resumed) == list(range(KILL_AFTER + 1, ITERS + 1))
    print(f"uninterrupted {reference}, resumed after SIGKILL {resumed}")
    for i in resumed:  # (without the generator states: 4.4373 against 4.4296 at iteration 5)
        assert abs(resumed[i] - reference[i]) <= 1e-4 * abs(reference[i]), (i, resumed, reference)

    final_whole = torch.load(os.path.join(whole, f"iter_{ITERS}.pth"), map_location="cpu")["state_dict"]
    final_resumed = torch.load(os.path.join(killed, f"iter_{ITERS}.pth"), map_location="cpu")["state_dict"]
    for key, value in final_whole.items():
        torch.testing.assert_close(final_resumed[key], value, rtol=1e-4, atol=1e-5, msg=key)
