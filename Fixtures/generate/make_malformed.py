#!/usr/bin/env python3
"""Writes WeightPack's corpus of malformed (and edge-case valid) safetensors files.

Pure Python (no torch, no numpy). Every file is built byte by byte so that each one
breaks exactly one rule of the format. Output:

    Fixtures/malformed/safetensors/<name>.safetensors
    Fixtures/malformed/safetensors/manifest.json

manifest.json is a list of {"file", "expect", "why"}; "expect" is the error code the
Swift reader must report ("ok" for files that must load). Valid files also carry
"tensors": [{"name", "dtype", "shape", "data_offsets", "nbytes", "sha256", "values"?}]
and "metadata" (the __metadata__ map or null).

Usage: make_malformed.py [--out DIR] [--check]
  --check  additionally load every file with the `safetensors` Python package (if it is
           importable) and print where the reference implementation agrees.
"""

import argparse
import hashlib
import json
import math
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.normpath(os.path.join(HERE, "..", "malformed", "safetensors"))

DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "F64": 8, "I64": 8, "U64": 8,
}


def frame(header, data=b""):
    """8-byte little-endian header length, header bytes, data bytes."""
    if isinstance(header, str):
        header = header.encode("utf-8")
    return struct.pack("<Q", len(header)) + header + data


