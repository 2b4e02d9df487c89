"""Issue 14 through the mm stack (real mmdet / mmengine on the toy COCO data, CPU; no mocks, no skips):

* a run killed with SIGKILL and continued with ``--resume`` follows the uninterrupted run: the
  checkpoint carries the random generators' states (``DiNATRNGStateHook``), so the resumed run
  draws the same drop-path masks, RPN / RoI samples and flips, and logs the same losses;
* a cyclic checkpoint in a backbone ``init_cfg`` is an error, not a hang (the torch-only entry
  points are in tests/test_reliability.py).
"""
import io
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from mmengine.config import Config
from mmengine.registry import init_default_scope
from test_reliability import time_limit
from test_mm_train import (  # noqa: F401  (toy_data: the module's autouse fixture, makes the data)
    DET_CFG, ROOT, SEG_CFG, TOOLS, _assert_weights_only_loadable, _free_port, _opts, _scalars, mm_train_tool,
    toy_data)

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
    # bit-identical on CPU; without the generator states: 4.4373 against 4.4296 at iteration 5
    for i in resumed:
        assert abs(resumed[i] - reference[i]) <= 1e-6 * abs(reference[i]), (i, resumed, reference)

    final_whole = torch.load(os.path.join(whole, f"iter_{ITERS}.pth"), map_location="cpu")["state_dict"]
    final_resumed = torch.load(os.path.join(killed, f"iter_{ITERS}.pth"), map_location="cpu")["state_dict"]
    for key, value in final_whole.items():
        torch.testing.assert_close(final_resumed[key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_two_process_ddp_resume_restores_every_ranks_generators(tmp_path):
    """Under DDP each rank has its own streams (``diff_rank_seed``: its own seed too; one data
    worker per rank): the saving rank gathers them all and each rank gets its own back. A rank
    given another rank's state would compute other gradients, which the all-reduce carries into
    rank 0's logged losses from the second resumed iteration on."""
    def run(work, iters, *extra):
        env = dict(os.environ, PORT=str(_free_port()), PYTHON=sys.executable, OMP_NUM_THREADS="1")
        opts = _opts(iters, 2, ["randomness.diff_rank_seed=True", "train_dataloader.num_workers=1"], log=1)
        cmd = ["bash", os.path.join(TOOLS, "dist_train.sh"), SEG_CFG, "2", "--work-dir", str(work), *extra, *opts]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
        return proc.stdout + proc.stderr

    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    run(whole, 4)
    run(resumed, 2)
    states = _assert_weights_only_loadable(str(resumed / "iter_2.pth"))["meta"]["rng_states"]
    assert len(states) == 2 and not torch.equal(states[0]["torch"], states[1]["torch"])  # one per rank
    out = run(resumed, 4, "--resume")
    assert "random generator states of iteration 2 restored" in out, out[-6000:]
    reference, continued = _losses(str(whole)), _losses(str(resumed))
    assert sorted(continued) == [3, 4]
    print(f"DDP uninterrupted {reference}, resumed {continued}")
    # bit-identical on CPU; with rank 1 given rank 0's states: 1.60887 against 1.60916 at iteration 4
    for i in continued:
        assert abs(continued[i] - reference[i]) <= 1e-6 * abs(reference[i]), (i, continued, reference)


def test_cyclic_checkpoint_in_a_backbone_init_cfg_is_an_error(tmp_path):
    from mmdet.registry import MODELS

    cyclic = {}
    cyclic["model"] = {"module": cyclic}
    path = tmp_path / "cyclic.pth"
    torch.save(cyclic, path)
    cfg = Config.fromfile(DET_CFG)
    cfg.model.backbone.init_cfg = dict(type="Pretrained", checkpoint=str(path))
    init_default_scope("mmdet")
    detector = MODELS.build(cfg.model)
    with time_limit(), pytest.raises(ValueError, match=r"is malformed: the wrapper at model\.module .*\(a cycle\)"):
        detector.init_weights()


def _draws():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_rng_state_round_trip_and_validation_leaves_the_streams_alone():
    from dinat_backbone.mm import DiNATRNGStateHook, rng_state, set_rng_state

    saved = rng_state()
    expected = _draws()
    set_rng_state(saved)
    assert _draws() == expected
    # through torch.save / weights_only torch.load, as in a checkpoint
    buffer = io.BytesIO()
    set_rng_state(saved)
    torch.save({"meta": {"rng_states": [rng_state()]}}, buffer)
    _draws()
    buffer.seek(0)
    set_rng_state(torch.load(buffer, weights_only=True)["meta"]["rng_states"][0])
    assert _draws() == expected

    hook = DiNATRNGStateHook()
    set_rng_state(saved)
    hook.before_val(None)
    _draws(), _draws()  # what a validation might consume
    hook.after_val(None)
    assert _draws() == expected
