"""The ice slab around the specimen: a soft-edged slab, its projections and their gradients.

Vitreous ice is a slab of nearly constant density. Where it runs past the field of view at
every tilt (the usual case in a lamella or a thin film) each view sees a constant per view
that the per-view offset absorbs. Where it ends inside the field of view (a SHREC-style box
cut to the tomogram, the edge of a lamella) each view sees a trapezoid whose shoulders move
with the tilt; no offset can absorb that, and positive Gaussians would spend themselves
building the slab and its edges. This module models the slab explicitly, so that the
Gaussians carry the specimen only (docs/method.md, "What is not specimen").

The slab, in centred voxel coordinates ``(x, z)`` (it does not depend on y, the tilt axis),
turned by ``angle`` about Y so that its faces may be inclined::

    xi   =  x cos(angle) + z sin(angle)          (along the slab)
    zeta = -x sin(angle) + z cos(angle)          (across the slab)
    b(x, z) = density * S(zeta; z_lo, z_hi) * S(xi; x_lo, x_hi)
    S(t; lo, hi) = sigmoid((t - lo) / edge) * sigmoid((hi - t) / edge)

Its projection at tilt ``theta`` onto detector column ``u`` is the line integral along the
beam (design convention ``u = x cos(theta) + z sin(theta)``). With ``alpha = theta - angle``
the ray crosses the slab's normal coordinate ``zeta`` at ``xi = u / cos(alpha) - zeta
tan(alpha)`` and ``ds = d zeta / cos(alpha)``, so

    p(u) = 1 / cos(alpha) * integral density S(zeta; z) S(xi(u, zeta); x) d zeta,

evaluated by the midpoint rule on a fixed ``zeta`` grid (half an edge width) that covers the faces
with a margin of 8 edge widths, where the integrand has vanished. Derivatives with respect
to the six parameters are exact derivatives of that quadrature (tested against finite
differences).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["EDGE", "SLAB_PARAMETERS", "SlabBackground", "fit_slab"]

#: The slab's parameters, in the order of :meth:`SlabBackground.vector`.
SLAB_PARAMETERS = ("density", "z_lo", "z_hi", "x_lo", "x_hi", "angle_rad")

#: A slab that ends in view must explain at least this share of the row averages'
#: variance; less means the row averages hold specimen, not a slab's trapezoids.
MIN_EXPLAINED = 0.5

#: A slab thinner than this (voxels) is a sheet fitted to something else: not trusted.
MIN_THICKNESS = 2.0

#: How soft the faces and ends of the slab a fit returns are (voxels; the sigmoids' scale).
#: Vitreous ice ends sharply: with the softness of one voxel (a logistic of 1.8 voxels sd)
#: the fitted faces came out 0.2-0.9 voxel outside the true ones (thicker boxes further),
#: the fit widening the slab for the tails it cannot make, and the slab alone, at the true
#: faces, capped the band FSC of an isolated box at 0.80-0.82 (0.98 at a quarter voxel).
EDGE = 0.25
# The fit sharpens its edges in these steps (voxels), so that ends far from their start
# are still found by the wide ones.
_EDGES = (8.0, 4.0, 2.0, 1.0, 0.5, EDGE)
# Quadrature step across the slab, in edge widths. The integrand is analytic and vanishes
# at the grid's ends, so the midpoint rule converges geometrically: against a step of
# 0.05, half an edge width is off by 2e-8 of the profile and 5e-6 of the Jacobian (tilts
# to 70 degrees, where the ends' sigmoids narrow by tan(tilt) along the ray).
_DZETA = 0.5
_FIT_COLUMNS = 256  # the fit averages wider row profiles down to about this many columns
_MARGIN_EDGES = 8.0  # the integrand is below 3e-4 of its plateau 8 edge widths outside


def _sigmoid(a: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * a))


@dataclass
class SlabBackground:
    """A soft-edged slab of constant density (module docstring for the formula).

    density: density inside the slab, the views' units per voxel (>= 0).
    z_lo, z_hi: the slab's faces along its normal, centred voxel coordinates.
    x_lo, x_hi: its lateral ends along its plane (far outside the grid: no end in view).
    angle_rad: inclination of the slab about Y, radians (0: faces normal to Z).
    edge: softness of faces and ends, voxels (fixed, not fitted; :data:`EDGE` as fitted).
    """

    density: float
    z_lo: float
    z_hi: float
    x_lo: float
    x_hi: float
    angle_rad: float = 0.0
    edge: float = EDGE

    def ends_within(self, width: float) -> bool:
        """Whether the slab is there, spans at least half of ``width`` (the tomogram's)
        and ends within half a width outside the box on both sides: an isolated specimen,
        not one running past the field of view (nor a lump of it that a small data set's
        fit took for a slab)."""
        return (self.density > 0.0 and self.x_hi - self.x_lo >= 0.5 * width
                and max(abs(self.x_lo), abs(self.x_hi)) <= width)

    def vector(self) -> np.ndarray:
        """The fitted parameters as an array, in :data:`SLAB_PARAMETERS` order. [6]"""
        return np.array([getattr(self, name) for name in SLAB_PARAMETERS], dtype=np.float64)

    @classmethod
    def from_vector(cls, values: np.ndarray, edge: float = EDGE) -> SlabBackground:
        v = [float(x) for x in np.asarray(values, dtype=np.float64).reshape(-1)]
        return cls(*v, edge=edge)

    def to_dict(self) -> dict:
        return {name: float(getattr(self, name)) for name in (*SLAB_PARAMETERS, "edge")}

    def _zeta_grid(self) -> np.ndarray:
        # A soft edge needs no finer steps than its width: the coarse-to-fine fit's wide
        # edges cost a fraction of the sharp one's quadrature.
        lo = min(self.z_lo, self.z_hi) - _MARGIN_EDGES * self.edge
        hi = max(self.z_lo, self.z_hi) + _MARGIN_EDGES * self.edge
        n = max(1, int(np.ceil((hi - lo) / (_DZETA * self.edge))))
        return lo + (np.arange(n) + 0.5) * ((hi - lo) / n), (hi - lo) / n

    def _faces(self, zeta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The logistics of the lower and upper face at the nodes ``zeta``. [K], [K]"""
        e = float(self.edge)
        return _sigmoid((zeta - self.z_lo) / e), _sigmoid((self.z_hi - zeta) / e)

    @staticmethod
    def _detector(nu: int, u: np.ndarray | None) -> np.ndarray:
        """``u``, or the centres of ``nu`` detector pixels. [nu]"""
        if u is None:
            return np.arange(nu, dtype=np.float64) + 0.5 - nu / 2.0
        return np.ascontiguousarray(np.asarray(u, dtype=np.float64).reshape(nu))

    def profiles(self, tilts_deg: np.ndarray, nu: int, with_jacobian: bool = False,
                 u: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """The slab's projection onto each view's detector columns, and its Jacobian.

        Parameters
        ----------
        tilts_deg: tilt angles, degrees. [n_views]
        nu: detector columns (pixel ``j`` at ``u = j + 0.5 - nu/2``).
        with_jacobian: also return the derivatives by the six parameters.
        u: the detector coordinates to sample instead of the ``nu`` pixel centres
            (e.g. the centres of averaged columns). [nu]

        Returns
        -------
        profiles: line integrals, the same in every detector row. [n_views, nu]
        jacobian: ``d profiles / d parameter`` in :data:`SLAB_PARAMETERS` order, or None.
            [n_views, nu, 6]
        """
        tilts = np.deg2rad(np.asarray(tilts_deg, dtype=np.float64).reshape(-1))
        u = self._detector(nu, u)
        zeta, dz = self._zeta_grid()
        e = float(self.edge)
        s_lo, s_hi = self._faces(zeta)
        s_z = s_lo * s_hi  # [K]
        out = np.empty((tilts.size, nu))
        jac = np.empty((tilts.size, nu, 6)) if with_jacobian else None
        for t, theta in enumerate(tilts):  # one view at a time: [nu, K] work arrays
            alpha = theta - self.angle_rad
            inv_cos = 1.0 / np.cos(alpha)
            tan_a = np.tan(alpha)
            xi = u[:, None] * inv_cos - zeta[None, :] * tan_a
            x_lo = _sigmoid((xi - self.x_lo) / e)
            x_hi = _sigmoid((self.x_hi - xi) / e)
            s_x = x_lo * x_hi
            w = dz * inv_cos
            out[t] = self.density * w * (s_x @ s_z)
            if jac is None:
                continue
            c = self.density * w
            jac[t, :, 0] = w * (s_x @ s_z)
            jac[t, :, 1] = c * (s_x @ (-s_lo * (1 - s_lo) * s_hi / e))
            jac[t, :, 2] = c * (s_x @ (s_lo * s_hi * (1 - s_hi) / e))
            jac[t, :, 3] = c * ((-x_lo * (1 - x_lo) * x_hi / e) @ s_z)
            jac[t, :, 4] = c * ((x_lo * x_hi * (1 - x_hi) / e) @ s_z)
            # d/d angle = -d/d alpha: through 1/cos(alpha) and through xi.
            ds_x = (x_lo * (1 - x_lo) * x_hi - x_lo * x_hi * (1 - x_hi)) / e
            dxi_dalpha = (u[:, None] * np.sin(alpha) - zeta[None, :]) * inv_cos ** 2
            d_alpha = tan_a * out[t] + c * ((ds_x * dxi_dalpha) @ s_z)
            jac[t, :, 5] = -d_alpha
        return out, jac

    def project(self, tilts_deg: np.ndarray, nu: int, with_jacobian: bool = False,
                u_shift: np.ndarray | None = None, u: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`profiles` by the Taichi kernel
        :func:`taichi_etgs.kernels.slab.slab_profiles_kernel`: what a fit calls at every
        step; :meth:`profiles` is its numpy reference (the same parameters).

        u_shift: each view's projection moved by this many pixels towards +u (sampled at
            ``u - u_shift``): a view whose misalignment the model carries. [n_views]
        """
        from .. import runtime
        from ..kernels.slab import slab_profiles_kernel

        runtime.ensure_initialized()  # often the first kernel a fit launches
        tilts = np.deg2rad(np.asarray(tilts_deg, dtype=np.float64).reshape(-1))
        u = self._detector(nu, u)
        zeta, dz = self._zeta_grid()
        faces = np.ascontiguousarray(np.stack(self._faces(zeta), axis=1))
        inside = np.flatnonzero(np.all(faces == 1.0, axis=1))
        interior = np.array([inside[0], inside[-1]] if inside.size else [0, -1], np.int32)
        slab = np.array([*self.vector(), self.edge, dz], dtype=np.float64)
        out = np.empty((tilts.size, nu))
        jac = np.empty((tilts.size, nu, 6) if with_jacobian else (1, 1, 6))
        shifts = np.zeros(tilts.size) if u_shift is None else np.ascontiguousarray(
            np.broadcast_to(np.asarray(u_shift, dtype=np.float64), tilts.shape))
        if tilts.size and nu:
            slab_profiles_kernel(tilts, u, shifts, zeta, faces, interior, slab, out, jac,
                                 int(with_jacobian))
        return out, (jac if with_jacobian else None)

    def volume(self, shape_zyx: tuple[int, int, int], voxel_size: float = 1.0) -> np.ndarray:
        """The slab sampled at the voxel centres of a centred grid of spacing ``voxel_size``
        (model voxels), each voxel standing for its mean over its width: the edges soften
        to at least ``voxel_size / (2 pi)``, the logistic with a box of that width's
        variance (as the Gaussians are blurred by it), so that a face sharper than a
        coarse voxel neither vanishes between two centres nor shows at full height.
        [nz, ny, nx]"""
        nz, ny, nx = (int(n) for n in shape_zyx)
        z = ((np.arange(nz) + 0.5 - nz / 2.0) * voxel_size)[:, None]
        x = ((np.arange(nx) + 0.5 - nx / 2.0) * voxel_size)[None, :]
        ca, sa = np.cos(self.angle_rad), np.sin(self.angle_rad)
        xi = x * ca + z * sa
        zeta = -x * sa + z * ca
        e = max(float(self.edge), float(voxel_size) / (2.0 * np.pi))
        plane = (self.density * _sigmoid((zeta - self.z_lo) / e) * _sigmoid((self.z_hi - zeta) / e)
                 * _sigmoid((xi - self.x_lo) / e) * _sigmoid((self.x_hi - xi) / e))
        return np.broadcast_to(plane[:, None, :], (nz, ny, nx)).astype(np.float32)


def _centred(a: np.ndarray) -> np.ndarray:
    """Each view's mean removed (the data's per-view offset is unknown). [n_views, ...]"""
    return a - a.mean(axis=1, keepdims=True)


def fit_slab(profiles_measured: np.ndarray, tilts_deg: np.ndarray, thickness: int,
             width: int, iterations: int = 60,
             transfer: Callable[[np.ndarray], np.ndarray] | None = None
             ) -> tuple[SlabBackground, float]:
    """Fit a slab to the row-averaged views, up to a per-view offset (Levenberg-Marquardt).

    The slab is what a row average keeps of a specimen in ice: the trapezoids of a slab
    ending in view stand out, the specimen's scattered objects average out. Starting points:
    a slab filling the tomogram's box (a SHREC-style box), and one running past the field of
    view on both sides (a lamella); each is refined with edges coarse to fine (8, 4, 2, 1,
    0.5, 0.25 voxels) so that ends far from their start are still found; the one leaving the smaller
    residual wins, the open slab on a tie (it is the simpler image: a constant per view).
    A slab explaining less than :data:`MIN_EXPLAINED` of the row averages' variance is
    not trusted (the averages then hold specimen): an open slab of zero density is
    returned, and the per-view offset alone carries the ice.

    Parameters
    ----------
    profiles_measured: mean over the detector rows of each positive-density view. [n_views, nu]
    tilts_deg: tilt angles, degrees. [n_views]
    thickness: tomogram thickness nz, voxels.
    width: tomogram width nx, voxels.
    iterations: Levenberg-Marquardt steps per edge width.
    transfer: what the microscope does to a row average (a linear filter along the last
        axis, e.g. the CTF's ``ky = 0`` line), applied to the slab's profiles and their
        derivatives before they are compared; None: nothing.

    Returns
    -------
    (slab, fraction of the row-averaged variance it explains)
    """
    m = np.asarray(profiles_measured, dtype=np.float64)
    u = None
    if transfer is None and m.shape[1] > _FIT_COLUMNS:
        # Six parameters need no 4k columns: average neighbours (the model is sampled at
        # the groups' centres; the error is second order in the group's width).
        m, u = _averaged_columns(m, -(-m.shape[1] // _FIT_COLUMNS))
    m = _centred(m)
    n_views, nu = m.shape
    total = float(np.sum(m * m))
    far = 10.0 * (width + thickness)
    h = 0.5 * thickness
    starts = [SlabBackground(0.0, -h, h, -0.5 * width, 0.5 * width),
              SlabBackground(0.0, -h, h, -far, far)]
    best, best_cost = None, np.inf
    # Faces further than this from the centre are nonsense (and a long quadrature).
    bounds = (2.0 * max(thickness, 8), far)
    for start in starts:
        slab, cost = _refine(start, m, tilts_deg, u, iterations, transfer, bounds)
        if best is None or cost < best_cost * (1.0 - 1e-3):
            best, best_cost = slab, cost
    explained = 1.0 - best_cost / total if total > 0 else 0.0
    if explained < MIN_EXPLAINED or best.z_hi - best.z_lo < MIN_THICKNESS:
        return SlabBackground(0.0, -h, h, -far, far), 0.0
    return best, float(explained)


def _averaged_columns(rows: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """The columns of ``rows`` averaged in groups of ``group`` (the central whole groups),
    and each group's centre on the detector. [n, nu // group], [nu // group]"""
    nu = rows.shape[1]
    n = nu // group
    first = (nu - n * group) // 2
    used = rows[:, first:first + n * group].reshape(rows.shape[0], n, group).mean(axis=2)
    centres = np.arange(nu, dtype=np.float64) + 0.5 - nu / 2.0
    return used, centres[first:first + n * group].reshape(n, group).mean(axis=1)


def _refine(slab: SlabBackground, m: np.ndarray, tilts_deg: np.ndarray,
            u: np.ndarray | None, iterations: int,
            transfer: Callable[[np.ndarray], np.ndarray] | None,
            bounds: tuple[float, float]) -> tuple[SlabBackground, float]:
    def model(s: SlabBackground, jacobian: bool):
        p, jac = s.project(tilts_deg, m.shape[1], with_jacobian=jacobian, u=u)
        if transfer is not None:
            p = transfer(p)
            if jac is not None:
                jac = np.moveaxis(transfer(np.moveaxis(jac, -1, 1)), 1, -1)
        return _centred(p), jac

    vec = slab.vector()
    vec[0] = 0.0
    for edge in _EDGES:
        cur = SlabBackground.from_vector(vec, edge)
        # The density enters linearly: solve it exactly first (a zero start has no slope).
        p, _ = model(SlabBackground.from_vector(np.r_[1.0, vec[1:]], edge), False)
        denom = float(np.sum(p * p))
        vec[0] = max(0.0, float(np.sum(p * m)) / denom) if denom > 0 else 0.0
        cur = SlabBackground.from_vector(vec, edge)
        damping = 1e-3
        p, jac = model(cur, True)
        r = m - p
        cost = float(np.sum(r * r))
        # Blurred by a wide edge, the faces trade off against the density (a thin dense
        # sheet looks like a thick light slab): fit them, and the inclination, only once
        # the edges are sharp, and never let the slab collapse to a sheet.
        free = np.ones(6, dtype=bool)
        if edge > 2.0:
            free[[1, 2, 5]] = False
        for _ in range(iterations):
            j = (jac - jac.mean(axis=1, keepdims=True)).reshape(-1, 6)[:, free]
            jtj = j.T @ j
            g = j.T @ r.reshape(-1)
            scale = np.sqrt(np.maximum(np.diag(jtj), 1e-30))
            a = jtj / np.outer(scale, scale) + damping * np.eye(int(free.sum()))
            step = np.zeros(6)
            step[free] = np.linalg.solve(a, g / scale) / scale
            trial = vec + step
            trial[0] = max(trial[0], 0.0)
            trial[1:3] = np.clip(trial[1:3], -bounds[0], bounds[0])
            trial[3:5] = np.clip(trial[3:5], -bounds[1], bounds[1])
            if trial[2] - trial[1] < MIN_THICKNESS or trial[4] < trial[3]:
                damping *= 10.0
                continue
            cand = SlabBackground.from_vector(trial, edge)
            # The Jacobian costs most of an evaluation: only for a step taken.
            p2, _ = model(cand, False)
            r2 = m - p2
            cost2 = float(np.sum(r2 * r2))
            if cost2 < cost:
                converged = cost - cost2 < 1e-9 * cost
                vec, jac, r, cost = trial, model(cand, True)[1], r2, cost2
                damping = max(damping * 0.3, 1e-7)
                if converged:
                    break
            else:
                damping *= 10.0
                if damping > 1e8:
                    break
    return SlabBackground.from_vector(vec, EDGE), cost
