"""orandnet_lib: the tested library behind the ORANDNet companion book.

The folders follow the pipeline, data in to book out; each imports only the layers below it
(core < data < nets < methods < book < stages; tests/test_layers.py holds it):

- ``data/``     the one data path: VOC-layout reader/writer, the embedded benchmark, dataset statistics
- ``nets/``     networks: CAM classifiers, ORANDNet's encoder-decoder, IRN's boundary net, DeepLab
- ``methods/``  the WSSS algorithms the stages compose: CAM methods and stores, a CAM classifier's
                recipe, ensemble operators, refinements (CRF, random walk) and their threshold
                rules, pseudo-masks, ORANDNet's training and read-outs, the auxiliary pretraining,
                segmentation training data and evaluation, the curriculum comparisons, the
                precision-vs-mIoU fits, reading recorded results; what two stages share lives
                here, so no stage imports another
- ``stages/``   one module per stage, ``s0_dataset`` ... ``s6_precision``: its parameters, the keys of
                its artifacts, its recipe and the facts its prose states, read top to bottom
                (the notebooks call these)
- ``core/``     shared machinery: artifact store and keys (``core.keys``), registries, the training loop,
                metrics, statistics, the paper's numbers, worker pool, progress, errors
- ``book/``     the runner, stage context, profiles, generated pages, plots and teaching widgets;
                ``book/chapters/`` the chapters' tables and figures, ``book/prose/`` their texts
                (Markdown templates that ``book.prose`` fills with a stage's facts)

Above the layers, the entry points: ``cli`` (``orandnet``), ``bench`` (``make bench``) and ``recipes``
(the stages' ``run`` by name, which the runner is handed for ``orandnet run --in-process``).

Extension points are registries (``core.registry``): a CAM method, ensemble operator,
refinement, classifier kind or segmentation head is one function and one registration.
"""

__version__ = "0.2.0"
