"""sqr: Selective Query Recollection for query-based object detectors."""

__version__ = "0.1.0"
