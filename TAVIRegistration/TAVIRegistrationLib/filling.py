"""Which part of the model's projection the frame shows filled with contrast: a contrast front along the vessels.

A pre-operative model holds every vessel; a frame shows only those that carry contrast at that moment
(the descending aorta before the bolus reaches it or after the contrast has faded there, one iliac limb
injected, washout). A registration loss that compares the whole projection with the frame's vessels
drags the unfilled vessels onto the filled ones, and the whole ROI with them.

Contrast spreads from where it is injected along the vessels, so at any moment the filled part of the
model is, to first order, the part within some path length of the injection site: from a pigtail in the
root, the root, the ascending aorta and the arch up to the front of the bolus; from a sheath in one
iliac artery, that limb. The candidate injection sites are the *vessel ends* of the model (the tips of
its vessel tree: local maxima of the path length over the surface); ``VesselFlow`` holds the path
length through the lumen from every end to every vertex (Dijkstra on the voxels inside the surface, so
that it follows the vessel's axis rather than wandering around its wall). On a frame, every pixel of
the projection takes the shortest path length of the vertices that project onto it (``window_flow``),
so a pixel where a filled and an unfilled vessel overlap counts as filled.

``filled_front`` then chooses the end and the front, and with them the part of the projection up to
the front, that agrees best with the frame's vessels: a Dice in which a pixel of the projection counts
as covered when it lands within ``TOLERANCE_PX`` window pixels of a frame vessel (``UPPER_FOV_TOLERANCE_PX``
in the upper field of view, where the aorta's parts lie close together in projection), the frame's
vessels counted inside the warped ROI. It judges at the start of the registration (the unregistered
projection, or the cine start), not at the network's affine: a network trained on whole projections
has already dragged the unfilled vessels onto the filled ones, where they look filled. The tolerance
covers the start's error up to a few millimetres; a start farther off would let filled vessels that
do not yet lie on their image pass for unfilled ones, so the start is first moved by the translation
of the projection that overlaps the frame's vessels most (``shifted_start``), where that translation
is longer than half the wider tolerance. Where the start agrees too little for a judgement
(``MIN_START_SCORE``), it judges at the network's affine. The whole projection is kept unless a front
gains at least ``MIN_GAIN`` and keeps at least ``MIN_KEEP`` of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np

from .registration import _h

#: the lumen is voxelised at this spacing (mm), coarser where the model's bounding box would need more
#: than ``MAX_VOXELS`` voxels
VOXEL_MM = 2.0
MAX_VOXELS = 4_000_000
#: a vessel end is the farthest point (along the surface) of its surroundings within this radius (mm);
#: at most MAX_ENDS are kept, the farthest along the surface from the first
END_RADIUS_MM = 20.0
MAX_ENDS = 32
#: a projection pixel is covered when it lands within this many pixels (city-block distance, 256-pixel
#: window) of a frame vessel; in the upper field of view within UPPER_FOV_TOLERANCE_PX (``tolerance_for``):
#: there the root, the ascending and the descending aorta lie close together in projection, and the
#: wider tolerance lets an unfilled descending aorta beside a filled ascending aorta pass for filled
TOLERANCE_PX = 12.0
UPPER_FOV_TOLERANCE_PX = 8.0
#: the part up to the front keeps at least this share of the projection inside the ROI
MIN_KEEP = 0.3
#: a front is taken only when its agreement exceeds the whole projection's by this much
MIN_GAIN = 0.01
#: below this agreement at the start, the judgement is taken at the network's affine instead
MIN_START_SCORE = 0.5
#: the start is moved by the translation that overlaps the frame's vessels most (blurred by
#: SHIFT_SIGMA_PX, searched within MAX_SHIFT of the window) before the judgement, when that
#: translation is longer than SHIFT_GATE_PX (half the wider tolerance: a shorter one the tolerance
#: covers); pixels of a 256-pixel window
SHIFT_GATE_PX = TOLERANCE_PX / 2.0
SHIFT_SIGMA_PX = 3.0
MAX_SHIFT = 0.25


#: where a front is judged, in words
JUDGED_AT = {"start": "unregistered projection",
             "shifted start": "unregistered projection shifted onto the frame's vessels",
             "network": "network affine"}


@dataclass
class ProjectedFlow:
    """A ``VesselFlow`` on one frame: ``xy`` (n, 2) the frame pixel (x, y) of every vertex, ``distance``
    (k, n) float32 the path length (mm) from each of the k vessel ends to every vertex (inf where
    the lumen does not connect them)."""

    xy: np.ndarray
    distance: np.ndarray


@dataclass
class VesselFlow:
    """Path lengths through the model's lumen: ``points`` (n, 3) the vertices (LPS mm), ``ends`` (k,)
    the vertex indices of the vessel ends, ``distance`` (k, n) float32 mm from each end to every
    vertex, ``warnings`` the fallbacks taken."""

    points: np.ndarray
    ends: np.ndarray
    distance: np.ndarray
    warnings: List[str]

    def project(self, matrix: np.ndarray) -> ProjectedFlow:
        """On a frame whose 3x4 projection matrix is ``matrix``."""
        from .geometry import project_points

        return ProjectedFlow(project_points(matrix, self.points)[0], self.distance)


@dataclass
class FillingFront:
    """The outcome of ``filled_front``: ``hidden`` (bool, window grid) the projection's pixels beyond
    the front (none when the whole projection is kept), ``share`` their part of the projection inside
    the ROI, ``end`` the chosen vessel end (its index in ``VesselFlow.ends``; None when nothing is left
    out), ``front_mm`` the front's path length from it, ``score``/``whole_score`` the agreement with and
    without the front, ``at`` where it was judged ("start", "shifted start" or "network")."""

    hidden: np.ndarray
    share: float
    end: Optional[int]
    front_mm: float
    score: float
    whole_score: float
    at: str

    def note(self) -> str:
        """One line for the result's warnings."""
        return (f"{self.share:.0%} of the projection inside the ROI lies beyond the contrast front that agrees best "
                f"with the frame ({self.front_mm:.0f} mm along the vessels from one of their ends, judged at the "
                f"{JUDGED_AT[self.at]}) and was left out of the "
                "registration: vessels of the model without contrast in this frame")


