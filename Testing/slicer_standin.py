"""The smallest stand-in for what 3D Slicer's core libraries (``slicer-core``) lack, so that the module's
Logic and self-test run on a real MRML scene outside the Slicer application.

Everything MRML is real: the scene, the application logic and the module logics (Sequences, Markups,
Models, Volumes, Transforms, Segmentations, Subject hierarchy, Cameras) come from ``slicer-core``, and
``slicer.util`` is Slicer's own. What stands in here, each for the Slicer file named:

* ``slicer.ScriptedLoadableModule`` - Base/Python/slicer/ScriptedLoadableModule.py (the four
  template base classes; the Logic's parameter node is created as there);
* ``slicer.parameterNodeWrapper`` - Base/Python/slicer/parameterNodeWrapper/ (typed properties stored
  in the ``vtkMRMLScriptedModuleNode``: node references for nodes, text for values; defaults written
  on wrapping; ``WithinRange`` checked on assignment);
* ``slicer.app``, ``slicer.modules``, ``slicer.mrmlScene`` - Base/QTCore/qSlicerCoreApplication (the
  scene and its module logics; no layout manager, as with ``--no-main-window``);
* ``slicer.dicomDatabase`` and ``DICOMLib.DICOMUtils`` - CTK's ctkDICOMDatabase and
  Modules/Scripted/DICOMLib/DICOMUtils.py (import a folder, find a file by instance UID, a temporary
  database); ``loadSeriesByUID`` loads an XA/RF run as
  Modules/Scripted/DICOMPlugins/DICOMImageSequencePlugin.py does: vtkITK reads the multi-frame file,
  each frame becomes a single-slice volume of a sequence (IJK-to-RAS diag(-1, -1, 1), the file's
  spacing, ``DICOM.instanceUIDs`` on every frame) shown through a sequence browser's proxy node.
"""

import contextlib
import json
import os
import pathlib
import sys
import types
import typing
import unittest

import numpy as np
import slicer
import vtk


class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent
        self.moduleName = type(self).__name__


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent
        self.moduleName = type(self).__name__[:-len("Widget")]


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        self.moduleName = type(self).__name__[:-len("Logic")]

    def getParameterNode(self):
        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetSingletonTag(self.moduleName)
            node.SetAttribute("ModuleName", self.moduleName)
            node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
            node = slicer.mrmlScene.AddNode(node)
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message, requestedDelay=None, msec=None):
        print(message)


class Default:
    def __init__(self, value=None, generator=None):
        self.value, self.generator = value, generator


class WithinRange:
    def __init__(self, minimum, maximum):
        self.minimum, self.maximum = minimum, maximum


def _parameter(name, hint):
    """A property of one parameter: (kind, default, validators) from its annotation."""
    extras = []
    if typing.get_origin(hint) is typing.Annotated:
        hint, *extras = typing.get_args(hint)
    kinds = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    isNode = all(isinstance(k, type) and issubclass(k, slicer.vtkMRMLNode) for k in kinds)
    base = typing.get_origin(hint) or hint

    def read(self):
        node = self.parameterNode
        if isNode:
            return node.GetNodeReference(name)
        text = node.GetParameter(name)
        if base is pathlib.Path:
            return pathlib.Path(text)
        value = json.loads(text)
        return tuple(value) if base is tuple else base(value)

    def write(self, value):
        for check in extras:
            if isinstance(check, WithinRange) and not check.minimum <= value <= check.maximum:
                raise ValueError("%s = %r is outside [%r, %r]" % (name, value, check.minimum, check.maximum))
        node = self.parameterNode
        if isNode:
            node.SetNodeReferenceID(name, value.GetID() if value is not None else None)
        else:
            node.SetParameter(name, str(value) if base is pathlib.Path else json.dumps(value))

    defaults = [e for e in extras if isinstance(e, Default)]
    return property(read, write), isNode, defaults[0] if defaults else None


def parameterNodeWrapper(cls):
    hints = typing.get_type_hints(cls, include_extras=True)
    parameters = {name: _parameter(name, hint) for name, hint in hints.items()}
    plainDefaults = {name: cls.__dict__[name] for name in hints if name in cls.__dict__}

    def __init__(self, parameterNode):
        self.parameterNode = parameterNode
        for name, (_prop, isNode, default) in parameters.items():
            if isNode or parameterNode.GetParameter(name):
                continue
            if default is not None:
                value = default.generator() if default.generator else default.value
            else:
                value = plainDefaults[name]
            setattr(self, name, value)

    namespace = {name: prop for name, (prop, _isNode, _default) in parameters.items()}
    namespace.update(__init__=__init__, __doc__=cls.__doc__)
    return type(cls.__name__, (), namespace)


class DICOMDatabase:
    """Instance UID -> file of the imported DICOM files (header values read with pydicom)."""

    def __init__(self, folder):
        self.folder, self.isOpen, self._files = folder, True, {}

    def fileForInstance(self, uid):
        return self._files.get(uid, "")

    def instanceForFile(self, path):
        return next((uid for uid, f in self._files.items() if f == path), "")

    def importFolder(self, directory):
        import pydicom

        for root, _dirs, files in os.walk(directory):
            for name in files:
                path = os.path.join(root, name)
                try:
                    header = pydicom.dcmread(path, stop_before_pixels=True)
                except pydicom.errors.InvalidDicomError:
                    continue
                self._files[str(header.SOPInstanceUID)] = path
        return bool(self._files)

    def filesForSeries(self, seriesUID):
        import pydicom

        return sorted(f for f in self._files.values()
                      if str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID) == seriesUID)


