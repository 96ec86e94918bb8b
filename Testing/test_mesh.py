"""Tests of TAVIRegistrationLib.mesh: reading/writing surface models in LPS mm, Slicer's SPACE
markers, units, labelmap surfaces and refusal of bad input."""

import struct
from pathlib import Path

import numpy as np
import pytest

from TAVIRegistrationLib import mesh
from TAVIRegistrationLib.errors import InputError
from TAVIRegistrationLib.mesh import (
    SurfaceModel,
    arrays_from_polydata,
    labelmap_to_surface,
    load_model,
    polydata_from_arrays,
    save_model,
    transform_polydata,
)

FORMATS = [".stl", ".vtk", ".vtp", ".ply", ".obj"]
SHARED_AORTA = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "meshes" / "thoracic_aorta" / "wall_aorta.stl"
)


# ------------------------------------------------------------------------------------------------
# fixtures and helpers (kept in this file on purpose)
# ------------------------------------------------------------------------------------------------
def _octahedron(center=(12.0, -34.0, 56.0), radius=(20.0, 15.0, 30.0)):
    """A closed, outward-oriented, asymmetric octahedron away from the origin (LPS mm)."""
    c = np.asarray(center, float)
    r = np.asarray(radius, float)
    pts = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float) * r + c
    tris = np.array([
        [0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4],
        [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5],
    ])
    return pts, tris


@pytest.fixture
def octa():
    pts, tris = _octahedron()
    return pts, tris, polydata_from_arrays(pts, tris)


def _signed_volume(points, triangles):
    a, b, c = points[triangles[:, 0]], points[triangles[:, 1]], points[triangles[:, 2]]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def _sorted_rows(a):
    a = np.round(np.asarray(a, float), 4)
    return a[np.lexsort(a.T[::-1])]


def _assert_same_points(actual, expected, tol=1e-4):
    actual, expected = _sorted_rows(actual), _sorted_rows(expected)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, atol=tol)


def _write_ascii_stl(path, points, triangles, solid_name):
    lines = [f"solid {solid_name}"]
    for t in triangles:
        lines.append(" facet normal 0 0 0")
        lines.append("  outer loop")
        for i in t:
            lines.append("   vertex {:.6f} {:.6f} {:.6f}".format(*points[i]))
        lines.append("  endloop")
        lines.append(" endfacet")
    lines.append(f"endsolid {solid_name}")
    Path(path).write_text("\n".join(lines) + "\n")


def _write_binary_stl(path, points, triangles, header=b""):
    with open(path, "wb") as fh:
        fh.write(header.ljust(80, b"\0")[:80])
        fh.write(struct.pack("<I", len(triangles)))
        for t in triangles:
            fh.write(struct.pack("<3f", 0, 0, 0))
            for i in t:
                fh.write(struct.pack("<3f", *points[i]))
            fh.write(b"\0\0")


def _write_obj(path, points, triangles, comment=None):
    text = f"# {comment}\n\n" if comment else ""
    text += "".join("v {} {} {}\n".format(*p) for p in points)
    text += "".join("f {} {} {}\n".format(*(t + 1)) for t in triangles)
    Path(path).write_text(text)


def _labelmap(path, arr, spacing, origin, direction):
    sitk = pytest.importorskip("SimpleITK")
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    img.SetDirection(np.asarray(direction, float).ravel().tolist())
    sitk.WriteImage(img, str(path))
    return path


def _rotation(deg_z, mirror_y=False):
    a = np.deg2rad(deg_z)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    tilt = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]])  # image k axis along -y: an oblique volume
    d = rz @ tilt
    if mirror_y:
        d = d @ np.diag([1.0, -1.0, 1.0])
    return d


def _sphere_labelmap(path, direction, label_value=1, radius=7.0):
    """A sphere of ``radius`` mm in a 36x32x28 volume with anisotropic voxels; returns its LPS centre."""
    size = (36, 32, 28)  # (i, j, k)
    spacing = np.array([0.8, 0.7, 1.1])
    origin = np.array([15.0, -60.0, 120.0])
    kk, jj, ii = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    ijk = np.stack([ii, jj, kk], axis=-1).astype(float)
    lps = origin + (ijk * spacing) @ np.asarray(direction).T
    center_ijk = np.array([17.5, 15.0, 13.0])
    center = origin + np.asarray(direction) @ (center_ijk * spacing)
    arr = (np.linalg.norm(lps - center, axis=-1) <= radius).astype(np.uint8) * label_value
    _labelmap(path, arr, spacing, origin, direction)
    return center, float(spacing.max())