def vessel_flow(model) -> VesselFlow:
    """``VesselFlow`` of a ``mesh.SurfaceModel``, computed once and kept on the model (a few seconds
    for 100,000 vertices)."""
    flow = getattr(model, "_vessel_flow", None)
    if flow is None:
        flow = flow_distances(model.points(), model.triangles())
        model._vessel_flow = flow
    return flow


def flow_distances(points: np.ndarray, triangles: np.ndarray, spacing_mm: float = VOXEL_MM) -> VesselFlow:
    """``VesselFlow`` of a triangulated surface (LPS mm): the ends from the surface, the path lengths
    through the voxels inside it; along the surface where it encloses no voxel (an open or tiny
    surface: named in ``warnings``)."""
    from scipy.sparse.csgraph import dijkstra
    from scipy.spatial import cKDTree

    points = np.asarray(points, float)
    surface = surface_graph(points, triangles)
    ends = vessel_ends(surface)
    inside, origin, spacing = lumen_voxels(points, triangles, spacing_mm)
    if inside.sum() < 8:
        return VesselFlow(points, ends, dijkstra(surface, indices=ends).astype(np.float32),
                          ["the model's surface encloses no volume: contrast fronts measured along its surface"])
    graph = voxel_graph(inside, spacing)
    centres = origin + np.argwhere(inside) * spacing
    _, nearest = cKDTree(centres).query(points)
    sources, which = np.unique(nearest[ends], return_inverse=True)
    lengths = dijkstra(graph, indices=sources)
    return VesselFlow(points, ends, lengths[which][:, nearest].astype(np.float32), [])


def surface_graph(points: np.ndarray, triangles: np.ndarray):
    """Sparse symmetric graph of the surface's edges, weighted by their length."""
    from scipy.sparse import coo_matrix

    tri = np.asarray(triangles, np.int64)
    edges = np.unique(np.sort(np.vstack([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]]), axis=1), axis=0)
    w = np.linalg.norm(points[edges[:, 0]] - points[edges[:, 1]], axis=1)
    n = len(points)
    return coo_matrix((np.r_[w, w], (np.r_[edges[:, 0], edges[:, 1]], np.r_[edges[:, 1], edges[:, 0]])),
                      shape=(n, n)).tocsr()


