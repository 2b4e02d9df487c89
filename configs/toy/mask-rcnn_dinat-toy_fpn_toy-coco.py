# Toy Mask R-CNN with a small DiNAT (mini width, 6 blocks) on the embedded toy COCO shapes
# (tools/make_toy_data.py: 3 classes, 96 train / 24 val images of 128x128). Trains from scratch on
# CPU in a few minutes (tools/run_toy.py) and is evaluated with mmdet's real CocoMetric.
# Not a paper recipe: a smoke-scale run of the full stack (registry, init, train loop, metric).
_base_ = [
    '../_base_/models/mask-rcnn_dinat_fpn.py',
    '../_base_/default_runtime_det.py',
]
custom_imports = dict(imports=['dinat_backbone.mm'], allow_failed_imports=False)

num_classes = 3
classes = ('circle', 'square', 'triangle')
model = dict(
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
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=64),
    rpn_head=dict(in_channels=64, feat_channels=64),
    roi_head=dict(
        # fixed RoIAlign sampling (the default adaptive one is the slowest CPU op here)
        bbox_roi_extractor=dict(
            out_channels=64, roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=2)),
        bbox_head=dict(in_channels=64, fc_out_channels=256, num_classes=num_classes),
        mask_roi_extractor=dict(
            out_channels=64, roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=2)),
        mask_head=dict(num_convs=2, in_channels=64, conv_out_channels=64, num_classes=num_classes)),
    train_cfg=dict(
        rpn=dict(sampler=dict(num=128)),
        rpn_proposal=dict(nms_pre=500, max_per_img=200),
        rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(
        rpn=dict(nms_pre=500, max_per_img=200),
        rcnn=dict(max_per_img=20)))

dataset_type = 'CocoDataset'
data_root = '{{fileDirname}}/../../data/toy_coco/'
backend_args = None
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=dict(classes=classes),
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=8),
        pipeline=train_pipeline,
        backend_args=backend_args))
val_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=dict(classes=classes),
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args))
test_dataloader = val_dataloader
val_evaluator = dict(
    type='CocoMetric',
    ann_file=data_root + 'annotations/instances_val.json',
    metric=['bbox', 'segm'],
    format_only=False,
    backend_args=backend_args)
test_evaluator = val_evaluator

max_iters = 240
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters,
         milestones=[int(max_iters * 0.8)], gamma=0.1),
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.0004, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'rpb': dict(decay_mult=0.), 'norm': dict(decay_mult=0.)}),
    clip_grad=dict(max_norm=10.0, norm_type=2))
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=2))
log_processor = dict(type='LogProcessor', window_size=20, by_epoch=False)
randomness = dict(seed=0)