def test_triangles_become_vtk_cells_on_the_installed_vtk():
    """polydata_from_arrays builds its cell arrays with the id type of the VTK at hand (VTK 9.5 and 9.6,
    the VTKs of 3D Slicer 5.10 and 5.12, lack numpy_support.VTK_ID_TYPE, which 9.7 re-exports)."""
    import vtk

    ids = mesh._id_array(np.array([0, 3, 6], dtype=np.int32))
    assert isinstance(ids, vtk.vtkIdTypeArray) and [ids.GetValue(i) for i in range(3)] == [0, 3, 6]
    points = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    pd = mesh.polydata_from_arrays(points, np.array([[0, 1, 2], [0, 1, 3]]))
    assert pd.GetNumberOfCells() == 2 and pd.GetCell(1).GetPointId(2) == 3


# ------------------------------------------------------------------------------------------------
# round trips and Slicer's SPACE markers
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("space", ["LPS", "RAS"])
@pytest.mark.parametrize("ext", FORMATS)
def test_round_trip_every_format_and_space(tmp_path, octa, ext, space):
    pts, tris, pd = octa
    path = save_model(pd, tmp_path / f"model{ext}", space=space)
    assert path.exists()
    assert [p.name for p in tmp_path.iterdir()] == [f"model{ext}"]  # no temporary files left

    model = load_model(path)
    assert isinstance(model, SurfaceModel)
    assert model.space_used == space and model.space_source == "header"
    assert model.units_used == "mm" and model.units_source == "header"
    assert model.warnings == []
    assert model.n_triangles == 8
    _assert_same_points(model.points(), pts)
    np.testing.assert_allclose(model.center, [12.0, -34.0, 56.0], atol=1e-4)
    # orientation survives the round trip (outward normals)
    p, t = arrays_from_polydata(model.polydata)
    assert _signed_volume(p, t) == pytest.approx(_signed_volume(pts, tris), rel=1e-5)

    # the file itself holds coordinates in the requested space: read it "as LPS" to see them raw
    raw = load_model(path, space="LPS")
    flip = np.array([-1.0, -1.0, 1.0]) if space == "RAS" else np.ones(3)
    _assert_same_points(raw.points(), pts * flip)
    if space == "RAS":
        assert any("SPACE=RAS" in w and "using LPS" in w for w in raw.warnings)
    else:
        assert raw.warnings == []


@pytest.mark.parametrize("ext", FORMATS)
def test_marker_is_written_where_slicer_reads_it(tmp_path, octa, ext):
    _, _, pd = octa
    path = save_model(pd, tmp_path / f"m{ext}", space="RAS")
    data = path.read_bytes()
    if ext == ".stl":
        assert b"SPACE=RAS" in data[:80]  # binary STL: the 80-byte header
        assert not data.startswith(b"solid")
    elif ext == ".vtk":
        assert b"SPACE=RAS" in data.split(b"\n")[1]  # legacy VTK: the header (second) line
    elif ext == ".ply":
        header = data.split(b"end_header")[0]
        assert b"\ncomment SPACE=RAS\n" in header
    elif ext == ".obj":
        assert data.split(b"\n")[0].startswith(b"#") and b"SPACE=RAS" in data.split(b"\n")[0]
    else:
        from vtkmodules.vtkIOXML import vtkXMLPolyDataReader

        reader = vtkXMLPolyDataReader()
        reader.SetFileName(str(path))
        reader.Update()
        field = reader.GetOutput().GetFieldData().GetAbstractArray("SPACE")
        assert field is not None and field.GetValue(0) == "RAS"