def vessel_ends(graph, radius_mm: float = END_RADIUS_MM) -> np.ndarray:
    """Vertex indices of the tips of the vessel tree, in each connected part of the surface (largest
    first): the vertex farthest (along the surface) from an arbitrary one, and every vertex that is
    the farthest from that tip within ``radius_mm`` of itself (at most ``MAX_ENDS`` in all, the
    farthest first)."""
    from scipy.sparse.csgraph import connected_components, dijkstra

    def lengths(i, limit=np.inf):
        d = dijkstra(graph, indices=int(i), limit=limit)
        d[~np.isfinite(d)] = -1.0
        return d

    _, part = connected_components(graph, directed=False)
    ends: List[int] = []
    for label in np.argsort(-np.bincount(part)):
        first = int(np.argmax(lengths(np.flatnonzero(part == label)[0])))
        d = lengths(first)
        ends.append(first)
        taken = d < 0  # the other parts
        for v in np.argsort(-d):
            if taken.all() or len(ends) >= MAX_ENDS:
                break
            if taken[v]:
                continue
            near = lengths(v, radius_mm) >= 0
            if d[near].max() <= d[v] and v != first:
                ends.append(int(v))
            taken |= near
        if len(ends) >= MAX_ENDS:
            break
    return np.asarray(ends, np.int64)


def lumen_voxels(points: np.ndarray, triangles: np.ndarray, spacing_mm: float = VOXEL_MM
                 ) -> Tuple[np.ndarray, np.ndarray, float]:
    """``(inside (nx, ny, nz) bool, origin (3,), spacing)``: the voxels whose centres lie inside the
    closed surface (voxel (i, j, k) has its centre at origin + (i, j, k) * spacing)."""
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkImagingStencil import vtkImageStencilToImage, vtkPolyDataToImageStencil

    from .mesh import polydata_from_arrays

    lo, hi = points.min(axis=0), points.max(axis=0)
    spacing = max(float(spacing_mm), float(np.prod(hi - lo + 2 * spacing_mm) / MAX_VOXELS) ** (1 / 3))
    origin = lo - spacing
    dims = np.ceil((hi - lo) / spacing).astype(int) + 3
    stencil = vtkPolyDataToImageStencil()
    stencil.SetInputData(polydata_from_arrays(points, triangles))
    stencil.SetOutputOrigin(*origin)
    stencil.SetOutputSpacing(spacing, spacing, spacing)
    stencil.SetOutputWholeExtent(0, dims[0] - 1, 0, dims[1] - 1, 0, dims[2] - 1)
    image = vtkImageStencilToImage()
    image.SetInputConnection(stencil.GetOutputPort())
    image.SetInsideValue(1)
    image.SetOutsideValue(0)
    image.Update()
    values = vtk_to_numpy(image.GetOutput().GetPointData().GetScalars())
    return values.reshape(dims[2], dims[1], dims[0]).transpose(2, 1, 0) > 0, origin, spacing


def voxel_graph(inside: np.ndarray, spacing: float):
    """Sparse symmetric graph of the ``inside`` voxels (numbered in ``np.argwhere`` order), each joined
    to its 26 neighbours by the distance between their centres."""
    from scipy.sparse import coo_matrix

    index = -np.ones(inside.shape, np.int64)
    index[inside] = np.arange(int(inside.sum()))
    src, dst, w = [], [], []
    for step in np.ndindex(3, 3, 3):
        off = np.asarray(step) - 1
        if tuple(off) <= (0, 0, 0):  # each pair of neighbours once
            continue
        a = index[tuple(slice(max(0, -o), s - max(0, o)) for o, s in zip(off, inside.shape))]
        b = index[tuple(slice(max(0, o), s - max(0, -o)) for o, s in zip(off, inside.shape))]
        both = (a >= 0) & (b >= 0)
        src.append(a[both])
        dst.append(b[both])
        w.append(np.full(int(both.sum()), spacing * float(np.linalg.norm(off))))
    src, dst, w = np.concatenate(src), np.concatenate(dst), np.concatenate(w)
    n = int(inside.sum())
    return coo_matrix((np.r_[w, w], (np.r_[src, dst], np.r_[dst, src])), shape=(n, n)).tocsr()


