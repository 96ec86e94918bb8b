"""One import shim so the same widget code runs in 3D Slicer (PythonQt) and under PyQt5.

Usage in widget modules::

    from .qt_compat import qt, Signal, qget

    class MyWidget(qt.QWidget):
        valueChanged = Signal(object)      # class attribute, like pyqtSignal

``qt`` is one namespace holding every Qt class (``qt.QWidget``, ``qt.QGraphicsView``,
``qt.QImage``, ``qt.Qt.LeftButton``, ...):

* inside 3D Slicer (``import slicer`` works) it is Slicer's PythonQt module ``qt``. PythonQt
  declares custom signals with ``qt.Signal(*types)``: the type ``QtCore.Signal`` of PythonQt's
  ``src/PythonQtSignal.cpp`` (MeVisLab/pythonqt, the PythonQt that Slicer builds), registered in
  the ``QtCore`` package by ``PythonQt::init`` and star-imported into Slicer's ``qt`` module.
  Python types are mapped by ``PythonQtConv::getCPPTypeName``: ``object`` -> ``PyObject*``,
  ``int`` -> ``qint64``, ``float`` -> ``double``, ``str`` -> ``QString``. Like PyQt5 the
  signal must be a class attribute of a ``qt.QObject`` subclass; ``.connect``/``.emit`` work
  as in PyQt5.
* everywhere else it merges PyQt5's ``QtCore``, ``QtGui`` and ``QtWidgets``; ``Signal`` is
  ``pyqtSignal`` and ``Slot`` is ``pyqtSlot``. ``TAVIREG_QT_API=pyqt5`` forces this branch.

``QT_API`` says which one is in use (``"pythonqt"`` or ``"pyqt5"``).

PythonQt differs from PyQt5 in one way widget code meets all the time: a ``Q_PROPERTY`` of a
QObject is an attribute there (``spinBox.value``, ``widget.width``), a method in PyQt5
(``spinBox.value()``). Read such properties with :func:`qget` and write them with their
setters (``setValue``), which both bindings have. Value classes (QImage, QPointF, QTransform,
events) are not QObjects: their getters are methods in both.
"""

import os
import types

import numpy as np

__all__ = ["qt", "Signal", "Slot", "QT_API", "qget", "inverted", "event_pos",
           "qimage_from_array", "enum_int"]


def _pythonqt_module():
    """Slicer's ``qt`` module when running inside 3D Slicer, else ``None``."""
    if os.environ.get("TAVIREG_QT_API", "").lower() == "pyqt5":
        return None
    try:
        import slicer  # noqa: F401  (only probing whether we run inside 3D Slicer)
        import qt as pythonqt
    except ImportError:  # plain Python, or Slicer's Python without its Qt (PythonSlicer)
        return None
    return pythonqt


_pythonqt = _pythonqt_module()
if _pythonqt is not None:
    qt = _pythonqt
    QT_API = "pythonqt"
    Signal = qt.Signal
    Slot = getattr(qt, "Slot", None)
else:
    from PyQt5 import QtCore, QtGui, QtWidgets

    QT_API = "pyqt5"
    qt = types.ModuleType("qt", "PyQt5 QtCore + QtGui + QtWidgets in one namespace (PythonQt style)")
    for _module in (QtCore, QtGui, QtWidgets):
        for _name in dir(_module):
            if not _name.startswith("_"):
                setattr(qt, _name, getattr(_module, _name))
    Signal = QtCore.pyqtSignal
    Slot = QtCore.pyqtSlot
    qt.Signal = Signal
    qt.Slot = Slot


def qget(obj, name):
    """Read the Qt property ``name`` of ``obj`` in both bindings.

    PythonQt exposes ``Q_PROPERTY`` values as attributes, PyQt5 as getter methods.
    """
    value = getattr(obj, name)
    return value() if callable(value) else value


def inverted(transform):
    """Inverse of a QTransform (PyQt5 returns ``(QTransform, bool)``, PythonQt the transform)."""
    result = transform.inverted()
    if isinstance(result, tuple):
        result = result[0]
    return result


def event_pos(event):
    """Sub-pixel position (QPointF) of a mouse or wheel event in the receiving widget."""
    for name in ("position", "localPos", "posF"):
        getter = getattr(event, name, None)
        if getter is not None:
            return getter()
    return qt.QPointF(event.pos())  # pragma: no cover


def enum_int(value):
    """Integer value of a Qt enum or flag set (both bindings)."""
    try:
        return int(value)
    except TypeError:  # pragma: no cover - PyQt6-style enums
        return int(value.value)


def _ppm_bytes(rgb):
    h, w = rgb.shape[:2]
    return b"P6\n%d %d\n255\n" % (w, h) + np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()


def _qimage_via_ppm(rgb):
    # Portable path: QImage.fromData(bytes, "PPM") needs no buffer/pointer conversion, which the
    # two bindings handle differently. It decodes 1024x1024 RGB in a few milliseconds.
    image = qt.QImage.fromData(_ppm_bytes(rgb), "PPM")
    if image.isNull():  # pragma: no cover
        raise RuntimeError("Qt could not decode the image buffer")
    return image


def qimage_from_array(array):
    """QImage (owning its pixels) from an (H, W) uint8 grey or (H, W, 3) uint8 RGB array."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError("qimage_from_array needs uint8 data, got %s" % array.dtype)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError("qimage_from_array needs (H, W) or (H, W, 3), got %s" % (array.shape,))
    h, w = array.shape[:2]
    if h == 0 or w == 0:
        return qt.QImage()
    if QT_API == "pyqt5":
        data = np.ascontiguousarray(array).tobytes()
        return qt.QImage(data, w, h, 3 * w, qt.QImage.Format_RGB888).copy()
    return _qimage_via_ppm(array)
