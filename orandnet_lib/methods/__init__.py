"""The WSSS algorithms the stages compose: CAM methods (``CAM_METHODS``) and CAM stores,
ensemble operators (``OPERATORS``), refinements (``REFINEMENTS``), pseudo-masks, segmentation data
and evaluation. A new method is one function and one registration here."""
