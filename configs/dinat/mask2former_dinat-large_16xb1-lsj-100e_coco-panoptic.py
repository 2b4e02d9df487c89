# DiNAT-Large + Mask2Former, COCO panoptic (80 things + 53 stuff), 100 epochs = 737,500 iterations
# of 16 images (16 GPUs x 1), steps at 655,556 / 710,184, large-scale jitter at 1024x1024, AdamW
# lr 1e-4 / weight decay 0.05, backbone lr x0.1, 200 queries, fp32.
# mmdet 3.3's Swin-L recipe with the backbone of the authors' mask2former/configs/coco/
# panoptic-segmentation/dinat/maskformer2_dinat_large_IN21k_384_bs16_100ep.yaml (see
# ../_base_/models/mask2former_dinat-large.py: kernel 11, IN-22k weights with 7x7 rpb resized at load).
# Reproduces the DiNAT paper (Hassani & Shi, "Dilated Neighborhood Attention Transformer", 2022),
# COCO val2017: PQ 58.5, AP 49.2, mIoU 68.3 (the released mask2former_dinat_large_coco_panoptic.pth:
# PQ 58.2 / AP 49.2 / mIoU 68.1). mmdet evaluates PQ (CocoPanopticMetric) and AP (CocoMetric);
# its Mask2Former cannot evaluate the semantic mIoU on COCO panoptic (test_cfg semantic_on=False).
_base_ = [
    'mmdet::mask2former/mask2former_swin-l-p4-w12-384-in21k_16xb1-lsj-100e_coco-panoptic.py',
    '../_base_/models/mask2former_dinat-large.py',
]
custom_imports = dict(imports=['dinat_backbone.mm'], allow_failed_imports=False)
model = dict(
    backbone=_base_.dinat_large_mask2former_backbone,
    panoptic_head=dict(num_queries=200, in_channels=_base_.dinat_large_channels))
optim_wrapper = dict(paramwise_cfg=dict(custom_keys=_base_.dinat_large_mask2former_custom_keys))
