"""The surface model (pre-operative CTA vessel model) as vtkPolyData in patient LPS millimetres.

Reads STL, OBJ, PLY, legacy VTK and VTP files (and CTA segmentation labelmaps: NRRD, NIfTI, MetaImage)
and returns a :class:`SurfaceModel`: a clean, triangles-only vtkPolyData in LPS mm plus the list of
every assumption made on the way (``warnings``).

Coordinate system and units of a mesh file
------------------------------------------
A mesh file's space (LPS or RAS) and units are stated by the user or by the file; a silent guess is a
bug. 3D Slicer (since 4.11, ``vtkMRMLModelStorageNode``) writes its coordinate system into model files
as the text ``SPACE=LPS`` or ``SPACE=RAS`` and reads it back with a plain substring search
(``SPACE=RAS`` checked first):

* STL: the header given to ``vtkSTLWriter::SetHeader`` (the 80-byte header of a binary file, the text
  after ``solid`` in an ASCII file), e.g. ``3D Slicer output. SPACE=LPS``;
* legacy VTK: the header (title) line, the second line of the file;
* PLY: a ``comment SPACE=LPS`` line of the PLY header;
* OBJ: the leading comment block (``#  3D Slicer output. SPACE=LPS``, via ``vtkOBJExporter``);
* VTP: a string array named ``SPACE`` in the field data, whose value is ``LPS`` or ``RAS``.

Slicer models are always in millimetres, so a header that says ``3D Slicer output`` also states mm.
Files written by :func:`save_model` carry the same marker plus ``UNITS=mm`` (a field-data array
``UNITS`` in VTP). Without any statement the loader assumes LPS and mm and names both assumptions in
``SurfaceModel.warnings``. When the user states a space that contradicts the file, the user wins and a
warning says so.

Labelmaps are read with SimpleITK, whose physical coordinates are LPS mm by definition (NIfTI's RAS is
converted by ITK), so they need no statement.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
from vtkmodules.util import numpy_support
from vtkmodules.util.misc import calldata_type
from vtkmodules.util.vtkConstants import VTK_STRING
from vtkmodules.vtkCommonCore import (
    VTK_ID_TYPE,
    vtkIdTypeArray,
    vtkLogger,
    vtkOutputWindow,
    vtkPoints,
    vtkStringArray,
    vtkStringOutputWindow,
)
from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkImageData, vtkPolyData
from vtkmodules.vtkFiltersCore import (
    vtkCleanPolyData,
    vtkTriangleFilter,
    vtkWindowedSincPolyDataFilter,
)
from vtkmodules.vtkFiltersGeneral import vtkDiscreteFlyingEdges3D
from vtkmodules.vtkFiltersGeometry import vtkDataSetSurfaceFilter
from vtkmodules.vtkIOGeometry import vtkOBJReader, vtkSTLReader, vtkSTLWriter
from vtkmodules.vtkIOLegacy import vtkPolyDataReader, vtkPolyDataWriter, vtkUnstructuredGridReader
from vtkmodules.vtkIOPLY import vtkPLYReader, vtkPLYWriter
from vtkmodules.vtkIOXML import vtkXMLPolyDataReader, vtkXMLPolyDataWriter

from .errors import InputError

PathLike = Union[str, os.PathLike]

#: Mesh file formats by lower-case suffix.
MESH_FORMATS = {".stl": "STL", ".obj": "OBJ", ".ply": "PLY", ".vtk": "VTK", ".vtp": "VTP"}
#: Labelmap (segmentation image) suffixes, read with SimpleITK.
LABELMAP_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Length units accepted for mesh files and their factor to millimetres.
UNIT_SCALE_TO_MM = {"mm": 1.0, "cm": 10.0, "m": 1000.0}
SPACES = ("LPS", "RAS")
#: Larger meshes are refused: no vessel model needs them and they exhaust memory.
MAX_TRIANGLES = 20_000_000
#: Bounding-box diagonal (mm) outside which a vessel model's units are suspicious.
PLAUSIBLE_DIAGONAL_MM = (20.0, 2000.0)
#: A labelmap with more distinct values than this is an intensity image.
MAX_LABELS = 1000

_RAS_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse
_UNITS_RE = re.compile(r"UNITS=(mm|cm|m)(?![A-Za-z])")


# ------------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------------
@dataclass
class SurfaceModel:
    """A triangulated surface in patient LPS millimetres and how it was obtained.

    ``units_used`` / ``space_used`` are what the file's coordinates were taken to be (before the
    conversion to LPS mm); ``units_source`` / ``space_source`` say who stated them: ``'user'``,
    ``'header'``, ``'image'`` (a labelmap's own geometry) or ``'assumed'``.
    """

    polydata: vtkPolyData
    path: Optional[str] = None
    units_used: str = "mm"
    space_used: str = "LPS"
    warnings: List[str] = field(default_factory=list)
    units_source: str = "assumed"
    space_source: str = "assumed"
    #: the implausible-size warning (also in ``warnings``), else "": errors about the projection repeat it
    extent_problem: str = ""

    def points(self) -> np.ndarray:
        """Vertex coordinates, (N, 3) float64, LPS mm (a copy)."""
        return _points_array(self.polydata).copy()

    def triangles(self) -> np.ndarray:
        """Vertex indices of the triangles, (M, 3) int64."""
        return arrays_from_polydata(self.polydata)[1]

    @property
    def n_triangles(self) -> int:
        return int(self.polydata.GetNumberOfPolys())

    @property
    def n_points(self) -> int:
        return int(self.polydata.GetNumberOfPoints())

    @property
    def bounds(self) -> Tuple[float, float, float, float, float, float]:
        """(xmin, xmax, ymin, ymax, zmin, zmax) in LPS mm."""
        return tuple(float(b) for b in self.polydata.GetBounds())

    @property
    def center(self) -> np.ndarray:
        """Bounding-box centre, LPS mm."""
        b = self.bounds
        return np.array([(b[0] + b[1]) / 2.0, (b[2] + b[3]) / 2.0, (b[4] + b[5]) / 2.0])

    @property
    def extent_mm(self) -> np.ndarray:
        """Bounding-box size along x, y, z in mm."""
        b = self.bounds
        return np.array([b[1] - b[0], b[3] - b[2], b[5] - b[4]])

    @property
    def diagonal_mm(self) -> float:
        return float(np.linalg.norm(self.extent_mm))


# ------------------------------------------------------------------------------------------------
# array helpers
# ------------------------------------------------------------------------------------------------
def polydata_from_arrays(points, triangles) -> vtkPolyData:
    """A vtkPolyData from vertex coordinates (N, 3) and triangle vertex indices (M, 3)."""
    pts = np.asarray(points, dtype=np.float64)
    tri = np.asarray(triangles)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise InputError(f"points must be an (N, 3) array, got shape {pts.shape}")
    if tri.size == 0:
        tri = tri.reshape(0, 3)
    if tri.ndim != 2 or tri.shape[1] != 3:
        raise InputError(f"triangles must be an (M, 3) array, got shape {tri.shape}")
    if tri.size and not np.issubdtype(tri.dtype, np.integer):
        if not np.all(np.mod(tri, 1) == 0):
            raise InputError("triangle vertex indices must be integers")
    tri = tri.astype(np.int64)
    if tri.size and (tri.min() < 0 or tri.max() >= len(pts)):
        raise InputError(f"triangle vertex indices must lie in [0, {len(pts) - 1}]")
    vtk_points = vtkPoints()
    vtk_points.SetDataTypeToDouble()
    vtk_points.SetData(numpy_support.numpy_to_vtk(np.ascontiguousarray(pts), deep=True))
    polys = vtkCellArray()
    offsets = np.arange(0, 3 * len(tri) + 1, 3, dtype=np.int64)
    polys.SetData(_id_array(offsets), _id_array(tri.ravel()))
    pd = vtkPolyData()
    pd.SetPoints(vtk_points)
    pd.SetPolys(polys)
    return pd


def arrays_from_polydata(pd: vtkPolyData) -> Tuple[np.ndarray, np.ndarray]:
    """(points (N, 3) float64, triangles (M, 3) int64) of ``pd``'s polygons (triangulated if needed).

    Vertices, lines and strips are ignored; the arrays are copies.
    """
    if pd is None or pd.GetPoints() is None:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    polys = pd.GetPolys()
    n_polys = polys.GetNumberOfCells()
    not_triangles = n_polys > 0 and (polys.GetMaxCellSize() != 3 or _min_cell_size(polys) != 3)
    if not_triangles or pd.GetNumberOfStrips() > 0:
        tf = vtkTriangleFilter()
        tf.PassVertsOff()
        tf.PassLinesOff()
        tf.SetInputData(_polys_only(pd))
        tf.Update()
        pd = tf.GetOutput()
        polys = pd.GetPolys()
    points = _points_array(pd).copy()
    if polys.GetNumberOfCells() == 0:
        return points, np.zeros((0, 3), dtype=np.int64)
    conn = numpy_support.vtk_to_numpy(polys.GetConnectivityArray()).astype(np.int64)
    return points, conn.reshape(-1, 3).copy()


def transform_polydata(pd: vtkPolyData, matrix4x4) -> vtkPolyData:
    """A copy of ``pd`` (geometry and polygons only) with points mapped by an affine 4x4 matrix.

    A mirroring matrix (negative determinant) also reverses the triangles' vertex order so that
    outward normals stay outward.
    """
    m = np.asarray(matrix4x4, dtype=np.float64)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise InputError(f"transform must be a finite 4x4 matrix, got shape {m.shape}")
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0]):
        raise InputError("transform must be affine (last row 0 0 0 1)")
    det = float(np.linalg.det(m[:3, :3]))
    if abs(det) < 1e-12:
        raise InputError("transform is singular (it flattens the model)")
    points, triangles = arrays_from_polydata(pd)
    points = points @ m[:3, :3].T + m[:3, 3]
    if det < 0:
        triangles = triangles[:, ::-1]
    return polydata_from_arrays(points, triangles)


def _id_array(values: np.ndarray) -> vtkIdTypeArray:
    # VTK_ID_TYPE from vtkCommonCore: vtkmodules.util.numpy_support re-exports it only from VTK 9.7
    dtype = numpy_support.get_numpy_array_type(VTK_ID_TYPE)
    return numpy_support.numpy_to_vtkIdTypeArray(np.ascontiguousarray(values, dtype=dtype), deep=True)


def _points_array(pd: vtkPolyData) -> np.ndarray:
    if pd is None or pd.GetPoints() is None or pd.GetNumberOfPoints() == 0:
        return np.zeros((0, 3))
    return numpy_support.vtk_to_numpy(pd.GetPoints().GetData()).astype(np.float64, copy=False)


def _min_cell_size(cells: vtkCellArray) -> int:
    if cells.GetNumberOfCells() == 0:
        return 3
    offsets = numpy_support.vtk_to_numpy(cells.GetOffsetsArray())
    return int(np.diff(offsets).min())


def _polys_only(pd: vtkPolyData) -> vtkPolyData:
    out = vtkPolyData()
    out.SetPoints(pd.GetPoints())
    out.SetPolys(pd.GetPolys())
    out.SetStrips(pd.GetStrips())
    return out


# ------------------------------------------------------------------------------------------------
# VTK message capture: VTK readers print to stderr and return empty output instead of raising
# ------------------------------------------------------------------------------------------------
class _VTKMessages:
    """Silences VTK's output window and logger while reading, and collects what the reader says."""

    def __init__(self, *objects):
        self._objects = objects
        self._tags: list = []
        self.errors: List[str] = []
        self.warnings: List[str] = []

    def __enter__(self) -> "_VTKMessages":
        self._previous_window = vtkOutputWindow.GetInstance()
        self._previous_window.Register(None)
        self._window = vtkStringOutputWindow()
        vtkOutputWindow.SetInstance(self._window)
        self._previous_verbosity = vtkLogger.GetCurrentVerbosityCutoff()
        vtkLogger.SetStderrVerbosity(vtkLogger.VERBOSITY_OFF)

        @calldata_type(VTK_STRING)
        def on_error(_obj, _event, message):
            self.errors.append(_clean_vtk_message(message))

        @calldata_type(VTK_STRING)
        def on_warning(_obj, _event, message):
            self.warnings.append(_clean_vtk_message(message))

        self._tags = []
        for obj in self._objects:
            self._tags.append((obj, obj.AddObserver("ErrorEvent", on_error)))
            self._tags.append((obj, obj.AddObserver("WarningEvent", on_warning)))
        return self

    def __exit__(self, *exc) -> bool:
        for obj, tag in self._tags:
            obj.RemoveObserver(tag)
        vtkOutputWindow.SetInstance(self._previous_window)
        self._previous_window.UnRegister(None)
        vtkLogger.SetStderrVerbosity(self._previous_verbosity)
        text = self._window.GetOutput() or ""
        for block in re.split(r"\n\s*\n", text):
            if block.strip().startswith("ERROR"):
                message = _clean_vtk_message(block)
                if "returned failure for request" in message:
                    message = "the reader failed"
                self.errors.append(message)
        return False

    def first_error(self) -> Optional[str]:
        specific = [e for e in self.errors if e and e != "the reader failed"]
        if specific:
            return specific[0]
        return self.errors[0] if self.errors else None


def _clean_vtk_message(message) -> str:
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not re.match(r"^(ERROR|Warning): In .*line \d+$", ln)]
    if not lines:
        return ""
    text = lines[0]
    text = re.sub(r"^\w+ \(0x[0-9a-fA-F]+\): ", "", text)
    return text.strip()


