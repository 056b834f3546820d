"""Training: backbones turned into networks, the transfer regimes as declared phases, the input
pipeline and its augmentation, and the Keras side of one fold's process (``worker``).

``fold_task`` and ``augment`` import no Keras: the train stage's own process uses them; the
rest runs in each fold's process.
"""
