"""Checks of the 3D Slicer layer that run without 3D Slicer (it cannot be installed here).

The module's Logic and self-test run on Slicer's core libraries in ``Testing/test_slicer_logic.py``;
the whole self-test, the Qt panel included, runs in 3D Slicer with ``Testing/run_slicer_selftest.sh``,
which ``.ci/run`` calls when ``SLICER_EXECUTABLE`` is set. Here, on the source alone:

* the module's source: Python 3.9 grammar (the oldest Python a Slicer 5.x ships), no heavy import at
  module import time, every library name it imports lazily exists in the library, the four template
  classes and the parameter node, the help and acknowledgement texts;
* ``Resources/UI/TAVIRegistration.ui``: well formed, has every widget the module uses, and each widget
  bound to a parameter (``SlicerParameterName``) fits the parameter's type;
* ``CMakeLists.txt``: its glob patterns cover every file of ``TAVIRegistrationLib/`` and ``Resources/``,
  and (with cmake installed) a configure run against a stand-in Slicer package stages the layout Slicer
  loads;
* ``Testing/run_slicer_selftest.sh`` against a stand-in Slicer executable that records its arguments;
* the module's pure numpy helpers (RAS/LPS, the 2D affine as a RAS transform, the C-arm camera),
  compiled alone from the module's source; the camera is checked against the library's projection.

Stand-ins are used only for what cannot exist here (the Slicer executable and Slicer's CMake package);
the real paths are the self-test run by ``Testing/run_slicer_selftest.sh`` and a Slicer build of the
extension (``slicer_add_python_unittest`` in ``CMakeLists.txt``).
"""

import ast
import builtins
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "TAVIRegistration"
MODULE_FILE = MODULE_DIR / "TAVIRegistration.py"
LIBRARY_DIR = MODULE_DIR / "TAVIRegistrationLib"
RESOURCES_DIR = REPO / "Resources"
UI_FILE = RESOURCES_DIR / "UI" / "TAVIRegistration.ui"
CMAKE_FILE = REPO / "CMakeLists.txt"
DRIVER = REPO / "Testing" / "run_slicer_selftest.sh"

SOURCE = MODULE_FILE.read_text(encoding="utf-8")
TREE = ast.parse(SOURCE, filename=str(MODULE_FILE))

#: Modules the module file may import when Slicer loads it: the standard library, numpy and what
#: 3D Slicer itself provides. Everything else (the library, pydicom, torch, ...) is imported lazily.
SLICER_PROVIDED = {"numpy", "vtk", "slicer"}  # not qt or ctk: the Logic runs on slicer-core, without Qt
NOT_AT_IMPORT_TIME = {"TAVIRegistrationLib", "pydicom", "torch", "PIL", "scipy", "skimage", "SimpleITK",
                      "matplotlib", "pylibjpeg", "PyTorchUtils", "DICOMLib", "SampleData", "ScreenCapture"}

#: The module's pure helpers (numpy, math and re only).
PURE_HELPERS = ("rasFromLps", "lpsFromRas", "rasMatrixFromLps", "lpsMatrixFromRas", "planeMatrixFromAffine",
                "roiIjkToRas", "rasTransformFromAffine", "affineFromRasTransform", "carmCameraParameters",
                "parseInstanceUids", "versionAtLeast", "masksAgreeWithinOnePixel",
                "pixelRoiFromRasBounds", "rasBoxFromPixelRoi")


# --------------------------------------------------------------------------------------------------
# helpers of this test
# --------------------------------------------------------------------------------------------------
def _top_level(node_type):
    return [n for n in TREE.body if isinstance(n, node_type)]


def _classes():
    return {n.name: n for n in _top_level(ast.ClassDef)}


def _functions():
    return {n.name: n for n in _top_level(ast.FunctionDef)}


def _assigned(name):
    for node in TREE.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return node
    raise AssertionError(f"{name} is not assigned at the top of the module")


