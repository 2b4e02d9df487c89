"""The README's code, exactly as printed.

Every fenced block the README marks with ``<!-- test_readme: NAME -->`` is read from README.md
itself (not a copy) and run: the plain-PyTorch snippets are executed; the mmdet / mmseg configs are
written to a file, loaded with mmengine's ``Config`` (``custom_imports`` of ``dinat_backbone.mm``,
their ``mmdet::`` / ``mmseg::`` bases resolved from the installed packages), built through the real
registries, given an optim wrapper by ``mmengine.optim.build_optim_wrapper`` and trained for one
step on a small random batch. Sizes are shrunk only through config overrides, never by editing the
snippet. Also: what the README says about the tools (``run_toy.py``'s defaults and output).

No mocks and no skips: without mmdet / mmseg / mmcv the config tests error.
"""
import contextlib
import io
import os
import re

import pytest
import torch

from conftest import ROOT, mm_models

README = os.path.join(ROOT, "README.md")
MARKER = re.compile(r"<!-- test_readme: (\S+) -->\n```(\w+)\n(.*?)\n```", re.S)


def readme_blocks():
    """``{name: (language, code)}`` of the marked blocks."""
    with open(README) as f:
        text = f.read()
    blocks = {}
    for name, lang, code in MARKER.findall(text):
        assert name not in blocks, f"README marks two blocks {name!r}"
        blocks[name] = (lang, code)
    return blocks


def block(name):
    return readme_blocks()[name][1]


def test_every_config_and_python_snippet_is_marked():
    """A config or import snippet added to the README without a marker would go untested."""
    with open(README) as f:
        text = f.read()
    marked = {code for _, (_, code) in readme_blocks().items()}
    for code in re.findall(r"```python\n(.*?)\n```", text, re.S):
        runnable = "custom_imports" in code or "_base_" in code or code.startswith(("import", "from"))
        if runnable and not code.startswith("DiNAT("):  # the constructor's signature is not code to run
            assert code in marked, "README python block without a <!-- test_readme: NAME --> marker:\n" + code
    assert {"features", "op", "mmdet-config", "mmseg-config"} <= set(readme_blocks())


# ----------------------------------------------------------------------------------------------
# plain PyTorch
# ----------------------------------------------------------------------------------------------
def test_readme_feature_extraction_snippet_prints_what_its_comment_says():
    code = block("features")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md:features", "exec"), {})
    printed = [tuple(int(n) for n in line.strip("()").split(",")) for line in out.getvalue().split("\n") if line]
    promised = re.findall(r"\(\d+(?:, \d+)+\)", code.split("print(")[-1])
    assert printed == [tuple(int(n) for n in p.strip("()").split(", ")) for p in promised], out.getvalue()


def test_readme_op_snippet_and_rpb_shape():
    namespace = {}
    exec(compile(block("op"), "README.md:op", "exec"), namespace)
    q, rpb, out, attn, y = (namespace[k] for k in ("q", "rpb", "out", "attn", "y"))
    heads, K = q.shape[3], 7
    # the shape the README states for the op's rpb, and the module's own table
    assert tuple(rpb.shape) == (heads, 2 * K - 1, 2 * K - 1) == (4, 13, 13)
    assert tuple(attn.rpb.shape) == (attn.num_heads, 2 * K - 1, 2 * K - 1)
    assert out.shape == q.shape and y.shape == (2, 32, 48, 64)
    from dinat_backbone import na2d

    with pytest.raises(ValueError, match="rpb"):
        na2d(q, q, q, kernel_size=7, dilation=4, rpb=torch.zeros(heads, K, K))


# ----------------------------------------------------------------------------------------------
# the mmdet / mmseg configs
# ----------------------------------------------------------------------------------------------
def _load(name, tmp_path):
    from mmengine.config import Config

    lang, code = readme_blocks()[name]
    assert lang == "python"
    path = tmp_path / f"{name}.py"
    path.write_text(code + "\n")
    return Config.fromfile(str(path))  # custom_imports: imports dinat_backbone.mm


def _build(cfg, scope):
    from mmengine.model import revert_sync_batchnorm
    from mmengine.optim import build_optim_wrapper

    # what mmengine's Runner does off-distributed: SyncBN (mmseg's heads) as plain BN
    model = revert_sync_batchnorm(mm_models(scope).build(cfg.model))
    return model, build_optim_wrapper(model, cfg.optim_wrapper)


def _check_optimizer(optim_wrapper, model):
    optimizer = optim_wrapper.optimizer
    assert type(optimizer).__name__ == "AdamW" and "momentum" not in optimizer.defaults
    decay = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            decay[id(p)] = group["weight_decay"]
    names = dict((id(p), n) for n, p in model.named_parameters())
    rpb = [i for i, n in names.items() if n.endswith(".rpb")]
    assert rpb and all(decay[i] == 0 for i in rpb)  # paramwise_cfg: no weight decay on rpb and norms
    assert any(decay[i] > 0 for i, n in names.items() if n.endswith("qkv.weight"))


def _train_step(model, optim_wrapper, data):
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith(".rpb")}
    model.train()
    log_vars = model.train_step(data, optim_wrapper)
    assert torch.isfinite(log_vars["loss"]), log_vars
    after = dict(model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before), "the step changed no rpb table"
    return log_vars


