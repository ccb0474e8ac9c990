"""The Gaussian model and its reconstruction (the CryoETGS method; docs/method.md).

- :mod:`.params`: the model's parameters and their activations.
- :mod:`.render`: rendering it (projections, voxelisation) and the gradients, over the
  Taichi kernels.
- :mod:`.seeding`: the octree that seeds a model from a volume.
- :mod:`.loss`, :mod:`.optim`, :mod:`.densify`, :mod:`.regularize`: the fit's loss,
  optimiser, growth and pruning, and total variation.
- :mod:`.background`, :mod:`.transfer`: what is not specimen (the ice slab) and the
  microscope (the CTF).
- :mod:`.fit`: the reconstruction itself (:class:`~.fit.GaussianReconstruction`).
- :mod:`.state`: state files (save, resume) and the model's geometry
  (:class:`~.state.ModelGeometry`).
- :mod:`.gaussianize`: a model fitted to any tomogram.
"""
