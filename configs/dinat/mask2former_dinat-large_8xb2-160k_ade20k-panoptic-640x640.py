# DiNAT-Large + Mask2Former, ADE20K panoptic (100 things + 50 stuff), 640x640 crops, 160k
# iterations of 16 images (8 GPUs x 2), poly schedule (power 0.9), AdamW lr 1e-4 / weight decay
# 0.05, backbone lr x0.1, 200 queries, fp32.
# mmdet 3.3 has the dataset (ADE20KPanopticDataset; annotations from its
# tools/dataset_converters/ade20k2coco.py) and metric (CocoPanopticMetric) but no Mask2Former
# config for it: this is the COCO panoptic config next to it (mmdet's Swin-L recipe) with ADE20K's
# classes, data and schedule from Mask2Former's ade20k/panoptic-segmentation/maskformer2_R50_bs16_160k
# recipe (shortest edge 320..1280, max 2560, 640 crops, colour jitter; test at shortest edge 640).
# Reproduces the DiNAT paper (Hassani & Shi, "Dilated Neighborhood Attention Transformer", 2022):
#   PQ 49.4 (ADE20K val); the released mask2former_dinat_large_ade20k_panoptic.pth: PQ 48.5.
_base_ = ['./mask2former_dinat-large_16xb1-lsj-100e_coco-panoptic.py']

num_things_classes = 100
num_stuff_classes = 50
num_classes = num_things_classes + num_stuff_classes
crop_size = (640, 640)
model = dict(
    data_preprocessor=dict(batch_augments=[
        dict(type='BatchFixedSizePad', size=crop_size, img_pad_value=0, pad_mask=True,
             mask_pad_value=0, pad_seg=True, seg_pad_value=255)
    ]),
    panoptic_head=dict(
        num_things_classes=num_things_classes,
        num_stuff_classes=num_stuff_classes,
        loss_cls=dict(class_weight=[1.0] * num_classes + [0.1])),
    panoptic_fusion_head=dict(num_things_classes=num_things_classes, num_stuff_classes=num_stuff_classes),
    test_cfg=dict(panoptic_on=True, instance_on=False, semantic_on=False))

dataset_type = 'ADE20KPanopticDataset'
data_root = 'data/ADEChallengeData2016/'
train_pipeline = [
    dict(type='LoadImageFromFile', to_float32=True),
    dict(type='LoadPanopticAnnotations', with_bbox=True, with_mask=True, with_seg=True),
    dict(type='RandomChoiceResize', scales=[int(640 * x * 0.1) for x in range(5, 21)],
         resize_type='ResizeShortestEdge', max_size=2560),
    dict(type='RandomCrop', crop_size=crop_size, crop_type='absolute', recompute_bbox=True,
         allow_negative_crop=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', to_float32=True),
    dict(type='Resize', scale=(2560, 640), keep_ratio=True),
    dict(type='LoadPanopticAnnotations', with_bbox=True, with_mask=True, with_seg=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=2,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='ade20k_panoptic_train.json',
        data_prefix=dict(img='images/training/', seg='ade20k_panoptic_train/'),
        pipeline=train_pipeline))
val_dataloader = dict(
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='ade20k_panoptic_val.json',
        data_prefix=dict(img='images/validation/', seg='ade20k_panoptic_val/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(
    _delete_=True,
    type='CocoPanopticMetric',
    ann_file=data_root + 'ade20k_panoptic_val.json',
    seg_prefix=data_root + 'ade20k_panoptic_val/')
test_evaluator = val_evaluator

max_iters = 160000
param_scheduler = dict(_delete_=True, type='PolyLR', eta_min=0, power=0.9, begin=0, end=max_iters, by_epoch=False)
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters, val_interval=5000)
