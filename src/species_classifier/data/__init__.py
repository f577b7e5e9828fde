"""Datasets in: manifests, labels, splits, image loading and transforms."""