def _string_constants(*names):
    """Evaluate top-level string constants (plain strings and their concatenations) of the module."""
    namespace = {}
    for name in names:
        code = compile(ast.Module(body=[_assigned(name)], type_ignores=[]), str(MODULE_FILE), "exec")
        exec(code, {"__builtins__": {}}, namespace)
    return namespace


def _free_names(function):
    """Names a function reads that it does not bind itself (arguments, assignments, nested defs)."""
    bound = {a.arg for a in ast.walk(function.args) if isinstance(a, ast.arg)}
    loaded = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.Lambda)) and node is not function:
            bound.update(a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg))
            if isinstance(node, ast.FunctionDef):
                bound.add(node.name)
        elif isinstance(node, ast.comprehension):
            bound.update(n.id for n in ast.walk(node.target) if isinstance(n, ast.Name))
    return loaded - bound


@pytest.fixture(scope="module")
def helpers():
    """The pure helpers compiled alone from the module source, with numpy, math and re."""
    functions = _functions()
    nodes = [functions[name] for name in PURE_HELPERS]
    namespace = {"np": np, "math": math, "re": re}
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(MODULE_FILE), "exec"), namespace)
    return namespace


# --------------------------------------------------------------------------------------------------
# the module's source
# --------------------------------------------------------------------------------------------------
def test_module_uses_python39_syntax_only():
    ast.parse(SOURCE, feature_version=(3, 9))  # Slicer up to 5.8 ships Python 3.9
    for node in ast.walk(TREE):
        annotations = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            annotations += [a.annotation for a in ast.walk(node.args) if isinstance(a, ast.arg)]
            annotations.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
        for annotation in filter(None, annotations):
            for part in ast.walk(annotation):
                assert not (isinstance(part, ast.BinOp) and isinstance(part.op, ast.BitOr)), (
                    f"line {part.lineno}: 'X | Y' type hints need Python 3.10 (use Optional/Union)")