def test_readme_mmdet_config(tmp_path):
    from mmdet.testing import demo_mm_inputs

    cfg = _load("mmdet-config", tmp_path)
    assert cfg.default_scope == "mmdet" and cfg.model.backbone.type == "DiNAT"
    assert cfg.train_dataloader.dataset.ann_file  # a complete config: data, schedule, runtime from the base
    # smaller than COCO's recipe, through overrides: fewer proposals / sampled RoIs
    cfg.merge_from_dict({"model.train_cfg.rpn_proposal.nms_pre": 200, "model.train_cfg.rpn_proposal.max_per_img": 50,
                         "model.train_cfg.rcnn.sampler.num": 32})
    torch.manual_seed(0)
    model, optim_wrapper = _build(cfg, "mmdet")
    assert type(model.backbone).__name__ == "DiNAT" and model.backbone.dilations[0][1] == 28  # 'coco'
    from dinat_backbone.mm import check_neck_channels

    check_neck_channels(model)
    _check_optimizer(optim_wrapper, model)
    data = demo_mm_inputs(batch_size=1, image_shapes=(3, 128, 128), num_items=[2],
                          num_classes=cfg.model.roi_head.bbox_head.num_classes, with_mask=True)
    log_vars = _train_step(model, optim_wrapper, data)
    assert {"loss_rpn_cls", "loss_cls", "loss_mask"} <= set(log_vars)


def test_readme_mmseg_config(tmp_path):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    cfg = _load("mmseg-config", tmp_path)
    assert cfg.default_scope == "mmseg" and cfg.model.backbone.type == "DiNAT"
    assert cfg.train_dataloader.dataset.data_prefix  # a complete config
    size = 64
    cfg.merge_from_dict({"model.data_preprocessor.size": (size, size)})  # the 512 crop, shrunk
    torch.manual_seed(0)
    model, optim_wrapper = _build(cfg, "mmseg")
    assert type(model.backbone).__name__ == "DiNAT"
    _check_optimizer(optim_wrapper, model)
    g = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(2):  # two images: the pyramid pooling's 1x1 BatchNorm needs more than one value
        sample = SegDataSample()
        sample.set_metainfo(dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, cfg.model.decode_head.num_classes, (1, size, size),
                                                         generator=g))
        samples.append(sample)
    data = dict(inputs=[torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g) for _ in samples],
                data_samples=samples)
    log_vars = _train_step(model, optim_wrapper, data)
    assert {"decode.loss_ce", "aux.loss_ce"} <= set(log_vars)


# ----------------------------------------------------------------------------------------------
# tools/run_toy.py: what the README says `make demo` prints
# ----------------------------------------------------------------------------------------------
def _demo_patterns():
    """One regex per line of the README's "What `make demo` prints" block: numbers and paths vary,
    the words do not; ``...`` (elided iteration lines) and trailing ``# comments`` are dropped."""
    with open(README) as f:
        text = f.read()
    shown = re.search(r"### What `make demo` prints\n.*?```\n(.*?)\n```", text, re.S).group(1)
    patterns = []
    for line in shown.split("\n"):
        line = re.sub(r"\s{2,}#.*$", "", line).rstrip()
        if line in ("...", ""):
            continue
        words = [r"\S+" if "/" in word and not re.fullmatch(r"\d+/\d+", word) else  # paths vary
                 re.sub(r"\d+(?:\\\.\d+)?", r"[0-9.]+", re.escape(word))           # and numbers
                 for word in line.split()]
        indent = re.match(r"\s*", line).group(0)
        patterns.append(re.compile(re.escape(indent) + r"\s+".join(words) + r"$"))
    return patterns


def test_run_toy_prints_what_the_readme_shows(tmp_path, capsys):
    """A short run of tools/run_toy.py: every line it prints is a line of the README's block (no
    pycocotools or mmengine output, no warning from the tool itself), and every line of the block
    is printed."""
    import warnings

    from conftest import load_tool

    run_toy = load_tool("run_toy")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run_toy.main(["--iters", "4", "--work-dir", str(tmp_path / "toy")]) == 0
    out = capsys.readouterr().out
    # the README's toy-data lines say 'present'; its comment: "generated" on the first run
    lines = [re.sub(r"^(\[toy-data\] \S+) generated$", r"\1 present (version 1)", line)
             for line in out.split("\n") if line.strip()]
    patterns = _demo_patterns()
    for line in lines:
        assert any(p.match(line) for p in patterns), f"printed but not in the README's block: {line!r}\n{out}"
    for p in patterns:
        if "toy-data" in p.pattern or "work_dirs" in p.pattern:
            continue  # 'present' or 'generated'; the work dir is tmp_path here
        assert any(p.match(line) for line in lines), f"README line not printed: {p.pattern}\n{out}"
    tool_warnings = [w for w in caught if os.path.basename(w.filename) == "run_toy.py"]
    assert not tool_warnings, [str(w.message) for w in tool_warnings]


def test_run_toy_help_gives_the_configs_iterations(capsys):
    from mmengine.config import Config

    from conftest import load_tool

    run_toy = load_tool("run_toy")
    with pytest.raises(SystemExit):
        run_toy.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    det = Config.fromfile(run_toy.DET_CONFIG).train_cfg.max_iters
    seg = Config.fromfile(run_toy.SEG_CONFIG).train_cfg.max_iters
    assert f"(default: the config's, {det};" in help_text and f"its config's {seg})" in help_text, help_text
    with open(README) as f:
        readme = f.read()
    assert f"trains from scratch for {det} iterations" in readme and re.search(rf"iter\s+{det}/{det}\s", readme)
