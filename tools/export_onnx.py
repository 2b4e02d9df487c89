#!/usr/bin/env python
"""Export a DiNAT / NAT / DiNAT_s backbone to ONNX, check it, run it in onnxruntime and compare with PyTorch.

    python tools/export_onnx.py --arch mini --shape 224 224
    python tools/export_onnx.py --arch tiny --dilations coco --checkpoint dinat_tiny_in1k_224.pth \\
        --dynamic --shape 800 1216 --output dinat_tiny_coco.onnx
    python tools/export_onnx.py --model dinat_s --arch tiny --dilations coco --dynamic --shape 800 1216

The default model is DiNAT-mini with its ImageNet dilations (``in1k-224``; ``--dilations none``
for all 1, ``--dilations coco`` for detection sizes). The exporter's phases are printed as they
run. The graph uses standard ONNX operators only: the neighbourhood attention is exported through
:mod:`dinat_backbone.export` (plain tensor ops, neighbourhood indices computed from the map size
inside the graph), so ``--dynamic`` gives one file for every input size (batch, height and width
are symbolic). The exporter is ``torch.onnx.export(..., dynamo=True)`` (needs ``onnx`` and
``onnxscript``; the check needs ``onnxruntime``).

After export the file is checked with ``onnx.checker``, run in onnxruntime on random inputs of
the export shape (and, with ``--dynamic``, on a second, odd size and another batch), and compared
against the PyTorch model; the maximum absolute error per output is printed and the exit code is
1 when it exceeds ``--atol`` (1e-4 by default, float32).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import _outputs  # noqa: E402
from dinat_backbone.export import export_mode  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # DiNAT's ImageNet dilations by default (the 224 x 224 default shape); --dilations none: all 1
    _common.add_model_arguments(p, dilations_default="in1k-224")
    p.add_argument("--nat", action="store_true", help="the same as --model nat")
    p.add_argument("--kernel-size", type=int, default=7)
    p.add_argument("--checkpoint", default=None, help="weights in any format dinat_backbone.load_pretrained reads")
    p.add_argument("--out-indices", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--shape", type=int, nargs=2, default=[224, 224], metavar=("H", "W"),
                   help="input height and width used for export and the check (default 224 224)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dynamic", action="store_true", help="symbolic batch, height and width")
    p.add_argument("--min-size", type=int, default=33,
                   help="smallest height/width allowed with --dynamic (default 33: from 32 px down the stride-32 "
                        "map is 1x1, which torch.export specialises)")
    p.add_argument("--max-size", type=int, default=4096, help="largest height/width allowed with --dynamic")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--output", "-o", default=None, help="output file (default: dinat_<arch>[_dynamic].onnx)")
    p.add_argument("--atol", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-check", action="store_true", help="skip the onnx.checker / onnxruntime comparison")
    p.add_argument("--verbose", action="store_true",
                   help="show all of the exporter's output and warnings (by default only its phases)")
    return p


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.nat:
        args.model = "nat"
    # sizes first: a zero or negative one failed deep inside the exporter after the model was built
    if args.batch < 1 or min(args.shape) < 1:
        parser.error(f"--batch {args.batch} --shape {args.shape[0]} {args.shape[1]}: batch, height and width must "
                     "be positive (e.g. --batch 1 --shape 224 224)")
    if args.dynamic and not 1 <= args.min_size <= min(args.shape) <= max(args.shape) <= args.max_size:
        parser.error(f"--dynamic: need 1 <= --min-size ({args.min_size}) <= the --shape sizes ({args.shape[0]}, "
                     f"{args.shape[1]}) <= --max-size ({args.max_size})")
    args.model_cls, args.model_kwargs = _common.model_choice(parser, args)
    return args


def build_model(args) -> torch.nn.Module:
    model = args.model_cls(**args.model_kwargs, kernel_size=args.kernel_size, out_indices=tuple(args.out_indices),
                           drop_path_rate=0.0)
    if args.checkpoint:
        from dinat_backbone.checkpoint import load_pretrained

        load_pretrained(model, args.checkpoint)
    return model.eval()


class _TupleOutputs(torch.nn.Module):
    """The backbone returns a tuple; keep it so (one ONNX output per feature map)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return tuple(self.model(x))


