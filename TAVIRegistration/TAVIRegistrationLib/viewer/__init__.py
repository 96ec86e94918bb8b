"""The Qt front end: the viewer window (``window``), the ROI editor it shares with the Slicer module
(``roi_view``) and the Qt binding shim (``qt_compat``)."""
