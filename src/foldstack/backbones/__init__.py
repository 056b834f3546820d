"""The backbone registry: a name maps to a constructor, its preprocessing and its default size.

Importing this package does not import Keras, so configs validate backbone names quickly.
"""

from foldstack.backbones.registry import BackboneSpec, UnknownBackboneError, create, describe, get, names, register

__all__ = ["BackboneSpec", "UnknownBackboneError", "create", "describe", "get", "names", "register"]
