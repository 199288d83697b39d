"""The one data path: VOC-layout reader and writer, the embedded benchmark, dataset statistics.

A converter for another dataset goes here (write it into VOC layout with ``voc.VOCWriter``)."""
