"""The Qt front end: the viewer window (``window``) and the parts it composes (``widgets``, ``facts``,
``jobs``, ``case``, ``loading``, ``registering``, ``exporting``), the ROI editor it shares with the Slicer
module (``roi_view``) and the Qt binding shim (``qt_compat``)."""
