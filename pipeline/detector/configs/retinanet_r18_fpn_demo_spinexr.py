# DEMO ONLY: a light RetinaNet (half-width ResNet-18, 64-channel FPN, GroupNorm head) that
# trains from scratch on a CPU in minutes, for `spinexr-node bundle demo` on synthetic
# phantoms at their native scale (384 px shorter side). Not a clinical model: the real
# configurations are sparse-rcnn_r50_fpn_spinexr.py (default), faster-rcnn, retinanet R50.
_base_ = ['./_base_/retinanet_fpn_spinexr.py']

channels = 64

model = dict(
    # From scratch: batch-norm statistics and every stage train (no frozen pretrained stem).
    backbone=dict(
        depth=18, base_channels=32, frozen_stages=-1, norm_eval=False, init_cfg=None),
    neck=dict(
        in_channels=[32, 64, 128, 256],
        out_channels=channels,
        start_level=1,
        add_extra_convs='on_input',
        num_outs=5),
    bbox_head=dict(
        in_channels=channels,
        feat_channels=channels,
        stacked_convs=2,
        norm_cfg=dict(type='GN', num_groups=16, requires_grad=True),
        anchor_generator=dict(
            # Phantom lesions are 15-60 px at 384 px: anchors from 16 px at stride 8.
            octave_base_scale=2,
            scales_per_octave=3,
            ratios=[0.5, 1.0, 2.0],
            strides=[8, 16, 32, 64, 128])),
    test_cfg=dict(nms_pre=1000, score_thr=0.05, max_per_img=100))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.0004, weight_decay=0.0001),
    clip_grad=dict(max_norm=10, norm_type=2))