# ------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------
def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in LABELMAP_SUFFIXES:
        if name.endswith(s):
            return s
    return path.suffix.lower()


def _check_choice(value, choices, what) -> Optional[str]:
    if value is None:
        return None
    v = str(value).strip()
    lookup = {c.lower(): c for c in choices}
    if v.lower() not in lookup:
        raise InputError(f"{what} must be one of {', '.join(choices)}, got {value!r}")
    return lookup[v.lower()]


def _check_input_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"model file not found: {path}")
    if path.is_dir():
        raise InputError(f"model path {path} is a folder, not a file")
    if not os.access(path, os.R_OK):
        raise InputError(f"model file {path} is not readable (permission denied)")
    if path.stat().st_size == 0:
        raise InputError(f"model file {path} is empty (0 bytes)")


def _stated(name: str, what: str, given, in_header, default: str, assumption: str, warnings: List[str]):
    """(value, source) of a model property: given by the user (a contradicting header is named in
    ``warnings``), else read from the header, else ``default`` with ``assumption`` in ``warnings``."""
    if given is not None:
        if in_header is not None and in_header != given:
            sep = "=" if what == "SPACE" else " "
            warnings.append(f"{name}: the file header says {what}{sep}{in_header} but {given} was given; using {given}")
        return given, "user"
    if in_header is not None:
        return in_header, "header"
    warnings.append(f"{name}: {assumption}")
    return default, "assumed"


