"""Explanations: Grad-CAM, its analysis, faithfulness, shape features."""
