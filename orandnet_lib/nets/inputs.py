"""What every network here takes as input: images normalised by ImageNet's channel statistics,
as the timm backbones were trained. A module of its own, without timm, so that code which only
prepares or reads inputs (CAM stores, the ensembles' and the precision chapter's stages) does
not import timm and torchvision (about 2.6 s per process)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
