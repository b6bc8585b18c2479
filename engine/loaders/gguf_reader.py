"""A strict GGUF (v2/v3) parser: metadata, tensor directory, and zero-copy tensor bytes.

Model files are untrusted, so every count, length, offset and shape is checked against the file
before it is used, and any violation raises ValueError naming what is wrong. Vocabulary arrays
are decoded in one pass over a bytes buffer (the `gguf` package's reader takes seconds on them).
"""

from __future__ import annotations

import dataclasses
import mmap
import struct
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

_MAGIC = b"GGUF"
_MAX_KV = 1 << 20
_MAX_TENSORS = 1 << 20
_MAX_DIMS = 4
_SCALARS = {  # GGUF value type -> (struct format, numpy dtype)
    0: ("<B", np.uint8), 1: ("<b", np.int8), 2: ("<H", np.uint16), 3: ("<h", np.int16),
    4: ("<I", np.uint32), 5: ("<i", np.int32), 6: ("<f", np.float32), 7: ("<?", np.bool_),
    10: ("<Q", np.uint64), 11: ("<q", np.int64), 12: ("<d", np.float64),
}
_STRING, _ARRAY = 8, 9


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]  # row-major, innermost dimension last (GGUF lists it first)
    offset: int  # absolute byte offset in the file
    num_bytes: int


class GGUFFile:
    def __init__(self, path: str) -> None:
        self.path = path
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._pos = 0
        self.metadata: dict[str, Any] = {}
        self.tensors: list[TensorInfo] = []
        self._parse()

    def tensor_bytes(self, tensor: TensorInfo) -> np.ndarray:
        """The tensor's raw bytes as a read-only uint8 view of the mapped file."""
        return np.frombuffer(self._map, dtype=np.uint8, count=tensor.num_bytes, offset=tensor.offset)

    # --- parsing --------------------------------------------------------------------------------
    def _parse(self) -> None:
        if self._take(4) != _MAGIC:
            raise ValueError("not a GGUF file (bad magic)")
        version = self._scalar(4)
        if version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {version} (supported: 2, 3)")
        num_tensors, num_kv = self._scalar(10), self._scalar(10)
        if num_tensors > _MAX_TENSORS or num_kv > _MAX_KV:
            raise ValueError(f"implausible counts: {num_tensors} tensors, {num_kv} metadata entries")
        for _ in range(num_kv):
            key = self._string()
            self.metadata[key] = self._value(self._scalar(4))
        infos = [self._tensor_info() for _ in range(num_tensors)]
        alignment = int(self.metadata.get("general.alignment", 32))
        if alignment < 1 or alignment & (alignment - 1):
            raise ValueError(f"general.alignment {alignment} is not a power of two")
        data_start = -(-self._pos // alignment) * alignment
        self.tensors = [self._place(data_start, *info) for info in infos]

    def _take(self, num_bytes: int) -> bytes:
        end = self._pos + num_bytes
        if num_bytes < 0 or end > len(self._map):
            raise ValueError(f"truncated: needs {num_bytes} bytes at offset {self._pos}, "
                             f"the file has {len(self._map)}")
        chunk = self._map[self._pos:end]
        self._pos = end
        return chunk

    def _scalar(self, value_type: int) -> Any:
        fmt, _ = _SCALARS[value_type]
        return struct.unpack(fmt, self._take(struct.calcsize(fmt)))[0]

    def _string(self) -> str:
        length = self._scalar(10)
        try:
            return self._take(length).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"invalid UTF-8 in a string at offset {self._pos}") from exc

    def _value(self, value_type: int) -> Any:
        if value_type in _SCALARS:
            return self._scalar(value_type)
        if value_type == _STRING:
            return self._string()
        if value_type == _ARRAY:
            item_type, count = self._scalar(4), self._scalar(10)
            if count > len(self._map):
                raise ValueError(f"array of {count} items cannot fit in the file")
            if item_type in _SCALARS:
                _, dtype = _SCALARS[item_type]
                return np.frombuffer(self._take(count * np.dtype(dtype).itemsize), dtype=dtype).tolist()
            if item_type == _STRING:
                return [self._string() for _ in range(count)]
            raise ValueError(f"unsupported GGUF array item type {item_type}")
        raise ValueError(f"unknown GGUF value type {value_type}")

    def _tensor_info(self) -> tuple[str, int, tuple[int, ...], int]:
        name = self._string()
        num_dims = self._scalar(4)
        if not 1 <= num_dims <= _MAX_DIMS:
            raise ValueError(f"tensor {name} has {num_dims} dimensions")
        dims = tuple(self._scalar(10) for _ in range(num_dims))
        if any(d < 1 for d in dims):
            raise ValueError(f"tensor {name} has a zero dimension {dims}")
        return name, self._scalar(4), tuple(reversed(dims)), self._scalar(10)

    def _place(self, data_start: int, name: str, type_id: int, shape: tuple[int, ...],
               relative_offset: int) -> TensorInfo:
        try:
            qtype = GGMLQuantizationType(type_id)
        except ValueError:
            raise ValueError(f"tensor {name} has unknown GGML type {type_id}") from None
        block_values, block_bytes = GGML_QUANT_SIZES[qtype]
        num_values = int(np.prod(shape, dtype=np.float64))  # float: no silent int64 overflow
        if shape[-1] % block_values:
            raise ValueError(f"tensor {name}: rows of {shape[-1]} values do not split into "
                             f"{qtype.name} blocks of {block_values}")
        num_bytes = num_values // block_values * block_bytes
        offset = data_start + relative_offset
        if offset + num_bytes > len(self._map):
            raise ValueError(f"truncated: tensor {name} ends past the end of the file")
        return TensorInfo(name, qtype, shape, offset, num_bytes)
