"""Training: backbones turned into networks, the transfer regimes as declared phases, the input
pipeline and its augmentation, and the Keras side of one fold's process (``worker``).

``fold_task``, ``augment``, ``device_forms`` and ``batch_mix`` import no Keras, not even inside a
function: the train stage's own process and the pipeline's validation use them; the rest runs in
each fold's process.
"""