def hjson(obj):
    """Compact JSON, non-ASCII kept as UTF-8 (like the Rust writer)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def f32(*values):
    return struct.pack("<%df" % len(values), *values)


# --- float decoders used to record expected values -----------------------------------

def decode_f16(b):
    return struct.unpack("<e", b)[0]


def decode_bf16(b):
    return struct.unpack("<f", b"\x00\x00" + b)[0]


def decode_f8_e4m3fn(byte):
    s = -1.0 if byte & 0x80 else 1.0
    e = (byte >> 3) & 0xF
    m = byte & 0x7
    if e == 0xF and m == 0x7:
        return math.nan
    if e == 0:
        return s * (m / 8.0) * 2.0 ** (1 - 7)
    return s * (1 + m / 8.0) * 2.0 ** (e - 7)


def decode_f8_e5m2(byte):
    s = -1.0 if byte & 0x80 else 1.0
    e = (byte >> 2) & 0x1F
    m = byte & 0x3
    if e == 0x1F:
        return s * math.inf if m == 0 else math.nan
    if e == 0:
        return s * (m / 4.0) * 2.0 ** (1 - 15)
    return s * (1 + m / 4.0) * 2.0 ** (e - 15)


class Corpus:
    def __init__(self, out):
        self.out = out
        self.entries = []
        self.names = set()

    def add(self, name, content, expect, why, tensors=None, metadata=None):
        assert name not in self.names, name
        self.names.add(name)
        fname = name + ".safetensors"
        with open(os.path.join(self.out, fname), "wb") as f:
            f.write(content)
        entry = {"file": fname, "expect": expect, "why": why}
        if expect == "ok":
            entry["metadata"] = metadata
            entry["tensors"] = tensors or []
        self.entries.append(entry)

    def valid(self, name, why, specs, metadata=None, header_transform=None, order=None):
        """specs: list of (name, dtype, shape, bytes, values-or-None), laid out in order.

        order: optional list of names giving the order of keys in the JSON header
        (defaults to layout order). header_transform: function str -> str|bytes applied
        to the compact JSON header."""
        header = {}
        tensors = {}
        offset = 0
        data = b""
        for tname, dtype, shape, raw, values in specs:
            n = 1
            for d in shape:
                n *= d
            assert len(raw) == n * DTYPE_BYTES[dtype], (tname, len(raw))
            tensors[tname] = {
                "name": tname, "dtype": dtype, "shape": list(shape),
                "data_offsets": [offset, offset + len(raw)], "nbytes": len(raw),
                "sha256": hashlib.sha256(raw).hexdigest(),
            }
            if values is not None:
                tensors[tname]["values"] = values
            header[tname] = {"dtype": dtype, "shape": list(shape),
                             "data_offsets": [offset, offset + len(raw)]}
            offset += len(raw)
            data += raw
        keys = order or list(header)
        ordered = {}
        if metadata is not None:
            ordered["__metadata__"] = metadata
        for k in keys:
            ordered[k] = header[k]
        text = hjson(ordered)
        if header_transform:
            text = header_transform(text)
        self.add(name, frame(text, data), "ok", why,
                 tensors=[tensors[s[0]] for s in specs], metadata=metadata)


def build(c):
    one = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
    one_data = f32(1.0)

    # ---- headerTooSmall --------------------------------------------------------------
    c.add("header_too_small_empty", b"", "headerTooSmall", "empty file (0 bytes)")
    c.add("header_too_small_7_bytes", b"\x02\x00\x00\x00\x00\x00\x00", "headerTooSmall",
          "only 7 bytes: not even a complete u64 header length")

    # ---- headerTooLarge --------------------------------------------------------------
    c.add("header_too_large_100000001", struct.pack("<Q", 100_000_001) + b"{}", "headerTooLarge",
          "header length 100,000,001 > MAX_HEADER_SIZE 100,000,000 (file is only 10 bytes)")
    c.add("header_too_large_u64_max", struct.pack("<Q", 2**64 - 1) + b"{}", "headerTooLarge",
          "header length 2^64-1 (also overflows 8+N)")
    c.add("header_too_large_2_pow_63", struct.pack("<Q", 2**63) + b"{}", "headerTooLarge",
          "header length 2^63: negative if read as Int64")

    # ---- invalidHeaderLength ---------------------------------------------------------
    c.add("invalid_header_length_beyond_file", struct.pack("<Q", 1000) + b'{"a":1}' + b" " * 13,
          "invalidHeaderLength", "header length 1000 but the file has only 20 bytes after the length")
    c.add("invalid_header_length_no_header_bytes", struct.pack("<Q", 2), "invalidHeaderLength",
          "exactly 8 bytes: header length 2 but nothing follows")
    c.add("invalid_header_length_off_by_one", struct.pack("<Q", 3) + b"{}", "invalidHeaderLength",
          "header length 3 but only 2 header bytes ('{}') follow")

    # ---- invalidHeaderUTF8 -----------------------------------------------------------
    c.add("invalid_utf8_ff_byte", frame(b'{"a\xff":' + hjson(one).encode() + b"}", one_data),
          "invalidHeaderUTF8", "tensor name contains byte 0xFF, never valid in UTF-8")
    c.add("invalid_utf8_truncated_sequence", frame(b'{"caf\xc3":' + hjson(one).encode() + b"}", one_data),
          "invalidHeaderUTF8", "tensor name ends with lead byte 0xC3 whose continuation byte is missing")
    c.add("invalid_utf8_overlong", frame(b'{"\xc0\xafa":' + hjson(one).encode() + b"}", one_data),
          "invalidHeaderUTF8", "overlong encoding C0 AF of '/' is not valid UTF-8")
    c.add("invalid_utf8_surrogate", frame(b'{"\xed\xa0\x80":' + hjson(one).encode() + b"}", one_data),
          "invalidHeaderUTF8", "ED A0 80 encodes the surrogate U+D800, not valid UTF-8")

    # ---- invalidHeaderJSON -----------------------------------------------------------
    c.add("invalid_json_not_json", frame("hello world, not json"), "invalidHeaderJSON",
          "header is plain text")
    c.add("invalid_json_truncated", frame('{"a":{"dtype":"F32","shape":[1],"data_off'), "invalidHeaderJSON",
          "header JSON is cut off in the middle of a key")
    c.add("invalid_json_trailing_garbage", frame(hjson({"a": one}) + "xyz", one_data), "invalidHeaderJSON",
          "a complete JSON object followed by non-whitespace characters")
    c.add("invalid_json_trailing_comma", frame('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},}', one_data),
          "invalidHeaderJSON", "trailing comma in the object (not JSON)")
    c.add("invalid_json_single_quotes", frame("{'a':{'dtype':'F32','shape':[1],'data_offsets':[0,4]}}", one_data),
          "invalidHeaderJSON", "single-quoted strings (Python repr, not JSON)")
    c.add("invalid_json_nul_padding", frame(hjson({"a": one}).encode() + b"\x00\x00\x00", one_data),
          "invalidHeaderJSON", "header padded with NUL bytes instead of spaces (NUL is not JSON whitespace)")
    c.add("invalid_json_empty_header", frame(b""), "invalidHeaderJSON",
          "header length 0: an empty string is not a JSON document")

    # ---- headerNotObject -------------------------------------------------------------
    c.add("header_not_object_array", frame("[1,2,3]"), "headerNotObject", "header is a JSON array")
    c.add("header_not_object_number", frame("42"), "headerNotObject", "header is a JSON number")
    c.add("header_not_object_string", frame('"tensors"'), "headerNotObject", "header is a JSON string")
    c.add("header_not_object_null", frame("null"), "headerNotObject", "header is JSON null")

    # ---- duplicateKey ----------------------------------------------------------------
    e = hjson(one)
    c.add("duplicate_tensor_identical", frame('{"a":%s,"a":%s}' % (e, e), one_data), "duplicateKey",
          "tensor 'a' listed twice with byte-identical entries (the reference Rust crate keeps the last "
          "and accepts this; a strict reader must refuse it)")
    c.add("duplicate_tensor_different",
          frame('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                '"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', f32(1.0, 2.0)),
          "duplicateKey", "tensor 'a' listed twice with different offsets (Rust reports InvalidOffset)")
    c.add("duplicate_field_in_entry",
          frame('{"a":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}}', one_data),
          "duplicateKey", "field 'dtype' appears twice inside one tensor entry")
    c.add("duplicate_key_in_metadata",
          frame('{"__metadata__":{"format":"pt","format":"np"},"a":%s}' % e, one_data),
          "duplicateKey", "key 'format' appears twice inside __metadata__ (the reference crate keeps the last and accepts it)")
    c.add("duplicate_metadata_object",
          frame('{"__metadata__":{"format":"pt"},"a":%s,"__metadata__":{"format":"pt"}}' % e, one_data),
          "duplicateKey", "the __metadata__ key itself appears twice")

    # ---- invalidMetadata -------------------------------------------------------------
    c.add("invalid_metadata_int_value", frame('{"__metadata__":{"step":100},"a":%s}' % e, one_data),
          "invalidMetadata", "__metadata__ value is an unquoted integer (must be a string; safetensors#278)")
    c.add("invalid_metadata_object_value",
          frame('{"__metadata__":{"nested":{"x":"y"}},"a":%s}' % e, one_data),
          "invalidMetadata", "__metadata__ value is an object")
    c.add("invalid_metadata_null_value", frame('{"__metadata__":{"note":null},"a":%s}' % e, one_data),
          "invalidMetadata", "__metadata__ value is null")
    c.add("invalid_metadata_is_string", frame('{"__metadata__":"format=pt","a":%s}' % e, one_data),
          "invalidMetadata", "__metadata__ is a string, not an object")
    c.add("invalid_metadata_is_array", frame('{"__metadata__":["pt"],"a":%s}' % e, one_data),
          "invalidMetadata", "__metadata__ is an array, not an object")

    # ---- unknownDType ----------------------------------------------------------------
    c.add("unknown_dtype_f17", frame(hjson({"a": {"dtype": "F17", "shape": [1], "data_offsets": [0, 4]}}), one_data),
          "unknownDType", "dtype 'F17' does not exist")
    c.add("unknown_dtype_lowercase", frame(hjson({"a": {"dtype": "f32", "shape": [1], "data_offsets": [0, 4]}}), one_data),
          "unknownDType", "dtype 'f32': dtype names are case-sensitive upper case")
    c.add("unknown_dtype_torch_name",
          frame(hjson({"a": {"dtype": "float32", "shape": [1], "data_offsets": [0, 4]}}), one_data),
          "unknownDType", "dtype 'float32' is torch's spelling, not a safetensors dtype")

    # ---- invalidTensorEntry ----------------------------------------------------------
    c.add("entry_missing_dtype", frame(hjson({"a": {"shape": [1], "data_offsets": [0, 4]}}), one_data),
          "invalidTensorEntry", "tensor entry has no 'dtype'")
    c.add("entry_missing_shape", frame(hjson({"a": {"dtype": "F32", "data_offsets": [0, 4]}}), one_data),
          "invalidTensorEntry", "tensor entry has no 'shape'")
    c.add("entry_missing_data_offsets", frame(hjson({"a": {"dtype": "F32", "shape": [1]}}), one_data),
          "invalidTensorEntry", "tensor entry has no 'data_offsets'")
    c.add("entry_shape_negative", frame(hjson({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}), one_data),
          "invalidTensorEntry", "shape contains -1")
    c.add("entry_shape_float", frame('{"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}', one_data),
          "invalidTensorEntry", "shape contains the float 1.5")
    c.add("entry_shape_float_integral", frame('{"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}', one_data),
          "invalidTensorEntry", "shape contains 1.0: serde's u64 refuses a number written as a float")
    c.add("entry_shape_string", frame('{"a":{"dtype":"F32","shape":["1"],"data_offsets":[0,4]}}', one_data),
          "invalidTensorEntry", "shape contains the string \"1\"")
    c.add("entry_shape_not_array", frame('{"a":{"dtype":"F32","shape":1,"data_offsets":[0,4]}}', one_data),
          "invalidTensorEntry", "shape is a number, not an array")
    c.add("entry_offsets_three_numbers",
          frame(hjson({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}}), one_data),
          "invalidTensorEntry", "data_offsets has 3 numbers")
    c.add("entry_offsets_one_number", frame(hjson({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4]}}), one_data),
          "invalidTensorEntry", "data_offsets has 1 number")
    c.add("entry_offsets_negative",
          frame(hjson({"a": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}}), one_data),
          "invalidTensorEntry", "data_offsets contains a negative number")
    c.add("entry_dtype_not_string", frame('{"a":{"dtype":32,"shape":[1],"data_offsets":[0,4]}}', one_data),
          "invalidTensorEntry", "dtype is a number, not a string")
    c.add("entry_not_object_string", frame('{"a":"F32"}'), "invalidTensorEntry",
          "tensor entry is a string, not an object")
    c.add("entry_not_object_array", frame('{"a":["F32",[1],[0,4]]}', one_data), "invalidTensorEntry",
          "tensor entry is an array, not an object (the reference Rust crate accepts this: serde reads a "
          "struct from a sequence; a strict reader must refuse it)")
    c.add("entry_null", frame('{"a":null}'), "invalidTensorEntry", "tensor entry is null")

    # ---- invalidOffset ---------------------------------------------------------------
    c.add("offset_hole_between_tensors",
          frame(hjson({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                       "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}), f32(1.0, 0.0, 2.0)),
          "invalidOffset", "4 unindexed bytes between 'a' [0,4] and 'b' [8,12] (polyglot hole)")
    c.add("offset_overlap",
          frame(hjson({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                       "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}), f32(1.0, 2.0, 3.0)),
          "invalidOffset", "'a' [0,8] and 'b' [4,12] overlap")
    c.add("offset_same_range_twice",
          frame(hjson({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                       "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}), one_data),
          "invalidOffset", "two tensors share the same bytes [0,4]")
    c.add("offset_end_before_begin",
          frame(hjson({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                       "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}), one_data),
          "invalidOffset", "'b' has data_offsets [4,0]: end < begin")
    c.add("offset_single_end_before_begin",
          frame(hjson({"a": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]},
                       "b": {"dtype": "U8", "shape": [0], "data_offsets": [1, 0]}}), b""),
          "invalidOffset", "'b' data_offsets [1,0]: begin past end (end < begin)")
    c.add("offset_first_not_zero",
          frame(hjson({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}), f32(0.0, 1.0)),
          "invalidOffset", "the only tensor starts at 4, leaving bytes 0..4 unindexed")

    # ---- tensorInvalidInfo -----------------------------------------------------------
    c.add("tensor_info_size_mismatch_f32",
          frame(hjson({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}), f32(1, 2, 3)),
          "tensorInvalidInfo", "F32 [2,2] needs 16 bytes but data_offsets span 12")
    c.add("tensor_info_size_mismatch_f16",
          frame(hjson({"a": {"dtype": "F16", "shape": [3], "data_offsets": [0, 8]}}), b"\x00" * 8),
          "tensorInvalidInfo", "F16 [3] needs 6 bytes but data_offsets span 8")
    c.add("tensor_info_zero_size_with_bytes",
          frame(hjson({"a": {"dtype": "F32", "shape": [2, 0], "data_offsets": [0, 4]}}), one_data),
          "tensorInvalidInfo", "F32 [2,0] has 0 elements but data_offsets span 4 bytes")
    c.add("tensor_info_scalar_wrong_size",
          frame(hjson({"a": {"dtype": "F64", "shape": [], "data_offsets": [0, 4]}}), one_data),
          "tensorInvalidInfo", "0-rank F64 needs 8 bytes but data_offsets span 4")

    # ---- validationOverflow ----------------------------------------------------------
    c.add("overflow_shape_2_x_u64max_minus_1",
          frame(hjson({"a": {"dtype": "F32", "shape": [2, 18446744073709551614], "data_offsets": [0, 4]}}), one_data),
          "validationOverflow", "2 * 18446744073709551614 overflows u64 (element count)")
    c.add("overflow_shape_2pow32_squared",
          frame(hjson({"a": {"dtype": "U8", "shape": [4294967296, 4294967296], "data_offsets": [0, 4]}}), one_data),
          "validationOverflow", "2^32 * 2^32 = 2^64 overflows u64 (element count)")
    c.add("overflow_bytes_2pow62_f32",
          frame(hjson({"a": {"dtype": "F32", "shape": [4611686018427387904], "data_offsets": [0, 4]}}), one_data),
          "validationOverflow", "2^62 elements fit in u64 but 2^62 * 4 bytes (and * 32 bits) overflow")
    c.add("overflow_many_dims",
          frame(hjson({"a": {"dtype": "I8", "shape": [65536] * 5, "data_offsets": [0, 4]}}), one_data),
          "validationOverflow", "65536^5 = 2^80 overflows u64 (element count)")
    c.add("overflow_after_zero_dim_is_not_checked_first",
          frame(hjson({"a": {"dtype": "F32", "shape": [18446744073709551615, 2, 0], "data_offsets": [0, 4]}}), one_data),
          "validationOverflow", "(2^64-1) * 2 overflows before the trailing 0 dim is reached "
          "(the reference crate multiplies left to right with checked_mul)")

    # ---- incompleteBuffer ------------------------------------------------------------
    c.add("incomplete_trailing_bytes",
          frame(hjson({"a": one}), one_data + b"extra_bogus_data_for_polyglot_file"),
          "incompleteBuffer", "34 bytes after the end of the last tensor (polyglot tail)")
    c.add("incomplete_data_truncated",
          frame(hjson({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}), f32(1, 2)),
          "incompleteBuffer", "header parses and offsets are consistent but the file ends 8 bytes early")
    c.add("incomplete_no_data_at_all",
          frame(hjson({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})),
          "incompleteBuffer", "valid header announcing 16 data bytes, file ends right after the header")
    c.add("incomplete_trailing_bytes_no_tensors", frame("{}", b"\x00"),
          "incompleteBuffer", "header '{}' (no tensors) followed by 1 stray byte")

    # ---- valid edge files ------------------------------------------------------------
    c.valid("valid_extra_field", "tensor entry has an unknown extra field 'note' (ignored, not an error)",
            [("a", "F32", [2], f32(1.5, -2.0), [1.5, -2.0])],
            header_transform=lambda t: t.replace('"data_offsets":[0,8]}', '"data_offsets":[0,8],"note":"x"}'))
    c.valid("valid_empty_header", "header '{}': zero tensors, zero data bytes", [])
    c.valid("valid_metadata_only", "only __metadata__, zero tensors", [], metadata={"format": "pt"})
    c.valid("valid_zero_size_tensor", "F32 tensor of shape [2,0] with data_offsets [0,0]",
            [("empty", "F32", [2, 0], b"", []), ("after", "F32", [1], f32(7.0), [7.0])])
    c.valid("valid_zero_rank_tensor", "0-rank (shape []) F32 tensor holding one element",
            [("scalar", "F32", [], f32(3.25), [3.25])])
    c.valid("valid_whitespace_padded_header",
            "header JSON with leading ' \\t\\n' and trailing ' \\t\\r\\n  ' whitespace",
            [("a", "F32", [2], f32(1.0, 2.0), [1.0, 2.0])],
            header_transform=lambda t: " \t\n" + t + " \t\r\n  ")
    c.valid("valid_space_padded_to_8", "header padded with spaces to a multiple of 8 (as the Rust writer does)",
            [("a", "F32", [2], f32(1.0, 2.0), [1.0, 2.0])],
            header_transform=lambda t: t + " " * ((-len(t.encode())) % 8))
    unaligned_specs = [("x", "F32", [3], f32(0.5, 1.5, 2.5), [0.5, 1.5, 2.5]),
                       ("y", "F32", [2, 2], f32(-1, -2, -3, -4), [-1.0, -2.0, -3.0, -4.0])]

    def pad_to_odd(t):
        t = t + " " * ((-len(t.encode())) % 8)  # now a multiple of 8 ...
        return t + " " * 5                      # ... plus 5: data starts at 8 + 8k + 5
    c.valid("valid_unaligned_data", "header length = 8k+5 so F32 data starts at an odd file offset",
            unaligned_specs, header_transform=pad_to_odd)
    c.valid("valid_offsets_out_of_order",
            "header lists 'second' (data_offsets [4,8]) before 'first' ([0,4]); readers sort by offset",
            [("first", "F32", [1], f32(1.0), [1.0]), ("second", "F32", [1], f32(2.0), [2.0])],
            order=["second", "first"])
    c.valid("valid_with_metadata", "__metadata__ with string values, one tensor",
            [("w", "F16", [2], struct.pack("<2e", 0.5, -1.0), [0.5, -1.0])],
            metadata={"format": "pt", "modelspec.title": "tiny", "empty": ""})
    c.valid("valid_unicode_names", "tensor names with non-ASCII UTF-8 and an escaped quote",
            [("caf\u00e9.\u6771\u4eac.\U0001F431", "U8", [2], b"\x01\x02", [1, 2]),
             ('quote"name', "U8", [1], b"\x03", [3])])

    # every dtype in one file
    bool_raw = bytes([0, 1, 1, 0])
    u8_raw = bytes([0, 1, 127, 255])
    i8_raw = struct.pack("<4b", -128, -1, 0, 127)
    i16_raw = struct.pack("<3h", -32768, 1, 32767)
    u16_raw = struct.pack("<3H", 0, 1, 65535)
    f16_vals = [0.0, 1.0, -2.5, 65504.0, 5.960464477539063e-08]
    f16_raw = struct.pack("<5e", *f16_vals)
    bf16_f32 = [1.0, -0.5, 3.140625, 1e30]
    bf16_raw = b"".join(struct.pack("<f", v)[2:] for v in bf16_f32)  # truncate to top 16 bits
    bf16_vals = [decode_bf16(bf16_raw[i:i + 2]) for i in range(0, len(bf16_raw), 2)]
    i32_raw = struct.pack("<3i", -2147483648, 42, 2147483647)
    u32_raw = struct.pack("<3I", 0, 42, 4294967295)
    f32_vals = [0.0, -0.0, 1.0, 3.4028234663852886e38, 1.401298464324817e-45]
    f32_raw = struct.pack("<5f", *f32_vals)
    f64_vals = [1.0, -1e-300, 2.718281828459045]
    f64_raw = struct.pack("<3d", *f64_vals)
    i64_raw = struct.pack("<3q", -9223372036854775808, -1, 9223372036854775807)
    u64_raw = struct.pack("<3Q", 0, 1, 18446744073709551615)
    e4m3_bytes = bytes([0x00, 0x38, 0xB8, 0x7E, 0x01, 0x40])  # 0, 1, -1, 448 (max), 2^-9, 2
    e5m2_bytes = bytes([0x00, 0x3C, 0xBC, 0x7B, 0x01, 0x7C])  # 0, 1, -1, 57344 (max), 2^-16, +inf
    e4m3_vals = [decode_f8_e4m3fn(b) for b in e4m3_bytes]
    e5m2_vals = [decode_f8_e5m2(b) for b in e5m2_bytes]
    assert e4m3_vals == [0.0, 1.0, -1.0, 448.0, 2.0 ** -9, 2.0], e4m3_vals
    assert e5m2_vals[:5] == [0.0, 1.0, -1.0, 57344.0, 2.0 ** -16] and e5m2_vals[5] == math.inf, e5m2_vals
    e5m2_json = e5m2_vals[:5] + ["inf"]  # JSON has no infinity: written as the string "inf"
    c.valid("valid_all_dtypes",
            "one tensor per dtype (BOOL U8 I8 I16 U16 F16 BF16 I32 U32 F32 F64 I64 U64 F8_E4M3 F8_E5M2); "
            "F8_E5M2 holds +inf (recorded as the string \"inf\")",
            [("bool", "BOOL", [4], bool_raw, [False, True, True, False]),
             ("u8", "U8", [4], u8_raw, [0, 1, 127, 255]),
             ("i8", "I8", [4], i8_raw, [-128, -1, 0, 127]),
             ("i16", "I16", [3], i16_raw, [-32768, 1, 32767]),
             ("u16", "U16", [3], u16_raw, [0, 1, 65535]),
             ("f16", "F16", [5], f16_raw, f16_vals),
             ("bf16", "BF16", [2, 2], bf16_raw, bf16_vals),
             ("i32", "I32", [3], i32_raw, [-2147483648, 42, 2147483647]),
             ("u32", "U32", [3], u32_raw, [0, 42, 4294967295]),
             ("f32", "F32", [5], f32_raw, f32_vals),
             ("f64", "F64", [3], f64_raw, f64_vals),
             ("i64", "I64", [3], i64_raw, [-9223372036854775808, -1, 9223372036854775807]),
             ("u64", "U64", [3], u64_raw, [0, 1, 18446744073709551615]),
             ("f8_e4m3", "F8_E4M3", [2, 3], e4m3_bytes, e4m3_vals),
             ("f8_e5m2", "F8_E5M2", [6], e5m2_bytes, e5m2_json)])


def build_hostile(c):
    """Issue 16: names with NUL bytes, and headers whose JSON nests or grows where no tensor is."""
    one_data = f32(1.0)
    c.valid("valid_nul_in_name", "tensor named 'x\\u0000hidden' (the reference keeps the whole name)",
            [("x\u0000hidden", "F32", [1], f32(1.0), [1.0])])
    c.valid("valid_nul_names_distinct", "tensors 'a\\u0000x' and 'a' are two tensors, not one",
            [("a\u0000x", "F32", [1], f32(1.0), [1.0]), ("a", "F32", [1], f32(2.0), [2.0])])
    c.valid("valid_nul_metadata_keys", "__metadata__ keys 'k\\u0000a' and 'k' are two keys",
            [("a", "F32", [1], f32(1.0), [1.0])], metadata={"k\u0000a": "1", "k": "2"})
    c.valid("valid_unknown_field_nested", "an unknown field holding nested arrays is skipped (as serde does)",
            [("a", "F32", [1], f32(1.0), [1.0])],
            header_transform=lambda t: t.replace('"data_offsets":[0,4]}', '"data_offsets":[0,4],"x":[[[],[[]]],{"y":[1,2,{"z":null}]}]}'))
    deep = "[" * 100 + "]" * 100
    c.valid("valid_unknown_field_depth_100", "an unknown field nested 100 deep (serde_json's limit is 128)",
            [("a", "F32", [1], f32(1.0), [1.0])],
            header_transform=lambda t: t.replace('"data_offsets":[0,4]}', '"data_offsets":[0,4],"x":' + deep + '}'))
    deeper = "[" * 200 + "]" * 200
    c.add("invalid_json_unknown_field_depth_200",
          frame('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":' + deeper + '}}', one_data),
          "invalidHeaderJSON", "an unknown field nested 200 deep (beyond serde_json's recursion limit of 128)")
    c.add("invalid_json_number_overflow_in_unknown_field",
          frame('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1e999}}', one_data),
          "invalidHeaderJSON", "1e999 is beyond a double (serde_json: number out of range)")
    c.add("invalid_json_lone_surrogate_key",
          frame('{"a\\ud800":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', one_data),
          "invalidHeaderJSON", "a key with a lone high surrogate escape (serde_json refuses it)")
    c.add("invalid_json_raw_control_in_key",
          frame('{"a\tb":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', one_data),
          "invalidHeaderJSON", "a raw tab inside a key (JSON needs it escaped)")
    c.add("duplicate_key_after_escape_with_nul",
          frame('{"a\\u0000":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a\\u0000":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', one_data + one_data),
          "duplicateKey", "the key 'a\\u0000' twice (the reference keeps the last, then finds a hole)")
    c.add("entry_shape_nested_arrays",
          frame('{"a":{"dtype":"F32","shape":[[[1]]],"data_offsets":[0,4]}}', one_data),
          "invalidTensorEntry", "a shape of nested arrays is refused at its first element")
    c.add("entry_shape_rank_65",
          frame('{"a":{"dtype":"F32","shape":[' + ",".join(["1"] * 65) + '],"data_offsets":[0,4]}}', one_data),
          "invalidTensorEntry", "a shape of 65 dimensions (more than any tensor library allows)")
    c.add("invalid_metadata_nested_arrays",
          frame('{"__metadata__":{"k":[[[[]]]]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', one_data),
          "invalidMetadata", "a metadata value of nested arrays is refused at its first token")


REFERENCE_ERRORS = [  # message fragment of the reference Python binding -> our code
    ("header too small", "headerTooSmall"), ("header too large", "headerTooLarge"),
    ("invalid header length", "invalidHeaderLength"), ("invalid UTF-8", "invalidHeaderUTF8"),
    ("unknown variant", "unknownDType"), ("duplicate field", "duplicateKey"),
    ("invalid offset", "invalidOffset"), ("invalid shape, data type, or offset", "tensorInvalidInfo"),
    ("overflow computing buffer size", "validationOverflow"),
    ("file not fully covered", "incompleteBuffer"), ("invalid JSON", "invalidHeaderJSON*"),
]


def check_with_reference(out, entries):
    """Loads each file with the reference `safetensors` package; prints disagreements."""
    try:
        from safetensors import safe_open  # noqa: F401
        import safetensors
    except ImportError:
        print("safetensors not importable; skipping --check")
        return
    from safetensors import deserialize
    print("reference: safetensors", safetensors.__version__)
    for e in entries:
        data = open(os.path.join(out, e["file"]), "rb").read()
        try:
            got = deserialize(data)
            result = "ok"
            if e["expect"] == "ok":
                names = sorted(t["name"] for t in e["tensors"])
                assert sorted(n for n, _ in got) == names, (e["file"], got)
                byname = {n: v for n, v in got}
                for t in e["tensors"]:
                    v = byname[t["name"]]
                    assert hashlib.sha256(bytes(v["data"])).hexdigest() == t["sha256"], t["name"]
                    assert list(v["shape"]) == t["shape"], t["name"]
        except Exception as exc:  # noqa: BLE001
            msg = str(exc)
            result = next((code for k, code in REFERENCE_ERRORS if k in msg), None)
            if result is None:
                result = "error: " + msg.splitlines()[0][:90]
        # "invalidHeaderJSON*": the binding reports every serde error (wrong type, missing
        # field, bad metadata) as invalid JSON; count that as agreeing with our finer codes.
        agree = "  " if result == e["expect"] or (result == "invalidHeaderJSON*" and e["expect"] in (
            "invalidHeaderJSON", "headerNotObject", "invalidMetadata", "invalidTensorEntry")) else "!="
        print(f"{agree} {e['file']:<50} expect={e['expect']:<20} reference={result}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for f in os.listdir(args.out):  # regenerate from scratch
        if f.endswith(".safetensors") or f == "manifest.json":
            os.remove(os.path.join(args.out, f))
    c = Corpus(args.out)
    build(c)
    build_hostile(c)
    with open(os.path.join(args.out, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(c.entries, f, indent=1, ensure_ascii=False)
        f.write("\n")
    n_ok = sum(e["expect"] == "ok" for e in c.entries)
    print(f"wrote {len(c.entries)} files ({n_ok} valid) + manifest.json to {args.out}")
    if args.check:
        check_with_reference(args.out, c.entries)


if __name__ == "__main__":
    sys.exit(main())
