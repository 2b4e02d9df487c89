#!/usr/bin/env python
"""Run a DiNAT / NAT / DiNAT_s backbone on one image and save every stage's feature map.

    python tools/extract_features.py IMAGE [--model dinat|nat|dinat_s] [--arch mini] [--dilations in1k-224]
        [--checkpoint PATH_OR_URL] [--size 224] [--out feats.pt|feats.npz] [--vis stages.png]

``--arch`` defaults to the family's smallest variant (mini; tiny for dinat_s); the arch and
preset choices are the families' ``arch_settings`` / ``dilation_presets``.

The image is read the right way up (a camera JPEG's EXIF orientation applied), 16-bit images
are scaled to 8 bits, and a file that is not a readable image is a usage error naming it. The
image is converted to RGB and normalised with the ImageNet mean / std (what the official
checkpoints expect); ``--size`` resizes the short side first (default: keep the image size; any
positive size works). ``--out`` saves ``{'stage1': [C, H, W], ..., 'strides': [...]}`` (torch for
``.pt`` / ``.pth``, numpy for ``.npz``; another suffix is an error). ``--vis`` writes one picture:
the input, then each stage map as its first three principal components in RGB, side by side,
labelled C x H x W (the input 3 x H x W) with each stage's stride.
Without ``--checkpoint`` the weights are random and the features mean nothing (a warning says so).
Needs torch, numpy and Pillow only (no mm packages).
"""
import argparse
import os.path as osp
import sys

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

import _common  # noqa: E402
import _outputs  # noqa: E402

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image")
    _common.add_model_arguments(p, dilations_default="in1k-224")
    p.add_argument("--kernel-size", type=int, default=7)
    p.add_argument("--checkpoint", help="weights (path or URL, any supported layout); random init if omitted")
    p.add_argument("--size", type=int, help="resize the short side to this many pixels first")
    p.add_argument("--out", help="save the stage maps: .pt / .pth (torch.save) or .npz (numpy)")
    p.add_argument("--vis", help="save a PNG with the PCA-to-RGB picture of every stage map")
    p.add_argument("--device", default="cpu")
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


class ImageReadError(ValueError):
    """An image file that cannot be read (or not as an RGB picture); the message names the file."""


#: single-channel 16-bit modes (Pillow opens 16-bit grey PNG / TIFF as I;16*)
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _bits_per_sample(img: Image.Image) -> int:
    """Bits per sample of a mode-I image as stored: 16 for PNG (older Pillow opened 16-bit PNGs as
    I), the TIFF BitsPerSample tag, else 32 (an integer image with no known range)."""
    if img.format == "PNG":
        return 16
    bits = getattr(img, "tag_v2", {}).get(258) if img.format == "TIFF" else None
    bits = bits[0] if isinstance(bits, tuple) else bits
    return int(bits) if bits else 32


def read_image(path) -> Image.Image:
    """The picture in ``path`` as an 8-bit RGB image, the right way up: the EXIF orientation of
    camera JPEGs is applied, 16-bit images are scaled to 8 bits (65535 -> 255; ``convert('RGB')``
    clips them, making most 16-bit pictures white), grey / palette / alpha / CMYK images become
    RGB. A file that is not a readable image raises :class:`ImageReadError` naming it."""
    try:
        with Image.open(path) as opened:
            opened.load()  # decode now: a truncated or corrupt file fails here, not mid-run
            bits = _bits_per_sample(opened) if opened.mode == "I" else 16
            img = ImageOps.exif_transpose(opened)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"{path}: not a readable image ({type(e).__name__}: {e}); give a PNG / JPEG / "
                             "TIFF / BMP / WebP picture") from None
    if img.mode in WIDE_MODES or img.mode == "I":
        values = np.asarray(img)
        if bits > 16 or values.min() < 0 or values.max() > 65535:
            raise ImageReadError(f"{path}: a {bits}-bit integer image (values {values.min()}..{values.max()}) has "
                                 "no range this tool can scale; save it as an 8- or 16-bit picture")
        img = Image.fromarray(np.round(values.astype(np.float64) / 257).astype(np.uint8), "L")
    elif img.mode == "F":
        raise ImageReadError(f"{path}: a floating-point (mode F) image has no fixed value range; "
                             "save it as an 8- or 16-bit picture")
    return img.convert("RGB")


def resized(img: Image.Image, size: int, what: str = "--size") -> Image.Image:
    """``img`` with its short side resized to ``size``; a result above Pillow's decompression-bomb
    limit (``Image.MAX_IMAGE_PIXELS``) is refused rather than allocated."""
    w, h = img.size
    s = size / min(w, h)
    new = (max(1, round(w * s)), max(1, round(h * s)))
    limit = Image.MAX_IMAGE_PIXELS
    if limit and new[0] * new[1] > limit:
        raise ImageReadError(f"{what} {size}: the {w}x{h} image would become {new[0]}x{new[1]} "
                             f"({new[0] * new[1] / 1e6:.0f} M pixels, above {limit / 1e6:.0f} M); give a smaller size")
    return img.resize(new, Image.BICUBIC)


def load_image(path, size=None):
    img = read_image(path)
    if size:
        img = resized(img, size)
    arr = np.asarray(img, np.float32) / 255.0
    x = torch.from_numpy(((arr - MEAN) / STD).transpose(2, 0, 1).copy())[None]
    return img, x


