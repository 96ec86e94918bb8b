"""Exports of a registration: the overlay as a DICOM Secondary Capture in the frame's study, and
the transform / metrics files. Writers return ``writer(fh)`` callables for ``outputs.OutputSet``.

``ProjectionExport`` is the projection export of every front end (the Slicer module's Export, the
viewer's File > Export and ``tavireg project --export``): ``PROJECTION_FILES`` with one JSON layout.

The Secondary Capture copies only the identifiers it needs from the fluoroscopy header (patient
and study identity, so that it files into the same study: ``STUDY_ATTRIBUTES``, nothing else) and
gets new series and instance UIDs; it references the source frame in SourceImageSequence.

``anonymize=True`` (``tavireg register --anonymize``) strips patient identity instead, after the
DICOM basic application level confidentiality profile (PS3.15 E.1) for the attributes this file has:
patient name and ID replaced by "ANONYMOUS", birth date, sex, accession number, referring physician,
study ID and description emptied, a new study UID (the original one would link it back), study date
and time emptied, no reference to the source instance, PatientIdentityRemoved YES and
DeidentificationMethod saying what was done.
"""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import datetime
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from . import __version__, outputs
from .overlay import DEFAULT_COLOR

SECONDARY_CAPTURE_UID = "1.2.840.10008.5.1.4.1.1.7"
#: patient and study attributes copied from the source so the overlay files into the same study
STUDY_ATTRIBUTES = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
    "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDescription",
)


#: what --anonymize writes into DeidentificationMethod (LO: at most 64 characters)
DEIDENTIFICATION_METHOD = "TAVIRegistration --anonymize (PS3.15 E.1 basic profile)"


def secondary_capture(rgb: np.ndarray, source_header, *, frame_index: int = 0,
                      description: str = "TAVIRegistration overlay", comments: str = "",
                      now: Optional[datetime] = None, anonymize: bool = False):
    """A pydicom Dataset: RGB Secondary Capture of ``rgb`` (H, W, 3 uint8) in ``source_header``'s
    study, or with the patient's identity stripped (``anonymize``, see the module docstring)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError("secondary_capture takes an (H, W, 3) uint8 picture")
    now = now or datetime.now()
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE_UID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword in STUDY_ATTRIBUTES:
        if source_header is not None and keyword in source_header and not anonymize:
            setattr(ds, keyword, source_header.data_element(keyword).value)
    if anonymize:
        ds.PatientName = "ANONYMOUS"
        ds.PatientID = "ANONYMOUS"
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = DEIDENTIFICATION_METHOD
    if "StudyInstanceUID" not in ds:
        ds.StudyInstanceUID = generate_uid()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "ReferringPhysicianName", "AccessionNumber", "StudyID"):
        if keyword not in ds:
            setattr(ds, keyword, "")
    ds.SOPClassUID = SECONDARY_CAPTURE_UID
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.SeriesNumber = 9901
    ds.InstanceNumber = 1
    ds.SeriesDescription = description
    ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.Manufacturer = "TAVIRegistration"
    ds.SoftwareVersions = __version__
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = "model projection registered to the fluoroscopy frame, drawn over it"
    ds.BurnedInAnnotation = "NO"
    if comments:
        ds.ImageComments = comments[:10240]
    if source_header is not None and "SOPInstanceUID" in source_header and not anonymize:
        ref = pydicom.Dataset()
        ref.ReferencedSOPClassUID = source_header.SOPClassUID
        ref.ReferencedSOPInstanceUID = source_header.SOPInstanceUID
        ref.ReferencedFrameNumber = int(frame_index) + 1
        ds.SourceImageSequence = DicomSequence([ref])
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = int(rgb.shape[0]), int(rgb.shape[1])
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = rgb.tobytes()
    return ds


def dicom_writer(ds) -> Callable:
    def write(fh):
        ds.save_as(fh, enforce_file_format=True)

    return write


def strict_json(obj):
    """``obj`` as strict JSON values: NaN and infinity become None, numpy scalars and arrays Python
    numbers and lists, paths text, mapping keys text."""
    if isinstance(obj, dict):
        return {str(k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return strict_json(obj.tolist())
    if isinstance(obj, np.generic):
        return strict_json(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def json_writer(obj) -> Callable:
    data = (json.dumps(obj, indent=2, default=float) + "\n").encode()
    return lambda fh: fh.write(data)


def csv_value(v):
    """A table cell: floats rounded to 6 decimals, NaN, infinity and None as an empty cell."""
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(round(v, 6)) if math.isfinite(v) else ""
    return v


def csv_writer(rows: Sequence[Dict[str, object]], columns: Optional[Iterable[str]] = None) -> Callable:
    """Writer of a CSV table (``csv_value`` cells; ``columns`` default: the first row's keys)."""
    cols: List[str] = list(columns) if columns is not None else list(rows[0].keys()) if rows else []
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: csv_value(r.get(k)) for k in cols})
    data = buf.getvalue().encode()
    return lambda fh: fh.write(data)


