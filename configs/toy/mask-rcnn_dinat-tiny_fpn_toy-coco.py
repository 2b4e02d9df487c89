# The front page's mmdet config (configs/examples/mask-rcnn_dinat-tiny_fpn_1x_coco.py) on the toy
# COCO set (tools/make_toy_data.py: circles, squares and triangles; 96 train / 24 val images of
# 128x128): the same DiNAT-T Mask R-CNN and optimizer, with the toy classes, 128-pixel images, random
# initialisation (nothing is downloaded) and a short iteration-based schedule. The recipe for trying
# any mmdet COCO config on the toy data: copy this file and change `_base_`.
#   python tools/make_toy_data.py
#   python tools/train.py configs/toy/mask-rcnn_dinat-tiny_fpn_toy-coco.py [--cfg-options train_cfg.max_iters=20]
_base_ = '../examples/mask-rcnn_dinat-tiny_fpn_1x_coco.py'

data_root = '{{fileDirname}}/../../data/toy_coco/'
metainfo = dict(classes=('circle', 'square', 'triangle'))
num_classes = 3
model = dict(
    backbone=dict(init_cfg=None),  # from scratch: no download
    roi_head=dict(bbox_head=dict(num_classes=num_classes), mask_head=dict(num_classes=num_classes)))

# the base resizes to 1333x800; the toy images are 128x128
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='annotations/instances_train.json',
                 data_prefix=dict(img='train/'), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='annotations/instances_val.json',
                 data_prefix=dict(img='val/'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

# 10 epochs of the 96 training images, by iteration (the base's 1x schedule is 12 COCO epochs)
max_iters = 240
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters, milestones=[int(max_iters * 0.8)], gamma=0.1),
]
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(by_epoch=False, interval=max_iters))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
