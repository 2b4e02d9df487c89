# Toy UPerNet (+ FCN auxiliary head) with a small DiNAT (mini width, 6 blocks) on the embedded
# ADE20K-style toy set (tools/make_toy_data.py: 4 classes, 64 train / 16 val images of 128x128,
# label 0 ignored via reduce_zero_label like ADE20K). CPU scale; evaluated with mmseg's IoUMetric.
_base_ = [
    '../_base_/models/upernet_dinat.py',
    '../_base_/default_runtime_seg.py',
]
custom_imports = dict(imports=['dinat_backbone.mm'], allow_failed_imports=False)

num_classes = 4
classes = ('background', 'circle', 'square', 'triangle')
palette = [[120, 120, 120], [210, 60, 50], [60, 170, 70], [60, 90, 210]]
crop_size = (128, 128)
norm_cfg = dict(type='BN', requires_grad=True)  # BN, not SyncBN: runs on CPU, also under gloo DDP
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='DiNAT',
        arch=None,
        embed_dim=64,
        depths=(2, 1, 2, 1),
        num_heads=(2, 4, 8, 16),
        mlp_ratio=3.0,
        kernel_size=7,
        dilations=[[1, 2], [1], [1, 2], [1]],
        drop_path_rate=0.1,
        init_cfg=None),
    decode_head=dict(in_channels=[64, 128, 256, 512], channels=64, num_classes=num_classes,
                     norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=256, channels=32, num_classes=num_classes, norm_cfg=norm_cfg))

dataset_type = 'BaseSegDataset'
data_root = '{{fileDirname}}/../../data/toy_ade/'
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
_dataset = dict(
    type=dataset_type,
    data_root=data_root,
    metainfo=dict(classes=classes, palette=palette),
    img_suffix='.jpg',
    seg_map_suffix='.png',
    reduce_zero_label=True)
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        **_dataset,
        data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        **_dataset,
        data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

max_iters = 300
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.0004, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={'rpb': dict(decay_mult=0.), 'norm': dict(decay_mult=0.)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=30, end=max_iters, by_epoch=False),
]
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=2),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
randomness = dict(seed=0)
