# RetinaNet R50-FPN for VinDr-SpineXR (a baseline of method.md section 5). Everything but the
# backbone size is in the shared base.
_base_ = ['./_base_/retinanet_fpn_spinexr.py']
