# DiNAT-Large + Mask2Former, ADE20K semantic segmentation (150 classes), 640x640 crops, 160k
# iterations of 16 images (8 GPUs x 2), poly schedule, AdamW lr 1e-4 / weight decay 0.05, backbone
# lr x0.1, 100 queries (the authors' yaml inherits Mask2Former's 100 for ADE20K semantic), fp32.
# mmseg 1.2's Swin-L recipe with the backbone of the authors' mask2former/configs/ade20k/
# semantic-segmentation/dinat/maskformer2_dinat_large_IN21k_384_bs16_160k.yaml (see
# ../_base_/models/mask2former_dinat-large.py: kernel 11, IN-22k weights with 7x7 rpb resized at load).
# Reproduces the DiNAT paper (Hassani & Shi, "Dilated Neighborhood Attention Transformer", 2022):
#   mIoU 58.1 multi-scale (+flip) (ADE20K val; multi-scale: tools/test.py --tta); the released
#   mask2former_dinat_large_ade20k_semantic.pth: 58.2.
_base_ = [
    'mmseg::mask2former/mask2former_swin-l-in22k-384x384-pre_8xb2-160k_ade20k-640x640.py',
    '../_base_/models/mask2former_dinat-large.py',
]
custom_imports = dict(imports=['mmdet.models', 'dinat_backbone.mm'], allow_failed_imports=False)
model = dict(
    backbone=_base_.dinat_large_mask2former_backbone,
    decode_head=dict(num_queries=100, in_channels=_base_.dinat_large_channels))
optim_wrapper = dict(paramwise_cfg=dict(custom_keys=_base_.dinat_large_mask2former_custom_keys))
