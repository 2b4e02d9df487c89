"""dinat_backbone.mm as a package: importing it registers what configs name and changes nothing
else; ``setup_training`` (and the ``enable_training`` module for mmdet's own tools) adds the
training infrastructure; a registry name another class holds is an error; the mmengine internals
the RNG-state hook reads are checked against the installed mmengine. Real mmengine / mmdet /
mmseg objects, no mocks, no skips."""
import itertools
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import mmdet  # noqa: F401  (a missing mm stack is an error, not a skip)
import mmseg  # noqa: F401
from mmengine.hooks import CheckpointHook
from mmengine.registry import Registry
from mmengine.runner import IterBasedTrainLoop

from conftest import ROOT

# what a process holds of the state dinat_backbone.mm could touch, as JSON; imported first:
# everything dinat_backbone.mm itself imports (torch's own modules add torch classes to the
# allow-list as they load), so that only its own effect shows
_SNAPSHOT = r"""
import json, sys
import torch
import dinat_backbone  # the core
import torch.nn.modules.module as torch_module
import mmengine.hooks, mmengine.logging, mmengine.model, mmengine.optim, mmengine.runner  # noqa: F401
import mmdet.registry, mmseg.registry
from mmengine.registry import HOOKS, MODEL_WRAPPERS, OPTIM_WRAPPER_CONSTRUCTORS

def snapshot():
    return dict(
        safe_globals=sorted(repr(g) for g in torch.serialization.get_safe_globals()),
        hooks=sorted(HOOKS.module_dict), model_wrappers=sorted(MODEL_WRAPPERS.module_dict),
        constructors=sorted(OPTIM_WRAPPER_CONSTRUCTORS.module_dict),
        mmdet_models=sorted(mmdet.registry.MODELS.module_dict), mmseg_models=sorted(mmseg.registry.MODELS.module_dict),
        torch_module_hooks=[len(getattr(torch_module, n)) for n in sorted(dir(torch_module))
                            if n.startswith("_global_") and n.endswith("hooks")],
        meta_path=[repr(f) for f in sys.meta_path], path_hooks=[repr(h) for h in sys.path_hooks])
"""


def _run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _SNAPSHOT + code], cwd=ROOT, check=True, capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                             p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)))
    return json.loads(out.stdout.strip().splitlines()[-1])


def _added(before: dict, after: dict) -> dict:
    """What changed between two snapshots: added names for the registries, else the new value."""
    changed = {}
    for key in before:
        if before[key] == after[key]:
            continue
        if key.endswith(("hooks", "wrappers", "constructors", "models")) and key != "torch_module_hooks":
            changed[key] = sorted(set(after[key]) - set(before[key]))
        else:
            changed[key] = after[key]
    return changed


def test_import_registers_what_configs_name_and_changes_nothing_else():
    result = _run("before = snapshot()\nimport dinat_backbone.mm\n"
                  "print(json.dumps(dict(before=before, after=snapshot())))")
    assert _added(result["before"], result["after"]) == {
        "hooks": ["DiNATChannelCheckHook"],
        "constructors": ["DiNATLayerDecayOptimizerConstructor"],
        "mmdet_models": ["DiNAT", "DiNAT_s", "NAT"],
        "mmseg_models": ["DiNAT", "DiNAT_s", "NAT"],
    }  # no safe globals, no RNG-state hook, no DDP wrapper, no torch / import hooks


def test_setup_training_adds_the_infrastructure_once():
    result = _run(
        "import dinat_backbone.mm as mm\nfrom mmengine.config import Config\n"
        "imported = snapshot()\ncfg = Config(dict(custom_hooks=[dict(type='DiNATChannelCheckHook')]))\n"
        "mm.setup_training(cfg)\nonce = snapshot()\nmm.setup_training(cfg)\nmm.setup_training()\n"
        "wanted = sorted(repr(g) for g in mm.mm_safe_globals())\n"
        "print(json.dumps(dict(imported=imported, once=once, twice=snapshot(), wanted=wanted,\n"
        "                      hooks=[h['type'] for h in cfg.custom_hooks])))")
    added = _added(result["imported"], result["once"])
    assert added.pop("hooks") == ["DiNATRNGStateHook"] and added.pop("model_wrappers") == ["CPUDistributedDataParallel"]
    assert sorted(added.pop("safe_globals")) == sorted(set(result["imported"]["safe_globals"]) | set(result["wanted"]))
    assert added == {}
    assert result["twice"] == result["once"]  # idempotent
    assert result["hooks"] == ["DiNATChannelCheckHook", "DiNATRNGStateHook"]  # each once, the config's kept


