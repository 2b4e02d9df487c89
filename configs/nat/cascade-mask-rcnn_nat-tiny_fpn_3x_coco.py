# NAT-Tiny + Cascade Mask R-CNN (FPN), COCO 2017, 3x schedule (36 epochs),
# DETR-style multi-scale training, AdamW, 16 images per batch (8 GPUs x 2), AMP.
# Reproduces the NAT paper (Hassani et al., "Neighborhood Attention Transformer", CVPR 2023):
#   box AP 51.4, mask AP 44.5 (COCO val2017).
# NAT = DiNAT with every dilation 1; same recipe as the DiNAT config of this size.
_base_ = [
    '../_base_/models/cascade-mask-rcnn_dinat_fpn.py',
    '../_base_/datasets/coco_instance_detr-aug.py',
    '../_base_/schedules/coco_3x_adamw.py',
    '../_base_/default_runtime_det.py',
]
custom_imports = dict(imports=['dinat_backbone.mm'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        type='NAT',
        arch='tiny',
        kernel_size=7,
        drop_path_rate=0.3,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://shi-labs.com/projects/nat/checkpoints/CLS/nat_tiny.pth')),
    neck=dict(in_channels=[64, 128, 256, 512]))
