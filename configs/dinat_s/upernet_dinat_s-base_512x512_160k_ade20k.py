# DiNAT_s-Base (Swin-layout DiNAT) + UPerNet (with FCN auxiliary head), ADE20K, 512x512 crops,
# 160k iterations, AdamW lr 6e-5 / weight decay 0.01, poly (power 1) with 1500-iteration warm-up, 16 images per batch.
# Reproduces the DiNAT paper (Hassani & Shi, "Dilated Neighborhood Attention Transformer", 2022), DiNAT_s table
# of the authors' segmentation/DiNAT.md: mIoU 49.4 single-scale, 50.2 multi-scale (+flip) (ADE20K val;
# multi-scale: tools/test.py --tta), 121M parameters.
_base_ = [
    '../_base_/models/upernet_dinat.py',
    '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime_seg.py',
    '../_base_/schedules/ade20k_160k_adamw.py',
]
custom_imports = dict(imports=['dinat_backbone.mm'], allow_failed_imports=False)
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='DiNAT_s',
        arch='base',
        kernel_size=7,
        dilations='ade20k-512',
        drop_path_rate=0.3,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_s_base_in1k_224.pth')),
    decode_head=dict(in_channels=[128, 256, 512, 1024], num_classes=150),
    auxiliary_head=dict(in_channels=512, num_classes=150))