def loadImageSequence(path):
    """One multi-frame XA/RF file as a sequence of single-slice volumes, as DICOMImageSequencePlugin."""
    scene = slicer.mrmlScene
    reader = slicer.vtkITKArchetypeImageSeriesScalarReader()
    reader.SetArchetype(path)
    reader.AddFileName(path)
    reader.SetSingleFile(True)
    reader.SetOutputScalarTypeToNative()
    reader.SetDesiredCoordinateOrientationToNative()
    reader.SetUseNativeOriginOn()
    reader.SetDICOMImageIOApproachToGDCM()
    reader.Update()
    if reader.GetErrorCode() != vtk.vtkErrorCode.NoError:
        raise ValueError("vtkITK could not read %s" % path)
    imageData = reader.GetOutput()
    spacingX, spacingY, _frameTime = imageData.GetSpacing()
    imageData.SetSpacing(1.0, 1.0, 1.0)
    frameVolume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    frameVolume.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(np.diag([-1.0, -1.0, 1.0, 1.0])))
    frameVolume.SetSpacing(spacingX, spacingY, 1.0)
    frameVolume.SetAttribute("DICOM.instanceUIDs", slicer.dicomDatabase.instanceForFile(path))
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", os.path.basename(path))
    extent = imageData.GetExtent()
    for frame in range(extent[5] - extent[4] + 1):
        clip = vtk.vtkImageClip()
        clip.SetInputData(imageData)
        clip.SetOutputWholeExtent(*extent[:4], extent[4] + frame, extent[4] + frame)
        clip.ClipDataOn()
        clip.Update()
        single = clip.GetOutput()
        single.SetExtent(*extent[:4], 0, 0)
        single.SetOrigin(0.0, 0.0, 0.0)
        frameVolume.SetAndObserveImageData(single)
        sequence.SetDataNodeAtValue(frameVolume, str(frame))
    scene.RemoveNode(frameVolume)
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", sequence.GetName() + " browser")
    browser.AddSynchronizedSequenceNode(sequence)
    return browser.GetProxyNode(sequence)


def _dicomUtils():
    module = types.ModuleType("DICOMLib.DICOMUtils")

    @contextlib.contextmanager
    def TemporaryDICOMDatabase(folder):
        previous, slicer.dicomDatabase = slicer.dicomDatabase, DICOMDatabase(folder)
        try:
            yield slicer.dicomDatabase
        finally:
            slicer.dicomDatabase = previous

    module.TemporaryDICOMDatabase = TemporaryDICOMDatabase
    module.importDicom = lambda directory: slicer.dicomDatabase.importFolder(directory)
    module.loadSeriesByUID = lambda uids: [loadImageSequence(path).GetID() for uid in uids
                                           for path in slicer.dicomDatabase.filesForSeries(uid)]
    return module


class _Module:
    def __init__(self, logic):
        self._logic = logic

    def logic(self):
        return self._logic


def install(temporaryPath):
    """A fresh MRML scene with its module logics as ``slicer.mrmlScene``, and the stand-ins above."""
    scene = slicer.vtkMRMLScene()
    applicationLogic = slicer.vtkSlicerApplicationLogic()
    applicationLogic.SetMRMLScene(scene)
    applicationLogic.GetColorLogic().SetMRMLScene(scene)
    applicationLogic.GetColorLogic().AddDefaultColorNodes()
    modules = types.SimpleNamespace()
    for name, logicClass in (("sequences", slicer.vtkSlicerSequencesLogic), ("markups", slicer.vtkSlicerMarkupsLogic),
                             ("models", slicer.vtkSlicerModelsLogic), ("volumes", slicer.vtkSlicerVolumesLogic),
                             ("transforms", slicer.vtkSlicerTransformLogic),
                             ("segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
                             ("subjecthierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic),
                             ("cameras", slicer.vtkSlicerCamerasModuleLogic)):
        logic = logicClass()
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(applicationLogic)
        applicationLogic.SetModuleLogic(name, logic)
        setattr(modules, name, _Module(logic))
    slicer.mrmlScene, slicer.modules, slicer.dicomDatabase = scene, modules, None
    slicer.app = types.SimpleNamespace(applicationLogic=lambda: applicationLogic, layoutManager=lambda: None,
                                       temporaryPath=str(temporaryPath), defaultScenePath=str(temporaryPath),
                                       testingEnabled=lambda: True, processEvents=lambda: None)
    standIns = {"slicer.ScriptedLoadableModule": dict(
                    ScriptedLoadableModule=ScriptedLoadableModule, ScriptedLoadableModuleWidget=ScriptedLoadableModuleWidget,
                    ScriptedLoadableModuleLogic=ScriptedLoadableModuleLogic,
                    ScriptedLoadableModuleTest=ScriptedLoadableModuleTest),
                "slicer.parameterNodeWrapper": dict(parameterNodeWrapper=parameterNodeWrapper, Default=Default,
                                                    WithinRange=WithinRange)}
    for name, members in standIns.items():
        module = types.ModuleType(name)
        module.__dict__.update(members)
        sys.modules[name] = module
    sys.modules["DICOMLib"] = types.ModuleType("DICOMLib")
    sys.modules["DICOMLib"].DICOMUtils = sys.modules["DICOMLib.DICOMUtils"] = _dicomUtils()
    return scene
