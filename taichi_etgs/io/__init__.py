"""Reading and writing what a reconstruction needs: stacks, angles, transforms, volumes.

This package never imports Taichi. Every problem with an input file raises
:class:`~taichi_etgs.errors.InputError` with one line naming the file (and the line,
for text files) and what was expected.

Conventions
-----------
- Arrays are ``(n_tilts, ny, nx)`` stacks and ``(nz, ny, nx)`` volumes, float32 when
  returned for computation.
- Angles are in degrees; pixel and voxel sizes in Angstrom, ``0.0`` meaning unknown.
- View indices (``exclude_views``, ``kept_views``) are 0-based indices into the raw stack.
- IMOD ``.xf`` transforms map raw to aligned images about ``(nx/2, ny/2)`` in 0-based
  pixel coordinates, as newstack applies them; AreTomo's ``.aln`` is converted to the
  same form by :func:`aln_to_xf`.
"""

from .aln import AlnAlignment, read_aln
from .angles import AngleWarning, read_mdoc, read_tilt_angles
from .binning import bin_stack
from .mrc import StackWarning, read_stack, read_volume, write_stack, write_volume
from .tilt_series import TiltSeries, load_tilt_series, stack_summary
from .transforms import aln_to_xf, apply_xf, read_xf
from .views import parse_view_list

__all__ = [
    "AlnAlignment",
    "AngleWarning",
    "StackWarning",
    "TiltSeries",
    "aln_to_xf",
    "apply_xf",
    "bin_stack",
    "load_tilt_series",
    "parse_view_list",
    "read_aln",
    "read_mdoc",
    "read_stack",
    "read_tilt_angles",
    "read_volume",
    "read_xf",
    "stack_summary",
    "write_stack",
    "write_volume",
]
