"""Evaluation on held-out data and benchmarks: segmentation (``seg``), registration (``reg``) and speed
(``bench``)."""
