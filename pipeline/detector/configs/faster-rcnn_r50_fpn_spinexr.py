# Faster R-CNN R50-FPN for VinDr-SpineXR (a baseline of method.md section 5). Inherits mmdet
# 3.3's COCO config; changes the class count, removes every download and keeps 100 detections.
_base_ = [
    'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
    './_base_/spinexr_metainfo.py',
]

model = dict(
    backbone=dict(init_cfg=None),
    roi_head=dict(bbox_head=dict(num_classes=7)),
    test_cfg=dict(rcnn=dict(max_per_img=100)))

load_from = None
