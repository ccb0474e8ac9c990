"""taichi-etgs: cryo-ET tomograms from adaptive 3D Gaussians, plus WBP and SIRT.

Importing this package is cheap: it neither imports nor initialises Taichi.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
