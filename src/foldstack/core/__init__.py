"""Core: what every other part of foldstack builds on, importing nothing of foldstack's own
outside this folder -- the pipeline config schema, paths, errors, atomic files, the registry
type, metrics and logging."""
