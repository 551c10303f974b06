# Sparse R-CNN R50-FPN, 100 proposals, 6 stages: the VinDr-SpineXR default detector
# (method.md section 5). Inherits mmdet 3.3's COCO config; changes the class count, removes
# every download (backbone init_cfg, load_from) and keeps 100 detections per image.
# Dataset, pipeline and schedule stay COCO's until the training step sets them.
_base_ = [
    'mmdet::sparse_rcnn/sparse-rcnn_r50_fpn_1x_coco.py',
    './_base_/spinexr_metainfo.py',
]

num_classes = 7
num_stages = 6
num_proposals = 100

model = dict(
    # A training step may set a local pretrained file here:
    # init_cfg=dict(type='Pretrained', checkpoint='/path/to/resnet50.pth').
    backbone=dict(init_cfg=None),
    rpn_head=dict(num_proposals=num_proposals),
    roi_head=dict(
        num_stages=num_stages,
        stage_loss_weights=[1] * num_stages,
        # A list in a child config replaces the base list, so every stage is spelled out.
        bbox_head=[
            dict(
                type='DIIHead',
                num_classes=num_classes,
                num_ffn_fcs=2,
                num_heads=8,
                num_cls_fcs=1,
                num_reg_fcs=3,
                feedforward_channels=2048,
                in_channels=256,
                dropout=0.0,
                ffn_act_cfg=dict(type='ReLU', inplace=True),
                dynamic_conv_cfg=dict(
                    type='DynamicConv',
                    in_channels=256,
                    feat_channels=64,
                    out_channels=256,
                    input_feat_shape=7,
                    act_cfg=dict(type='ReLU', inplace=True),
                    norm_cfg=dict(type='LN')),
                loss_bbox=dict(type='L1Loss', loss_weight=5.0),
                loss_iou=dict(type='GIoULoss', loss_weight=2.0),
                loss_cls=dict(
                    type='FocalLoss',
                    use_sigmoid=True,
                    gamma=2.0,
                    alpha=0.25,
                    loss_weight=2.0),
                bbox_coder=dict(
                    type='DeltaXYWHBBoxCoder',
                    clip_border=False,
                    target_means=[0., 0., 0., 0.],
                    target_stds=[0.5, 0.5, 1., 1.])) for _ in range(num_stages)
        ]),
    train_cfg=dict(
        rpn=None,
        rcnn=[
            dict(
                assigner=dict(
                    type='HungarianAssigner',
                    match_costs=[
                        dict(type='FocalLossCost', weight=2.0),
                        dict(type='BBoxL1Cost', weight=5.0, box_format='xyxy'),
                        dict(type='IoUCost', iou_mode='giou', weight=2.0)
                    ]),
                sampler=dict(type='PseudoSampler'),
                pos_weight=1) for _ in range(num_stages)
        ]),
    test_cfg=dict(rpn=None, rcnn=dict(max_per_img=100)))

load_from = None
