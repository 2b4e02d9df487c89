# DiNAT-Large + Mask2Former, COCO instance segmentation (80 classes), 100 epochs = 737,500
# iterations of 16 images (16 GPUs x 1), steps at 655,556 / 710,184, large-scale jitter at
# 1024x1024, AdamW lr 1e-4 / weight decay 0.05, backbone lr x0.1, 200 queries, fp32.
# mmdet 3.3 ships no Swin-L instance config: this is its Swin instance recipe
# (mask2former_swin-s-p4-w7-224_8xb2-lsj-50e_coco.py) with the Swin-L panoptic config's 200 queries,
# batch and 100-epoch schedule, and the backbone of the authors' mask2former/configs/coco/
# instance-segmentation/dinat/maskformer2_dinat_large_IN21k_384_bs16_100ep.yaml (see
# ../_base_/models/mask2former_dinat-large.py: kernel 11, IN-22k weights with 7x7 rpb resized at load).
# Reproduces the DiNAT paper (Hassani & Shi, "Dilated Neighborhood Attention Transformer", 2022):
#   mask AP 50.8 (COCO val2017); the released mask2former_dinat_large_coco_instance.pth: 50.7.
_base_ = [
    'mmdet::mask2former/mask2former_swin-s-p4-w7-224_8xb2-lsj-50e_coco.py',
    '../_base_/models/mask2former_dinat-large.py',
]
custom_imports = dict(imports=['dinat_backbone.mm'], allow_failed_imports=False)
model = dict(
    backbone=_base_.dinat_large_mask2former_backbone,
    panoptic_head=dict(num_queries=200, in_channels=_base_.dinat_large_channels))
optim_wrapper = dict(paramwise_cfg=dict(custom_keys=_base_.dinat_large_mask2former_custom_keys))

train_dataloader = dict(batch_size=1, num_workers=1)
# learning policy (mmdet's Swin-L panoptic config; the authors' yaml: MAX_ITER 737500, STEPS)
max_iters = 737500
param_scheduler = dict(end=max_iters, milestones=[655556, 710184])
interval = 5000
dynamic_intervals = [(max_iters // interval * interval + 1, max_iters)]
train_cfg = dict(max_iters=max_iters, val_interval=interval, dynamic_intervals=dynamic_intervals)
