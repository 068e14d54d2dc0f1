"""The malformed-GGUF corpus: one small file per validation rule of WeightPack's GGUF reader.

    python3 Fixtures/generate/make_gguf_malformed.py

Writes Fixtures/gguf/malformed/<case>.gguf and expected.json ({file: FormatError code}); the
codes are the rules of Formats/gguf.md, checked by Tests/CheckpointFormatsTests/GGUFTests.swift.
Pure Python (struct), no dependencies; files are built byte by byte so each breaks one rule.
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.normpath(os.path.join(HERE, "..", "gguf", "malformed"))

U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)


def s(text, length=None) -> bytes:
    raw = text if isinstance(text, bytes) else text.encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw


def kv(key, vtype, payload: bytes) -> bytes:
    return s(key) + struct.pack("<I", vtype) + payload


def tensor(name, dims, ttype, offset, n_dims=None) -> bytes:
    out = s(name) + struct.pack("<I", len(dims) if n_dims is None else n_dims)
    out += b"".join(struct.pack("<Q", d) for d in dims)
    return out + struct.pack("<IQ", ttype, offset)


def gguf(kvs=(), tensors=(), data=b"", version=3, n_tensors=None, n_kv=None, alignment=32, magic=b"GGUF") -> bytes:
    head = magic + struct.pack("<I", version)
    head += struct.pack("<QQ", len(tensors) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv)
    head += b"".join(kvs) + b"".join(tensors)
    head += b"\0" * (-len(head) % alignment)
    return head + data


F32_4 = tensor("w", [4], 0, 0)
DATA16 = b"\0" * 16

CASES = {
    "bad_magic": (gguf(magic=b"GGUX", tensors=[F32_4], data=DATA16), "badMagic"),
    "version_1": (gguf(version=1, tensors=[F32_4], data=DATA16), "unsupportedVersion"),
    "big_endian": (b"GGUF" + struct.pack(">I", 3) + struct.pack(">QQ", 0, 0), "unsupportedVersion"),
    "truncated_counts": (b"GGUF" + struct.pack("<I", 3) + b"\1\0\0", "ggufTruncated"),
    "tensor_count_limit": (gguf(n_tensors=(1 << 20) + 1), "ggufCountLimit"),
    "tensor_count_past_end": (gguf(n_tensors=1000, tensors=[F32_4], data=DATA16), "ggufTruncated"),
    "metadata_count_limit": (gguf(n_kv=(1 << 20) + 1), "ggufCountLimit"),
    "key_too_long": (gguf(kvs=[s("k", length=(1 << 16) + 1)], n_kv=1), "ggufStringTooLong"),
    "string_value_too_long": (gguf(kvs=[kv("k", STR, struct.pack("<Q", (1 << 24) + 1))]), "ggufStringTooLong"),
    "string_past_end": (gguf(kvs=[kv("k", STR, struct.pack("<Q", 100) + b"abc")]), "ggufTruncated"),
    "key_not_utf8": (gguf(kvs=[kv(b"k\xff\xfe", U8, b"\1")]), "invalidHeaderUTF8"),
    "duplicate_key": (gguf(kvs=[kv("k", U8, b"\1"), kv("k", U8, b"\2")]), "duplicateKey"),
    "unknown_value_type": (gguf(kvs=[kv("k", 13, b"\0" * 8)]), "ggufUnknownValueType"),
    "array_unknown_element_type": (gguf(kvs=[kv("k", ARR, struct.pack("<IQ", 77, 1) + b"\0" * 8)]), "ggufUnknownValueType"),
    "array_too_long": (gguf(kvs=[kv("k", ARR, struct.pack("<IQ", U8, (1 << 28) + 1))]), "ggufArrayTooLong"),
    "array_past_end": (gguf(kvs=[kv("k", ARR, struct.pack("<IQ", U64, 1000) + b"\0" * 64)]), "ggufArrayTooLong"),
    "array_of_strings_past_end": (gguf(kvs=[kv("k", ARR, struct.pack("<IQ", STR, 1 << 20) + b"\0" * 64)]), "ggufArrayTooLong"),
    "nested_too_deep": (gguf(kvs=[kv("k", ARR, struct.pack("<IQ", ARR, 1) + struct.pack("<IQ", ARR, 1)
                                     + struct.pack("<IQ", ARR, 1) + struct.pack("<IQ", U8, 1) + b"\1")]), "ggufNestingTooDeep"),
    "alignment_not_power_of_two": (gguf(kvs=[kv("general.alignment", U32, struct.pack("<I", 24))]), "ggufInvalidAlignment"),
    "alignment_zero": (gguf(kvs=[kv("general.alignment", U32, struct.pack("<I", 0))]), "ggufInvalidAlignment"),
    "alignment_too_large": (gguf(kvs=[kv("general.alignment", U32, struct.pack("<I", 1 << 21))]), "ggufInvalidAlignment"),
    "alignment_wrong_type": (gguf(kvs=[kv("general.alignment", U64, struct.pack("<Q", 32))]), "ggufInvalidAlignment"),
    "zero_dimensions": (gguf(tensors=[tensor("w", [], 0, 0)], data=DATA16), "ggufInvalidDimensions"),
    "five_dimensions": (gguf(tensors=[tensor("w", [1, 1, 1, 1, 4], 0, 0)], data=DATA16), "ggufInvalidDimensions"),
    "element_count_overflow": (gguf(tensors=[tensor("w", [1 << 62, 8], 0, 0)], data=DATA16), "validationOverflow"),
    "overflow_before_zero_dimension": (gguf(tensors=[tensor("w", [256, 0, 1 << 40, 1 << 40], 0, 0)], data=DATA16), "validationOverflow"),
    "dimension_above_int64": (gguf(tensors=[tensor("w", [(1 << 63) + 1], 0, 0)], data=DATA16), "validationOverflow"),
    "byte_size_overflow": (gguf(tensors=[tensor("w", [1 << 31, 1 << 31], 0, 0)], data=DATA16), "validationOverflow"),
    "unknown_type": (gguf(tensors=[tensor("w", [4], 99, 0)], data=DATA16), "unknownDType"),
    "unsupported_type_iq2_xxs": (gguf(tensors=[tensor("w", [256], 16, 0)], data=b"\0" * 96), "unsupportedDType"),
    "block_misfit": (gguf(tensors=[tensor("w", [48, 2], 2, 0)], data=b"\0" * 64), "ggufBlockMisfit"),
    "misaligned_offset": (gguf(tensors=[tensor("w", [4], 0, 8)], data=b"\0" * 64), "invalidOffset"),
    "tensor_past_end": (gguf(tensors=[tensor("w", [64], 0, 0)], data=DATA16), "ggufTensorPastEnd"),
    "offset_beyond_any_file": (gguf(tensors=[tensor("w", [4], 0, (1 << 63) + 32)], data=DATA16), "ggufTensorPastEnd"),
    "offset_overflows_with_size": (gguf(tensors=[tensor("w", [4], 0, (1 << 63) - 32)], data=DATA16), "ggufTensorPastEnd"),
    "tensors_overlap": (gguf(tensors=[tensor("a", [16], 0, 0), tensor("b", [16], 0, 32)], data=b"\0" * 128), "ggufTensorOverlap"),
    "duplicate_tensor": (gguf(tensors=[tensor("w", [4], 0, 0), tensor("w", [4], 0, 32)], data=b"\0" * 64), "duplicateTensor"),
    "empty_tensor_name": (gguf(tensors=[tensor("", [4], 0, 0)], data=DATA16), "invalidTensorEntry"),
    "tensor_name_too_long": (gguf(tensors=[s("w", length=(1 << 16) + 1)], n_tensors=1), "ggufStringTooLong"),
    "tensor_table_truncated": (b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + tensor("w", [4], 0, 0)[:-4], "ggufTruncated"),
    "orig_shape_wrong_count": (gguf(kvs=[kv("general.architecture", STR, s("sd1")),
                                        kv("comfy.gguf.orig_shape.w", ARR, struct.pack("<IQ", I32, 2) + struct.pack("<ii", 3, 3))],
                                   tensors=[tensor("w", [4], 0, 0)], data=DATA16), "ggufInvalidOriginalShape"),
    "orig_shape_not_array": (gguf(kvs=[kv("general.architecture", STR, s("sd1")), kv("comfy.gguf.orig_shape.w", I32, struct.pack("<i", 4))],
                                  tensors=[tensor("w", [4], 0, 0)], data=DATA16), "ggufInvalidOriginalShape"),
    "orig_shape_negative": (gguf(kvs=[kv("general.architecture", STR, s("sd1")),
                                      kv("comfy.gguf.orig_shape.w", ARR, struct.pack("<IQ", I32, 2) + struct.pack("<ii", -2, -2))],
                                 tensors=[tensor("w", [4], 0, 0)], data=DATA16), "ggufInvalidOriginalShape"),
}


def f16(values) -> bytes:
    return struct.pack("<%de" % len(values), *values)


# Small valid files, seeds for the fuzz target (Fixtures/fuzz/gguf/).
VALID = {
    "valid_f32_f16": gguf(tensors=[tensor("a", [4, 2], 0, 0), tensor("b", [8], 1, 32)],
                          data=struct.pack("<8f", *range(8)) + f16(range(8)) + b"\0" * 16),
    "valid_q4_0_q8_0": gguf(kvs=[kv("general.alignment", U32, struct.pack("<I", 16))],
                            tensors=[tensor("q4", [32, 2], 2, 0), tensor("q8", [32], 8, 48)],
                            alignment=16, data=(f16([0.5]) + bytes(range(16))) * 2 + b"\0" * 12 + f16([0.25]) + bytes(range(32)) + b"\0" * 14),
    "valid_q4_k": gguf(tensors=[tensor("model.diffusion_model.w", [256], 12, 0)], data=f16([0.1, 0.01]) + bytes(range(140)) + b"\0" * 16),
    "valid_comfy": gguf(kvs=[kv("general.architecture", STR, s("sd1")),
                             kv("comfy.gguf.orig_shape.w", ARR, struct.pack("<IQ", I32, 4) + struct.pack("<4i", 2, 2, 2, 4))],
                        tensors=[tensor("w", [32], 8, 0), tensor("n", [3], 0, 64)],
                        data=f16([0.5]) + bytes(range(32)) + b"\0" * 30 + struct.pack("<3f", 1, 2, 3) + b"\0" * 20),
    "valid_array_metadata": gguf(kvs=[kv("tokens", ARR, struct.pack("<IQ", STR, 2) + s("a") + s("bc")),
                                      kv("nested", ARR, struct.pack("<IQ", ARR, 1) + struct.pack("<IQ", F32, 1) + struct.pack("<f", 1)),
                                      kv("flag", BOOL, b"\1"), kv("pi", F64, struct.pack("<d", 3.14))]),
}


def main() -> None:
    seeds = os.path.normpath(os.path.join(OUT, "..", "..", "fuzz", "gguf"))
    os.makedirs(seeds, exist_ok=True)
    for name, data in VALID.items():
        with open(os.path.join(seeds, name + ".gguf"), "wb") as f:
            f.write(data)
    os.makedirs(OUT, exist_ok=True)
    expected = {}
    for name, (data, code) in sorted(CASES.items()):
        with open(os.path.join(OUT, name + ".gguf"), "wb") as f:
            f.write(data)
        expected[name + ".gguf"] = code
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{len(expected)} files in {OUT}")


if __name__ == "__main__":
    main()
