"""Exports of a registration: the overlay as a DICOM Secondary Capture in the frame's study, and
the transform / metrics files. Writers return ``writer(fh)`` callables for ``outputs.OutputSet``.

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
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np

from . import __version__

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
    """``obj`` as strict JSON values: NaN and infinity become None, numpy scalars Python numbers, paths text."""
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
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
