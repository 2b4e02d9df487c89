# DiNAT_s-Large (Swin-layout DiNAT) + UPerNet (with FCN auxiliary head), ADE20K, 640x640 crops,
# 160k iterations, AdamW lr 6e-5 / weight decay 0.01, poly (power 1) with 1500-iteration warm-up, 16 images per batch.
# Reproduces the DiNAT paper (Hassani & Shi, "Dilated Neighborhood Attention Transformer", 2022), DiNAT_s table
# of the authors' segmentation/DiNAT.md: mIoU 53.4 single-scale, 54.6 multi-scale (+flip) (ADE20K val;
# multi-scale: tools/test.py --tta), 234M parameters.
_base_ = [
    '../_base_/models/upernet_dinat.py',
    '../_base_/datasets/ade20k_640x640.py',
    '../_base_/default_runtime_seg.py',
    '../_base_/schedules/ade20k_160k_adamw.py',
]
custom_imports = dict(imports=['dinat_backbone.mm'], allow_failed_imports=False)
crop_size = (640, 640)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='DiNAT_s',
        arch='large',
        kernel_size=7,
        dilations='ade20k-640',
        drop_path_rate=0.3,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/dinat_s_large_in22k_224.pth')),
    decode_head=dict(in_channels=[192, 384, 768, 1536], num_classes=150),
    auxiliary_head=dict(in_channels=768, num_classes=150))
