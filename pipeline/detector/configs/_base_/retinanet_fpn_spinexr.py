# RetinaNet with FPN for VinDr-SpineXR, shared by the R50 and R18 configs: mmdet 3.3's COCO
# config with our classes, no download and 100 detections per image.
_base_ = [
    'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py',
    './spinexr_metainfo.py',
]

model = dict(
    backbone=dict(init_cfg=None),
    bbox_head=dict(num_classes=7),
    test_cfg=dict(max_per_img=100))

load_from = None
