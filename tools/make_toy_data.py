#!/usr/bin/env python
"""Generate the embedded toy datasets (deterministic; no downloads).

* ``<out>/toy_coco``: COCO-format instance segmentation of three shape classes
  (circle, square, triangle; rotated squares / triangles, class-tinted colours on a noisy
  gradient background). Squares and triangles carry polygon masks, circles compressed-RLE masks,
  every annotation has a COCO ``[x, y, w, h]`` box and the mask area.
  Layout: ``annotations/instances_{train,val}.json``, ``train/*.jpg``, ``val/*.jpg``.
* ``<out>/toy_ade``: ADE20K-style semantic segmentation (same kind of images): ``images/
  {training,validation}/*.jpg`` and ``annotations/{training,validation}/*.png`` label maps with
  ADE20K's convention: 0 = "other" (ignored via ``reduce_zero_label``), 1 = background,
  2 = circle, 3 = square, 4 = triangle.

Usage: ``python tools/make_toy_data.py [--out data] [--force] [--only coco|ade]``.
Re-running is a no-op when the data of the current generator version is already there.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys

import numpy as np
from PIL import Image, ImageDraw

VERSION = "1"
CLASSES = ("circle", "square", "triangle")
#: base colours (RGB) per class; every instance jitters around its class colour
CLASS_RGB = {"circle": (210, 60, 50), "square": (60, 170, 70), "triangle": (60, 90, 210)}
IMG_SIZE = 128
SPLITS_COCO = {"train": 96, "val": 24}
SPLITS_ADE = {"training": 64, "validation": 16}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _background(rng: np.random.RandomState, size: int) -> np.ndarray:
    base = rng.randint(90, 170, size=3).astype(np.float32)
    tilt = rng.uniform(-40, 40, size=(2, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = base[None, None] + yy[..., None] * tilt[0] + xx[..., None] * tilt[1]
    img += rng.normal(0, 10, size=img.shape)
    return img


def _shape_polygon(kind: str, cx: float, cy: float, r: float, angle: float):
    if kind == "square":
        pts = [(math.cos(angle + k * math.pi / 2 + math.pi / 4), math.sin(angle + k * math.pi / 2 + math.pi / 4)) for k in range(4)]
    elif kind == "triangle":
        pts = [(math.cos(angle + k * 2 * math.pi / 3), math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)]
    else:
        raise ValueError(kind)
    return [(cx + r * x, cy + r * y) for x, y in pts]


def _render(rng: np.random.RandomState, size: int = IMG_SIZE, max_objects: int = 3):
    """One image: float RGB array, list of (class_name, bool mask, polygon or None)."""
    img = _background(rng, size)
    n = rng.randint(1, max_objects + 1)
    placed = []  # (cx, cy, r)
    objects = []
    tries = 0
    while len(objects) < n and tries < 100:
        tries += 1
        kind = CLASSES[rng.randint(len(CLASSES))]
        r = rng.uniform(14, 30)
        cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
        if any(math.hypot(cx - x, cy - y) < r + rr + 4 for x, y, rr in placed):
            continue
        placed.append((cx, cy, r))
        mask_img = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(mask_img)
        poly = None
        if kind == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
        else:
            poly = _shape_polygon(kind, cx, cy, r, rng.uniform(0, 2 * math.pi))
            draw.polygon(poly, fill=1)
        mask = np.array(mask_img, dtype=bool)
        if mask.sum() < 30:
            placed.pop()
            continue
        colour = np.array(CLASS_RGB[kind], np.float32) + rng.uniform(-35, 35, size=3)
        shade = 1.0 + rng.normal(0, 0.06, size=(size, size, 1))
        img = np.where(mask[..., None], colour[None, None] * shade, img)
        objects.append((kind, mask, poly))
    img = np.clip(img + rng.normal(0, 4, size=img.shape), 0, 255).astype(np.uint8)
    return img, objects


def make_coco(out_dir: str, seed: int = 0) -> None:
    from pycocotools import mask as mask_utils

    rng = np.random.RandomState(seed)
    for split, count in SPLITS_COCO.items():
        os.makedirs(os.path.join(out_dir, split), exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            img, objects = _render(rng)
            file_name = f"{split}_{i:04d}.jpg"
            Image.fromarray(img).save(os.path.join(out_dir, split, file_name), quality=95)
            image_id = i + 1
            images.append(dict(id=image_id, file_name=file_name, height=IMG_SIZE, width=IMG_SIZE))
            for kind, mask, poly in objects:
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                area = float(mask_utils.area(rle))
                if poly is None:  # circle: compressed RLE
                    x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
                    rle["counts"] = rle["counts"].decode("ascii")
                    segmentation = rle
                else:  # polygon
                    xs = [min(max(p[0], 0.0), IMG_SIZE) for p in poly]
                    ys = [min(max(p[1], 0.0), IMG_SIZE) for p in poly]
                    x, y = min(xs), min(ys)
                    w, h = max(xs) - x, max(ys) - y
                    segmentation = [[round(v, 2) for xy in zip(xs, ys) for v in xy]]
                annotations.append(dict(
                    id=len(annotations) + 1, image_id=image_id,
                    category_id=CLASSES.index(kind) + 1,
                    bbox=[round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                    area=area, iscrowd=0, segmentation=segmentation))
        coco = dict(
            info=dict(description="dinat-backbone toy shapes (generated)", version=VERSION),
            licenses=[],
            images=images,
            annotations=annotations,
            categories=[dict(id=k + 1, name=c, supercategory="shape") for k, c in enumerate(CLASSES)],
        )
        os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
        with open(os.path.join(out_dir, "annotations", f"instances_{split}.json"), "w") as f:
            json.dump(coco, f)


def make_ade(out_dir: str, seed: int = 1) -> None:
    rng = np.random.RandomState(seed)
    for split, count in SPLITS_ADE.items():
        os.makedirs(os.path.join(out_dir, "images", split), exist_ok=True)
        os.makedirs(os.path.join(out_dir, "annotations", split), exist_ok=True)
        for i in range(count):
            img, objects = _render(rng, max_objects=4)
            label = np.ones((IMG_SIZE, IMG_SIZE), np.uint8)  # 1 = background
            for kind, mask, _ in objects:
                label[mask] = CLASSES.index(kind) + 2
            if rng.rand() < 0.3:  # an "other" region (label 0, ignored like ADE20K's)
                y0, x0 = rng.randint(0, IMG_SIZE - 12, size=2)
                label[y0:y0 + 12, x0:x0 + 12] = 0
            name = f"ADE_{split}_{i:08d}"
            Image.fromarray(img).save(os.path.join(out_dir, "images", split, name + ".jpg"), quality=95)
            Image.fromarray(label).save(os.path.join(out_dir, "annotations", split, name + ".png"))


def _stamp(path: str) -> str:
    return os.path.join(path, ".toy_version")


def _shown(path: str) -> str:
    """``path`` relative to the working directory when it is below it (what the README shows)."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def ensure(out: str = os.path.join(ROOT, "data"), force: bool = False, only=None, quiet: bool = False) -> dict:
    """Generate whatever is missing (or everything with ``force``); returns the dataset roots."""
    roots = {"coco": os.path.join(out, "toy_coco"), "ade": os.path.join(out, "toy_ade")}
    makers = {"coco": make_coco, "ade": make_ade}
    for name in (only,) if only else ("coco", "ade"):
        root = roots[name]
        if not force and os.path.exists(_stamp(root)) and open(_stamp(root)).read().strip() == VERSION:
            if not quiet:
                print(f"[toy-data] {_shown(root)}: present (version {VERSION})")
            continue
        if os.path.exists(root):
            shutil.rmtree(root)
        tmp = root + ".tmp"
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        makers[name](tmp)
        with open(_stamp(tmp), "w") as f:
            f.write(VERSION + "\n")
        os.replace(tmp, root)
        if not quiet:
            print(f"[toy-data] {_shown(root)}: generated")
    return roots


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(ROOT, "data"), help="parent folder (default: <repo>/data)")
    p.add_argument("--force", action="store_true", help="regenerate even if present")
    p.add_argument("--only", choices=["coco", "ade"], help="generate only one of the two sets")
    args = p.parse_args(argv)
    ensure(args.out, args.force, args.only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
