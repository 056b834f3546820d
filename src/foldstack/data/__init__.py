"""Data: the competition's files -- fetching them (``sources``, ``kaggle``), its train and test
tables (``tables``), the one class order and label encoder (``labels``), fold splits
(``splits``), image decoding (``images``) and the resized image cache (``cache``)."""