def load_model(
    path: PathLike,
    units: Optional[str] = None,
    space: Optional[str] = None,
    *,
    label: Optional[int] = None,
) -> SurfaceModel:
    """Read a surface model and return it in LPS millimetres.

    ``units`` ('mm', 'cm', 'm') and ``space`` ('LPS', 'RAS') state the file's conventions; ``None``
    means "as the file says", and where the file says nothing LPS / mm are assumed and named in
    ``warnings``. Labelmap images (.nrrd, .nii, .nii.gz, .mha, ...) go to
    :func:`labelmap_to_surface` (``label`` picks one label; default all non-zero voxels).
    """
    units = _check_choice(units, tuple(UNIT_SCALE_TO_MM), "units")
    space = _check_choice(space, SPACES, "space")
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in MESH_FORMATS and suffix not in LABELMAP_SUFFIXES:
        known = ", ".join(list(MESH_FORMATS) + list(LABELMAP_SUFFIXES))
        shown = suffix or "(none)"
        raise InputError(f"unknown model file type {shown} for {path.name}: use one of {known}")
    _check_input_file(path)

    if suffix in LABELMAP_SUFFIXES:
        model = labelmap_to_surface(path, label=label)
        for what, given, native in (("space", space, "LPS"), ("units", units, "mm")):
            if given is not None and given != native:
                model.warnings.append(
                    f"{what} {given} ignored for labelmap {path.name}: an image file carries its own "
                    f"geometry (read as {native})"
                )
        return model
    if label is not None:
        raise InputError("label selects a label of a labelmap image; it does not apply to mesh files")

    fmt = MESH_FORMATS[suffix]
    if fmt == "STL":
        _precheck_stl(path)
    points, triangles, header_text, header_space = _read_surface_guarded(path, fmt)
    warnings: List[str] = []

    # -- space and units: the user's word, else the file's header, else an assumption (named) ----
    space_used, space_source = _stated(path.name, "SPACE", space, header_space, "LPS",
                                       "coordinate system not stated (no SPACE= marker): assumed LPS", warnings)
    units_used, units_source = _stated(path.name, "units", units, _units_from_header(header_text), "mm",
                                       "units not stated: assumed millimetres", warnings)

    matrix = np.diag([UNIT_SCALE_TO_MM[units_used]] * 3 + [1.0])
    if space_used == "RAS":
        matrix = _RAS_LPS @ matrix
    polydata = _mapped(points, triangles, matrix)
    model = SurfaceModel(
        polydata=polydata, path=str(path), units_used=units_used, space_used=space_used,
        warnings=warnings, units_source=units_source, space_source=space_source,
    )
    _check_extent(model, path.name)
    _check_manifold(model, path.name)
    return model


