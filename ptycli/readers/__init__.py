"""Raw formats -> chunks + metadata; one module per format, registered by suffix/magic.

``open_raw(path, dataset=None, scan_shape=None)`` returns a :class:`RawSource`.
"""

from .base import RawSource, file_fingerprint
from .registry import READERS, detect_format, formats, open_raw, register

__all__ = ["READERS", "RawSource", "detect_format", "file_fingerprint", "formats", "open_raw", "register"]
