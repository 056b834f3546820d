"""foldstack: from a competition's raw files to a leaderboard submission."""

import os

# albumentations asks PyPI for a newer version at import time: a network call (and, offline, a
# warning) in every process that trains. foldstack pins its versions; the user can still opt in.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
