"""Turn iNaturalist photos into a species classifier: collect, train, evaluate, serve."""

__version__ = "0.1.0"

OTHER_CLASS = "other"