def surface_from_polydata(
    polydata: vtkPolyData, space: str = "LPS", units: str = "mm", name: str = "model"
) -> SurfaceModel:
    """A SurfaceModel from polydata already in memory (e.g. a Slicer model node's RAS polydata).

    The caller states ``space`` and ``units``: nothing is assumed, so nothing is warned about except
    an implausible extent.
    """
    space = _check_choice(space, SPACES, "space")
    units = _check_choice(units, tuple(UNIT_SCALE_TO_MM), "units")
    if polydata is None:
        raise InputError(f"{name}: no surface data")
    matrix = np.diag([UNIT_SCALE_TO_MM[units]] * 3 + [1.0])
    if space == "RAS":
        matrix = _RAS_LPS @ matrix
    pd = _finish_surface(polydata, name, matrix)
    model = SurfaceModel(pd, None, units, space, [], "user", "user")
    _check_extent(model, name)
    return model


def _precheck_stl(path: Path) -> None:
    """Refuse an absurdly large or a truncated binary STL before reading it (its header gives the
    triangle count, 50 bytes each after 84 bytes of header). VTK's reader notices a truncated file
    only from VTK 9.6 on; older ones return the triangles that were there."""
    with open(path, "rb") as fh:
        head = fh.read(84)
    if len(head) == 84 and not head.lstrip().lower().startswith(b"solid"):
        count = int.from_bytes(head[80:84], "little")
        size = path.stat().st_size
        if 84 + 50 * count > size:
            raise InputError(
                f"cannot read {path.name} as STL: the binary header declares {count:,} triangles "
                f"({84 + 50 * count:,} bytes) but the file has {size:,} bytes (truncated or not an STL file)"
            )
        if count > MAX_TRIANGLES:
            raise InputError(
                f"{path.name} has {count:,} triangles, more than the {MAX_TRIANGLES:,} supported: "
                "decimate it first"
            )


def _read_mesh_file(path: Path, fmt: str):
    """(vtkPolyData, header text, space from the header or None), raising InputError on failure."""
    filename = str(path)
    if fmt == "STL":
        reader = vtkSTLReader()
    elif fmt == "OBJ":
        reader = vtkOBJReader()
    elif fmt == "PLY":
        reader = vtkPLYReader()
    elif fmt == "VTK":
        # like Slicer: polydata, or an unstructured grid whose outer surface is taken
        reader = vtkPolyDataReader()
        reader.SetFileName(filename)
        with _VTKMessages(reader):
            is_polydata = bool(reader.IsFilePolyData())
        if not is_polydata:
            grid_reader = vtkUnstructuredGridReader()
            grid_reader.SetFileName(filename)
            with _VTKMessages(grid_reader):
                is_grid = bool(grid_reader.IsFileUnstructuredGrid())
            if not is_grid:
                raise InputError(
                    f"cannot read {path.name} as VTK: not a legacy VTK polydata or unstructured grid file"
                )
            reader = grid_reader
    else:
        reader = vtkXMLPolyDataReader()
    reader.SetFileName(filename)
    with _VTKMessages(reader) as msgs:
        if fmt == "PLY" and not reader.CanReadFile(filename):
            msgs.errors.append("not a PLY file")
            output = None
        else:
            reader.Update()
            output = reader.GetOutputDataObject(0)
            if fmt == "VTK" and not msgs.errors and reader.GetErrorCode():
                msgs.errors.append("not a readable legacy VTK file")
    error = msgs.first_error()
    if error is not None:
        raise InputError(f"cannot read {path.name} as {fmt}: {_printable(error)}")

    header_space = None
    if fmt == "STL":
        header_text = _stl_header_text(path)
    elif fmt == "VTK":
        header_text = _safe_str(reader.GetHeader)
    elif fmt == "OBJ":
        header_text = _safe_str(reader.GetComment)
    elif fmt == "PLY":
        comments = reader.GetComments()
        texts = [_safe_str(lambda i=i: comments.GetValue(i)) for i in range(comments.GetNumberOfValues())]
        header_text = "\n".join(texts)
        # like Slicer: the first comment that holds a SPACE marker
        header_space = next((_space_from_text(t) for t in texts if _space_from_text(t)), None)
    else:
        header_text, header_space = _vtp_field_markers(output)
    if header_space is None and fmt != "VTP":
        header_space = _space_from_text(header_text)

    if output is not None and output.IsA("vtkUnstructuredGrid"):
        surface = vtkDataSetSurfaceFilter()
        surface.SetInputData(output)
        with _VTKMessages(surface):
            surface.Update()
        output = surface.GetOutput()
    if output is None or not output.IsA("vtkPolyData"):
        raise InputError(f"cannot read {path.name} as {fmt}: no surface in the file")
    return output, header_text, header_space