def _slicer_style_file(tmp_path, ext, pts_in_file, tris, space):
    """A file laid out exactly as 3D Slicer's vtkMRMLModelStorageNode writes it."""
    path = tmp_path / f"slicer{ext}"
    header = f"3D Slicer output. SPACE={space}"
    pd = polydata_from_arrays(pts_in_file, tris)
    if ext == ".stl":
        _write_ascii_stl(path, pts_in_file, tris, header)  # ASCII: the marker is on the solid line
    elif ext == ".vtk":
        from vtkmodules.vtkIOLegacy import vtkPolyDataWriter

        w = vtkPolyDataWriter()
        w.SetFileVersion(42)
        w.SetHeader(header)
        w.SetInputData(pd)
        w.SetFileName(str(path))
        w.Write()
    elif ext == ".ply":
        from vtkmodules.vtkIOPLY import vtkPLYWriter

        w = vtkPLYWriter()
        w.AddComment(f"SPACE={space}")
        w.SetInputData(pd)
        w.SetFileName(str(path))
        w.Write()
    elif ext == ".obj":
        path.write_text(f"#  {header}\n\nmtllib slicer.mtl\n\n")  # vtkOBJExporter's layout
        with open(path, "a") as fh:
            fh.write("".join("v {} {} {}\n".format(*p) for p in pts_in_file))
            fh.write("".join("f {} {} {}\n".format(*(t + 1)) for t in tris))
    else:
        from vtkmodules.vtkCommonCore import vtkStringArray
        from vtkmodules.vtkIOXML import vtkXMLPolyDataWriter

        arr = vtkStringArray()
        arr.SetName("SPACE")
        arr.InsertNextValue(space)
        pd.GetFieldData().AddArray(arr)
        w = vtkXMLPolyDataWriter()
        w.SetInputData(pd)
        w.SetFileName(str(path))
        w.Write()
    return path


@pytest.mark.parametrize("ext", FORMATS)
def test_slicer_written_ras_file_is_flipped_to_lps(tmp_path, ext):
    pts, tris = _octahedron()
    ras = pts * np.array([-1.0, -1.0, 1.0])
    path = _slicer_style_file(tmp_path, ext, ras, tris, "RAS")
    model = load_model(path)
    assert model.space_used == "RAS" and model.space_source == "header"
    _assert_same_points(model.points(), pts)
    if ext != ".ply" and ext != ".vtp":  # "3D Slicer output" states Slicer's millimetres
        assert model.units_source == "header"
        assert model.warnings == []
    else:  # PLY/VTP carry only the SPACE marker: the mm assumption is named
        assert any("assumed millimetres" in w for w in model.warnings)


def test_slicer_lps_file_is_kept(tmp_path):
    pts, tris = _octahedron()
    path = _slicer_style_file(tmp_path, ".stl", pts, tris, "LPS")
    model = load_model(path)
    assert model.space_used == "LPS" and model.warnings == []
    _assert_same_points(model.points(), pts)


def test_user_space_overrides_header_with_warning(tmp_path, octa):
    pts, _, pd = octa
    path = save_model(pd, tmp_path / "m.stl", space="LPS")
    model = load_model(path, space="RAS")
    assert model.space_used == "RAS" and model.space_source == "user"
    assert len(model.warnings) == 1
    assert "SPACE=LPS" in model.warnings[0] and "RAS" in model.warnings[0]
    _assert_same_points(model.points(), pts * np.array([-1.0, -1.0, 1.0]))
    # agreeing with the header is silent
    assert load_model(path, space="lps").warnings == []


def test_user_space_without_header_is_not_warned(tmp_path):
    pts, tris = _octahedron()
    path = tmp_path / "plain.stl"
    _write_binary_stl(path, pts, tris, header=b"exported by some CAD tool")
    model = load_model(path, space="RAS", units="mm")
    assert model.warnings == []
    assert model.space_source == "user" and model.units_source == "user"
    _assert_same_points(model.points(), pts * np.array([-1.0, -1.0, 1.0]))


# ------------------------------------------------------------------------------------------------
# units and assumptions
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("units,factor", [("mm", 1.0), ("cm", 10.0), ("m", 1000.0)])
def test_units_scale_to_mm(tmp_path, units, factor):
    pts, tris = _octahedron()
    file_pts = pts / factor
    path = tmp_path / "m.obj"
    _write_obj(path, file_pts, tris)
    model = load_model(path, units=units, space="LPS")
    assert model.units_used == units
    _assert_same_points(model.points(), pts, tol=1e-3)
    assert model.warnings == []  # both stated, extent plausible


def test_user_units_contradicting_header_warn(tmp_path, octa):
    pts, _, pd = octa
    path = save_model(pd, tmp_path / "m.vtp")  # says UNITS=mm
    model = load_model(path, units="cm")
    assert any("units mm" in w and "using cm" in w for w in model.warnings)
    _assert_same_points(model.points(), pts * 10.0, tol=1e-3)


def test_unstated_space_and_units_are_named(tmp_path):
    pts, tris = _octahedron()
    path = tmp_path / "anon.stl"
    _write_binary_stl(path, pts, tris)
    model = load_model(path)
    assert model.space_used == "LPS" and model.space_source == "assumed"
    assert model.units_used == "mm" and model.units_source == "assumed"
    assert any("assumed LPS" in w for w in model.warnings)
    assert any("assumed millimetres" in w for w in model.warnings)
    assert all("\n" not in w for w in model.warnings)


