"""raylane: a Ray-native, end-to-end ML platform.

Ray Data prepares the data, Ray Train trains, Ray Tune searches, MLflow tracks and registers,
Ray Serve serves the champion. Importing this package has no side effects.
"""

__version__ = "0.1.0"
