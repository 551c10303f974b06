# Sparse R-CNN R50-FPN, 100 proposals, 6 stages: the VinDr-SpineXR default detector
# (method.md section 5). Everything but the backbone size is in the shared base.
_base_ = ['./_base_/sparse-rcnn_fpn_spinexr.py']
