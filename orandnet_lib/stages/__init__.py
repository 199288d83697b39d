"""One module per stage, ``s0_dataset`` ... ``s6_precision``: its ``Params``, the keys of its
artifacts (``artifact_keys``), its recipe and findings, read top to bottom, ending with
``run(stage, p)``, the recipe in order without tables and figures. The notebook of the same
number calls the same functions cell by cell. A new stage is a module here and a notebook
``notebooks/NN_name.ipynb``; a stage never imports another (what two share is in ``methods/``)."""
