"""refdl.interpret: saliency maps, Grad-CAM, Grad-CAM++ and their localisation scores.

    from refdl.interpret import grad_cam, grad_cam_pp, saliency, pointing_game
    cams = grad_cam(model, x, layer="4", class_idx=None)   # (N, h, w), argmax class

Derivation: docs/derivations/gradcam.md
"""
from .cam import (cam_from_weights, capture, exp_score_derivatives, grad_cam, grad_cam_pp,
                  grad_cam_pp_weights, grad_cam_weights, head_after, saliency,
                  score_backward, score_derivatives, to_engine)
from .localization import box_mask, iou_at_threshold, normalize, pointing_game, upsample
from .overlay import save_overlays

__all__ = ["saliency", "grad_cam", "grad_cam_pp", "grad_cam_weights", "grad_cam_pp_weights",
           "cam_from_weights", "score_backward", "exp_score_derivatives",
           "score_derivatives", "to_engine",
           "head_after", "capture", "upsample", "normalize", "pointing_game",
           "iou_at_threshold", "box_mask", "save_overlays"]