def window_flow(flow: ProjectedFlow, window, size: int, silhouette_w: np.ndarray) -> np.ndarray:
    """(k, size, size) float32: for every pixel of ``silhouette_w`` (the projection on the window
    resized to ``size``), the shortest path length from each vessel end among the vertices projecting
    onto it (a pixel no vertex lands on takes the nearest pixel's); inf elsewhere."""
    from scipy import ndimage

    to_window = np.linalg.inv(window.net_to_frame(size))
    p = to_window[:2, 2] + flow.xy[:, 0:1] * to_window[:2, 0] + flow.xy[:, 1:2] * to_window[:2, 1]  # no BLAS
    ok = np.all(np.isfinite(p), axis=1)
    c = np.rint(np.where(ok, p[:, 0], -1)).astype(np.int64)
    r = np.rint(np.where(ok, p[:, 1], -1)).astype(np.int64)
    ok &= (c >= 0) & (r >= 0) & (c < size) & (r < size)
    pixel = r[ok] * size + c[ok]
    k = flow.distance.shape[0]
    out = np.full((k, size, size), np.inf, np.float32)
    silhouette = np.asarray(silhouette_w) > 0.5
    if pixel.size == 0 or not silhouette.any():
        return out
    splat = np.full((k, size * size), np.inf, np.float32)
    for i in range(k):
        np.minimum.at(splat[i], pixel, flow.distance[i, ok])
    landed = np.zeros(size * size, bool)
    landed[pixel] = True
    _, (iy, ix) = ndimage.distance_transform_edt(~landed.reshape(size, size), return_indices=True)
    out[:, silhouette] = splat[:, (iy * size + ix)[silhouette]]
    return out


def _mapped(matrix: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: int
            ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, cols, inside)``: the pixels of a ``size`` grid that ``matrix`` (3x3, normalised
    coordinates) maps the pixel centres ``rows``, ``cols`` to, and whether each lies on the grid
    (element by element, not by a matrix product: see ``geometry.project_points``)."""
    x, y = (2 * cols + 1) / size - 1, (2 * rows + 1) / size - 1
    c, r = (np.rint((m[0] * x + m[1] * y + m[2] + 1.0) * size / 2.0 - 0.5).astype(np.int64) for m in matrix[:2])
    return r, c, (c >= 0) & (r >= 0) & (c < size) & (r < size)


def tolerance_for(fov: Optional[str]) -> float:
    """The coverage tolerance (pixels of a 256-pixel window) of a frame of field of view ``fov``
    (upper, lower, or None when unknown)."""
    return UPPER_FOV_TOLERANCE_PX if fov == "upper" else TOLERANCE_PX


def _covered(moving: np.ndarray, fixed: np.ndarray, box: np.ndarray, theta: np.ndarray,
             tolerance_px: float = TOLERANCE_PX):
    """``(rows, cols, covered, frame vessel pixels inside the warped ROI, area factor)`` under the
    window Θ ``theta``: the projection's pixels, whether each lands within ``tolerance_px`` of a frame
    vessel, and the factor that turns the projection's pixels into areas on the fixed grid."""
    from scipy import ndimage

    size = moving.shape[-1]
    reach = int(round(tolerance_px * size / 256.0))
    near = ndimage.binary_dilation(fixed, iterations=reach) if reach > 0 else fixed
    big = _h(theta)  # Θ (fixed grid -> moving sample point) as 3x3

    def lookup(image, matrix, rows, cols):
        r, c, inside = _mapped(matrix, rows, cols, size)
        out = np.zeros(c.size, bool)
        out[inside] = image[r[inside], c[inside]]
        return out

    rows, cols = np.nonzero(moving)
    covered = lookup(near, np.linalg.inv(big), rows, cols)
    n_vessels = float(lookup(box, big, *np.nonzero(fixed)).sum())
    area = 1.0 / max(abs(float(np.linalg.det(big[:2, :2]))), 1e-9)
    return rows, cols, covered, n_vessels, area


