"""TAVIRegistration library: everything of the extension that does not need 3D Slicer.

Data flow (one direction): fluoroscopy DICOM -> frames + C-arm geometry (``fluoro``, ``geometry``);
surface model -> vtkPolyData in LPS mm (``mesh``); geometry + model -> projection (``projection``);
then segmentation, registration and overlay. Front ends (CLI, Qt viewer, Slicer module) sit on top.
This package never imports ``slicer``; only the widget modules import Qt.
"""

__version__ = "0.1.0"
