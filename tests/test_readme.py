"""The documentation's code, exactly as printed, and its links.

Every fenced block marked ``<!-- test_readme: NAME -->`` in README.md or docs/*.md is read from the
page itself (not a copy) and run: the plain-PyTorch snippets are executed; the mmdet / mmseg configs
are written to a file, loaded with mmengine's ``Config`` (``custom_imports`` of ``dinat_backbone.mm``,
their ``mmdet::`` / ``mmseg::`` bases resolved from the installed packages), built through the real
registries, given an optim wrapper by ``mmengine.optim.build_optim_wrapper`` and trained for one
step on a small random batch. Sizes are shrunk only through config overrides, never by editing the
snippet. Every relative link between the pages (and to files of the repository, and every
``#anchor``) must resolve. Also: what the pages say about the tools (``run_toy.py``'s defaults and
output), the shipped copies of the usage configs, and the model-zoo table against the configs.

No mocks and no skips: without mmdet / mmseg / mmcv the config tests error.
"""
import contextlib
import glob
import io
import os
import re

import pytest
import torch

from conftest import ROOT, mm_models

README = os.path.join(ROOT, "README.md")
#: README.md first, then the docs/ pages
PAGES = [README] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
MARKER = re.compile(r"<!-- test_readme: (\S+) -->\n```(\w+)\n(.*?)\n```", re.S)


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _rel(path):
    return os.path.relpath(path, ROOT)


def readme_blocks():
    """``{name: (language, code, page)}`` of the marked blocks of every page (names are unique across pages)."""
    blocks = {}
    for page in PAGES:
        for name, lang, code in MARKER.findall(_read(page)):
            assert name not in blocks, f"{_rel(page)} and {_rel(blocks[name][2])} both mark a block {name!r}"
            blocks[name] = (lang, code, page)
    return blocks


def block(name):
    return readme_blocks()[name][1]


def _source(name):
    """The file name a block's code is compiled under: its page and name."""
    return f"{_rel(readme_blocks()[name][2])}:{name}"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_config_and_python_snippet_is_marked(page):
    """A config or import snippet added to a page without a marker would go untested."""
    text = _read(page)
    marked = {code for _, (_, code, _) in readme_blocks().items()}
    for code in re.findall(r"```python\n(.*?)\n```", text, re.S):
        runnable = "custom_imports" in code or "_base_" in code or code.startswith(("import", "from"))
        if runnable and not code.startswith("DiNAT("):  # the constructor's signature is not code to run
            assert code in marked, f"{_rel(page)}: python block without a <!-- test_readme: NAME --> marker:\n" + code
    assert {"features", "op", "mmdet-config", "mmseg-config"} <= set(readme_blocks())


# ----------------------------------------------------------------------------------------------
# links
# ----------------------------------------------------------------------------------------------
LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def _without_code(text):
    """The page without its fenced blocks and inline code (a link-like text there is not a link)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def github_anchors(text):
    """The ``#anchor`` of every heading of a markdown page, as GitHub makes them: lower case, punctuation
    other than ``-`` and ``_`` dropped, spaces as ``-``, a repeated one suffixed ``-1``, ``-2``, ..."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    anchors, seen = set(), {}
    for heading in re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def test_github_anchors_are_githubs():
    assert github_anchors("# The op: `na2d`\n## mmdet 3.x\n## mmdet 3.x\n```\n# not a heading\n```\n") == {
        "the-op-na2d", "mmdet-3x", "mmdet-3x-1"}
    assert "the-backbone-against-swin-t-python-toolsbenchmarkpy---reps-3" in github_anchors(
        "## The backbone against Swin-T: `python tools/benchmark.py --reps 3`")


def page_links(page):
    """``[(target, path, anchor)]`` of a page's relative links (web links are left out)."""
    links = []
    for m in LINK.finditer(_without_code(_read(page))):
        target = m.group(1) or m.group(2)
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        path = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        links.append((target, path, anchor))
    return links


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_relative_link_resolves(page):
    """Links between the pages, to files of the repository and to headings (``#anchor``) all resolve."""
    broken = []
    for target, path, anchor in page_links(page):
        if not os.path.exists(path) or not os.path.realpath(path).startswith(os.path.realpath(ROOT) + os.sep):
            broken.append(f"{target}: no {_rel(path)} in the repository")
        elif anchor and not (path.endswith(".md") and anchor in github_anchors(_read(path))):
            broken.append(f"{target}: no heading #{anchor} in {_rel(path)}")
    assert not broken, f"{_rel(page)}:\n" + "\n".join(broken)


def test_every_docs_page_is_reachable_from_the_readme():
    """A page no link leads to is a page nobody reads."""
    reached, todo = {README}, [README]
    while todo:
        for _, path, _ in page_links(todo.pop()):
            if path.endswith(".md") and path in PAGES and path not in reached:
                reached.add(path)
                todo.append(path)
    assert set(PAGES) == reached, sorted(_rel(p) for p in set(PAGES) - reached)


