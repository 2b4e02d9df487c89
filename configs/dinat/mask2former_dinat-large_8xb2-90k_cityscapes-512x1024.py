# DiNAT-Large + Mask2Former, Cityscapes semantic segmentation (19 classes), 512x1024 crops, 90k
# iterations of 16 images (8 GPUs x 2), poly schedule, AdamW lr 1e-4 / weight decay 0.05, backbone
# lr x0.1, 100 queries, fp32.
# mmseg 1.2's Swin-L recipe with the backbone of the authors' mask2former/configs/cityscapes/
# semantic-segmentation/dinat/maskformer2_dinat_large_IN21k_384_bs16_90k.yaml (see
# ../_base_/models/mask2former_dinat-large.py: kernel 11, IN-22k weights with 7x7 rpb resized at load).
# Reproduces the DiNAT paper (Hassani & Shi, "Dilated Neighborhood Attention Transformer", 2022):
#   mIoU 84.5 multi-scale (+flip) (Cityscapes val; multi-scale: tools/test.py --tta); the released
#   mask2former_dinat_large_cityscapes_semantic.pth: 84.5.
_base_ = [
    'mmseg::mask2former/mask2former_swin-l-in22k-384x384-pre_8xb2-90k_cityscapes-512x1024.py',
    '../_base_/models/mask2former_dinat-large.py',
]
custom_imports = dict(imports=['mmdet.models', 'dinat_backbone.mm'], allow_failed_imports=False)
model = dict(
    backbone=_base_.dinat_large_mask2former_backbone,
    decode_head=dict(num_queries=100, in_channels=_base_.dinat_large_channels))
optim_wrapper = dict(paramwise_cfg=dict(custom_keys=_base_.dinat_large_mask2former_custom_keys))
