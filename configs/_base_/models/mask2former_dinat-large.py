# Shared pieces of the DiNAT-Large Mask2Former configs. Not a model of its own: the concrete
# configs inherit mmdet's / mmseg's Swin-L Mask2Former configs together with this file and take
# these variables through `_base_.` (names unique to this file, so nothing clashes with the
# framework's base).
#
# The backbone of the authors' Mask2Former runs (SHI-Labs mask2former/configs/*/dinat/
# maskformer2_dinat_large_IN21k_384_bs16_*.yaml, the same for every task and dataset): DiNAT-L with
# kernel 11 and the 'mask2former-k11' dilations, drop path 0.3, all four stages out, initialised
# from the ImageNet-22k DiNAT-L weights. That file has 7x7 rpb tables ([heads, 13, 13]); loading
# resizes them bicubically to the 11x11 kernel's [heads, 21, 21] (the authors made their
# "11x11interp" file the same way).
dinat_large_depths = (3, 4, 18, 5)
dinat_large_channels = [192, 384, 768, 1536]
dinat_large_mask2former_backbone = dict(
    _delete_=True,  # replaces the base config's SwinTransformer dict
    type='DiNAT',
    arch='large',
    kernel_size=11,
    dilations='mask2former-k11',
    drop_path_rate=0.3,
    out_indices=(0, 1, 2, 3),
    init_cfg=dict(
        type='Pretrained',
        checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/dinat_large_in22k_224.pth'))

# AdamW paramwise keys (the framework's Swin recipe with DiNAT's module names): the backbone
# trains at 0.1x the learning rate; its rpb tables and LayerNorms, and the queries and level
# embeddings, get no weight decay (norm_decay_mult=0 of the base covers the heads' norms).
# mmengine gives a parameter the longest key contained in its name, so the backbone's
# no-decay keys must be longer than 'backbone': they name each block. (The authors' detectron2
# optimizer decayed DiNAT's rpb: it only exempts Swin's 'relative_position_bias_table'.)
_backbone_no_decay = dict(lr_mult=0.1, decay_mult=0.0)
_embed_no_decay = dict(lr_mult=1.0, decay_mult=0.0)
dinat_large_mask2former_custom_keys = {
    '_delete_': True,  # drops the base config's Swin keys
    'backbone': dict(lr_mult=0.1, decay_mult=1.0),
    'backbone.patch_embed.norm': _backbone_no_decay,
    'backbone.norm': _backbone_no_decay,  # output norms norm0..norm3
    'query_embed': _embed_no_decay,
    'query_feat': _embed_no_decay,
    'level_embed': _embed_no_decay,
}
dinat_large_mask2former_custom_keys.update({
    f'backbone.levels.{level}.blocks.{block}.{name}': _backbone_no_decay
    for level, depth in enumerate(dinat_large_depths)
    for block in range(depth)
    for name in ('norm', 'attn.rpb')
})
dinat_large_mask2former_custom_keys.update({
    f'backbone.levels.{level}.downsample.norm': _backbone_no_decay
    for level in range(len(dinat_large_depths) - 1)
})
