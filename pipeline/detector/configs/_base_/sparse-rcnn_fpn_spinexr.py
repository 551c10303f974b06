# Sparse R-CNN with FPN for VinDr-SpineXR, shared by the R50 and R18 configs: mmdet 3.3's COCO
# config with our classes (num_classes=7 in every stage's head), no download (backbone
# init_cfg, load_from) and 100 detections per image. Dataset, pipeline and schedule stay COCO's
# until the training step sets them. A list in a child config replaces the base list, so the
# per-stage heads are taken from the base (`_base_.model...`) and changed, not spelled out.
_base_ = [
    'mmdet::sparse_rcnn/sparse-rcnn_r50_fpn_1x_coco.py',
    './spinexr_metainfo.py',
]

num_classes = 7

model = dict(
    # A training step may set a local pretrained file here:
    # init_cfg=dict(type='Pretrained', checkpoint='/path/to/resnet50.pth').
    backbone=dict(init_cfg=None),
    roi_head=dict(bbox_head=[
        dict(head, num_classes=num_classes) for head in _base_.model.roi_head.bbox_head
    ]),
    test_cfg=dict(rpn=None, rcnn=dict(max_per_img=100)))

load_from = None
