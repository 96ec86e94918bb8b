"""Training of the networks: what every trainer shares (``common``), the DRU-Net (``seg``) and the
registration CNN (``reg``)."""
