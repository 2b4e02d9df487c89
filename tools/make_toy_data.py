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
* ``<out>/toy_coco_panoptic``: COCO panoptic segmentation in the real format: the shapes are the
  things, and the background is split into two stuff regions of distinct texture ("stripes",
  "checker"). ``annotations/panoptic_{train,val}.json`` (``images``, ``annotations`` with
  ``segments_info``, ``categories`` with ``isthing``), PNG segment maps in
  ``annotations/panoptic_{train,val}/`` with the segment id RGB-encoded (id = R + 256 G + 256^2 B,
  0 = unlabelled), images in ``{train,val}/*.jpg``.

Usage: ``python tools/make_toy_data.py [--out data] [--force] [--only coco|ade|coco_panoptic]``.
Re-running is a no-op when the data of the current generator version is already there, complete:
the stamp (``.toy_version``) records the version and every file's size, and a dataset missing or
truncating a file is regenerated. Concurrent runs are safe (a lock per dataset; generation into a
per-process staging folder renamed into place whole). A ``toy_*`` folder holding files the
generator did not write (no stamp, or files the stamp does not list) is never replaced: the run
stops naming it.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import os
import shutil
import sys
import tempfile

import numpy as np
from PIL import Image, ImageDraw

VERSION = "1"
CLASSES = ("circle", "square", "triangle")
#: base colours (RGB) per class; every instance jitters around its class colour
CLASS_RGB = {"circle": (210, 60, 50), "square": (60, 170, 70), "triangle": (60, 90, 210)}
IMG_SIZE = 128
SPLITS_COCO = {"train": 96, "val": 24}
SPLITS_ADE = {"training": 64, "validation": 16}
SPLITS_PANOPTIC = {"train": 64, "val": 24}
#: stuff classes of the panoptic set: background textures (category ids follow the things')
STUFF_CLASSES = ("stripes", "checker")
#: base tone (RGB) per stuff class; each image jitters it, the texture is what tells them apart
STUFF_RGB = {"stripes": (150, 130, 95), "checker": (105, 120, 145)}
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
        corners = [angle + k * math.pi / 2 + math.pi / 4 for k in range(4)]
        pts = [(math.cos(a), math.sin(a)) for a in corners]
    elif kind == "triangle":
        pts = [(math.cos(angle + k * 2 * math.pi / 3), math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)]
    else:
        raise ValueError(kind)
    return [(cx + r * x, cy + r * y) for x, y in pts]


def _stuff_background(rng: np.random.RandomState, size: int):
    """Background of two stuff regions split by a random line (sometimes a single region):
    float RGB image and the per-pixel stuff class index into STUFF_CLASSES."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle, offset = rng.uniform(0, math.pi), rng.uniform(0.3, 0.7) * size
    side = (np.cos(angle) * (xx - size / 2) + np.sin(angle) * (yy - size / 2) + size / 2) > offset
    first = rng.randint(len(STUFF_CLASSES))
    stuff = np.where(side, first, 1 - first) if rng.rand() < 0.8 else np.full((size, size), first)
    img = np.zeros((size, size, 3), np.float32)
    for k, name in enumerate(STUFF_CLASSES):
        tone = np.array(STUFF_RGB[name], np.float32) + rng.uniform(-20, 20, size=3)
        if name == "stripes":  # sinusoidal stripes, random orientation and period
            theta, period = rng.uniform(0, math.pi), rng.uniform(6, 10)
            wave = np.sin(2 * math.pi * (np.cos(theta) * xx + np.sin(theta) * yy) / period)
        else:  # checkerboard of random cell size
            cell = rng.randint(6, 11)
            wave = np.where(((xx // cell) + (yy // cell)) % 2 == 0, 1.0, -1.0)
        texture = tone[None, None] + 30 * wave[..., None] + rng.normal(0, 6, size=(size, size, 3))
        img = np.where((stuff == k)[..., None], texture, img)
    return img, stuff


def _render(rng: np.random.RandomState, size: int = IMG_SIZE, max_objects: int = 3, background=None):
    """One image: float RGB array, list of (class_name, bool mask, polygon or None). ``background``:
    a float RGB array to draw on instead of the default noisy gradient."""
    img = _background(rng, size) if background is None else background.copy()
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


def _rgb_encode(ids: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG encoding of a segment-id map: id = R + 256 G + 256^2 B."""
    return np.stack([ids % 256, ids // 256 % 256, ids // 256 ** 2], axis=-1).astype(np.uint8)


def _segment_info(segment_id: int, category_id: int, mask: np.ndarray) -> dict:
    ys, xs = np.nonzero(mask)
    x, y = int(xs.min()), int(ys.min())
    return dict(id=segment_id, category_id=category_id, iscrowd=0, area=int(mask.sum()),
                bbox=[x, y, int(xs.max()) - x + 1, int(ys.max()) - y + 1])


def make_coco_panoptic(out_dir: str, seed: int = 2) -> None:
    """Things: the shapes (category ids 1..3), stuff: the two background textures (4, 5). One
    segment per shape and per stuff region present; segment ids are category_id * 1000 + k."""
    rng = np.random.RandomState(seed)
    categories = [dict(id=k + 1, name=c, supercategory="shape", isthing=1, color=list(CLASS_RGB[c]))
                  for k, c in enumerate(CLASSES)]
    categories += [dict(id=len(CLASSES) + k + 1, name=c, supercategory="texture", isthing=0,
                        color=list(STUFF_RGB[c])) for k, c in enumerate(STUFF_CLASSES)]
    for split, count in SPLITS_PANOPTIC.items():
        seg_dir = os.path.join(out_dir, "annotations", f"panoptic_{split}")
        os.makedirs(os.path.join(out_dir, split), exist_ok=True)
        os.makedirs(seg_dir, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            background, stuff = _stuff_background(rng, IMG_SIZE)
            img, objects = _render(rng, max_objects=4, background=background)
            ids = np.zeros((IMG_SIZE, IMG_SIZE), np.int64)
            segments = []
            covered = np.zeros((IMG_SIZE, IMG_SIZE), bool)
            for k, (kind, mask, _) in enumerate(objects):
                category_id = CLASSES.index(kind) + 1
                ids[mask] = category_id * 1000 + k
                segments.append(_segment_info(category_id * 1000 + k, category_id, mask))
                covered |= mask
            for k in range(len(STUFF_CLASSES)):
                region = (stuff == k) & ~covered
                if region.sum() == 0:
                    continue
                category_id = len(CLASSES) + k + 1
                ids[region] = category_id * 1000
                segments.append(_segment_info(category_id * 1000, category_id, region))
            image_id = i + 1
            name = f"{split}_{i:04d}"
            Image.fromarray(img).save(os.path.join(out_dir, split, name + ".jpg"), quality=95)
            Image.fromarray(_rgb_encode(ids)).save(os.path.join(seg_dir, name + ".png"))
            images.append(dict(id=image_id, file_name=name + ".jpg", height=IMG_SIZE, width=IMG_SIZE))
            annotations.append(dict(image_id=image_id, file_name=name + ".png", segments_info=segments))
        with open(os.path.join(out_dir, "annotations", f"panoptic_{split}.json"), "w") as f:
            json.dump(dict(info=dict(description="dinat-backbone toy panoptic shapes (generated)",
                                     version=VERSION),
                           licenses=[], images=images, annotations=annotations, categories=categories), f)


STAMP = ".toy_version"


class ToyDataError(RuntimeError):
    """A folder where a dataset goes holds something this generator did not write."""


def _stamp(path: str) -> str:
    return os.path.join(path, STAMP)


def _contents(root: str) -> dict:
    """``{relative path: size in bytes}`` of every file below ``root`` but the stamp."""
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            if rel != STAMP:
                files[rel] = os.path.getsize(path)
    return files


def _read_stamp(root: str):
    """The stamp of a generated dataset: ``{'version': ..., 'files': {path: size}}``; ``None``
    without one (not written by this generator); ``files`` is ``None`` for the first generator's
    plain-text stamp, which recorded no contents."""
    try:
        with open(_stamp(root)) as f:
            text = f.read()
    except OSError:
        return None
    try:
        stamp = json.loads(text)
    except ValueError:
        return dict(version=text.strip(), files=None)
    return stamp if isinstance(stamp, dict) else dict(version=str(stamp), files=None)


def _write_stamp(root: str) -> None:
    """Record the version and the contents (every file's size): a dataset that lost or truncated
    a file no longer matches its stamp and is regenerated."""
    with open(_stamp(root), "w") as f:
        json.dump(dict(version=VERSION, files=_contents(root)), f, indent=0, sort_keys=True)


def is_complete(root: str) -> bool:
    """Whether ``root`` holds the current generator's dataset, every file present with its size."""
    stamp = _read_stamp(root)
    return bool(stamp) and stamp.get("version") == VERSION and stamp.get("files") == _contents(root)


def _check_replaceable(root: str) -> None:
    """Refuse to replace a folder holding files this generator did not write: no stamp (a user's
    folder or data), or files the stamp does not list."""
    if not os.path.exists(root):
        return
    if not os.path.isdir(root):
        raise ToyDataError(f"{root} is a file, not a toy dataset: move it away to generate the dataset there")
    stamp = _read_stamp(root)
    theirs = sorted(_contents(root)) if stamp is None else \
        sorted(set(_contents(root)) - set(stamp["files"])) if stamp.get("files") is not None else []
    if theirs:
        shown = ", ".join(theirs[:5]) + (f" and {len(theirs) - 5} more" if len(theirs) > 5 else "")
        why = "has no stamp of tools/make_toy_data.py" if stamp is None else "holds files the generator did not write"
        raise ToyDataError(f"{root} {why} ({shown}); refusing to replace it: move those files elsewhere "
                           "(or delete the folder if they are not needed), then run again")


@contextlib.contextmanager
def _locked(out: str, name: str, quiet: bool):
    """An exclusive lock per dataset (``<out>/.toy_<name>.lock``, fcntl.flock): concurrent runs
    (``make demo`` beside ``make test``) generate each dataset once; the others wait, then find it
    complete. The kernel releases the lock when a process dies."""
    fd = os.open(os.path.join(out, f".toy_{name}.lock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not quiet:
                print(f"[toy-data] waiting for another run generating toy_{name}", flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _remove_stale(out: str, name: str) -> None:
    """Staging folders of runs that died mid-way (only while holding the dataset's lock, when no
    live run can be writing one)."""
    for entry in os.listdir(out):
        if entry.startswith((f".toy_{name}.partial-", f".toy_{name}.old-")):
            shutil.rmtree(os.path.join(out, entry), ignore_errors=True)


def shown_path(path: str) -> str:
    """``path`` relative to the working directory when it is below it (what the README shows)."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def ensure(out: str = os.path.join(ROOT, "data"), force: bool = False, only=None, quiet: bool = False) -> dict:
    """Generate whatever is missing or incomplete (or everything with ``force``); returns the
    dataset roots. Safe to run concurrently; a dataset is generated into a private staging folder
    and renamed into place whole, with a stamp listing its files. Raises :class:`ToyDataError`
    rather than replace a folder holding files the generator did not write."""
    makers = {"coco": make_coco, "ade": make_ade, "coco_panoptic": make_coco_panoptic}
    roots = {name: os.path.join(out, f"toy_{name}") for name in makers}
    os.makedirs(out, exist_ok=True)
    for name in (only,) if only else tuple(makers):
        root = roots[name]
        with _locked(out, name, quiet):
            if not force and is_complete(root):
                if not quiet:
                    print(f"[toy-data] {shown_path(root)}: present (version {VERSION})")
                continue
            _check_replaceable(root)
            _remove_stale(out, name)
            staging = tempfile.mkdtemp(prefix=f".toy_{name}.partial-", dir=out)
            old = None
            try:
                makers[name](staging)
                _write_stamp(staging)
                os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide the data from other users
                if os.path.exists(root):  # ours (checked above): out of the way, then the new one in
                    old = tempfile.mkdtemp(prefix=f".toy_{name}.old-", dir=out)
                    os.rename(root, os.path.join(old, "data"))
                os.rename(staging, root)
            finally:
                for folder in (staging, old):
                    if folder and os.path.exists(folder):
                        shutil.rmtree(folder, ignore_errors=True)
        if not quiet:
            print(f"[toy-data] {shown_path(root)}: generated")
    return roots


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(ROOT, "data"), help="parent folder (default: <repo>/data)")
    p.add_argument("--force", action="store_true", help="regenerate even if present")
    p.add_argument("--only", choices=["coco", "ade", "coco_panoptic"], help="generate only one of the sets")
    args = p.parse_args(argv)
    try:
        ensure(args.out, args.force, args.only)
    except ToyDataError as e:
        print(f"[toy-data] {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