def _printable(text: str, limit: int = 160) -> str:
    text = "".join(ch if ch.isprintable() else "?" for ch in " ".join(str(text).split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _safe_str(getter) -> str:
    try:
        value = getter()
    except (UnicodeDecodeError, TypeError, ValueError):
        return ""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def _stl_header_text(path: Path) -> str:
    """The STL header: the 80-byte block of a binary file, the ``solid`` line of an ASCII file."""
    with open(path, "rb") as fh:
        head = fh.read(1024)
    text = head[:80]
    if head.lstrip().lower().startswith(b"solid"):
        text = head.split(b"\n", 1)[0].split(b"\r", 1)[0]
    return text.replace(b"\x00", b" ").decode("latin-1").strip()


def _vtp_field_markers(output) -> Tuple[str, Optional[str]]:
    header = ""
    space = None
    fd = output.GetFieldData() if output is not None else None
    if fd is None:
        return header, space
    for name in ("SPACE", "UNITS"):
        arr = fd.GetAbstractArray(name)
        if isinstance(arr, vtkStringArray) and arr.GetNumberOfValues() > 0:
            value = _safe_str(lambda: arr.GetValue(0))
            header += f" {name}={value.strip()}"
            if name == "SPACE":
                # Slicer: a value containing RAS (checked first) or LPS
                if "RAS" in value:
                    space = "RAS"
                elif "LPS" in value:
                    space = "LPS"
    return header.strip(), space


def _space_from_text(text: str) -> Optional[str]:
    if not text:
        return None
    if "SPACE=RAS" in text:  # same order as Slicer's vtkMRMLModelStorageNode
        return "RAS"
    if "SPACE=LPS" in text:
        return "LPS"
    return None


def _units_from_header(text: str) -> Optional[str]:
    if not text:
        return None
    match = _UNITS_RE.search(text)
    if match:
        return match.group(1)
    if "3D Slicer output" in text and _space_from_text(text):
        return "mm"  # Slicer's length unit is always the millimetre
    return None


def _finish_surface(
    data, name: str, matrix: Optional[np.ndarray] = None, what: str = "surface"
) -> vtkPolyData:
    """Triangles-only, cleaned polydata (no point/cell arrays), mapped by ``matrix``; validated."""
    n_points = data.GetNumberOfPoints()
    if n_points == 0 or data.GetNumberOfCells() == 0:
        raise InputError(f"{name}: no triangles could be read (an empty mesh, or not a valid {what} file)")
    points = _points_array(data)
    if not np.all(np.isfinite(points)):
        bad = int(np.count_nonzero(~np.all(np.isfinite(points), axis=1)))
        raise InputError(f"{name} has {bad} vertices with non-finite (NaN or infinite) coordinates")
    if data.GetNumberOfCells() > MAX_TRIANGLES:
        raise InputError(
            f"{name} has {data.GetNumberOfCells():,} cells, more than the {MAX_TRIANGLES:,} supported: "
            "decimate it first"
        )
    if np.abs(points).max() > 1e9:
        raise InputError(f"{name} has vertex coordinates beyond 1e9: the file is corrupt")

    tri = vtkTriangleFilter()
    tri.PassVertsOff()
    tri.PassLinesOff()
    tri.SetInputData(_polys_only(data))
    clean = vtkCleanPolyData()
    clean.SetInputConnection(tri.GetOutputPort())
    clean.PointMergingOn()
    clean.SetTolerance(0.0)
    clean.ConvertPolysToLinesOff()
    clean.ConvertLinesToPointsOff()
    clean.ConvertStripsToPolysOff()
    with _VTKMessages(tri, clean):
        clean.Update()
    out = clean.GetOutput()
    if out.GetNumberOfPolys() == 0:
        raise InputError(f"{name} holds no triangles (empty or degenerate mesh)")
    if out.GetNumberOfPolys() > MAX_TRIANGLES:
        raise InputError(
            f"{name} has {out.GetNumberOfPolys():,} triangles, more than the {MAX_TRIANGLES:,} "
            "supported: decimate it first"
        )
    points, triangles = arrays_from_polydata(out)
    return _mapped(points, triangles, matrix)


def _mapped(points: np.ndarray, triangles: np.ndarray, matrix: Optional[np.ndarray]) -> vtkPolyData:
    """Polydata of the triangles with the points mapped by ``matrix`` (orientation kept)."""
    if matrix is not None and not np.allclose(matrix, np.eye(4)):
        points = points @ matrix[:3, :3].T + matrix[:3, 3]
        if np.linalg.det(matrix[:3, :3]) < 0:
            triangles = triangles[:, ::-1]
    return polydata_from_arrays(points, triangles)


def _read_and_finish(path: Path, fmt: str):
    raw, header_text, header_space = _read_mesh_file(path, fmt)
    points, triangles = arrays_from_polydata(_finish_surface(raw, path.name, None, what=fmt))
    return points, triangles, header_text, header_space


#: the reading child may use this much memory beyond what it inherited, plus READ_MEMORY_PER_BYTE
#: times the file size: a corrupt file that declares billions of points fails fast instead of
#: swapping the machine (``benchmarks/fuzz.py`` found VTP files whose reader asked for 12-15 GB)
READ_MEMORY_BASE = 1 << 30
READ_MEMORY_PER_BYTE = 200


def _limit_child_memory(path: Path) -> None:
    try:
        import resource

        with open("/proc/self/statm") as fh:
            inherited = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        budget = inherited + READ_MEMORY_BASE + READ_MEMORY_PER_BYTE * path.stat().st_size
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            budget = min(budget, hard)
        resource.setrlimit(resource.RLIMIT_AS, (budget, hard))
    except (OSError, ValueError, ImportError):  # no /proc or no limits here: read without a limit
        pass


def _guarded_child(conn, path: Path, fmt: str) -> None:
    import faulthandler

    faulthandler.disable()  # a crash here is expected and reported by the parent: no dump of the child
    _limit_child_memory(path)
    try:
        conn.send(("ok", _read_and_finish(path, fmt)))
    except InputError as exc:
        conn.send(("refused", str(exc)))
    except MemoryError:
        conn.send(("refused", f"cannot read {path.name} as {fmt}: the file declares more data than it can hold "
                              "(corrupt)"))
    except Exception as exc:  # noqa: BLE001 - handed to the parent, which raises it as its own
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _read_surface_guarded(path: Path, fmt: str):
    """``(points, triangles, header text, header space)`` of a mesh file, read and triangulated in a
    forked child process: VTK's readers and filters are native code that some corrupt files crash
    (``benchmarks/fuzz.py`` found PLY and legacy VTK files that do, and cells pointing past the
    point list that crash the triangle filter); in a child, a crash becomes an InputError instead of
    taking the whole program with it. Where ``fork`` is not available, and in a daemonic process
    (a ``multiprocessing.Pool`` worker, such as the phantom generator's, may not have children), the
    file is read in-process."""
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods() or multiprocessing.current_process().daemon:
        return _read_and_finish(path, fmt)
    ctx = multiprocessing.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_guarded_child, args=(sender, path, fmt), daemon=True)
    child.start()
    sender.close()
    try:
        status, payload = receiver.recv()
    except EOFError:
        status, payload = "crashed", None
    finally:
        receiver.close()
        child.join()
    if status == "ok":
        return payload
    if status == "refused":
        raise InputError(payload)
    if status == "crashed":
        raise InputError(f"cannot read {path.name} as {fmt}: the file is corrupt (the reader crashed on it, "
                         f"exit code {child.exitcode})")
    raise RuntimeError(payload)


def non_manifold_edges(polydata: vtkPolyData) -> int:
    """Edges shared by more than two triangles (a corrupt or self-overlapping surface)."""
    from vtkmodules.vtkFiltersCore import vtkFeatureEdges

    edges = vtkFeatureEdges()
    edges.SetInputData(polydata)
    edges.BoundaryEdgesOff()
    edges.FeatureEdgesOff()
    edges.ManifoldEdgesOff()
    edges.NonManifoldEdgesOn()
    edges.Update()
    return int(edges.GetOutput().GetNumberOfLines())


def _check_manifold(model: SurfaceModel, name: str) -> None:
    """Name a non-manifold surface in the warnings (open vessel ends are normal and not named):
    its projection is still its silhouette, drawn as it is."""
    n = non_manifold_edges(model.polydata)
    if n:
        model.warnings.append(
            f"{name}: not a closed surface: {n} non-manifold edge{'s' if n != 1 else ''} (shared by more than two "
            "triangles); the projection is its silhouette as it is (check the export of the model)"
        )


def _check_extent(model: SurfaceModel, name: str) -> None:
    diagonal = model.diagonal_mm
    lo, hi = PLAUSIBLE_DIAGONAL_MM
    stated = f"in {model.units_used}" if model.units_source != "assumed" else "assumed mm"
    if diagonal < lo:
        model.extent_problem = (
            f"{name}: the model is only {diagonal:.3g} mm across ({stated}): too small for a vessel "
            "model; looks like metres or centimetres given as mm (state the units)"
        )
    elif diagonal > hi:
        model.extent_problem = (
            f"{name}: the model is {diagonal:.4g} mm across ({stated}): too large for a vessel "
            "model; looks like micrometres or another unit given as mm (state the units)"
        )
    if model.extent_problem:
        model.warnings.append(model.extent_problem)


# ------------------------------------------------------------------------------------------------
# labelmaps
# ------------------------------------------------------------------------------------------------
def labelmap_to_surface(
    path: PathLike, label: Optional[int] = None, smoothing: bool = True
) -> SurfaceModel:
    """A closed surface (LPS mm) around the voxels of a CTA segmentation labelmap.

    ``label`` picks one label value; ``None`` takes all non-zero voxels. The image's origin, spacing
    and direction are applied so that the surface lies where the voxels lie in patient space.
    """
    import SimpleITK as sitk

    path = Path(path)
    image = _read_labelmap(path)
    array = sitk.GetArrayViewFromImage(image)  # (k, j, i)
    mask, chosen = _label_mask(array, label, path.name)
    index_to_lps = _index_to_lps(image, path.name)

    surface = transform_polydata(_mask_surface(_padded_crop(mask)), index_to_lps)
    if smoothing:
        surface = _smoothed(surface)

    polydata = _finish_surface(surface, path.name)
    what = "all non-zero voxels" if label is None else f"label {chosen}"
    model = SurfaceModel(
        polydata=polydata, path=str(path), units_used="mm", space_used="LPS",
        warnings=[], units_source="image", space_source="image",
    )
    _check_extent(model, f"{path.name} ({what})")
    return model


def _read_labelmap(path: Path):
    """The SimpleITK image of a labelmap file; InputError unless it is a 3D single-component volume."""
    import SimpleITK as sitk

    _check_input_file(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        detail = _first_itk_line(str(exc))
        raise InputError(f"cannot read labelmap {path.name}: {detail}") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path.name} has {image.GetNumberOfComponentsPerPixel()} components per voxel: "
            "not a labelmap"
        )
    size = image.GetSize()
    if image.GetDimension() != 3 or min(size) < 2:
        raise InputError(
            f"{path.name} is a {image.GetDimension()}D image of size {'x'.join(map(str, size))}: "
            "a labelmap must be a 3D volume"
        )
    return image


