"""Challenge-style evaluation of abdominal organ segmentations (FLARE, CHAOS, HALOS/UK Biobank).

Depends on NumPy, SciPy and SimpleITK only: never on the edgeseg runtime or on torch.
"""
