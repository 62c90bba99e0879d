"""Experiments and exam-specific studies, one floor above the library.

Code here may import refdl; refdl never imports it. Each module is an experiment from
docs/exam.md or a study behind a figure, runnable with ``python -m experiments.NAME``
from the source tree:

* ``gradcam_shapes``: saliency, Grad-CAM, Grad-CAM++ and paper 000's weighting formula
  (Intermediate Q1) scored by localisation on generated shapes.
"""
