# Toy Mask2Former (panoptic) with a small DiNAT (mini width, 6 blocks) on the embedded toy
# COCO-panoptic set (tools/make_toy_data.py: circles / squares / triangles as things, "stripes" /
# "checker" background textures as stuff; 64 train / 24 val images of 128x128). Trains from scratch
# on CPU in a few minutes (python tools/run_toy.py --panoptic) and is evaluated with mmdet's real
# CocoPanopticMetric (panopticapi). Not a paper recipe: mmdet's Mask2Former with its modules, losses
# and point sampling unchanged, at a smaller width (64 instead of 256), with fewer queries (16),
# pixel-decoder layers (2 instead of 6) and decoder layers (3 instead of 9).
_base_ = ['mmdet::mask2former/mask2former_r50_8xb2-lsj-50e_coco-panoptic.py']
custom_imports = dict(imports=['dinat_backbone.mm'], allow_failed_imports=False)

thing_classes = ('circle', 'square', 'triangle')
stuff_classes = ('stripes', 'checker')
classes = thing_classes + stuff_classes
palette = [(210, 60, 50), (60, 170, 70), (60, 90, 210), (150, 130, 95), (105, 120, 145)]
num_things_classes = len(thing_classes)
num_stuff_classes = len(stuff_classes)
num_classes = num_things_classes + num_stuff_classes
image_size = (128, 128)
width = 64  # transformer width of the pixel decoder and the mask decoder (256 in the paper configs)
_attn = dict(embed_dims=width, num_heads=4)
_ffn = dict(embed_dims=width, feedforward_channels=4 * width)
model = dict(
    data_preprocessor=dict(batch_augments=[
        dict(type='BatchFixedSizePad', size=image_size, img_pad_value=0, pad_mask=True,
             mask_pad_value=0, pad_seg=True, seg_pad_value=255)
    ]),
    backbone=dict(
        _delete_=True,
        type='DiNAT',
        arch=None,
        embed_dim=64,
        depths=(2, 1, 2, 1),
        num_heads=(2, 4, 8, 16),
        mlp_ratio=3.0,
        kernel_size=7,
        dilations=[[1, 2], [1], [1, 2], [1]],
        drop_path_rate=0.1,
        out_indices=(0, 1, 2, 3),
        init_cfg=None),
    panoptic_head=dict(
        in_channels=[64, 128, 256, 512],
        feat_channels=width,
        out_channels=width,
        num_things_classes=num_things_classes,
        num_stuff_classes=num_stuff_classes,
        num_queries=16,
        pixel_decoder=dict(
            encoder=dict(num_layers=2, layer_cfg=dict(self_attn_cfg=_attn, ffn_cfg=_ffn)),
            positional_encoding=dict(num_feats=width // 2)),
        positional_encoding=dict(num_feats=width // 2),
        transformer_decoder=dict(
            num_layers=3, layer_cfg=dict(self_attn_cfg=_attn, cross_attn_cfg=_attn, ffn_cfg=_ffn)),
        loss_cls=dict(class_weight=[1.0] * num_classes + [0.1])),
    panoptic_fusion_head=dict(num_things_classes=num_things_classes, num_stuff_classes=num_stuff_classes),
    # 32x32 mask logits at stride 4: sample as many points as there are pixels (12544 in the recipe)
    train_cfg=dict(num_points=1024),
    test_cfg=dict(panoptic_on=True, instance_on=False, semantic_on=False, max_per_image=16))

dataset_type = 'CocoPanopticDataset'
data_root = '{{fileDirname}}/../../data/toy_coco_panoptic/'
metainfo = dict(classes=classes, thing_classes=thing_classes, stuff_classes=stuff_classes, palette=palette)
train_pipeline = [
    dict(type='LoadImageFromFile', to_float32=True),
    dict(type='LoadPanopticAnnotations', with_bbox=True, with_mask=True, with_seg=True),
    dict(type='RandomFlip', prob=0.5),
    # large-scale jitter, toy-sized
    dict(type='RandomResize', scale=image_size, ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=image_size, crop_type='absolute', recompute_bbox=True,
         allow_negative_crop=True),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', to_float32=True),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='LoadPanopticAnnotations', with_bbox=True, with_mask=True, with_seg=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/panoptic_train.json',
        data_prefix=dict(img='train/', seg='annotations/panoptic_train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=8),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/panoptic_val.json',
        data_prefix=dict(img='val/', seg='annotations/panoptic_val/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(
    _delete_=True,
    type='CocoPanopticMetric',
    ann_file=data_root + 'annotations/panoptic_val.json',
    seg_prefix=data_root + 'annotations/panoptic_val/')
test_evaluator = val_evaluator

max_iters = 300
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters, milestones=[int(max_iters * 0.8)], gamma=0.1),
]
# from scratch: the whole model at one learning rate; no weight decay on rpb tables, norms, queries
optim_wrapper = dict(
    optimizer=dict(lr=0.0004),
    paramwise_cfg=dict(custom_keys={
        '_delete_': True,
        'rpb': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.),
        'query_embed': dict(decay_mult=0.),
        'query_feat': dict(decay_mult=0.),
        'level_embed': dict(decay_mult=0.),
    }))
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1))
log_processor = dict(type='LogProcessor', window_size=20, by_epoch=False)
randomness = dict(seed=0)