def _index_to_lps(image, name: str) -> np.ndarray:
    """The 4x4 matrix from (i, j, k) voxel indices to LPS mm (direction, spacing and origin)."""
    spacing = np.array(image.GetSpacing(), dtype=np.float64)
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    origin = np.array(image.GetOrigin(), dtype=np.float64)
    if not (np.all(np.isfinite(spacing)) and np.all(spacing > 0)):
        raise InputError(f"{name} has invalid voxel spacing {tuple(spacing)}")
    if not np.all(np.isfinite(direction)) or abs(np.linalg.det(direction)) < 1e-6:
        raise InputError(f"{name} has a degenerate direction matrix")
    index_to_lps = np.eye(4)
    index_to_lps[:3, :3] = direction @ np.diag(spacing)
    index_to_lps[:3, 3] = origin
    return index_to_lps


def _padded_crop(mask: np.ndarray) -> vtkImageData:
    """The mask cropped to its labelled voxels with one voxel of background all round (which
    closes the surface at the image border), as a VTK image whose origin is the crop offset in
    (i, j, k) voxel indices."""
    lows = []
    slices = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        lows.append(int(present[0]))
        slices.append(slice(int(present[0]), int(present[-1]) + 1))
    padded = np.pad(mask[tuple(slices)], 1).astype(np.uint8)
    k0, j0, i0 = lows
    vtk_image = vtkImageData()
    vtk_image.SetDimensions(padded.shape[2], padded.shape[1], padded.shape[0])
    vtk_image.SetOrigin(i0 - 1.0, j0 - 1.0, k0 - 1.0)
    vtk_image.SetSpacing(1.0, 1.0, 1.0)
    scalars = numpy_support.numpy_to_vtk(padded.ravel(order="C"), deep=True)
    vtk_image.GetPointData().SetScalars(scalars)
    return vtk_image


