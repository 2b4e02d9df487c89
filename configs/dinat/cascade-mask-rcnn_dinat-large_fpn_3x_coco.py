# DiNAT-Large + Cascade Mask R-CNN (FPN), COCO 2017, 3x schedule (36 epochs),
# DETR-style multi-scale training, AdamW, 16 images per batch (8 GPUs x 2), fp32.
# Reproduces the DiNAT paper (Hassani & Shi, "Dilated Neighborhood Attention Transformer", 2022):
#   box AP 55.3, mask AP 47.8 (COCO val2017).
_base_ = [
    '../_base_/models/cascade-mask-rcnn_dinat_fpn.py',
    '../_base_/datasets/coco_instance_detr-aug.py',
    '../_base_/schedules/coco_3x_adamw.py',
    '../_base_/default_runtime_det.py',
]
custom_imports = dict(imports=['dinat_backbone.mm'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        type='DiNAT',
        arch='large',
        kernel_size=7,
        dilations='coco',
        drop_path_rate=0.6,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/dinat_large_in22k_224.pth')),
    neck=dict(in_channels=[192, 384, 768, 1536]))
# large: lr 7.5e-5 and no mixed precision
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.000075, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'rpb': dict(decay_mult=0.), 'norm': dict(decay_mult=0.)}))
