"""orandnet_lib: the tested helper library behind the ORANDNet companion book.

Modules, one concern each:

- :mod:`orandnet_lib.data.voc`       the one data path (PASCAL VOC layout reader and writer)
- :mod:`orandnet_lib.data.synth`     the embedded benchmark, generated into VOC layout
- :mod:`orandnet_lib.core.metrics`   confusion matrices, precision / recall / IoU, threshold sweeps
- :mod:`orandnet_lib.core.store`     atomic writes, manifests and hashes (the one artifact store)
- :mod:`orandnet_lib.book.profiles`  profiles as data (smoke, default, paper)
- :mod:`orandnet_lib.book.runner`    executes the stage notebooks in order with papermill
"""

__version__ = "0.1.0"