def shifted_start(moving: np.ndarray, fixed: np.ndarray, theta: np.ndarray) -> Tuple[np.ndarray, float]:
    """``(Θ, shift)``: the window Θ ``theta`` followed by the translation of the projection that
    overlaps the frame's vessels (blurred by ``SHIFT_SIGMA_PX``) most, within ``MAX_SHIFT`` of the
    window; ``shift`` its length in window pixels. A translation only: the start's large errors are
    mostly shifts (the patient or the table moved), and a shift cannot shrink or stretch the
    projection onto part of the frame's vessels."""
    from scipy import fft, ndimage

    size = moving.shape[-1]
    half = size // 2  # the overlap is searched on a grid of half the window's resolution
    big = _h(theta)  # Θ (fixed grid -> moving sample point) as 3x3
    r, c, inside = _mapped(np.linalg.inv(big), *np.nonzero(moving), size)
    m = np.zeros((half, half), np.float32)
    m[np.minimum(r[inside] // 2, half - 1), np.minimum(c[inside] // 2, half - 1)] = 1.0
    f = fixed[:2 * half, :2 * half].reshape(half, 2, half, 2).any(axis=(1, 3)).astype(np.float32)
    f = ndimage.gaussian_filter(f, SHIFT_SIGMA_PX * size / 512.0)
    # the full correlation by FFT: [i, j] is the overlap of m shifted by (i, j) - (half - 1)
    overlap = fft.irfft2(fft.rfft2(f, (size, size)) * fft.rfft2(m[::-1, ::-1], (size, size)), (size, size))
    reach = int(MAX_SHIFT * half)
    near = overlap[half - 1 - reach:half + reach, half - 1 - reach:half + reach]
    i, j = np.unravel_index(int(np.argmax(near)), near.shape)
    dy, dx = 2 * (i - reach), 2 * (j - reach)
    shift = np.array([[1.0, 0.0, -2.0 * dx / size], [0.0, 1.0, -2.0 * dy / size], [0.0, 0.0, 1.0]])
    return (big @ shift)[:2], float(np.hypot(dx, dy))


def _judge(moving, fixed, box, flow_w, theta, at: str, tolerance_px: float = TOLERANCE_PX) -> FillingFront:
    """The best front at ``theta`` (see the module docstring)."""
    rows, cols, covered, n_vessels, area = _covered(moving, fixed, box, theta, tolerance_px)
    n = float(cols.size)

    def agreement(n_covered, n_kept):
        return 2.0 * area * n_covered / (area * n_kept + n_vessels)

    whole = float(agreement(covered.sum(), n))
    best = (whole, None, np.inf)
    for k in range(flow_w.shape[0]):
        v = flow_w[k][rows, cols]
        order = np.argsort(v, kind="stable")
        v = v[order]
        kept = np.arange(1, v.size + 1)
        score = agreement(np.cumsum(covered[order]), kept)
        # a front falls between distinct path lengths; it keeps at least MIN_KEEP, and not everything
        allowed = np.r_[v[1:] != v[:-1], False] & np.isfinite(v) & (kept >= MIN_KEEP * n)
        if allowed.any():
            j = int(np.argmax(np.where(allowed, score, -1.0)))
            if score[j] > best[0]:
                best = (float(score[j]), k, float(v[j]))
    hidden = np.zeros(moving.shape, bool)
    if best[1] is None or best[0] < whole + MIN_GAIN:
        return FillingFront(hidden, 0.0, None, float("inf"), whole, whole, at)
    hidden[rows, cols] = flow_w[best[1]][rows, cols] > best[2]
    return FillingFront(hidden, float(hidden.sum() / n), best[1], best[2], best[0], whole, at)


def filled_front(moving_w: np.ndarray, fixed_w: np.ndarray, box_w: np.ndarray, flow_w: np.ndarray,
                 theta_start: Optional[np.ndarray], network_theta: Callable[[], np.ndarray],
                 tolerance_px: float = TOLERANCE_PX) -> FillingFront:
    """The contrast front of a registration pair on its window (all images square, of one size):
    ``moving_w`` the projection inside the ROI, ``fixed_w`` the frame's vessels, ``box_w`` the ROI,
    ``flow_w`` from ``window_flow``; judged at ``theta_start`` (the window Θ of the start; None: the
    identity), moved by ``shifted_start`` where its shift is longer than ``SHIFT_GATE_PX``, or at
    ``network_theta()`` where that start agrees less than ``MIN_START_SCORE``; a pixel is covered
    within ``tolerance_px`` (``tolerance_for`` the frame's field of view)."""
    moving, fixed, box = (np.asarray(a) > 0.5 for a in (moving_w, fixed_w, box_w))
    if theta_start is None:
        theta_start = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    shifted, shift = shifted_start(moving, fixed, theta_start)
    far = shift > SHIFT_GATE_PX * moving.shape[-1] / 256.0
    front = _judge(moving, fixed, box, flow_w, shifted if far else theta_start, "shifted start" if far else "start",
                   tolerance_px)
    if front.whole_score < MIN_START_SCORE:
        front = _judge(moving, fixed, box, flow_w, network_theta(), "network", tolerance_px)
    return front
