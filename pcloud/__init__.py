"""pcloud — a personal cloud that runs on your own devices.

The public API is re-exported here; see README.md for a tour.
"""
__version__ = "0.1.0"