def export(model: torch.nn.Module, example: torch.Tensor, path: str, dynamic: bool = False, opset=None,
           min_size: int = 33, max_size: int = 4096, verbose: bool = False):
    """Export ``model`` (eval mode) on ``example`` to ``path``; returns the output names."""
    from torch.export import Dim

    model = _TupleOutputs(model).eval()
    dynamic_shapes = None
    if dynamic:
        if example.shape[0] == 1:  # torch.export specialises size-1 dimensions: trace with batch 2
            example = example.expand(2, *example.shape[1:]).contiguous()
        dynamic_shapes = {"x": {0: Dim("batch", min=1, max=1024),
                                2: Dim("height", min=min_size, max=max_size),
                                3: Dim("width", min=min_size, max=max_size)}}
    with torch.no_grad():
        n_out = len(model(example))
    output_names = [f"out{i}" for i in range(n_out)]
    # verbose=True makes the exporter print its phases; unless ``verbose``, _quiet shows only those
    kwargs = dict(dynamo=True, input_names=["input"], output_names=output_names, dynamic_shapes=dynamic_shapes,
                  verbose=True)
    if opset is not None:
        kwargs["opset_version"] = opset
    with export_mode(), warnings.catch_warnings():
        if not verbose:
            warnings.simplefilter("ignore")
        program = _quiet(not verbose, torch.onnx.export, model, (example,), **kwargs)
    # the file and any external-data file beside it appear complete or not at all
    with _outputs.atomic_output(path) as tmp:
        program.save(tmp)
    return output_names


class _Progress:
    """A stdout stand-in for the exporter: its phase lines (``[torch.onnx] Translate the graph into
    ONNX...``) are shown as they come, with the elapsed time, and every ``interval`` seconds a line
    names the phase still running (torch.export alone takes minutes for the larger variants); all
    other output is kept and shown only when the export fails."""

    PREFIX = "[torch.onnx] "

    def __init__(self, out, interval: float = 30.0):
        import io
        import threading

        self.out, self.interval = out, interval
        self.t0 = time.perf_counter()
        self.kept = io.StringIO()
        self.partial = ""
        self.phase = "starting the exporter"
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._heartbeat, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.thread.join()

    def _say(self, message):
        with self.lock:
            self.out.write(f"[export +{time.perf_counter() - self.t0:.0f}s] {message}\n")
            self.out.flush()

    def _heartbeat(self):
        while not self.stopped.wait(self.interval):
            self._say(f"still working: {self.phase}")

    def write(self, text):
        import re

        self.kept.write(text)
        *lines, self.partial = (self.partial + text).split("\n")
        for line in lines:
            if not line.startswith(self.PREFIX):
                continue
            # "Obtain model graph for `_TupleOutputs([...]` with `torch.export.export(...)`... ✅"
            message = re.sub(r" for `[^`]*`", "", line[len(self.PREFIX):]).replace("\u2705", "done")
            message = message.replace("\u274c", "failed")
            if message.endswith("..."):
                self.phase = message.rstrip(".")
            self._say(message)
        return len(text)

    def flush(self):
        pass


