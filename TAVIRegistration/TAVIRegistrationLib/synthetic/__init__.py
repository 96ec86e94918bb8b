"""The synthetic-case engine: vessel anatomies (``anatomy``), X-ray rendering (``xray``), the phantom data
sets with ground truth (``phantom``), the sample case of the Slicer module (``sample_case``) and the demo
(``demo``)."""
