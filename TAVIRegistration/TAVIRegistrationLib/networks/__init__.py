"""The networks and their weights: the DRU-Net (``segnet``), the registration CNN (``regnet``) and the
weights registry with its SHA256 manifest (``weights``)."""