# ----------------------------------------------------------------------------------------------
# plain PyTorch
# ----------------------------------------------------------------------------------------------
def test_readme_feature_extraction_snippet_prints_what_its_comment_says():
    code = block("features")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, _source("features"), "exec"), {})
    printed = [tuple(int(n) for n in line.strip("()").split(",")) for line in out.getvalue().split("\n") if line]
    promised = re.findall(r"\(\d+(?:, \d+)+\)", code.split("print(")[-1])
    assert printed == [tuple(int(n) for n in p.strip("()").split(", ")) for p in promised], out.getvalue()


def test_readme_op_snippet_and_rpb_shape():
    namespace = {}
    exec(compile(block("op"), _source("op"), "exec"), namespace)
    q, rpb, out, attn, y = (namespace[k] for k in ("q", "rpb", "out", "attn", "y"))
    heads, K = q.shape[3], 7
    # the shape the docs state for the op's rpb, and the module's own table
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

    lang, code, _ = readme_blocks()[name]
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
    text = _read(README)
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
    docs = "\n".join(_read(page) for page in PAGES)
    assert f"trains from scratch for {det} iterations" in " ".join(docs.split())
    assert re.search(rf"iter\s+{det}/{det}\s", _read(README))


def test_run_toy_jobs_from_the_command_line():
    """``--only`` runs one job; ``--seg`` / ``--panoptic`` add jobs after the main one; both together
    is an error saying which to drop."""
    from conftest import load_tool

    run_toy = load_tool("run_toy")
    assert run_toy.jobs_to_run() == ["det"]
    assert run_toy.jobs_to_run(seg=True, panoptic=True) == ["det", "seg", "panoptic"]
    assert [run_toy.jobs_to_run(only=job) for job in run_toy.JOBS] == [["det"], ["seg"], ["panoptic"]]
    with pytest.raises(SystemExit, match="--only seg runs one job; drop --seg / --panoptic"):
        run_toy.jobs_to_run(only="seg", panoptic=True)


def test_make_clean_toy_removes_the_three_toy_sets_and_nothing_else(tmp_path):
    import subprocess

    toy = ["data/toy_coco", "data/toy_ade", "data/toy_coco_panoptic", "data/toy_ade.tmp", "work_dirs/toy/mask-rcnn"]
    kept = ["data/coco/annotations", "work_dirs/mask-rcnn_dinat-tiny"]
    for d in toy + kept:
        (tmp_path / d).mkdir(parents=True)
        (tmp_path / d / "file").write_text("x")
    subprocess.run(["make", "-s", "-f", os.path.join(ROOT, "Makefile"), "-C", str(tmp_path), "clean-toy"], check=True)
    assert [d for d in toy if (tmp_path / d).exists()] == []
    assert all((tmp_path / d / "file").exists() for d in kept)


def test_run_toy_only_seg_runs_the_upernet_alone(tmp_path, capsys):
    from conftest import load_tool

    run_toy = load_tool("run_toy")
    assert run_toy.main(["--only", "seg", "--iters", "2", "--work-dir", str(tmp_path / "toy")]) == 0
    out = capsys.readouterr().out
    assert "Mask R-CNN" not in out and not (tmp_path / "toy" / "mask-rcnn").exists(), out
    assert "[toy] training toy UPerNet (DiNAT, 6 blocks, mini width) on CPU; evaluating with IoUMetric" in out
    assert "=== toy UPerNet (DiNAT) on toy ADE val (16 images, 4 classes) ===" in out
    assert re.search(r"^mIoU [0-9.]+   aAcc [0-9.]+   mAcc [0-9.]+$", out, re.M), out
    assert (tmp_path / "toy" / "upernet" / "iter_2.pth").exists()


# ----------------------------------------------------------------------------------------------
# what the pages say about the configs
# ----------------------------------------------------------------------------------------------
EXAMPLES = {"mmdet-config": "configs/examples/mask-rcnn_dinat-tiny_fpn_1x_coco.py",
            "mmseg-config": "configs/examples/upernet_dinat-tiny_512x512_160k_ade20k.py"}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_usage_configs_are_shipped_as_printed(name):
    """configs/examples/ holds the front page's configs, character for character (the toy variants
    inherit them)."""
    assert _read(os.path.join(ROOT, EXAMPLES[name])) == block(name) + "\n"
    assert EXAMPLES[name] in _read(README)


def _config_checkpoint(path):
    """The ImageNet checkpoint URL a config (or one of its local ``_base_`` files) names."""
    text = _read(path)
    found = re.search(r"checkpoint='(https://[^']+)'", text)
    if found:
        return found.group(1)
    for base in re.findall(r"'(\.\./_base_/[^']+\.py)'", text):
        found = re.search(r"checkpoint='(https://[^']+)'", _read(os.path.join(os.path.dirname(path), base)))
        if found:
            return found.group(1)
    return None


