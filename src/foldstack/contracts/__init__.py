"""The files the stages hand each other: one module per file, owning its writer, its reader and
their checks. No stage reads or writes one of these files any other way.

=========================================  =====================  ==============================
file (under ``artifacts/<pipeline>/``)      module                 written by -> read by
=========================================  =====================  ==============================
``folds.csv``                               ``folds_file``         folds -> train, predict, stack
``oof/<m>.parquet``                         ``predictions``        train -> stack
``test/<m>.parquet`` (and ``.key``)         ``predictions``        predict -> stack
``models/<m>/fold<k>/done.json``            ``fold_done``          train -> train, predict
``models/<m>/manifest.json``                ``manifest``           train -> people, report
``models/<m>/reference.npz``                ``reference``          predict -> predict --images
``stack/`` (``chosen.json``, ``level2/``)   ``stack_output``       stack -> stack, submit,
                                                                   predict --images
``bundle/<p>/foldstack-bundle.json``        ``bundle_file``        bundle -> kernel
=========================================  =====================  ==============================
"""
