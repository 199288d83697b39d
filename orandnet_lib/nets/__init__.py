"""Networks: CAM classifiers (``CLASSIFIER_KINDS``), ORANDNet's encoder-decoder, IRN's boundary
net and DeepLab (``SEG_HEADS``). A new backbone wrapper, classifier kind or head goes here."""
