"""Runtime: where and how work runs -- a process per call (``isolate``), the accelerator
(``device``) and process memory (``memory``)."""
