# DiNAT_s-Tiny (Swin-layout DiNAT) + Cascade Mask R-CNN (FPN), COCO 2017, 3x schedule (36 epochs),
# DETR-style multi-scale training, AdamW, 16 images per batch (8 GPUs x 2), AMP.
# Reproduces the DiNAT paper (Hassani & Shi, "Dilated Neighborhood Attention Transformer", 2022),
# DiNAT_s table of the authors' detection/DiNAT.md: box AP 51.0, mask AP 44.1 (COCO val2017), 86M parameters.
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
        arch='tiny',
        kernel_size=7,
        dilations='coco',
        drop_path_rate=0.3,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_s_tiny_in1k_224.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