def _quiet(quiet, fn, *args, **kwargs):
    """Run ``fn`` (the exporter) with its phase lines shown as progress and the rest of its console
    chatter suppressed when ``quiet`` (see :class:`_Progress`)."""
    if not quiet:
        return fn(*args, **kwargs)
    import contextlib
    import logging

    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "torch.fx",
                                              "torch._dynamo", "torch.onnx._internal.exporter._registration")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    progress = _Progress(sys.stdout)
    try:
        with progress, contextlib.redirect_stdout(progress):
            return fn(*args, **kwargs)
    except Exception:
        sys.stdout.write(progress.kept.getvalue())
        raise
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def check(model: torch.nn.Module, path: str, inputs, output_names=None):
    """onnx.checker on ``path``, then onnxruntime vs PyTorch on each input; returns a list of
    (input shape, [max abs error per output])."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(path if os.path.getsize(path) > 2 ** 31 - 1 else onnx.load(path), full_check=True)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    results = []
    for x in inputs:
        got = sess.run(output_names, {name: x.numpy()})
        with torch.no_grad():
            ref = model(x)
        if len(got) != len(ref):
            raise AssertionError(f"onnxruntime returned {len(got)} outputs, PyTorch {len(ref)}")
        errs = []
        for g, r in zip(got, ref):
            if tuple(g.shape) != tuple(r.shape):
                raise AssertionError(f"output shape {tuple(g.shape)} from onnxruntime, {tuple(r.shape)} from PyTorch")
            errs.append(float((torch.from_numpy(g) - r).abs().max()))
        results.append((tuple(x.shape), errs))
    return results


def output_path(args) -> str:
    kind, arch = args.model_cls.__name__, args.model_kwargs["arch"]
    return args.output or f"{kind.lower()}_{arch}{'_dynamic' if args.dynamic else ''}.onnx"


def main(argv=None):
    args = parse_args(argv)
    path = output_path(args)
    # the output first: an unwritable path or the checkpoint itself must not cost a minutes-long export
    _outputs.check_outputs({"--output": path}, {"--checkpoint": args.checkpoint})
    torch.manual_seed(args.seed)
    model = build_model(args)
    H, W = args.shape
    example = torch.randn(args.batch, 3, H, W)
    kind, arch = args.model_cls.__name__, args.model_kwargs["arch"]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[export] {kind}-{arch} ({n_params / 1e6:.1f} M params, dilations={model.dilations}) "
          f"input {tuple(example.shape)}, {'dynamic batch/height/width' if args.dynamic else 'fixed shape'}",
          flush=True)
    print("[export] torch.onnx.export(dynamo=True): DiNAT-mini at 64x96 took 80 s on a busy 2-core machine, "
          "larger variants and --dynamic take minutes; its phases follow", flush=True)
    t0 = time.perf_counter()
    output_names = export(model, example, path, dynamic=args.dynamic, opset=args.opset, min_size=args.min_size,
                          max_size=args.max_size, verbose=args.verbose)
    size_mb = sum(os.path.getsize(os.path.join(os.path.dirname(os.path.abspath(path)), f))
                  for f in os.listdir(os.path.dirname(os.path.abspath(path)))
                  if f == os.path.basename(path) or f.startswith(os.path.basename(path) + ".")) / 2 ** 20
    print(f"[export] wrote {path} ({size_mb:.1f} MiB) in {time.perf_counter() - t0:.1f} s", flush=True)
    if args.no_check:
        return 0
    inputs = [example]
    if args.dynamic:
        # another batch and an odd size of a different aspect (still within the allowed range)
        h2 = min(args.max_size, max(args.min_size, H // 2 + 37)) | 1
        w2 = min(args.max_size, max(args.min_size, W - W // 3 + 5)) | 1
        inputs.append(torch.randn(args.batch + 1, 3, h2, w2))
    print(f"[check] onnx.checker, then onnxruntime against PyTorch on {len(inputs)} input(s)...", flush=True)
    t0 = time.perf_counter()
    results = check(model, path, inputs, output_names)
    print(f"[check] onnx.checker: ok; onnxruntime {__import__('onnxruntime').__version__} "
          f"({time.perf_counter() - t0:.1f} s)")
    worst = 0.0
    for shape, errs in results:
        worst = max(worst, max(errs))
        print(f"[check] input {shape}: max abs error per output " + ", ".join(f"{e:.2e}" for e in errs))
    ok = worst <= args.atol
    print(f"[check] max abs error {worst:.2e} {'<=' if ok else '>'} {args.atol:g}: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