def _mask_surface(vtk_image: vtkImageData) -> vtkPolyData:
    """The discrete flying-edges surface of the value-1 voxels, in the image's index coordinates."""
    fe = vtkDiscreteFlyingEdges3D()
    fe.SetInputData(vtk_image)
    fe.SetValue(0, 1.0)
    fe.ComputeNormalsOff()
    fe.ComputeGradientsOff()
    fe.ComputeScalarsOff()
    with _VTKMessages(fe):
        fe.Update()
    return fe.GetOutput()


def _smoothed(surface: vtkPolyData) -> vtkPolyData:
    """``surface`` after 15 windowed-sinc smoothing iterations (pass band 0.1)."""
    smoother = vtkWindowedSincPolyDataFilter()
    smoother.SetInputData(surface)
    smoother.SetNumberOfIterations(15)
    smoother.SetPassBand(0.1)
    smoother.BoundarySmoothingOff()
    smoother.FeatureEdgeSmoothingOff()
    smoother.NonManifoldSmoothingOn()
    smoother.NormalizeCoordinatesOn()
    with _VTKMessages(smoother):
        smoother.Update()
    return smoother.GetOutput()


def _first_itk_line(message: str) -> str:
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    for ln in lines:
        if ln.lower().startswith("description:"):
            return ln.split(":", 1)[1].strip()
    for ln in lines:
        if "unable to determine imageio" in ln.lower() or "could not create io object" in ln.lower():
            return "not a readable image file"
    return lines[-1] if lines else "unknown error"


def _count_distinct(array: np.ndarray, hi: int) -> int:
    """Distinct values of a non-negative integer-valued array, in bounded memory."""
    if hi > 10 * MAX_LABELS:
        return int(len(np.unique(array)))
    counts = np.zeros(hi + 1, dtype=np.int64)
    flat = array.reshape(-1)
    step = 1 << 24
    for start in range(0, flat.size, step):
        chunk = flat[start : start + step].astype(np.int64)
        counts += np.bincount(chunk, minlength=hi + 1)
    return int(np.count_nonzero(counts))


