"""Read a PyTorch ``state_dict`` file (``.pth``) into numpy arrays, without PyTorch.

Both of torch's formats are read: the legacy one (a row of pickles followed by each storage's raw
bytes) and the zip one (``data.pkl`` plus a ``data/<key>`` entry per storage). The unpickler is
restricted to the handful of globals a state dict needs, so a hostile file cannot run code the way
``torch.load(weights_only=False)`` would let it.
"""

from __future__ import annotations

import collections
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np

# The first pickle of a legacy-format file; torch.serialization calls it MAGIC_NUMBER.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2",
    "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
}


class TorchPickleError(pickle.UnpicklingError):
    """The file is not a state dict this reader understands, or asks for a forbidden global."""


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: np.dtype
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: _StorageRef, offset: int, shape: tuple, stride: tuple, *_: Any) -> _TensorRef:
    # Stands in for torch._utils._rebuild_tensor_v2; requires_grad and hooks mean nothing here.
    return _TensorRef(storage, offset, tuple(shape), tuple(stride))


def _rebuild_parameter(data: _TensorRef, *_: Any) -> _TensorRef:
    return data


_ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a state dict into :class:`_TensorRef` placeholders; nothing else is allowed."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return np.dtype(_STORAGE_DTYPES[name])
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise TorchPickleError(f"refusing to load global {module}.{name} from a weights file") from None

    def persistent_load(self, pid: Any) -> _StorageRef:
        # ('storage', storage_type, key, location, numel[, view_metadata]); the legacy format adds
        # view_metadata, which is None unless a storage is a slice of another (very old torch).
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise TorchPickleError(f"unexpected persistent id {pid!r}")
        if len(pid) > 5 and pid[5] is not None:
            raise TorchPickleError("storage views (torch < 0.4 files) are not supported")
        dtype = pid[1]
        if not isinstance(dtype, np.dtype):
            raise TorchPickleError(f"unexpected storage type {dtype!r}")
        return _StorageRef(key=str(pid[2]), dtype=dtype, numel=int(pid[4]))


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch ``state_dict`` file, as numpy arrays keyed by parameter name.

    Args:
        path: a ``.pth``/``.pt`` file written by ``torch.save(model.state_dict(), path)``.

    Raises:
        TorchPickleError: the file refers to anything but tensors in (ordered) dicts.
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        refs, buffers = _read_zip(path)
    else:
        with open(path, "rb") as f:
            refs, buffers = _read_legacy(f)
    return {name: _materialize(ref, buffers[ref.storage.key]) for name, ref in refs.items()}


def _read_legacy(f: IO[bytes]) -> tuple[dict[str, _TensorRef], dict[str, bytes]]:
    if pickle.load(f) != LEGACY_MAGIC:
        raise TorchPickleError(f"{getattr(f, 'name', 'file')} is not a PyTorch file (bad magic number)")
    pickle.load(f)  # protocol version
    sys_info = pickle.load(f)
    if not sys_info.get("little_endian", True):
        raise TorchPickleError("big-endian PyTorch files are not supported")
    refs = _StateDictUnpickler(f).load()
    storages = {ref.storage.key: ref.storage for ref in refs.values()}
    buffers = {}
    for key in pickle.load(f):
        if key not in storages:
            raise TorchPickleError(f"storage {key!r} is not used by any tensor")
        # Each storage: its element count (int64, little-endian), then the elements.
        (count,) = struct.unpack("<q", f.read(8))
        buffers[key] = f.read(count * storages[key].dtype.itemsize)
    return refs, buffers


def _read_zip(path: Path) -> tuple[dict[str, _TensorRef], dict[str, bytes]]:
    with zipfile.ZipFile(path) as archive:
        pkl = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
        if pkl is None:
            raise TorchPickleError(f"{path} is a zip file without data.pkl")
        prefix = pkl[: -len("data.pkl")]
        with archive.open(pkl) as f:
            refs = _StateDictUnpickler(f).load()
        keys = {ref.storage.key for ref in refs.values()}
        return refs, {key: archive.read(f"{prefix}data/{key}") for key in keys}


def _materialize(ref: _TensorRef, buffer: bytes) -> np.ndarray:
    flat = np.frombuffer(buffer, dtype=ref.storage.dtype)
    # as_strided does no bounds checking, so check the view stays inside its storage.
    if 0 not in ref.shape:
        last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride))
        if ref.offset < 0 or last >= flat.size:
            raise TorchPickleError(f"tensor view reaches past its storage ({last} >= {flat.size})")
    itemsize = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[ref.offset:], shape=ref.shape, strides=[s * itemsize for s in ref.stride], writeable=False)
    return np.array(view, dtype=flat.dtype.newbyteorder("="))
