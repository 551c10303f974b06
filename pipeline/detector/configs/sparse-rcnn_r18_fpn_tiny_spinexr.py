# FOR TESTS ONLY: a small Sparse R-CNN (ResNet-18, 64-channel FPN, 20 proposals, 2 stages) with
# the same classes and outputs as sparse-rcnn_r50_fpn_spinexr.py, so that tests exercise the
# real MMDetection code path in well under a second per image on a CPU. Never serve it.
_base_ = ['./_base_/sparse-rcnn_fpn_spinexr.py']

num_stages = 2
num_proposals = 20
channels = 64

model = dict(
    backbone=dict(depth=18),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=channels),
    rpn_head=dict(
        num_proposals=num_proposals, proposal_feature_channel=channels),
    roi_head=dict(
        num_stages=num_stages,
        stage_loss_weights=[1] * num_stages,
        proposal_feature_channel=channels,
        bbox_roi_extractor=dict(out_channels=channels),
        # The base's first stages, narrower.
        bbox_head=[
            dict(
                head,
                num_heads=4,
                feedforward_channels=256,
                in_channels=channels,
                dynamic_conv_cfg=dict(
                    head.dynamic_conv_cfg,
                    in_channels=channels,
                    feat_channels=16,
                    out_channels=channels))
            for head in _base_.model.roi_head.bbox_head[:num_stages]
        ]),
    train_cfg=dict(rcnn=_base_.model.train_cfg.rcnn[:num_stages]))