# ----------------------------------------------------------------------------------------------
# The projection export (Slicer module, viewer, ``tavireg project --export``)
# ----------------------------------------------------------------------------------------------

#: the files of a projection export, the same in every front end
PROJECTION_FILES = ("projection.png", "overlay.png", "projection.json")
#: the layout of projection.json (its "format" key)
PROJECTION_FORMAT = 1


def projection_overlay(frame: np.ndarray, mask: np.ndarray, *, mode: str = "contour", opacity: float = 0.6,
                       color=DEFAULT_COLOR, flagged: bool = False) -> np.ndarray:
    """The frame with ``mask`` drawn over it (``overlay.overlay_rgb``), with the red border of a flagged
    (low-agreement) registration when ``flagged``: (H, W, 3) uint8."""
    from .overlay import mark_flagged, overlay_rgb

    rgb = overlay_rgb(frame, mask, mode=mode, opacity=opacity, color=color)
    return mark_flagged(rgb) if flagged else rgb


@dataclass
class ProjectionExport:
    """One frame's projection as every front end exports it (``PROJECTION_FILES``):

    ``projection.png``: the mask drawn (the projection under the frame's geometry, or the registered
    projection when ``registration`` is given), 0/255 on the frame's grid; ``overlay.png``: the frame with
    that mask drawn (``projection_overlay``); ``projection.json``: ``record()``.

    ``frame`` holds the frame's pixels (any grey type), ``frame_projection`` the pipeline's
    FrameProjection, ``roi`` the region of interest (default: the frame's) and ``roi_source`` 'drawn' or
    'default'; ``fluoro`` and ``model`` name the inputs (paths or node names).
    """

    frame: np.ndarray
    frame_projection: Any
    fluoro: Optional[str] = None
    model: Optional[str] = None
    roi: Optional[Sequence[int]] = None
    roi_source: str = "default"
    isocenter_source: str = "model centre"
    model_units: Optional[str] = None
    model_space: Optional[str] = None
    mode: str = "contour"
    opacity: float = 0.6
    color: Tuple[int, int, int] = DEFAULT_COLOR
    registration: Any = None
    warnings: Sequence[str] = ()

    def mask(self) -> np.ndarray:
        """The mask drawn: the registered projection once registered, else the projection."""
        if self.registration is not None:
            return np.asarray(self.registration.registered_mask)
        return self.frame_projection.projection.mask

    def overlay(self) -> np.ndarray:
        """The overlay picture, (H, W, 3) uint8."""
        flagged = self.registration is not None and bool(self.registration.result.flagged)
        return projection_overlay(self.frame, self.mask(), mode=self.mode, opacity=self.opacity,
                                  color=self.color, flagged=flagged)

    def record(self) -> Dict[str, Any]:
        """What projection.json holds (strict JSON values)."""
        fp = self.frame_projection
        projection = fp.projection
        roi = self.roi if self.roi is not None else fp.default_roi
        registered = self.registration is not None
        return strict_json({
            "format": PROJECTION_FORMAT,
            "frame": int(fp.frame_index),
            "fluoro": str(self.fluoro) if self.fluoro is not None else None,
            "model": str(self.model) if self.model is not None else None,
            "model_units": self.model_units,
            "model_space": self.model_space,
            "geometry": fp.geometry.to_dict(),
            "orthographic": bool(projection.orthographic),
            "projection_matrix": np.asarray(projection.matrix).tolist(),
            "area_px": int(projection.area_px),
            "roi": [int(v) for v in roi] if roi is not None else None,
            "roi_source": self.roi_source,
            "isocenter_lps": [float(c) for c in fp.geometry.isocenter_lps],
            "isocenter_source": self.isocenter_source,
            "overlay": {"mode": self.mode, "opacity": float(self.opacity), "color": list(self.color),
                        "mask": "registered" if registered else "projection"},
            "registered": registered,
            "warnings": list(self.warnings),
        })

    def add_to(self, outs, directory) -> List[Path]:
        """Add the three files to ``outs`` (an ``outputs.OutputSet``) in ``directory``; their paths."""
        directory = Path(directory)
        writers = (outputs.mask_png_writer(self.mask()), outputs.image_png_writer(self.overlay()),
                   json_writer(self.record()))
        return [outs.add(directory / name, writer) for name, writer in zip(PROJECTION_FILES, writers)]
