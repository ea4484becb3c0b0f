"""Images: the scan field, annotation marks, crops, geometry, model-input presets, SSL views."""
