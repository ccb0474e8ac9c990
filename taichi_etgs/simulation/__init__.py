"""Simulated data with a ground truth: specimens (:mod:`.specimen`: atomic models,
vesicles, filaments, ice), image formation (:mod:`.imaging`: CTF, dose, noise), whole tilt
series (:mod:`.simulate`) and a quick procedural phantom (:mod:`.phantom`)."""
