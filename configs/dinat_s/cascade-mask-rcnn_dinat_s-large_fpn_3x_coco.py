# DiNAT_s-Large (Swin-layout DiNAT) + Cascade Mask R-CNN (FPN), COCO 2017, 3x schedule (36 epochs),
# DETR-style multi-scale training, AdamW lr 5e-5, 16 images per batch (8 GPUs x 2), AMP (the
# authors' DiNAT_s-Large config keeps mixed precision, unlike DiNAT-Large's).
# Reproduces the DiNAT paper (Hassani & Shi, "Dilated Neighborhood Attention Transformer", 2022),
# DiNAT_s table of the authors' detection/DiNAT.md: box AP 54.8, mask AP 47.2 (COCO val2017), 253M parameters.
_base_ = [
    '../_base_/models/cascade-mask-rcnn_dinat_fpn.py',
    '../_base_/datasets/coco_instance_detr-aug.py',
    '../_base_/schedules/coco_3x_adamw.py',
    '../_base_/default_runtime_det.py',
]
custom_imports = dict(imports=['dinat_backbone.mm'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        type='DiNAT_s',
        arch='large',
        kernel_size=7,
        dilations='coco',
        drop_path_rate=0.6,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/dinat_s_large_in22k_224.pth')),
    neck=dict(in_channels=[192, 384, 768, 1536]))
optim_wrapper = dict(optimizer=dict(lr=0.00005))
