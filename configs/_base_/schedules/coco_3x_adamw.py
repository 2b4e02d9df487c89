# The DiNAT / NAT COCO "3x" schedule: 36 epochs, LR x0.1 at epochs 27 and 33, 500-iteration linear
# warm-up, AdamW (lr 1e-4, weight decay 0.05, no decay on rpb tables and norms), mixed precision.
# Total batch 16 = 8 GPUs x 2 images. Concrete configs override lr (Cascade base/large 7.5e-5) and
# switch AMP off (large).
max_epochs = 36
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33],
         gamma=0.1),
]
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'rpb': dict(decay_mult=0.), 'norm': dict(decay_mult=0.)}))
auto_scale_lr = dict(enable=False, base_batch_size=16)
