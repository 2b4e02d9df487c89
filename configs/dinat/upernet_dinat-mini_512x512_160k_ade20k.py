# DiNAT-Mini + UPerNet (with FCN auxiliary head), ADE20K, 512x512 crops, 160k iterations,
# AdamW lr 6e-5 / weight decay 0.01, poly (power 1) with 1500-iteration warm-up, 16 images per batch.
# Reproduces the DiNAT paper (Hassani & Shi, "Dilated Neighborhood Attention Transformer", 2022):
#   mIoU 45.8 single-scale, 47.2 multi-scale (+flip) (ADE20K val; multi-scale: tools/test.py --tta).
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
        type='DiNAT',
        arch='mini',
        kernel_size=7,
        dilations='ade20k-512',
        drop_path_rate=0.2,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_mini_in1k_224.pth')),
    decode_head=dict(in_channels=[64, 128, 256, 512], num_classes=150),
    auxiliary_head=dict(in_channels=256, num_classes=150))