def _label_mask(array: np.ndarray, label: Optional[int], name: str):
    if array.dtype.kind not in "iub":
        if array.dtype.kind != "f":
            raise InputError(f"{name} has voxel type {array.dtype}: not a labelmap")
        finite = np.isfinite(array)
        if not finite.all() or not np.all(np.mod(array, 1.0) == 0.0):
            raise InputError(f"{name} has non-integer voxel values: an intensity image, not a labelmap")
    lo, hi = float(array.min()), float(array.max())
    if lo < 0:
        raise InputError(f"{name} has negative voxel values (min {lo:g}): an intensity image, not a labelmap")
    n_values = _count_distinct(array, int(hi))
    if n_values > MAX_LABELS:
        raise InputError(
            f"{name} has {n_values} distinct voxel values: an intensity image, not a labelmap"
        )
    if label is None:
        mask = array != 0
        chosen = None
    else:
        try:
            chosen = int(label)
        except (TypeError, ValueError):
            raise InputError(f"label must be an integer, got {label!r}") from None
        if chosen == 0:
            raise InputError("label 0 is the background; give a non-zero label")
        mask = array == chosen
    if not mask.any():
        present = [int(v) for v in np.unique(array) if v != 0][:20]
        if label is None:
            raise InputError(f"{name} has no labelled (non-zero) voxels: empty segmentation")
        listed = ", ".join(map(str, present)) or "none"
        raise InputError(f"{name} has no voxels with label {chosen} (labels present: {listed})")
    return mask, chosen


# ------------------------------------------------------------------------------------------------
# saving
# ------------------------------------------------------------------------------------------------
def model_file_writer(polydata, suffix: str, space: str = "LPS"):
    """A writer ``f(fh)`` for :class:`~.outputs.OutputSet`: the model in format ``suffix``.

    ``polydata`` is in LPS mm (a SurfaceModel is accepted too); the file gets coordinates in
    ``space`` and Slicer's ``SPACE=`` marker, plus ``UNITS=mm``.
    """
    if isinstance(polydata, SurfaceModel):
        polydata = polydata.polydata
    space = _check_choice(space, SPACES, "space")
    suffix = suffix.lower()
    if not suffix.startswith("."):
        suffix = "." + suffix
    if suffix not in MESH_FORMATS:
        raise InputError(f"cannot write model type {suffix}: use one of {', '.join(MESH_FORMATS)}")
    if polydata is None or polydata.GetNumberOfPolys() == 0:
        raise InputError("cannot save an empty model (no triangles)")
    points, triangles = arrays_from_polydata(polydata)
    if space == "RAS":
        points = points * np.array([-1.0, -1.0, 1.0])
    pd = polydata_from_arrays(points, triangles)
    header = f"TAVIRegistration output. SPACE={space} UNITS=mm"

    def write(fh):
        if suffix == ".obj":
            _write_obj(fh, points, triangles, header)
            return
        with tempfile.TemporaryDirectory(prefix="tavireg-mesh-") as tmp:
            tmp_path = os.path.join(tmp, "model" + suffix)
            _write_vtk_format(pd, tmp_path, suffix, header, space)
            with open(tmp_path, "rb") as src:
                shutil.copyfileobj(src, fh, 1 << 20)

    return write


def save_model(polydata, path: PathLike, space: str = "LPS") -> Path:
    """Write ``polydata`` (LPS mm) to ``path`` (STL, VTK, VTP, PLY or OBJ), atomically.

    Coordinates are written in ``space`` ('LPS' or 'RAS') with the marker 3D Slicer writes and reads
    (``SPACE=LPS``/``SPACE=RAS`` in the STL/VTK header, a PLY/OBJ comment, VTP field data), so Slicer
    and :func:`load_model` both place the model correctly. Returns the written path.
    """
    from .outputs import OutputSet

    path = Path(path)
    writer = model_file_writer(polydata, _suffix(path), space)
    with OutputSet() as outs:
        outs.add(path, writer)
    return path


def _write_vtk_format(pd: vtkPolyData, filename: str, suffix: str, header: str, space: str) -> None:
    if suffix == ".stl":
        writer = vtkSTLWriter()
        writer.SetFileTypeToBinary()
        writer.SetHeader(header)
    elif suffix == ".vtk":
        writer = vtkPolyDataWriter()
        writer.SetFileVersion(42)  # readable by Slicer < 5 and most other software, as Slicer does
        writer.SetFileTypeToBinary()
        writer.SetHeader(header)
    elif suffix == ".ply":
        writer = vtkPLYWriter()
        writer.SetFileTypeToBinary()
        writer.AddComment(f"SPACE={space}")
        writer.AddComment("UNITS=mm")
    else:  # .vtp
        writer = vtkXMLPolyDataWriter()
        writer.SetCompressorTypeToZLib()
        writer.SetDataModeToAppended()
        pd = _with_field_strings(pd, {"SPACE": space, "UNITS": "mm"})
    writer.SetInputData(pd)
    writer.SetFileName(filename)
    with _VTKMessages(writer) as msgs:
        ok = writer.Write()
    error = msgs.first_error()
    if not ok or error:
        raise OSError(f"VTK could not write the {suffix} file: {error or 'writer failed'}")


def _with_field_strings(pd: vtkPolyData, values) -> vtkPolyData:
    out = vtkPolyData()
    out.ShallowCopy(pd)
    for name, value in values.items():
        arr = vtkStringArray()
        arr.SetName(name)
        arr.InsertNextValue(value)
        out.GetFieldData().AddArray(arr)
    return out


def _write_obj(fh, points: np.ndarray, triangles: np.ndarray, header: str) -> None:
    # Slicer's OBJ files begin with the comment "#  3D Slicer output. SPACE=..." (vtkOBJExporter),
    # which vtkOBJReader returns as the file's comment
    fh.write(f"# {header}\n\n".encode("ascii"))
    # 9 significant digits round-trip float32, the precision VTK readers keep
    fh.write("".join(f"v {x:.9g} {y:.9g} {z:.9g}\n" for x, y, z in points.tolist()).encode("ascii"))
    fh.write("".join(f"f {a} {b} {c}\n" for a, b, c in (triangles + 1).tolist()).encode("ascii"))