def test_implausible_extent_is_warned(tmp_path):
    pts, tris = _octahedron(center=(0.01, 0.02, 0.03), radius=(0.02, 0.015, 0.03))  # metres as mm
    path = tmp_path / "tiny.obj"
    _write_obj(path, pts, tris)
    model = load_model(path, space="LPS")
    assert any("too small" in w and "metres" in w for w in model.warnings)
    # stated correctly, the same file is plausible
    assert load_model(path, space="LPS", units="m").warnings == []

    big_pts, _ = _octahedron(radius=(2000.0, 1500.0, 3000.0))
    _write_obj(tmp_path / "big.obj", big_pts, tris)
    assert any("too large" in w for w in load_model(tmp_path / "big.obj", space="LPS", units="mm").warnings)


@pytest.mark.parametrize("kwargs", [{"units": "inch"}, {"space": "RAI"}, {"units": ""}])
def test_bad_units_or_space_are_refused(tmp_path, octa, kwargs):
    _, _, pd = octa
    path = save_model(pd, tmp_path / "m.stl")
    with pytest.raises(InputError):
        load_model(path, **kwargs)


def test_quads_are_triangulated_and_duplicates_merged(tmp_path):
    path = tmp_path / "quad.obj"
    path.write_text(
        "# SPACE=LPS UNITS=mm\n"
        "v 0 0 0\nv 40 0 0\nv 40 40 0\nv 0 40 0\nv 0 0 0\n"
        "f 1 2 3 4\n"
        "l 1 3\n"
    )
    model = load_model(path)
    assert model.n_triangles == 2
    assert model.n_points == 4  # the duplicate vertex is merged away
    assert model.polydata.GetNumberOfLines() == 0
    assert model.triangles().shape == (2, 3)


# ------------------------------------------------------------------------------------------------
# labelmaps
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "ext,mirror", [(".nrrd", False), (".nii.gz", False), (".mha", True)]
)
def test_labelmap_surface_lands_at_lps_position(tmp_path, ext, mirror):
    direction = _rotation(30.0, mirror_y=mirror)
    path = tmp_path / f"seg{ext}"
    center, voxel = _sphere_labelmap(path, direction, label_value=1, radius=7.0)
    model = load_model(path)
    assert model.space_source == "image" and model.units_source == "image"
    assert model.warnings == []
    pts = model.points()
    np.testing.assert_allclose(model.center, center, atol=voxel)
    radii = np.linalg.norm(pts - center, axis=1)
    assert abs(radii.mean() - 7.0) < voxel
    assert radii.max() - radii.min() < 2 * voxel
    # closed and outward-oriented whatever the direction's handedness
    p, t = arrays_from_polydata(model.polydata)
    assert _signed_volume(p, t) == pytest.approx(4.0 / 3.0 * np.pi * 7.0 ** 3, rel=0.15)


def test_labelmap_touching_the_border_is_closed(tmp_path):
    arr = np.zeros((10, 12, 14), np.uint8)
    arr[:, :6, :] = 1  # fills the volume up to three of its faces
    path = _labelmap(tmp_path / "edge.nrrd", arr, (1.5, 1.0, 2.0), (-5.0, 7.0, 3.0), np.eye(3))
    model = labelmap_to_surface(path, smoothing=False)
    p, t = arrays_from_polydata(model.polydata)
    # voxel centres span i 0..13, j 0..5, k 0..9: the surface lies half a voxel outside them
    np.testing.assert_allclose(model.bounds, (-5.75, 15.25, 6.5, 12.5, 2.0, 22.0), atol=1e-6)
    assert _signed_volume(p, t) == pytest.approx(21.0 * 6.0 * 20.0, rel=0.05)


