"""Pixel-data decoding for every transfer syntax a CT archive commonly uses.

The public RSPECT release mixes uncompressed files with lossless JPEG and JPEG 2000 files
(issue 12). pydicom 3 decodes them through its pixel-data plugins; this module fixes which plugin
decodes which transfer syntax and turns a missing codec or a corrupt encoding into an
:class:`~custom.io.errors.InputError` that names the file and the transfer syntax.

Plugin choice (``benchmarks/bench_prepare.py --codecs``: one real 512x512 CT slice,
``693_UNCR.dcm`` re-encoded, mean decode time per slice on this 2-core CPU; python-gdcm is not
installed):

================================  ======================  ===========================
transfer syntax                   preferred plugin        alternative (ms/slice)
================================  ======================  ===========================
RLE Lossless                      pylibjpeg-rle  1.2 ms   pydicom (numpy) 11.8 ms
JPEG Lossless SV1 / process 14    pylibjpeg-libjpeg       (the only installed decoder)
JPEG-LS Lossless                  pyjpegls       3.9 ms   pylibjpeg-libjpeg 16.8 ms
JPEG 2000 (Lossless)              pylibjpeg-openjpeg 17   pillow 25 ms
Implicit/Explicit VR LE, Deflated pydicom (native)        (no codec needed)
================================  ======================  ===========================

A plugin that is not installed is skipped in favour of the next available one.
"""

from __future__ import annotations

import functools
import os

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    UID,
)

from custom.io.errors import InputError

__all__ = ["LOSSY_TRANSFER_SYNTAXES", "PREFERRED_PLUGINS", "check_decodable", "decode_pixels", "decoding_plugin"]

PREFERRED_PLUGINS: dict[str, tuple[str, ...]] = {
    RLELossless: ("pylibjpeg", "pydicom"),
    JPEGLosslessSV1: ("pylibjpeg", "gdcm"),
    JPEGLossless: ("pylibjpeg", "gdcm"),
    JPEGLSLossless: ("pyjpegls", "pylibjpeg", "gdcm"),
    JPEGLSNearLossless: ("pyjpegls", "pylibjpeg", "gdcm"),
    JPEG2000Lossless: ("pylibjpeg", "pillow", "gdcm"),
    JPEG2000: ("pylibjpeg", "pillow", "gdcm"),
    JPEGBaseline8Bit: ("pylibjpeg", "pillow", "gdcm"),
    JPEGExtended12Bit: ("pylibjpeg", "pillow", "gdcm"),
}
"""Decoding plugins per transfer syntax, fastest first (see the module docstring)."""

LOSSY_TRANSFER_SYNTAXES: frozenset[str] = frozenset({JPEG2000, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless})
"""Transfer syntaxes that may be lossy: they decode, but the HU are approximations."""


def _syntax_name(transfer_syntax: str) -> str:
    uid = UID(transfer_syntax)
    return f"'{uid.name}' ({uid})" if uid.name != str(uid) else f"'{uid}'"


@functools.lru_cache(maxsize=None)
def decoding_plugin(transfer_syntax: str) -> str:
    """The pydicom decoding plugin used for ``transfer_syntax``.

    Args:
        transfer_syntax: a Transfer Syntax UID.

    Returns:
        The plugin name to pass as ``decoding_plugin`` ("" for native syntaxes, where pydicom
        needs no plugin).

    Raises:
        LookupError: no installed plugin decodes this transfer syntax; the message names the
            syntax and what would decode it.
    """
    try:
        decoder = get_decoder(UID(transfer_syntax))
    except NotImplementedError as err:
        raise LookupError(
            f"transfer syntax {_syntax_name(transfer_syntax)} has no pixel-data decoder in pydicom"
        ) from err
    if decoder.is_native:
        return ""
    available = set(decoder.available_plugins)
    for plugin in PREFERRED_PLUGINS.get(str(transfer_syntax), ()):
        if plugin in available:
            return plugin
    if available:
        return sorted(available)[0]
    missing = "; ".join(f"{name}: {why}" for name, why in decoder.missing_dependencies) or "no plugin known"
    raise LookupError(f"transfer syntax {_syntax_name(transfer_syntax)} has no installed decoder ({missing})")


def check_decodable(dataset: Dataset, path: str | os.PathLike) -> str:
    """Check that the pixel data of ``dataset`` can be decoded, before any decoding starts.

    Args:
        dataset: a dataset read by ``pydicom.dcmread``.
        path: its file, for the error message.

    Returns:
        The transfer syntax UID of the file.

    Raises:
        InputError: the file has no transfer syntax, or no installed codec decodes it.
    """
    meta = getattr(dataset, "file_meta", None)
    transfer_syntax = None if meta is None else meta.get("TransferSyntaxUID")
    if not transfer_syntax:
        raise InputError(
            f"{path}: no Transfer Syntax UID in the file meta information (truncated or not a DICOM Part 10 file)"
        )
    try:
        decoding_plugin(str(transfer_syntax))
    except LookupError as err:
        raise InputError(f"{path}: {err}") from None
    return str(transfer_syntax)


