"""The backbone registry: a name maps to a constructor, its preprocessing and its default size.

Importing this package registers every built-in family; none of them imports Keras before a
model is built, so configs validate backbone names quickly.
"""

from foldstack.backbones import efficientnet_lite, hub, keras_apps, small_cnn  # noqa: F401  (they register)
from foldstack.backbones.spec import (BackboneSpec, UnknownBackboneError, create, describe, get, names, prefixes,
                                      register)

__all__ = ["BackboneSpec", "UnknownBackboneError", "create", "describe", "get", "names", "prefixes", "register"]
