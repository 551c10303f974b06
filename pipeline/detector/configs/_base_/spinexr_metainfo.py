# VinDr-SpineXR lesion classes in class-id order (spinexr.pipeline.classes.CLASS_NAMES).
# A literal on purpose: configs are executed by mmengine and must not import our package;
# tests/pipeline/test_detector.py checks that it equals CLASS_NAMES.
metainfo = dict(
    classes=('Osteophytes', 'Surgical implant', 'Spondylolisthesis',
             'Foraminal stenosis', 'Disc space narrowing',
             'Vertebral collapse', 'Other lesions'))
