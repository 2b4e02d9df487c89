# DiNAT-Large + Mask2Former, ADE20K instance segmentation (100 classes), 640x640 crops, 160k
# iterations of 16 images (8 GPUs x 2), poly schedule (power 0.9), AdamW lr 1e-4 / weight decay
# 0.05, backbone lr x0.1, 200 queries, fp32.
# mmdet 3.3 has the dataset (ADE20KInstanceDataset; annotations from its
# tools/dataset_converters/ade20k2coco.py) and metric (CocoMetric) but no Mask2Former config for it:
# this is the COCO instance config next to it with ADE20K's classes, data and schedule from
# Mask2Former's ade20k/instance-segmentation/maskformer2_R50_bs16_160k recipe (shortest edge
# 320..1280, max 2560, 640 crops, colour jitter; test at shortest edge 640) and the backbone of the
# authors' mask2former/configs/ade20k/instance-segmentation/dinat/maskformer2_dinat_large_IN21k_384_bs16_160k.yaml.
# Reproduces the DiNAT paper (Hassani & Shi, "Dilated Neighborhood Attention Transformer", 2022):
#   mask AP 35.4 (ADE20K val); the released mask2former_dinat_large_ade20k_instance.pth: AP 35.2.
_base_ = ['./mask2former_dinat-large_16xb1-lsj-100e_coco.py']

num_things_classes = 100
num_stuff_classes = 0
num_classes = num_things_classes + num_stuff_classes
crop_size = (640, 640)
model = dict(
    data_preprocessor=dict(batch_augments=[
        dict(type='BatchFixedSizePad', size=crop_size, img_pad_value=0, pad_mask=True,
             mask_pad_value=0, pad_seg=False)
    ]),
    panoptic_head=dict(
        num_things_classes=num_things_classes,
        num_stuff_classes=num_stuff_classes,
        loss_cls=dict(class_weight=[1.0] * num_classes + [0.1])),
    panoptic_fusion_head=dict(num_things_classes=num_things_classes, num_stuff_classes=num_stuff_classes))

dataset_type = 'ADE20KInstanceDataset'
data_root = 'data/ADEChallengeData2016/'
train_pipeline = [
    dict(type='LoadImageFromFile', to_float32=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomChoiceResize', scales=[int(640 * x * 0.1) for x in range(5, 21)],
         resize_type='ResizeShortestEdge', max_size=2560),
    dict(type='RandomCrop', crop_size=crop_size, crop_type='absolute', recompute_bbox=True,
         allow_negative_crop=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-5, 1e-5), by_mask=True),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', to_float32=True),
    dict(type='Resize', scale=(2560, 640), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=2,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='ade20k_instance_train.json',
        data_prefix=dict(img='images/training/'),
        pipeline=train_pipeline))
val_dataloader = dict(
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='ade20k_instance_val.json',
        data_prefix=dict(img='images/validation/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'ade20k_instance_val.json')
test_evaluator = val_evaluator

max_iters = 160000
param_scheduler = dict(_delete_=True, type='PolyLR', eta_min=0, power=0.9, begin=0, end=max_iters, by_epoch=False)
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters, val_interval=5000)