def test_enable_training_module_for_mmdets_own_tools(tmp_path):
    """The documented recipe for mmdet's / mmseg's own tools/train.py (docs/usage.md, block
    mm-own-tools): the config imports dinat_backbone.mm.enable_training and names the hooks;
    mmengine builds them, and the allow-list and the DDP wrapper are there."""
    from test_readme import block

    config = tmp_path / "cfg.py"
    config.write_text(block("mm-own-tools") + "\n")
    result = _run(
        "from mmengine.config import Config\nfrom mmengine.registry import init_default_scope\n"
        f"cfg = Config.fromfile({str(config)!r})\ninit_default_scope('mmdet')\n"
        "built = [type(HOOKS.build(h)).__name__ for h in cfg.custom_hooks]\n"
        "import dinat_backbone.mm as mm\n"
        "wanted = sorted(repr(g) for g in mm.mm_safe_globals())\n"
        "print(json.dumps(dict(after=snapshot(), built=built, wanted=wanted)))")
    assert result["built"] == ["DiNATChannelCheckHook", "DiNATRNGStateHook"]
    assert set(result["wanted"]) <= set(result["after"]["safe_globals"])
    assert "CPUDistributedDataParallel" in result["after"]["model_wrappers"]


# ----------------------------------------------------------------------------------------------
# registry clashes
# ----------------------------------------------------------------------------------------------
class DiNAT(nn.Module):
    """Another package's class under the registry name this package uses."""


def test_a_name_another_class_holds_is_an_error_naming_both():
    import dinat_backbone.mm as mm
    from dinat_backbone.mm.registration import register

    registry = Registry("clash_test")
    registry.register_module(module=DiNAT)
    with pytest.raises(mm.RegistryClashError) as info:
        register(registry, mm.DiNAT)
    msg = str(info.value)
    assert "dinat_backbone.mm.backbones.DiNAT" in msg and f"{__name__}.DiNAT" in msg and "'clash_test'" in msg, msg
    assert registry.get("DiNAT") is DiNAT  # left as it was
    # the same class again (a second import) is no clash
    own = Registry("own_test")
    register(own, mm.DiNAT)
    register(own, mm.DiNAT)
    assert own.get("DiNAT") is mm.DiNAT


def test_import_after_another_package_registered_the_name_fails():
    code = ("from mmdet.registry import MODELS\nimport torch.nn as nn\n"
            "class DiNAT(nn.Module): pass\nMODELS.register_module(module=DiNAT)\n"
            "try:\n    import dinat_backbone.mm\nexcept Exception as e:\n"
            "    print(json.dumps(dict(error=type(e).__name__, msg=str(e), kept=MODELS.get('DiNAT') is DiNAT)))\n"
            "else:\n    print(json.dumps(dict(error=None, msg='imported without an error', kept=False)))\n")
    result = _run(code)
    assert result["error"] == "RegistryClashError" and result["kept"], result
    assert "__main__.DiNAT" in result["msg"] and "dinat_backbone.mm.backbones.DiNAT" in result["msg"], result


# ----------------------------------------------------------------------------------------------
# the mmengine internals DiNATRNGStateHook reads
# ----------------------------------------------------------------------------------------------
def _iter_loop():
    return IterBasedTrainLoop(runner=None, dataloader=torch.utils.data.DataLoader(list(range(4))), max_iters=2)


