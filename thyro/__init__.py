"""thyro: thyroid nodule ultrasound classification with Grad-CAM, at cluster scale on Ray.

Research software, not a medical device: not for diagnosis.
"""

__version__ = "0.1.0"