def test_module_imports_only_what_slicer_provides_at_import_time():
    stdlib = set(sys.stdlib_module_names)
    for node in _top_level((ast.Import, ast.ImportFrom)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
        for name in names:
            root = name.split(".")[0]
            assert root not in NOT_AT_IMPORT_TIME, f"line {node.lineno}: {name} must be imported lazily"
            assert root in stdlib or root in SLICER_PROVIDED, f"line {node.lineno}: {name} is not in 3D Slicer"


def test_lazy_library_imports_name_real_library_objects():
    sys.path.insert(0, str(MODULE_DIR))
    try:
        import importlib

        checked = 0
        for node in ast.walk(TREE):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("TAVIRegistrationLib"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"line {node.lineno}: {node.module}.{alias.name} does not exist"
                    checked += 1
        assert checked >= 10
    finally:
        sys.path.remove(str(MODULE_DIR))


def test_the_four_template_classes_and_the_parameter_node():
    classes = _classes()
    expected = {
        "TAVIRegistration": ["ScriptedLoadableModule"],
        "TAVIRegistrationWidget": ["ScriptedLoadableModuleWidget", "VTKObservationMixin"],
        "TAVIRegistrationLogic": ["ScriptedLoadableModuleLogic"],
        "TAVIRegistrationTest": ["ScriptedLoadableModuleTest"],
    }
    for name, bases in expected.items():
        assert name in classes, f"class {name} missing"
        assert [ast.unparse(b) for b in classes[name].bases] == bases
    parameterNode = classes["TAVIRegistrationParameterNode"]
    assert [ast.unparse(d) for d in parameterNode.decorator_list] == ["parameterNodeWrapper"]
    logic = {n.name for n in classes["TAVIRegistrationLogic"].body if isinstance(n, ast.FunctionDef)}
    assert {"getParameterNode", "renderProjection", "placeCameraAtSource", "surfaceModelFromNode",
            "dicomFileForVolume", "ensurePythonPackages", "ensureTorch", "segmentFrame", "registerFrame",
            "exportProjection", "loadSyntheticCase"} <= logic
    tests = [n.name for n in classes["TAVIRegistrationTest"].body if isinstance(n, ast.FunctionDef)]
    assert {"runTest", "test_ProjectionThroughDICOM", "test_ModulePanel", "test_RegistrationMetrics"} <= set(tests)
    # the registration-metric test is skipped, with the reason, while the step is not available
    metrics = next(n for n in classes["TAVIRegistrationTest"].body
                   if isinstance(n, ast.FunctionDef) and n.name == "test_RegistrationMetrics")
    assert "self.skipTest(reason)" in ast.unparse(metrics)


def test_unavailable_steps_are_declared_with_a_reason():
    steps = ast.literal_eval(next(n for n in _classes()["TAVIRegistrationLogic"].body
                                  if isinstance(n, ast.Assign) and n.targets[0].id == "IMPLEMENTED_STEPS").value)
    assert steps["project"] is True
    reasons = ast.literal_eval(_assigned("STEP_UNAVAILABLE_REASONS").value)
    for step, implemented in steps.items():
        if not implemented:
            assert "not available" in reasons[step]


def test_help_and_acknowledgement_texts():
    texts = _string_constants("PAPER", "HELP_TEXT", "ACKNOWLEDGEMENT_TEXT")
    title = "Model-to-Image Registration via Deep Learning towards Image-Guided Endovascular Interventions"
    assert title in texts["HELP_TEXT"] and title in texts["ACKNOWLEDGEMENT_TEXT"]
    assert "Li et al." in texts["PAPER"]
    assert "3D Slicer 5.10" in texts["HELP_TEXT"]
    acknowledgement = texts["ACKNOWLEDGEMENT_TEXT"]
    assert "Cervantes-Sanchez" in acknowledgement and "2019" in acknowledgement and "BSD-3" in acknowledgement
    assert "Research software, not a medical device" in texts["HELP_TEXT"]


def test_python_requirements_agree_with_the_package():
    requirements = ast.literal_eval(_assigned("PYTHON_REQUIREMENTS").value)
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    for distribution, _module, requirement, minimum, _purpose in requirements:
        assert requirement == f"{distribution}>={minimum}"
        assert f'"{requirement}"' in pyproject, f"{requirement} differs from pyproject.toml"


# --------------------------------------------------------------------------------------------------
# the .ui file
# --------------------------------------------------------------------------------------------------
def _ui_widgets():
    root = ET.parse(UI_FILE).getroot()
    return {w.get("name"): w for w in root.iter("widget")}


def _parameter_types():
    node = _classes()["TAVIRegistrationParameterNode"]
    return {n.target.id: ast.unparse(n.annotation) for n in node.body if isinstance(n, ast.AnnAssign)}


def test_ui_has_every_widget_the_module_uses():
    widgets = _ui_widgets()
    used = set(re.findall(r"\bui\.(\w+)", SOURCE))
    assert used, "the module uses no widget of its .ui"
    assert not used - set(widgets), f"widgets missing from {UI_FILE.name}: {sorted(used - set(widgets))}"


def test_ui_parameter_bindings_fit_the_parameter_types():
    types = _parameter_types()
    fits = {
        "QCheckBox": lambda t: t == "bool",
        "ctkSliderWidget": lambda t: "float" in t and "WithinRange" in t,
        "qMRMLNodeComboBox": lambda t: "vtkMRML" in t,
        "ctkDirectoryButton": lambda t: "pathlib.Path" in t,
    }
    bound = 0
    for name, widget in _ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                parameter = prop.find("string").text
                assert parameter in types, f"{name} is bound to unknown parameter {parameter}"
                assert fits[widget.get("class")](types[parameter]), f"{name} cannot show {types[parameter]}"
                bound += 1
    assert bound >= 10


def test_ui_step_buttons_start_disabled():
    widgets = _ui_widgets()
    for name in ("segmentButton", "registerButton", "renderProjectionButton", "exportButton"):
        enabled = [p for p in widgets[name].findall("property") if p.get("name") == "enabled"]
        assert enabled and enabled[0].find("bool").text == "false", f"{name} must start disabled"


# --------------------------------------------------------------------------------------------------
# CMakeLists.txt
# --------------------------------------------------------------------------------------------------
def _cmake_list(variable):
    text = CMAKE_FILE.read_text(encoding="utf-8")
    match = re.search(r"set\(%s\s+(.*?)\)" % re.escape(variable), text, re.S)
    assert match, f"set({variable} ...) not found in CMakeLists.txt"
    return [quoted or bare for quoted, bare in re.findall(r'"([^"]+)"|(\S+)', match.group(1))]


def _glob_regex(pattern, recursive):
    """A CMake file(GLOB) pattern as a regex on '/'-separated relative paths."""
    parts = []
    for ch in pattern:
        parts.append("[^/]*" if ch == "*" else "[^/]" if ch == "?" else re.escape(ch))
    body = "".join(parts)
    if recursive and "/" not in pattern:
        body = "(?:.*/)?" + body
    return re.compile(body + r"\Z")


def _files(directory):
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(".pyc"))


def test_cmake_builds_a_slicer_510_extension_with_the_pytorch_dependency():
    text = CMAKE_FILE.read_text(encoding="utf-8")
    assert re.search(r"find_package\(Slicer 5\.10 REQUIRED\)", text)
    assert re.search(r"set\(EXTENSION_DEPENDS PyTorch\)", text)
    assert "slicerMacroBuildScriptedModule(" in text and "slicer_add_python_unittest(" in text
    assert "include(${Slicer_EXTENSION_GENERATE_CONFIG})" in text


def test_cmake_extension_urls_name_files_of_the_repository():
    """The Extensions Index's homepage, icon and screenshots: https URLs or files of this repository."""
    text = CMAKE_FILE.read_text(encoding="utf-8")
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        match = re.search(r'set\(%s "([^"]*)"\)' % key, text)
        assert match and match.group(1).split(), "%s is not set" % key
        for url in match.group(1).split():
            assert url.startswith("https://") or (REPO / url).is_file(), "%s names %s, which is missing" % (key, url)
    icon = re.search(r'set\(EXTENSION_ICONURL "([^"]*)"\)', text).group(1)
    if not icon.startswith("https://"):
        from PIL import Image

        assert Image.open(REPO / icon).size == (128, 128)  # the size the Extensions Manager shows


def test_cmake_patterns_cover_every_library_file():
    patterns = [_glob_regex(p, recursive=True) for p in _cmake_list("MODULE_LIBRARY_PATTERNS")]
    files = _files(LIBRARY_DIR)
    assert "pipeline.py" in files
    missed = [f for f in files if not any(p.match(f) for p in patterns)]
    assert not missed, f"not in the Slicer build (extend MODULE_LIBRARY_PATTERNS in CMakeLists.txt): {missed}"


def test_cmake_patterns_cover_every_resource():
    patterns = [_glob_regex(p, recursive=False) for p in _cmake_list("MODULE_RESOURCE_PATTERNS")]
    files = [f for f in _files(RESOURCES_DIR) if f.split("/")[0] in ("Icons", "UI", "Models")]
    assert {"Icons/TAVIRegistration.png", "UI/TAVIRegistration.ui"} <= set(files)
    missed = [f for f in files if not any(p.match(f) for p in patterns)]
    assert not missed, f"not in the Slicer build (extend MODULE_RESOURCE_PATTERNS in CMakeLists.txt): {missed}"


_STAND_IN_SLICER = {
    # Slicer's CMake package, reduced to what CMakeLists.txt calls: the build macro records its arguments.
    "SlicerConfig.cmake": """
        set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake)
        set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/nothing.cmake)
        set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/nothing.cmake)
    """,
    "SlicerConfigVersion.cmake": """
        set(PACKAGE_VERSION "5.10.0")
        if(PACKAGE_VERSION VERSION_LESS PACKAGE_FIND_VERSION)
          set(PACKAGE_VERSION_COMPATIBLE FALSE)
        else()
          set(PACKAGE_VERSION_COMPATIBLE TRUE)
        endif()
    """,
    "UseSlicer.cmake": """
        macro(slicerMacroBuildScriptedModule)
          cmake_parse_arguments(MY "WITH_GENERIC_TESTS" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
          file(WRITE ${CMAKE_BINARY_DIR}/recorded.txt "NAME=${MY_NAME}\\nSCRIPTS=${MY_SCRIPTS}\\nRESOURCES=${MY_RESOURCES}\\n")
        endmacro()
        macro(slicer_add_python_unittest)
          file(APPEND ${CMAKE_BINARY_DIR}/recorded.txt "UNITTEST=${ARGN}\\n")
        endmacro()
    """,
    "nothing.cmake": "",
}


@pytest.mark.skipif(shutil.which("cmake") is None or (shutil.which("cc") is None and shutil.which("gcc") is None)
                    or shutil.which("c++") is None, reason="cmake and a C/C++ compiler are needed to configure")
def test_cmake_configure_stages_the_layout_slicer_loads(tmp_path):
    """Configure CMakeLists.txt against a stand-in Slicer package and check what reaches the build macro."""
    package = tmp_path / "slicer"
    package.mkdir()
    for name, text in _STAND_IN_SLICER.items():
        (package / name).write_text(textwrap.dedent(text), encoding="utf-8")
    build = tmp_path / "build"
    proc = subprocess.run(["cmake", "-S", str(REPO), "-B", str(build), f"-DSlicer_DIR={package}",
                           "-DBUILD_TESTING=ON"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    recorded = dict(line.split("=", 1) for line in (build / "recorded.txt").read_text().splitlines())
    assert recorded["NAME"] == "TAVIRegistration"

    # scripts: absolute paths at the top of the build tree -> qt-scripted-modules/<same relative path>
    scripts = [Path(s) for s in recorded["SCRIPTS"].split(";")]
    relative = sorted(s.relative_to(build).as_posix() for s in scripts)
    expected = sorted(["TAVIRegistration.py"] + ["TAVIRegistrationLib/" + f for f in _files(LIBRARY_DIR)
                                                  if f.endswith(".py")])
    assert relative == expected
    for script in scripts:
        source = MODULE_DIR / script.relative_to(build)
        assert script.read_bytes() == source.read_bytes(), f"{script} is not a copy of {source}"

    # resources: relative to the source top -> qt-scripted-modules/Resources/...
    resources = recorded["RESOURCES"].split(";")
    assert "Resources/Icons/TAVIRegistration.png" in resources and "Resources/UI/TAVIRegistration.ui" in resources
    assert all((REPO / r).is_file() for r in resources)
    assert recorded["UNITTEST"] == f"SCRIPT;{MODULE_FILE}"


# --------------------------------------------------------------------------------------------------
# the self-test driver
# --------------------------------------------------------------------------------------------------
def _stand_in_slicer(tmp_path, fail_call=0):
    """A Slicer executable that logs its arguments and environment, and fails on call ``fail_call``."""
    log = tmp_path / "calls.log"
    exe = tmp_path / "Slicer"
    exe.write_text(textwrap.dedent(f"""\
        #!/usr/bin/env bash
        n=$(( $(cat "{tmp_path}/count" 2>/dev/null || echo 0) + 1 ))
        echo "$n" > "{tmp_path}/count"
        {{ echo "CALL $n"; printf 'ARG %s\\n' "$@"; echo "QT=${{QT_QPA_PLATFORM:-unset}}";
          echo "MODULE_DIR=${{TAVIREG_MODULE_DIR:-unset}}"; }} >> "{log}"
        [ "$n" -eq {fail_call} ] && exit 1
        exit 0
        """), encoding="utf-8")
    exe.chmod(0o755)
    return exe, log


def _calls(log):
    calls = []
    for line in log.read_text().splitlines():
        if line.startswith("CALL "):
            calls.append({"args": [], "env": {}})
        elif line.startswith("ARG "):
            calls[-1]["args"].append(line[4:])
        else:
            key, value = line.split("=", 1)
            calls[-1]["env"][key] = value
    return calls


def _run_driver(exe, **env):
    environment = dict(os.environ, DISPLAY=":99", QT_QPA_PLATFORM="offscreen", **env)
    return subprocess.run(["bash", str(DRIVER), str(exe)], capture_output=True, text=True, env=environment,
                          timeout=60)


def test_selftest_driver_runs_the_unit_test_headless(tmp_path):
    exe, log = _stand_in_slicer(tmp_path)
    proc = _run_driver(exe)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = _calls(log)
    assert len(calls) == 2
    for call in calls:
        args = call["args"]
        for flag in ("--no-splash", "--no-main-window", "--testing"):
            assert flag in args
        assert args[args.index("--additional-module-paths") + 1] == str(MODULE_DIR)
        assert call["env"] == {"QT": "unset", "MODULE_DIR": str(MODULE_DIR)}
    install_code = calls[0]["args"][calls[0]["args"].index("--python-code") + 1]
    assert "installMissingPythonPackages(ask=False)" in install_code
    test_code = calls[1]["args"][calls[1]["args"].index("--python-code") + 1]

    # the test call's code runs slicer.testing.runUnitTest([<module dir>], 'TAVIRegistration')
    seen = []
    fake_testing = type(sys)("slicer.testing")
    fake_testing.runUnitTest = lambda path, name: seen.append((path, name))
    fake_slicer = type(sys)("slicer")
    fake_slicer.testing = fake_testing
    saved = {k: sys.modules.get(k) for k in ("slicer", "slicer.testing")}
    sys.modules.update({"slicer": fake_slicer, "slicer.testing": fake_testing})
    old = os.environ.get("TAVIREG_MODULE_DIR")
    os.environ["TAVIREG_MODULE_DIR"] = str(MODULE_DIR)
    try:
        exec(test_code, {})
    finally:
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value
        if old is None:
            os.environ.pop("TAVIREG_MODULE_DIR")
        else:
            os.environ["TAVIREG_MODULE_DIR"] = old
    assert seen == [([str(MODULE_DIR)], "TAVIRegistration")]


@pytest.mark.parametrize("fail_call", [1, 2])
def test_selftest_driver_fails_when_slicer_fails(tmp_path, fail_call):
    exe, log = _stand_in_slicer(tmp_path, fail_call=fail_call)
    proc = _run_driver(exe)
    assert proc.returncode == 1
    assert len(_calls(log)) == fail_call  # a failed package install stops before the test


def test_selftest_driver_refuses_a_missing_executable(tmp_path):
    proc = _run_driver(tmp_path / "no-such-Slicer")
    assert proc.returncode == 2 and "not found" in proc.stderr


def test_ci_calls_the_driver():
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert 'bash Testing/run_slicer_selftest.sh "$SLICER_EXECUTABLE"' in ci


# --------------------------------------------------------------------------------------------------
# the pure helpers
# --------------------------------------------------------------------------------------------------
def test_pure_helpers_use_only_numpy_math_and_re():
    functions = _functions()
    allowed = {"np", "math", "re"} | set(dir(builtins)) | set(PURE_HELPERS)
    for name in PURE_HELPERS:
        extra = _free_names(functions[name]) - allowed
        assert not extra, f"{name} uses {sorted(extra)}: pure helpers must run without 3D Slicer"


def test_ras_lps_points(helpers):
    rasFromLps, lpsFromRas = helpers["rasFromLps"], helpers["lpsFromRas"]
    np.testing.assert_array_equal(rasFromLps([1.0, 2.0, 3.0]), [-1.0, -2.0, 3.0])
    points = np.random.default_rng(1).normal(size=(2, 5, 3))
    original = points.copy()
    converted = rasFromLps(points)
    assert converted.shape == points.shape
    np.testing.assert_array_equal(points, original)  # the input is not modified
    np.testing.assert_array_equal(lpsFromRas(converted), points)
    with pytest.raises(ValueError):
        rasFromLps([1.0, 2.0])


def test_ras_lps_matrices(helpers):
    rng = np.random.default_rng(2)
    matrix = np.eye(4)
    matrix[:3, :3] = rng.normal(size=(3, 3))
    matrix[:3, 3] = rng.normal(size=3) * 10
    points = rng.normal(size=(7, 3)) * 50
    mapped_lps = points @ matrix[:3, :3].T + matrix[:3, 3]
    ras_matrix = helpers["rasMatrixFromLps"](matrix)
    mapped_ras = helpers["rasFromLps"](points) @ ras_matrix[:3, :3].T + ras_matrix[:3, 3]
    np.testing.assert_allclose(mapped_ras, helpers["rasFromLps"](mapped_lps), atol=1e-9)
    np.testing.assert_allclose(helpers["lpsMatrixFromRas"](ras_matrix), matrix, atol=1e-12)
    with pytest.raises(ValueError):
        helpers["rasMatrixFromLps"](np.eye(3))


def _slicer_frame_ijk_to_ras(spacing=0.3):
    """A frame's IJK-to-RAS as Slicer's image sequence plugin sets it (axis flips, spacing), plus an origin."""
    m = np.diag([-spacing, -spacing, 1.0, 1.0])
    m[:3, 3] = [12.0, -7.0, 3.0]
    return m


def test_affine_as_ras_transform(helpers):
    frame = _slicer_frame_ijk_to_ras()
    roi = (40, 25, 120, 90)
    affine = np.array([[1.05, 0.08, 6.5], [-0.04, 0.97, -3.25], [0.0, 0.0, 1.0]])
    moving = helpers["roiIjkToRas"](frame, roi)
    transform = helpers["rasTransformFromAffine"](affine, frame, moving)
    for x, y in ((0.0, 0.0), (119.0, 0.0), (57.5, 88.0)):
        ras_moving = moving @ [x, y, 0.0, 1.0]
        target = affine @ [x, y, 1.0]  # frame pixels where the affine sends the moving pixel
        np.testing.assert_allclose(transform @ ras_moving, frame @ [target[0], target[1], 0.0, 1.0], atol=1e-9)
    np.testing.assert_allclose(helpers["affineFromRasTransform"](transform, frame, moving), affine, atol=1e-9)
    # without a moving grid the affine maps frame pixels to frame pixels; the identity stays the identity
    np.testing.assert_allclose(helpers["rasTransformFromAffine"](np.eye(3), frame), np.eye(4), atol=1e-12)


def test_affine_checks(helpers):
    with pytest.raises(ValueError):
        helpers["planeMatrixFromAffine"](np.array([[1, 0, 0], [0, 1, 0], [0.01, 0, 1]]))  # projective
    with pytest.raises(ValueError):
        helpers["planeMatrixFromAffine"](np.eye(4))
    tilt = np.eye(4)
    tilt[2, 0] = 0.2  # leaves the frame's plane
    with pytest.raises(ValueError):
        helpers["affineFromRasTransform"](tilt, _slicer_frame_ijk_to_ras())


@pytest.mark.parametrize("primary,secondary", [(0.0, 0.0), (30.0, 10.0), (-40.0, -20.0), (90.0, 0.0), (12.0, 35.0)])
def test_carm_camera_sees_the_projection_mirrored_left_right(helpers, primary, secondary):
    """A VTK camera set from carmCameraParameters sees every point where the library's projection puts
    it: same row (head up), column mirrored (the 3D view looks from the source side)."""
    from vtkmodules.vtkRenderingCore import vtkCamera

    from TAVIRegistrationLib.geometry import CArmGeometry, project

    geometry = CArmGeometry(primary, secondary, 1100.0, 800.0, (0.3, 0.3), 300, 400, isocenter_lps=(5.0, -20.0, 30.0))
    _u, v, _d = geometry.axes()
    params = helpers["carmCameraParameters"](geometry.source_lps, geometry.detector_center_lps, v,
                                             geometry.rows * geometry.pixel_spacing_mm[0], geometry.sid_mm)
    np.testing.assert_allclose(params["position"], helpers["rasFromLps"](geometry.source_lps))
    assert params["viewAngle"] == pytest.approx(math.degrees(2 * math.atan(300 * 0.3 / 2 / 1100.0)))
    camera = vtkCamera()
    camera.SetPosition(*params["position"])
    camera.SetFocalPoint(*params["focalPoint"])
    camera.SetViewUp(*params["viewUp"])
    camera.SetViewAngle(params["viewAngle"])
    camera.SetClippingRange(100.0, 3000.0)
    vm = camera.GetCompositeProjectionTransformMatrix(geometry.cols / geometry.rows, -1.0, 1.0)
    matrix = np.array([[vm.GetElement(i, j) for j in range(4)] for i in range(4)])
    points = np.asarray(geometry.isocenter_lps) + np.random.default_rng(3).uniform(-40, 40, size=(50, 3))
    expected = project(geometry, points)  # (col, row)
    h = np.hstack([helpers["rasFromLps"](points), np.ones((len(points), 1))]) @ matrix.T
    ndc = h[:, :3] / h[:, 3:4]
    col_on_screen = (ndc[:, 0] + 1.0) / 2.0 * geometry.cols - 0.5
    row_from_top = (1.0 - ndc[:, 1]) / 2.0 * geometry.rows - 0.5
    np.testing.assert_allclose(row_from_top, expected[:, 1], atol=1e-6)
    np.testing.assert_allclose(col_on_screen, (geometry.cols - 1) - expected[:, 0], atol=1e-6)


def test_small_helpers(helpers):
    assert helpers["parseInstanceUids"]("1.2.3 1.2.4") == ["1.2.3", "1.2.4"]
    assert helpers["parseInstanceUids"](None) == []
    at_least = helpers["versionAtLeast"]
    assert not at_least("2.4.4", "3.0")
    assert at_least("3.0.2", "3.0") and at_least("3.0", "3.0") and at_least("10.1", "9.9")
    assert at_least("2.1.0.post1", "2.1") and not at_least("2.0.9", "2.1")


def test_masks_agree_within_one_pixel(helpers):
    agree = helpers["masksAgreeWithinOnePixel"]
    a = np.zeros((20, 20), np.uint8)
    a[5:12, 6:14] = 1
    assert agree(a, a)
    assert agree(a, np.roll(a, 1, axis=1)) and agree(a, np.roll(np.roll(a, 1, axis=0), -1, axis=1))
    assert not agree(a, np.roll(a, 2, axis=0))
    assert not agree(a, np.zeros_like(a))
    assert agree(np.zeros_like(a), np.zeros_like(a))
    assert not agree(a, a[:-1])


def test_markups_roi_round_trip(helpers):
    """A pixel ROI as a Markups ROI box (RAS) and back: the same pixels, for a frame volume whose
    IJK-to-RAS flips and scales its axes as Slicer's DICOM loading does."""
    frame = np.array([[-0.3, 0.0, 0.0, 40.0],
                      [0.0, -0.25, 0.0, 12.0],
                      [0.0, 0.0, 1.0, -7.0],
                      [0.0, 0.0, 0.0, 1.0]])
    for roi in [(10, 20, 30, 40), (0, 0, 1, 1), (100, 5, 155, 250)]:
        centre, radius = helpers["rasBoxFromPixelRoi"](roi, frame)
        assert radius[2] > 0  # a thin slab across the frame, which a Markups ROI needs
        bounds = [v for c, r in zip(centre, radius) for v in (c - r, c + r)]
        assert helpers["pixelRoiFromRasBounds"](bounds, frame, 256, 256) == roi
    # clipped to the frame; nothing when the box misses it or is malformed
    centre, radius = helpers["rasBoxFromPixelRoi"]((-10, -10, 30, 30), frame)
    bounds = [v for c, r in zip(centre, radius) for v in (c - r, c + r)]
    assert helpers["pixelRoiFromRasBounds"](bounds, frame, 256, 256) == (0, 0, 20, 20)
    assert helpers["pixelRoiFromRasBounds"]([500, 600, 500, 600, 0, 1], frame, 256, 256) is None
    assert helpers["pixelRoiFromRasBounds"]([1, 0, 0, 1, 0, 1], frame, 256, 256) is None