def pca_rgb(feat: torch.Tensor) -> np.ndarray:
    """[C, H, W] -> [H, W, 3] uint8: the first three principal components, robustly scaled."""
    c, h, w = feat.shape
    x = feat.reshape(c, -1).T.double()
    x = x - x.mean(0, keepdim=True)
    k = min(3, x.shape[0], x.shape[1])
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    comps = x @ v[:k].T  # [HW, k]
    if k < 3:
        comps = torch.cat([comps, comps.new_zeros(comps.shape[0], 3 - k)], 1)
    out = np.zeros((h * w, 3), np.float32)
    for i in range(3):
        col = comps[:, i].numpy()
        lo, hi = np.percentile(col, 1), np.percentile(col, 99)
        out[:, i] = np.clip((col - lo) / (hi - lo + 1e-12), 0, 1)
    return (out.reshape(h, w, 3) * 255).astype(np.uint8)


def panel_labels(img: Image.Image, feats, strides):
    """The picture's labels, every one C x H x W: the input (PIL's ``img.size`` is (W, H)), then
    each stage map with its stride."""
    labels = [f"input: 3x{img.size[1]}x{img.size[0]}"]
    for f, s in zip(feats, strides):
        c, h, w = f.shape
        labels.append(f"stride {s}: {c}x{h}x{w}")
    return labels


def make_vis(img: Image.Image, feats, strides, path, panel=224):
    labels = panel_labels(img, feats, strides)
    tiles = [img] + [Image.fromarray(pca_rgb(f)) for f in feats]
    scale = panel / max(img.size)
    size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
    pad, text_h = 8, 22
    canvas = Image.new("RGB", (len(tiles) * (size[0] + pad) + pad, size[1] + text_h + 2 * pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (tile, label) in enumerate(zip(tiles, labels)):
        x = pad + i * (size[0] + pad)
        resample = Image.BICUBIC if i == 0 else Image.NEAREST
        canvas.paste(tile.resize(size, resample), (x, pad + text_h))
        draw.text((x, pad), label, fill="black")
    canvas.save(path)  # staged: main passes atomic_output's temporary


TORCH_SUFFIXES = (".pt", ".pth")
NUMPY_SUFFIXES = (".npz",)


def check_paths(parser, args):
    """Usage errors for paths before any model is built: a missing image, an ``--out`` suffix that
    names no format this tool writes, a ``--vis`` suffix Pillow cannot write."""
    if not osp.isfile(args.image):
        parser.error(f"image not found: {args.image}")
    if args.size is not None and args.size < 1:
        parser.error(f"--size {args.size}: give the short side in pixels, a positive number (e.g. 224)")
    if args.out and not args.out.lower().endswith(TORCH_SUFFIXES + NUMPY_SUFFIXES):
        parser.error(f"--out {args.out}: use a .pt / .pth file (torch.save of a dict of [C, H, W] tensors) "
                     "or a .npz file (numpy arrays)")
    if args.vis and osp.splitext(args.vis)[1].lower() not in Image.registered_extensions():
        parser.error(f"--vis {args.vis}: give an image file name, e.g. stages.png")
    if args.checkpoint and "://" not in args.checkpoint and not osp.isfile(args.checkpoint):
        what = "is a folder: give the checkpoint file inside it" if osp.isdir(args.checkpoint) else "file not found"
        parser.error(f"--checkpoint {args.checkpoint}: {what}")
    # an output may not be an input (--vis IMAGE replaced the photo) nor the other output
    _outputs.check_outputs({"--out": args.out, "--vis": args.vis},
                           {"input image": args.image, "--checkpoint": args.checkpoint}, error=parser.error)


def warn_random_weights(cls, arch, file=sys.stderr):
    """The random-weights warning, suggesting the official checkpoint of the model's own family and
    arch (a checkpoint of another size is an error when loaded)."""
    from dinat_backbone.checkpoint.urls import pretrained_url

    url = pretrained_url(cls.__name__, arch)
    example = (f"e.g. for {cls.__name__}-{arch}:\n[features] {url}" if url else
               f"(no official {cls.__name__}-{arch} checkpoint is published: give your own)")
    bar = "!" * 78
    print(f"{bar}\n[features] WARNING: no --checkpoint given: the backbone has RANDOM weights, so these\n"
          "[features] features (and the --vis picture) mean nothing. Pass --checkpoint PATH_OR_URL,\n"
          f"[features] {example}\n"
          f"[features] (README, Checkpoints: every official file and format).\n{bar}", file=file, flush=True)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    cls, kwargs = _common.model_choice(parser, args)
    check_paths(parser, args)
    try:  # the image is read (and resized) before the model is built: a bad file is one line
        img, x = load_image(args.image, args.size)
    except ImageReadError as e:
        parser.error(str(e))
    kwargs.update(kernel_size=args.kernel_size, drop_path_rate=0.0)
    if args.checkpoint:
        kwargs["init_cfg"] = dict(type="Pretrained", checkpoint=args.checkpoint)
    else:
        warn_random_weights(cls, kwargs.get("arch", cls.default_arch))
    model = cls(**kwargs)
    model.init_weights()
    model.eval().to(args.device)
    with torch.no_grad():
        feats = [f[0].float().cpu() for f in model(x.to(args.device))]
    strides = list(model.out_strides)
    for name, f, s in zip(model.out_features, feats, strides):
        print(f"[features] {name}: stride {s}, shape {list(f.shape)}")
    if args.out:
        names = list(model.out_features)
        with _outputs.atomic_output(args.out) as tmp:
            if args.out.lower().endswith(NUMPY_SUFFIXES):
                np.savez(tmp, strides=np.array(strides), **{n: f.numpy() for n, f in zip(names, feats)})
            else:
                torch.save({**dict(zip(names, feats)), "strides": strides}, tmp)
        print(f"[features] wrote {args.out}")
    if args.vis:
        with _outputs.atomic_output(args.vis) as tmp:
            make_vis(img, feats, strides, tmp)
        print(f"[features] wrote {args.vis}")
    return feats


if __name__ == "__main__":
    main()