def test_installed_mmengine_has_the_internals_the_rng_hook_reads():
    from dinat_backbone.mm import mmengine_internals as internals

    hook = CheckpointHook(interval=2, by_epoch=False, save_begin=1, save_last=False)
    internals.check_checkpoint_hook(hook)
    assert (hook.interval, hook.by_epoch, hook.save_begin, hook.save_last) == (2, False, 1, False)
    loop = _iter_loop()
    internals.check_train_loop(loop)
    iterator = internals.dataloader_iterator(loop)
    assert next(iterator).tolist() == [0]  # the loop's own iterator over its dataloader
    assert not internals.replays_trained_batches(loop)  # a fresh loop (iter 0)
    internals.set_dataloader_iterator(loop, iter([]))
    assert list(loop.dataloader_iterator) == []


def test_missing_checkpoint_hook_attribute_is_a_clear_error():
    from dinat_backbone.mm import MMEngineInternalsError
    from dinat_backbone.mm import mmengine_internals as internals

    for name in internals.CHECKPOINT_HOOK_ATTRIBUTES:
        hook = CheckpointHook(interval=1)
        delattr(hook, name)
        with pytest.raises(MMEngineInternalsError, match=rf"CheckpointHook\.{name}, which this object lacks "
                                                         r"\(mmengine 0\.\d+.*mmengine==0\.10\.7"):
            internals.check_checkpoint_hook(hook)


def test_missing_loop_iterator_is_a_clear_error():
    from dinat_backbone.mm import MMEngineInternalsError
    from dinat_backbone.mm import mmengine_internals as internals

    loop = _iter_loop()
    del loop.dataloader_iterator
    for read in (internals.check_train_loop, internals.replays_trained_batches, internals.dataloader_iterator):
        with pytest.raises(MMEngineInternalsError, match=r"IterBasedTrainLoop\.dataloader_iterator.*DiNATRNGStateHook"):
            read(loop)


class _Toy(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return dict(inputs=torch.full((2,), float(i)))


_RUNS = itertools.count()


def _runner(tmp_path, train_cfg):
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    from dinat_backbone.mm import DiNATRNGStateHook

    class Linear(BaseModel):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 1)

        def forward(self, inputs, data_samples=None, mode="tensor"):
            return dict(loss=self.fc(inputs).pow(2).mean())

    loader = torch.utils.data.DataLoader(_Toy(), batch_size=2)
    return Runner(model=Linear(), work_dir=str(tmp_path), train_dataloader=loader, train_cfg=train_cfg,
                  optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.01)), custom_hooks=[DiNATRNGStateHook()],
                  default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=2, by_epoch=False)),
                  experiment_name=f"internals_{os.getpid()}_{next(_RUNS)}")  # one logger / visualizer per runner


def test_rng_hook_in_a_real_run_fails_at_the_start_on_missing_internals(tmp_path):
    """In a real mmengine run, the hook names the missing internal before the first iteration
    (not at the first checkpoint, nor only when resuming)."""
    from dinat_backbone.mm import MMEngineInternalsError

    runner = _runner(tmp_path / "hook", dict(by_epoch=False, max_iters=2))
    checkpoint_hook = next(h for h in runner.hooks if isinstance(h, CheckpointHook))
    del checkpoint_hook.save_begin
    with pytest.raises(MMEngineInternalsError, match=r"CheckpointHook\.save_begin"):
        runner.train()

    class LoopOfAnotherMMEngine(IterBasedTrainLoop):  # keeps its batches elsewhere
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            del self.dataloader_iterator

    runner = _runner(tmp_path / "loop", dict(type=LoopOfAnotherMMEngine, max_iters=2))
    with pytest.raises(MMEngineInternalsError, match=r"LoopOfAnotherMMEngine\.dataloader_iterator"):
        runner.train()
    # the same run with mmengine's own classes trains and saves the generator states
    runner = _runner(tmp_path / "ok", dict(by_epoch=False, max_iters=2))
    runner.train()
    ckpt = torch.load(tmp_path / "ok" / "iter_2.pth", map_location="cpu", weights_only=False)
    assert set(ckpt["meta"]["rng_states"][0]) >= {"python", "numpy", "torch"}
