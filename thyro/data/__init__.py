"""Data: the phantom, manifests, splits, archive sources, decoding (DICOM too), storage."""
