"""stream_reco: a streaming, event-driven product recommender."""

__version__ = "0.1.0"
