"""The files the stages hand each other: one module per file, owning its writer, its reader and
their checks. No stage reads or writes one of these files any other way.

=========================================  =====================  ==============================
file (under ``artifacts/<pipeline>/``)      module                 written by -> read by
=========================================  =====================  ==============================
``folds.csv``                               ``folds_file``         folds -> train, stack
``oof/<m>.parquet``, ``test/<m>.parquet``   ``predictions``        train -> stack
``models/<m>/fold<k>/done.json``            ``fold_done``          train -> train (resume)
``models/<m>/manifest.json``                ``manifest``           train -> people, report
``stack/`` (``chosen.json`` and the rest)   ``stack_output``       stack -> submit
``bundle/<p>/foldstack-bundle.json``        ``bundle_file``        bundle -> kernel
=========================================  =====================  ==============================
"""
