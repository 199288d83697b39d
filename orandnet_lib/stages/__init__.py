"""One module per stage, ``s0_dataset`` ... ``s6_precision``: its ``Params``, the keys of its
artifacts (``artifact_keys``), its recipe and findings, read top to bottom; the notebook of the
same number calls them. A new stage is a module here and a notebook ``notebooks/NN_name.ipynb``."""
