# The front page's mmseg config (configs/examples/upernet_dinat-tiny_512x512_160k_ade20k.py) on the
# toy ADE20K-style set (tools/make_toy_data.py: 4 classes, label 0 ignored as in ADE20K; 64 train /
# 16 val images of 128x128): the same DiNAT-T UPerNet and optimizer, with the toy classes, 128-pixel
# crops, BN instead of SyncBN in the heads (CPU, also under gloo DDP), random initialisation (nothing
# is downloaded) and a 300-iteration schedule. The recipe for trying any mmseg ADE20K config on the
# toy data: copy this file and change `_base_`.
#   python tools/make_toy_data.py
#   python tools/train.py configs/toy/upernet_dinat-tiny_toy-ade.py [--cfg-options train_cfg.max_iters=20]
_base_ = '../examples/upernet_dinat-tiny_512x512_160k_ade20k.py'

data_root = '{{fileDirname}}/../../data/toy_ade/'
metainfo = dict(classes=('background', 'circle', 'square', 'triangle'),
                palette=[[120, 120, 120], [210, 60, 50], [60, 170, 70], [60, 90, 210]])
num_classes = 4
crop_size = (128, 128)
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(init_cfg=None),  # from scratch: no download
    decode_head=dict(num_classes=num_classes, norm_cfg=norm_cfg),
    auxiliary_head=dict(num_classes=num_classes, norm_cfg=norm_cfg))

# the base's pipelines resize to 2048x512 and crop 512x512
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(256, 128), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 128), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
# the toy set is not ADE20K's 150 classes: the plain dataset class with ADE20K's file conventions
_dataset = dict(type='BaseSegDataset', data_root=data_root, metainfo=metainfo, img_suffix='.jpg',
                seg_map_suffix='.png', reduce_zero_label=True)
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(**_dataset, data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(**_dataset, data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader

max_iters = 300
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=30, end=max_iters, by_epoch=False),
]
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(interval=max_iters))
randomness = dict(seed=0)
