"""foldstack: from a competition's raw files to a leaderboard submission."""

__version__ = "0.1.0"
