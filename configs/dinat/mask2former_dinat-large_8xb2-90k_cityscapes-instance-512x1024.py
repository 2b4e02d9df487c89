# DiNAT-Large + Mask2Former, Cityscapes instance segmentation (8 classes), 512x1024 crops, 90k
# iterations of 16 images (8 GPUs x 2), poly schedule (power 0.9), AdamW lr 1e-4 / weight decay
# 0.05, backbone lr x0.1, 200 queries, fp32.
# mmdet 3.3 has the dataset (CityscapesDataset) and metrics (CocoMetric, and the official
# CityScapesMetric, which needs `pip install cityscapesscripts`) but no Mask2Former config for it:
# this is the COCO instance config next to it with Cityscapes' classes, data and schedule from
# Mask2Former's cityscapes/instance-segmentation/maskformer2_R50_bs16_90k recipe (shortest edge
# 512..2048, max 4096, 512x1024 crops, colour jitter; test at 1024x2048) and the backbone of the
# authors' mask2former/configs/cityscapes/instance-segmentation/dinat/maskformer2_dinat_large_IN21k_384_bs16_90k.yaml.
# Reproduces the DiNAT paper (Hassani & Shi, "Dilated Neighborhood Attention Transformer", 2022):
#   mask AP 45.1 (Cityscapes val); the released mask2former_dinat_large_cityscapes_instance.pth: AP 44.5.
_base_ = ['./mask2former_dinat-large_16xb1-lsj-100e_coco.py']

num_things_classes = 8
num_stuff_classes = 0
num_classes = num_things_classes + num_stuff_classes
crop_size = (512, 1024)
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

dataset_type = 'CityscapesDataset'
data_root = 'data/cityscapes/'
train_pipeline = [
    dict(type='LoadImageFromFile', to_float32=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomChoiceResize', scales=[int(1024 * x * 0.1) for x in range(5, 21)],
         resize_type='ResizeShortestEdge', max_size=4096),
    dict(type='RandomCrop', crop_size=crop_size, crop_type='absolute', recompute_bbox=True,
         allow_negative_crop=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-5, 1e-5), by_mask=True),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', to_float32=True),
    dict(type='Resize', scale=(2048, 1024), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=2,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/instancesonly_filtered_gtFine_train.json',
        data_prefix=dict(img='leftImg8bit/train/'),
        pipeline=train_pipeline))
val_dataloader = dict(
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/instancesonly_filtered_gtFine_val.json',
        data_prefix=dict(img='leftImg8bit/val/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = [
    dict(type='CocoMetric', ann_file=data_root + 'annotations/instancesonly_filtered_gtFine_val.json',
         metric=['bbox', 'segm']),
    dict(type='CityScapesMetric', seg_prefix=data_root + 'gtFine/val',
         outfile_prefix='./work_dirs/cityscapes_metric/instance'),
]
test_evaluator = val_evaluator

max_iters = 90000
param_scheduler = dict(_delete_=True, type='PolyLR', eta_min=0, power=0.9, begin=0, end=max_iters, by_epoch=False)
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters, val_interval=5000)