def test_labelmap_label_selection(tmp_path):
    arr = np.zeros((20, 24, 28), np.uint8)
    arr[4:10, 4:12, 4:12] = 2
    arr[12:18, 10:20, 14:26] = 5
    path = _labelmap(tmp_path / "two.nrrd", arr, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    both = labelmap_to_surface(path)
    five = labelmap_to_surface(path, label=5, smoothing=False)
    two = load_model(path, label=2)
    assert both.n_triangles > five.n_triangles > 0 and two.n_triangles > 0
    # label 5 spans i 14..25, j 10..19, k 12..17 (surface half a voxel outside the voxel centres)
    b = five.bounds
    np.testing.assert_allclose(b, (13.5, 25.5, 9.5, 19.5, 11.5, 17.5), atol=0.51)
    with pytest.raises(InputError, match="label 7") as exc:
        labelmap_to_surface(path, label=7)
    assert "2, 5" in str(exc.value)


def test_labelmap_ignores_stated_space_with_warning(tmp_path):
    arr = np.zeros((16, 16, 16), np.uint8)
    arr[3:13, 3:13, 3:13] = 1
    path = _labelmap(tmp_path / "seg.nii", arr, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    model = load_model(path, space="RAS", units="cm")
    assert model.space_used == "LPS" and model.units_used == "mm"
    assert any("space RAS ignored" in w for w in model.warnings)
    assert any("units cm ignored" in w for w in model.warnings)


def test_labelmap_bad_inputs(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    empty = _labelmap(tmp_path / "empty.nrrd", np.zeros((8, 8, 8), np.uint8), (1, 1, 1), (0, 0, 0), np.eye(3))
    with pytest.raises(InputError, match="empty segmentation"):
        load_model(empty)

    flat = sitk.GetImageFromArray(np.ones((10, 10), np.uint8))
    sitk.WriteImage(flat, str(tmp_path / "flat.nrrd"))
    with pytest.raises(InputError, match="3D volume"):
        load_model(tmp_path / "flat.nrrd")

    rng = np.random.default_rng(1)
    ct = (rng.normal(0.0, 300.0, (12, 12, 12))).astype(np.float32)
    _labelmap(tmp_path / "ct.mha", ct, (1, 1, 1), (0, 0, 0), np.eye(3))
    with pytest.raises(InputError, match="not a labelmap"):
        load_model(tmp_path / "ct.mha")

    (tmp_path / "junk.nrrd").write_bytes(rng.bytes(300))
    with pytest.raises(InputError) as exc:
        load_model(tmp_path / "junk.nrrd")
    assert "\n" not in str(exc.value)


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------
def _bad_files(tmp_path):
    rng = np.random.default_rng(7)
    pts, tris = _octahedron()
    cases = {}
    (tmp_path / "empty.stl").write_bytes(b"")
    cases["empty file"] = tmp_path / "empty.stl"
    (tmp_path / "random.stl").write_bytes(rng.bytes(4096))
    cases["random bytes stl"] = tmp_path / "random.stl"
    for ext in (".vtk", ".vtp", ".ply", ".obj"):
        (tmp_path / f"random{ext}").write_bytes(rng.bytes(2048))
        cases[f"random bytes {ext}"] = tmp_path / f"random{ext}"
    nan_pts = pts.copy()
    nan_pts[2, 1] = np.nan
    _write_obj(tmp_path / "nan.obj", nan_pts, tris)
    cases["NaN vertex obj"] = tmp_path / "nan.obj"
    inf_pts = pts.copy()
    inf_pts[0, 0] = np.inf
    _write_binary_stl(tmp_path / "inf.stl", inf_pts, tris)
    cases["inf vertex stl"] = tmp_path / "inf.stl"
    _write_binary_stl(tmp_path / "whole.stl", pts, tris)
    data = (tmp_path / "whole.stl").read_bytes()
    (tmp_path / "truncated.stl").write_bytes(data[: len(data) - 70])
    cases["truncated stl"] = tmp_path / "truncated.stl"
    (tmp_path / "points_only.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    cases["no triangles"] = tmp_path / "points_only.obj"
    (tmp_path / "model.xyz").write_text("0 0 0\n")
    cases["unknown extension"] = tmp_path / "model.xyz"
    cases["missing file"] = tmp_path / "does_not_exist.stl"
    (tmp_path / "folder.stl").mkdir()
    cases["folder"] = tmp_path / "folder.stl"
    return cases


def test_bad_inputs_raise_one_line_input_error(tmp_path, capfd):
    for what, path in _bad_files(tmp_path).items():
        with pytest.raises(InputError) as exc:
            load_model(path)
        message = str(exc.value)
        assert message and "\n" not in message, what
        assert path.name in message or "unknown" in message, (what, message)
    out, err = capfd.readouterr()
    assert "ERR" not in err and "vtk" not in err.lower(), err  # VTK's own output stays silent


def test_specific_messages(tmp_path):
    cases = _bad_files(tmp_path)
    expected = {
        "empty file": "empty",
        "random bytes stl": "cannot read",
        "NaN vertex obj": "non-finite",
        "inf vertex stl": "non-finite",
        "unknown extension": "unknown model file type",
        "missing file": "not found",
        "folder": "folder",
        "no triangles": "no triangles",
    }
    for what, fragment in expected.items():
        with pytest.raises(InputError, match=fragment):
            load_model(cases[what])


def test_too_many_triangles(tmp_path, octa, monkeypatch):
    _, _, pd = octa
    path = save_model(pd, tmp_path / "m.stl")
    other = save_model(pd, tmp_path / "m.ply")
    monkeypatch.setattr(mesh, "MAX_TRIANGLES", 4)
    with pytest.raises(InputError, match="decimate"):
        load_model(path)  # refused from the binary STL header, before reading
    with pytest.raises(InputError, match="decimate"):
        load_model(other)


def test_vtk_output_is_restored_after_reading(tmp_path, capfd):
    (tmp_path / "bad.vtp").write_bytes(b"<VTKFile garbage")
    with pytest.raises(InputError):
        load_model(tmp_path / "bad.vtp")
    from vtkmodules.vtkCommonCore import vtkOutputWindow, vtkStringOutputWindow

    assert not isinstance(vtkOutputWindow.GetInstance(), vtkStringOutputWindow)


# ------------------------------------------------------------------------------------------------
# saving and helpers
# ------------------------------------------------------------------------------------------------
def test_save_model_refuses_bad_requests(tmp_path, octa):
    _, _, pd = octa
    with pytest.raises(InputError, match="cannot write model type"):
        save_model(pd, tmp_path / "m.xyz")
    with pytest.raises(InputError, match="empty"):
        save_model(polydata_from_arrays(np.zeros((0, 3)), np.zeros((0, 3), int)), tmp_path / "e.stl")
    with pytest.raises(InputError):
        save_model(pd, tmp_path / "m.stl", space="XYZ")
    assert list(tmp_path.iterdir()) == []


def test_save_accepts_surface_model_and_keeps_lps(tmp_path, octa):
    pts, tris, pd = octa
    model = load_model(save_model(pd, tmp_path / "a.ply"))
    again = load_model(save_model(model, tmp_path / "b.vtk", space="RAS"))
    _assert_same_points(again.points(), pts)


def test_array_helpers_round_trip(octa):
    pts, tris, pd = octa
    p, t = arrays_from_polydata(pd)
    np.testing.assert_array_equal(p, pts)
    np.testing.assert_array_equal(t, tris)
    assert t.dtype == np.int64 and p.dtype == np.float64
    with pytest.raises(InputError):
        polydata_from_arrays(pts[:, :2], tris)
    with pytest.raises(InputError):
        polydata_from_arrays(pts, tris + 10)


def test_transform_polydata(octa):
    pts, tris, pd = octa
    m = np.eye(4)
    m[:3, 3] = [1.0, 2.0, 3.0]
    moved = transform_polydata(pd, m)
    np.testing.assert_allclose(arrays_from_polydata(moved)[0], pts + [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(arrays_from_polydata(pd)[0], pts)  # input untouched

    mirror = np.diag([-1.0, 1.0, 1.0, 1.0])
    mp, mt = arrays_from_polydata(transform_polydata(pd, mirror))
    assert _signed_volume(mp, mt) == pytest.approx(_signed_volume(pts, tris))  # still outward

    for bad in (np.eye(3), np.diag([1.0, 1.0, 0.0, 1.0]), np.array([[1, 0, 0, 0]] * 3 + [[0, 0, 1, 1]])):
        with pytest.raises(InputError):
            transform_polydata(pd, bad)


def test_surface_from_polydata_ras(octa):
    pts, _, pd = octa
    model = mesh.surface_from_polydata(pd, space="RAS")
    _assert_same_points(model.points(), pts * np.array([-1.0, -1.0, 1.0]))
    assert model.warnings == []


# ------------------------------------------------------------------------------------------------
# real data
# ------------------------------------------------------------------------------------------------
def test_real_thoracic_aorta_loads():
    if not SHARED_AORTA.is_file():
        pytest.skip(f"shared data absent: {SHARED_AORTA} (real thoracic aorta mesh)")
    model = load_model(SHARED_AORTA)
    assert abs(model.n_triangles - 61565) < 100
    assert model.space_source == "assumed" and model.units_source == "assumed"
    assert len(model.warnings) == 2  # the two assumptions, and a plausible extent in mm
    extent = model.extent_mm
    assert 20 < extent.max() < 200
    assert np.all(np.isfinite(model.points()))
