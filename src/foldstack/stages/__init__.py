"""The stages: one module per Make target, each a ``run(cfg, paths, ...)`` that reads its inputs,
calls the library to compute, and writes its outputs through :mod:`foldstack.contracts`."""