def test_model_zoo_table_matches_the_configs():
    """docs/configs.md lists every paper config with a link, the paper result its header comment
    states and the checkpoint URL its backbone loads."""
    zoo = _read(os.path.join(ROOT, "docs", "configs.md"))
    rows = {m.group(1): line for line in zoo.split("\n")
            for m in [re.match(r"\| \[`[^`]+`\]\(\.\./(configs/[^)]+)\)", line)] if m}
    configs = sorted(_rel(p) for family in ("dinat", "nat", "dinat_s")
                     for p in glob.glob(os.path.join(ROOT, "configs", family, "*.py")))
    assert sorted(rows) == configs
    for config in configs:
        row, path = rows[config], os.path.join(ROOT, config)
        header = " ".join(line for line in _read(path).split("\n") if line.startswith("#"))
        results = re.findall(r"\d+\.\d", row.split("|")[2] if "mask2former" not in config else row.split("|")[3])
        assert results and all(r in header for r in results), (config, results)
        if "mask2former" not in config:  # the Mask2Former rows share one backbone, named above the table
            assert f"]({_config_checkpoint(path)})" in row, (config, _config_checkpoint(path))
    assert _config_checkpoint(os.path.join(ROOT, "configs", "_base_", "models", "mask2former_dinat-large.py")) in zoo


# ----------------------------------------------------------------------------------------------
# the install page: one version string, the torch floor
# ----------------------------------------------------------------------------------------------
def test_one_version_string_and_the_torch_floor():
    from importlib.metadata import version

    from setuptools.config.setupcfg import read_configuration

    import dinat_backbone
    from dinat_backbone.version import MIN_TORCH, torch_too_old

    setup_cfg = read_configuration(os.path.join(ROOT, "setup.cfg"))
    # setup.cfg reads the version from the package; the installed metadata agrees
    assert setup_cfg["metadata"]["version"] == dinat_backbone.__version__ == version("dinat-backbone")
    assert f"torch>={MIN_TORCH}" in setup_cfg["options"]["install_requires"]
    assert f"torch ≥ {MIN_TORCH}" in _read(os.path.join(ROOT, "docs", "install.md"))
    assert f"torch ≥ {MIN_TORCH}" in _read(README)
    # an older torch is refused at import, naming the floor and the fix
    assert torch_too_old(torch.__version__) is None and torch_too_old("2.13.0") is None
    message = torch_too_old("2.3.1+cpu")
    assert message and f"torch >= {MIN_TORCH}" in message and "found torch 2.3.1+cpu" in message
    assert f"pip install 'torch>={MIN_TORCH}'" in message
    # the features that set the floor exist in the torch under test
    assert hasattr(torch.library, "register_fake") and hasattr(torch.library, "register_autograd")


# ----------------------------------------------------------------------------------------------
# the toy-data variants of the usage configs (docs/toy.md)
# ----------------------------------------------------------------------------------------------
#: toy-data variant: (the usage block it inherits, its toy set, the metrics its test reports)
TOY_VARIANTS = {
    "configs/toy/mask-rcnn_dinat-tiny_fpn_toy-coco.py": ("mmdet-config", "toy_coco",
                                                         ("coco/bbox_mAP", "coco/segm_mAP")),
    "configs/toy/upernet_dinat-tiny_toy-ade.py": ("mmseg-config", "toy_ade", ("mIoU", "aAcc")),
}


@pytest.mark.parametrize("config", sorted(TOY_VARIANTS))
def test_toy_variant_of_a_usage_config_trains_and_evaluates(config, tmp_path):
    """The usage config's model and optimizer on the toy data: a few iterations from scratch, then the
    real metric on the toy val split."""
    from mmengine.config import Config

    from conftest import load_tool

    usage_block, toy_set, metric_keys = TOY_VARIANTS[config]
    path = os.path.join(ROOT, config)
    assert config in _read(os.path.join(ROOT, "docs", "toy.md"))
    cfg = Config.fromfile(path)
    usage = Config.fromfile(os.path.join(ROOT, EXAMPLES[usage_block]))
    # the usage config's model and optimizer; nothing downloaded; the toy data
    assert cfg.model.backbone.arch == usage.model.backbone.arch == "tiny" and cfg.model.backbone.init_cfg is None
    assert cfg.optim_wrapper.optimizer == usage.optim_wrapper.optimizer
    toy_root = os.path.join(ROOT, "data", toy_set)
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        assert os.path.normpath(cfg[loader].dataset.data_root) == toy_root, loader
    if "ann_file" in cfg.test_evaluator:  # COCO's evaluator reads the annotations itself
        assert os.path.normpath(cfg.test_evaluator.ann_file).startswith(toy_root + os.sep)

    load_tool("make_toy_data").ensure(quiet=True)
    metrics = load_tool("run_toy").run(path, str(tmp_path / "work"), iters=2)
    assert set(metric_keys) <= set(metrics), metrics
    assert (tmp_path / "work" / "iter_2.pth").exists()