def decode_pixels(dataset: Dataset, path: str | os.PathLike) -> np.ndarray:
    """Decode the stored pixel values of a single-frame image (before rescale).

    Args:
        dataset: a dataset read by ``pydicom.dcmread``.
        path: its file, for the error messages.

    Returns:
        The stored values, shape ``(Rows, Columns)``, in the dtype pydicom gives (signed when
        ``PixelRepresentation`` is 1).

    Raises:
        InputError: no codec for the transfer syntax, or the pixel data is truncated, corrupt, or
            (uncompressed) longer than Rows x Columns says.
    """
    transfer_syntax = check_decodable(dataset, path)
    plugin = decoding_plugin(transfer_syntax)
    if not plugin:
        _check_native_length(dataset, path)
        if transfer_syntax in _LITTLE_ENDIAN_NATIVE:
            stored = _native_single_frame(dataset)
            if stored is not None:
                return stored
    try:
        return pixel_array(dataset, decoding_plugin=plugin)
    except Exception as err:  # every decoder failure is a bad file, whatever the plugin raises
        raise InputError(
            f"{path}: cannot decode the pixel data ({_syntax_name(transfer_syntax)}, plugin {plugin or 'pydicom'}): "
            f"{type(err).__name__}: {err} (truncated or corrupt file?)"
        ) from None


_LITTLE_ENDIAN_NATIVE = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian})


def _native_single_frame(dataset: Dataset) -> np.ndarray | None:
    """The stored values of an uncompressed little-endian 16-bit grayscale slice, read straight from the buffer.

    The common CT case (one frame, one sample, 16 bits allocated) skips pydicom's generic decoder
    set-up, which costs more than reading the slice itself (``benchmarks/bench_prepare.py``,
    issue 12 item 5). The result equals ``pydicom.pixels.pixel_array`` with its defaults,
    including the correction of unused high bits when ``BitsStored`` < 16 (sign-extended when
    ``PixelRepresentation`` is 1); the tests compare both. Any other layout returns ``None`` and
    goes through pydicom. The length of Pixel Data was checked by the caller.
    """
    get = dataset.get
    if (
        int(get("BitsAllocated", 0) or 0) != 16
        or int(get("SamplesPerPixel", 1) or 1) != 1
        or int(get("NumberOfFrames", 1) or 1) != 1
        or "PixelData" not in dataset
    ):
        return None
    rows, cols = int(get("Rows", 0) or 0), int(get("Columns", 0) or 0)
    signed = int(get("PixelRepresentation", 0) or 0) == 1
    bits_stored = int(get("BitsStored", 16) or 16)
    if rows <= 0 or cols <= 0 or not 1 <= bits_stored <= 16:
        return None
    stored = np.frombuffer(dataset.PixelData, dtype="<i2" if signed else "<u2", count=rows * cols).reshape(rows, cols)
    if bits_stored < 16:
        shift = 16 - bits_stored
        stored = np.left_shift(stored, shift)  # a writable copy; the file's buffer is left alone
        np.right_shift(stored, shift, out=stored)
    return stored


def _check_native_length(dataset: Dataset, path: str | os.PathLike) -> None:
    """Native Pixel Data must hold exactly what Rows x Columns x frames say (plus DICOM's one padding byte).

    pydicom tolerates data a few bytes short (a truncated file must not pass) and drops or returns
    as extra frames data that is too long; either way the header does not describe the pixels, so
    both raise. An odd expected length may carry the one trailing padding byte DICOM requires.
    """
    if "PixelData" not in dataset:
        return
    bits_allocated = int(dataset.get("BitsAllocated", 0) or 0)
    if bits_allocated < 8 or "Rows" not in dataset or "Columns" not in dataset:
        return  # bit-packed or incomplete headers: left to the decoder's own checks
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    expected = (
        int(dataset.Rows)
        * int(dataset.Columns)
        * int(dataset.get("SamplesPerPixel", 1))
        * frames
        * (bits_allocated // 8)
    )
    found = len(dataset.PixelData)
    if found < expected:
        raise InputError(f"{path}: truncated file: Pixel Data has {found} bytes, {expected} expected")
    if found > expected + expected % 2:
        raise InputError(
            f"{path}: Pixel Data has {found} bytes, {expected} expected ({int(dataset.Rows)} Rows x "
            f"{int(dataset.Columns)} Columns x {frames} frame(s) x {bits_allocated // 8} byte(s)): the header does "
            "not describe the pixel data (extra data)"
        )
