#!/usr/bin/env python3
"""Writes WeightPack's PyTorch checkpoint fixtures (issue 3).

    Fixtures/torch/valid/<name>                 files made by real torch.save (zip and legacy)
    Fixtures/torch/valid/<name>.golden.safetensors
                                                the tensors our reader must return, written by
                                                safetensors.torch.save_file from contiguous clones
                                                of what torch.load gives back
    Fixtures/torch/malicious/<name>             pickles and checkpoints whose payload would run
                                                `touch /tmp/weightpack-pwned-<name>` if loaded
                                                with pickle / torch.load(weights_only=False)
    Fixtures/torch/malformed/<name>             truncated, corrupt and inconsistent archives
    Fixtures/torch/manifest.json                [{"file", "kind", "expect", "why", ...}]

"expect" is "ok" or the FormatError code TorchCheckpoint must throw. Malicious files carry
"marker" (the file their payload would create). Valid files carry "golden", "format" and
"metadata" (entries our reader must report).

Malicious pickles are built the way picklescan's tests/init_data_files.py and modelscan's
tests build them (a class whose __reduce__ returns the payload, or opcodes written by hand for
memo/STACK_GLOBAL/INST/OBJ tricks); nothing here executes a payload unless --prove is given,
which loads each plain-pickle payload in a child Python process and checks that its marker
appears (proving the fixture is live), then deletes the marker.

Usage: make_torch_fixtures.py [--out DIR] [--prove]
Needs torch, numpy and safetensors (the fixture venv); plain python3 suffices for --no-torch,
which writes only the hand-built files.
"""

import argparse
import collections
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tarfile
import types
import zipfile
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.normpath(os.path.join(HERE, "..", "torch"))

MANIFEST = []


def marker(name):
    return "/tmp/weightpack-pwned-" + name


def record(kind, file, expect, why, **extra):
    item = {"file": file, "kind": kind, "expect": expect, "why": why}
    item.update(extra)
    MANIFEST.append(item)


# ---------------------------------------------------------------------------------------------
# Hand-written pickle opcodes (protocol 2 unless said otherwise)


def op_str(s):
    b = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(b)) + b


def op_int(v):
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if 0 <= v < 65536:
        return b"M" + struct.pack("<H", v)
    if -(2 ** 31) <= v < 2 ** 31:
        return b"J" + struct.pack("<i", v)
    n = (v.bit_length() + 8) // 8
    return b"\x8a" + bytes([n]) + v.to_bytes(n, "little", signed=True)


def op_global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def op_tuple(items):
    return b"(" + b"".join(items) + b"t"


def tensor_ops(key, storage="FloatStorage", numel=4, offset=0, size=(4,), stride=(1,),
               rebuild="_rebuild_tensor_v2", pid_kind="storage", extra_pid=None):
    """Opcodes of one `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`."""
    pid_fields = [op_str(pid_kind), op_global("torch", storage), op_str(key), op_str("cpu"), op_int(numel)]
    if extra_pid is not None:
        pid_fields.append(extra_pid)
    return (op_global("torch._utils", rebuild) + b"(" + op_tuple(pid_fields) + b"Q" + op_int(offset)
            + op_tuple([op_int(s) for s in size]) + op_tuple([op_int(s) for s in stride])
            + b"\x89" + op_global("collections", "OrderedDict") + b")R" + b"tR")


def dict_pickle(entries):
    """PROTO 2; a dict of {name: opcodes}."""
    body = b"\x80\x02}"
    for name, ops in entries:
        body += op_str(name) + ops + b"s"
    return body + b"."


def write_zip(path, members, prefix="archive", compress=None):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in members:
            full = name if name.startswith("/") or name.startswith("!") else prefix + "/" + name
            full = full.lstrip("!")
            ctype = (compress or {}).get(name, zipfile.ZIP_STORED)
            z.writestr(zipfile.ZipInfo(full, date_time=(2024, 1, 1, 0, 0, 0)), data, compress_type=ctype)


def floats(n, start=1.0):
    return b"".join(struct.pack("<f", start + i) for i in range(n))


# ---------------------------------------------------------------------------------------------
# Malicious files


class Reduce:
    """An object that pickles as `callable(*args)` (how picklescan's tests build payloads)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def make_malicious(out, with_torch):
    d = os.path.join(out, "malicious")
    os.makedirs(d, exist_ok=True)

    def put(name, data, why, expect="unsafeGlobal", dangerous=None):
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
        record("malicious", "malicious/" + name, expect, why, marker=marker(name.split(".")[0]),
               dangerous=dangerous)

    def touch(name):
        return "touch " + marker(name)

    import os as os_module
    put("os_system.pkl", pickle.dumps(Reduce(os_module.system, touch("os_system")), protocol=2),
        "os.system via __reduce__ (picklescan malicious2)", dangerous="posix.system")
    put("eval.pkl", pickle.dumps(Reduce(eval, "__import__('os').system('%s')" % touch("eval")), protocol=2),
        "builtins.eval (picklescan malicious1)", dangerous="__builtin__.eval")
    put("exec_v4.pkl", pickle.dumps(Reduce(exec, "import os; os.system('%s')" % touch("exec_v4")), protocol=4),
        "builtins.exec, protocol 4 (STACK_GLOBAL with MEMOIZE)", dangerous="builtins.exec")
    import subprocess as sp
    put("subprocess_popen.pkl", pickle.dumps(Reduce(sp.Popen, ["touch", marker("subprocess_popen")]), protocol=2),
        "subprocess.Popen, pickled under its Python 2 name commands.Popen (picklescan malicious8 style)", dangerous="commands.Popen")

    # getattr(__import__('os'), 'system')('touch …'), written by hand (Sour Pickles chain).
    chain = (b"\x80\x02" + op_global("__builtin__", "getattr")
             + op_global("__builtin__", "__import__") + op_str("os") + b"\x85R"
             + op_str("system") + b"\x86R"
             + op_str(touch("getattr_import")) + b"\x85R.")
    put("getattr_import.pkl", chain, "getattr/__import__ chain (picklescan malicious0 style)",
        dangerous="__builtin__.getattr")

    # STACK_GLOBAL from memoized strings with decoy torch names (picklescan malicious11 style).
    memo_trick = (b"\x80\x04\x95" + b"\x00" * 8)  # FRAME length patched below
    body = (b"\x8c\x05torch\x94" + b"\x8c\x0bLongStorage\x94" + b"\x8c\x02os\x94" + b"\x8c\x06system\x94"
            + b"0000" + b"h\x02h\x03\x93" + b"\x8c" + bytes([len(touch("stack_global_memo"))])
            + touch("stack_global_memo").encode() + b"\x85R.")
    memo_trick = b"\x80\x04\x95" + struct.pack("<Q", len(body)) + body
    put("stack_global_memo.pkl", memo_trick, "STACK_GLOBAL resolved through the memo, decoy torch strings",
        dangerous="os.system")

    # STACK_GLOBAL whose operands a linear scan cannot trace ('os', junk, POP, 'system').
    hidden = (b"\x80\x04" + b"\x8c\x02os" + b"\x8c\x04junk" + b"0" + b"\x8c\x06system" + b"\x93"
              + b"\x8c" + bytes([len(touch("stack_global_hidden"))]) + touch("stack_global_hidden").encode()
              + b"\x85R.")
    put("stack_global_hidden.pkl", hidden, "STACK_GLOBAL with operands hidden behind a POP (unresolvable → dangerous)",
        dangerous="unknown.unknown")

    # INST (protocol 0) and OBJ (protocol 1).
    inst = b"(S'" + touch("inst").encode() + b"'\nios\nsystem\n."
    put("inst.pkl", inst, "INST os.system (picklescan malicious10 style)", dangerous="os.system")
    obj = b"(cos\nsystem\nS'" + touch("obj").encode() + b"'\no."
    put("obj.pkl", obj, "OBJ with os.system", dangerous="os.system")

    # Type confusion: an int in the memo used as STACK_GLOBAL's module.
    confusion = (b"\x80\x04K\x07\x94" + b"h\x00\x8c\x06system\x93" + b"\x8c\x01x\x85R.")
    put("memo_type_confusion.pkl", confusion, "STACK_GLOBAL whose module is an int from the memo",
        dangerous="unknown.unknown")

    # pickle.loads of a nested pickle (picklescan malicious13).
    inner = pickle.dumps(Reduce(os_module.system, touch("nested_pickle")), protocol=2)
    put("nested_pickle.pkl", pickle.dumps(Reduce(pickle.loads, inner), protocol=2),
        "pickle.loads of an embedded malicious pickle", dangerous="pickle.loads")

    # A benign pickle followed by a malicious one (picklescan malicious6).
    put("trailing_pickle.pkl", pickle.dumps({"a": 1}, protocol=2)
        + pickle.dumps(Reduce(os_module.system, touch("trailing_pickle")), protocol=2),
        "benign pickle followed by a malicious one", dangerous="posix.system")

    # runpy._run_code
    import runpy
    put("runpy.pkl", pickle.dumps(Reduce(runpy._run_code, "import os; os.system('%s')" % touch("runpy"), {}), protocol=2),
        "runpy._run_code (picklescan malicious14)", dangerous="runpy._run_code")

    # Zip archives (hand-built, no torch needed): a second pickle member without .pkl extension.
    benign = dict_pickle([("w", tensor_ops("0"))])
    evil = pickle.dumps(Reduce(os_module.system, touch("zip_second_pickle")), protocol=2)
    buf = io.BytesIO()
    write_zip(buf, [("data.pkl", benign), ("byteorder", b"little"), ("data/0", floats(4)), ("version", b"3\n"),
                    (".data/extra_state", evil)])
    put("zip_second_pickle.ckpt", buf.getvalue(), "benign data.pkl plus a malicious pickle in another member (no .pkl name)",
        dangerous="posix.system")

    # FRAME boundary divergence (cpython#154848): a BINBYTES declared inside a frame runs past
    # it and swallows GLOBAL os system + REDUCE that a frame-respecting reader sees as bytes.
    frame_body = b"\x8c\x01a" + b"B" + struct.pack("<I", 40)
    payload = op_global("os", "system") + b"X" + struct.pack("<I", 5) + b"touch" + b"\x85R."
    divergence = b"\x80\x04\x95" + struct.pack("<Q", len(frame_body)) + frame_body + payload + b"\x00" * 40
    put("frame_divergence.pkl", divergence, "BINBYTES crossing a FRAME end (refused as invalidPickle)",
        expect="invalidPickle")

    if not with_torch:
        return
    import torch

    # A real torch zip whose data.pkl calls posix.system (modelscan unsafe_zip_pytorch style).
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2), "x": Reduce(os_module.system, touch("torch_zip_system"))}, buf)
    put("torch_zip_system.ckpt", buf.getvalue(), "real torch.save zip whose data.pkl calls posix.system",
        dangerous="posix.system")

    # A real legacy file with the same payload.
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2), "x": Reduce(eval, "__import__('os').system('%s')" % touch("torch_legacy_eval"))},
               buf, _use_new_zipfile_serialization=False)
    put("torch_legacy_eval.pt", buf.getvalue(), "real legacy torch.save with builtins.eval", dangerous="__builtin__.eval")

    # Legacy magic bypass (picklescan pytorch_magic_bypass.pt): pickle 1 computes the magic with
    # eval, pickle 3 (sys_info) runs posix.system.
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buf, _use_new_zipfile_serialization=False)
    legacy = buf.getvalue()
    magic_len = 15
    proto_end = magic_len + 6
    sysinfo_end = proto_end + len(_one_pickle(legacy[proto_end:]))
    bypass = (pickle.dumps(Reduce(eval, "0x1950a86a20f9469cfc6c"), protocol=2) + legacy[magic_len:proto_end]
              + pickle.dumps(Reduce(os_module.system, touch("legacy_magic_bypass")), protocol=2)
              + legacy[sysinfo_end:])
    put("legacy_magic_bypass.pt", bypass, "legacy magic computed by eval, posix.system hidden in sys_info",
        dangerous="__builtin__.eval")


def _one_pickle(data):
    """The bytes of the first pickle in `data`."""
    import pickletools
    end = 0
    for op, arg, pos in pickletools.genops(data):
        end = pos
        if op.name == "STOP":
            break
    return data[:end + 1]


# ---------------------------------------------------------------------------------------------
# Valid files


def make_valid(out):
    import numpy as np
    import torch
    from safetensors.torch import save_file

    d = os.path.join(out, "valid")
    os.makedirs(d, exist_ok=True)
    g = torch.Generator().manual_seed(20240229)

    def rand(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g).to(dtype)

    def raw(t):
        return t.detach().as_subclass(torch.Tensor).contiguous().reshape(-1).view(torch.uint8)

    def golden(tensors):
        return {k: v.detach().as_subclass(torch.Tensor).contiguous().clone() for k, v in tensors.items()}

    def save(name, obj, expected, legacy=False, metadata=None, fmt=None, why=""):
        path = os.path.join(d, name)
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
        gold = name + ".golden.safetensors"
        save_file(golden(expected), os.path.join(d, gold))
        # Prove the golden is what torch.load gives back.
        loaded = torch.load(path, weights_only=False)
        root = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded
        flat = {}

        def walk(prefix, v):
            if isinstance(v, torch.Tensor):
                flat[prefix] = v
            elif isinstance(v, dict):
                for k, x in v.items():
                    walk(k if not prefix else prefix + "." + str(k), x)
        walk("", root)
        assert set(flat) == set(expected), (name, sorted(flat), sorted(expected))
        for k, v in flat.items():
            a, b = v.detach().contiguous(), expected[k].detach().contiguous()
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(raw(a), raw(b)), (name, k)
        record("valid", "valid/" + name, "ok", why, golden="valid/" + gold,
               format=fmt or ("ckpt-legacy" if legacy else "ckpt"), metadata=metadata or {})

    base = torch.arange(12, dtype=torch.float32) * 0.5
    matrix = rand(3, 5)
    dtypes = {
        "f32.weight": rand(4, 3),
        "f16.weight": rand(5, dtype=torch.float16),
        "bf16.weight": rand(2, 3, dtype=torch.bfloat16),
        "f64.buffer": rand(3, dtype=torch.float64),
        "position_ids": torch.arange(77, dtype=torch.int64).unsqueeze(0),
        "mask": torch.tensor([True, False, True, True, False, False]),
        "i32.scalar": torch.tensor(7, dtype=torch.int32),
        "i16.values": torch.tensor([-3, 0, 300], dtype=torch.int16),
        "i8.values": torch.tensor([-128, 0, 127, 5], dtype=torch.int8),
        "u8.values": torch.tensor([0, 1, 255, 128], dtype=torch.uint8),
        "empty": torch.zeros(0, 3),
        "noncontiguous.weight": matrix.t(),            # stride (1, 5)
        "expanded": torch.arange(3.0).expand(4, 3),    # stride (0, 1)
        "sliced": matrix[:, 1:4],                      # offset 1, stride (5, 1)
        "shared.a": base[:6].view(2, 3),               # one storage, two views
        "shared.b": base[6:],
    }
    save("dtypes.ckpt", dict(dtypes), dtypes, why="every common dtype, strided views, shared storage (zip)")
    save("dtypes_legacy.pt", dict(dtypes), dtypes, legacy=True,
         why="same tensors in the legacy (pre-1.6) format")

    # New dtypes go through UntypedStorage + _rebuild_tensor_v3; parameters and subclasses.
    sub = rand(2)
    sub.note = "python attribute"  # forces _rebuild_from_type_v2
    special = {
        "u16.values": torch.tensor([1, 2, 65535], dtype=torch.uint16),
        "f8.values": rand(4).to(torch.float8_e4m3fn),
        "param": torch.nn.Parameter(rand(2, 2)),
        "param_frozen": torch.nn.Parameter(rand(3), requires_grad=False),
        "with_attribute": sub,
    }
    save("special.pt", dict(special), special, why="_rebuild_tensor_v3 (uint16, float8), _rebuild_parameter, _rebuild_from_type_v2")

    # nn.Module state dict: OrderedDict with a `_metadata` BUILD state.
    lin = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    sd = lin.state_dict()
    save("module_state.pth", sd, dict(sd), why="nn.Module.state_dict(): OrderedDict with _metadata")

    # A Lightning/LDM-style wrapper with EMA entries, callbacks and numpy scalars.
    mod = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")

    class ModelCheckpoint:
        def __init__(self):
            self.monitor = "val/loss"
            self.best_model_score = np.float64(0.25)
    ModelCheckpoint.__module__ = mod.__name__
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    mod.ModelCheckpoint = ModelCheckpoint
    for parent in ["pytorch_lightning", "pytorch_lightning.callbacks"]:
        sys.modules.setdefault(parent, types.ModuleType(parent))
    sys.modules[mod.__name__] = mod
    state = {
        "model.diffusion_model.input_blocks.0.0.weight": rand(4, 4, 3, 3),
        "model.diffusion_model.input_blocks.0.0.bias": rand(4),
        "model_ema.decay": torch.tensor(0.9999, dtype=torch.float32),
        "model_ema.num_updates": torch.tensor(1234, dtype=torch.int32),
        "model_ema.diffusion_modelinput_blocks00weight": rand(4, 4, 3, 3),
        "model_ema.diffusion_modelinput_blocks00bias": rand(4),
        "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(77).unsqueeze(0),
        "betas": torch.linspace(0.00085, 0.012, 10, dtype=torch.float32),
    }
    wrapper = {
        "epoch": 3,
        "global_step": 470000,
        "pytorch-lightning_version": "1.4.2",
        "state_dict": state,
        "callbacks": {ModelCheckpoint: {"monitor": "val/loss", "best_model_score": np.float64(0.25)}},
        "checkpoint_callback": ModelCheckpoint(),
        "best_score": np.float32(1.5),
        "lr": 1e-4,
        "hparams": {"channels": 4, "use_ema": True, "name": None},
    }
    meta = {
        "epoch": "3",
        "global_step": "470000",
        "pytorch-lightning_version": "1.4.2",
        "callbacks.pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint.monitor": "val/loss",
        "callbacks.pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint.best_model_score": "0.25",
        "best_score": "1.5",
        "lr": "0.0001",
        "hparams.channels": "4",
        "hparams.use_ema": "True",
        "hparams.name": "None",
    }
    save("wrapper.ckpt", wrapper, state, metadata=meta, why="LDM/Lightning wrapper: state_dict, EMA, callbacks, numpy scalars")
    save("wrapper_legacy.ckpt", wrapper, state, legacy=True, metadata=meta, why="the wrapper in the legacy format")

    # Big-endian storages: the zip rewritten with byteorder=big and every storage byte-swapped.
    be = {"f32": rand(3, 2), "f16": rand(4, dtype=torch.float16), "i64": torch.arange(5), "u8": torch.arange(4, dtype=torch.uint8),
          "noncontiguous": rand(2, 3).t()}
    path = os.path.join(d, "bigendian.ckpt")
    buf = io.BytesIO()
    torch.save(be, buf)
    with zipfile.ZipFile(buf) as zin:
        names = zin.namelist()
        prefix = names[0].split("/")[0]
        loaded_pickle = zin.read(prefix + "/data.pkl")
        # storage key → element size, read from the persistent ids
        elem = {}

        class Peek(pickle.Unpickler):
            def persistent_load(self, pid):
                elem[pid[2]] = {"FloatStorage": 4, "HalfStorage": 2, "LongStorage": 8, "ByteStorage": 1}[pid[1].__name__]
                return None

            def find_class(self, module, name):
                if name.endswith("Storage"):
                    return type(name, (), {})
                return lambda *a, **k: None
        Peek(io.BytesIO(loaded_pickle)).load()
        members = []
        for n in names:
            data = zin.read(n)
            rel = n[len(prefix) + 1:]
            if rel == "byteorder":
                data = b"big"
            elif rel.startswith("data/"):
                e = elem[rel[5:]]
                data = b"".join(data[i:i + e][::-1] for i in range(0, len(data), e))
            members.append((rel, data))
    write_zip(path, members, prefix=prefix)
    save_file(golden(be), path + ".golden.safetensors")
    record("valid", "valid/bigendian.ckpt", "ok", "byteorder=big: storages byte-swapped on read (rewritten with Python zipfile)",
           golden="valid/bigendian.ckpt.golden.safetensors", format="ckpt", metadata={})


# ---------------------------------------------------------------------------------------------
# Malformed files


def make_malformed(out, with_torch):
    d = os.path.join(out, "malformed")
    os.makedirs(d, exist_ok=True)

    def put(name, data, expect, why):
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
        record("malformed", "malformed/" + name, expect, why)

    def archive(entries_pickle, records, extra=(), prefix="archive", compress=None):
        buf = io.BytesIO()
        members = [("data.pkl", entries_pickle), ("byteorder", b"little")] + list(records) + list(extra)
        write_zip(buf, members, prefix=prefix, compress=compress)
        return buf.getvalue()

    ok_pickle = dict_pickle([("w", tensor_ops("0")), ("v", tensor_ops("1", numel=2, size=(2,)))])
    put("missing_storage_record.ckpt", archive(ok_pickle, [("data/0", floats(4))]), "invalidArchive",
        "data.pkl names storage '1' but there is no data/1")
    put("short_record.ckpt", archive(ok_pickle, [("data/0", floats(3)), ("data/1", floats(2))]), "storageOutOfRange",
        "storage '0' declares 4 floats, record holds 3")
    bad_offset = dict_pickle([("w", tensor_ops("0", numel=4, offset=2, size=(3,)))])
    put("view_past_storage.ckpt", archive(bad_offset, [("data/0", floats(4))]), "storageOutOfRange",
        "offset 2 + 3 elements overruns a 4-element storage")
    bad_stride = dict_pickle([("w", tensor_ops("0", numel=4, size=(2, 2), stride=(3, 1)))])
    put("stride_past_storage.ckpt", archive(bad_stride, [("data/0", floats(4))]), "storageOutOfRange",
        "stride 3 reaches element 4 of a 4-element storage")
    huge_offset = dict_pickle([("w", tensor_ops("0", numel=4, offset=2 ** 62, size=(1,)))])
    put("offset_overflow.ckpt", archive(huge_offset, [("data/0", floats(4))]), "storageOutOfRange",
        "offset 2^62 overflows when scaled to bytes")
    overflow = dict_pickle([("w", tensor_ops("0", numel=4, size=(2 ** 40, 2 ** 40), stride=(0, 0)))])
    put("shape_overflow.ckpt", archive(overflow, [("data/0", floats(4))]), "validationOverflow",
        "2^40 × 2^40 elements overflow 64 bits")
    neg = dict_pickle([("w", tensor_ops("0", numel=4, offset=3, size=(2,), stride=(-1,)))])
    put("negative_stride.ckpt", archive(neg, [("data/0", floats(4))]), "unsupportedTensor", "negative stride")
    qt = dict_pickle([("w", tensor_ops("0", rebuild="_rebuild_qtensor"))])
    put("quantized.ckpt", archive(qt, [("data/0", floats(4))]), "unsupportedTensor", "_rebuild_qtensor")
    cd = dict_pickle([("w", tensor_ops("0", storage="ComplexDoubleStorage", numel=1, size=(1,)))])
    put("complex128.ckpt", archive(cd, [("data/0", b"\x00" * 16)]), "unsupportedDType", "complex128 has no safetensors dtype")
    module_pid = dict_pickle([("w", tensor_ops("0", pid_kind="module"))])
    put("module_persistent_id.ckpt", archive(module_pid, [("data/0", floats(4))]), "invalidPickle",
        "persistent id of kind 'module'")
    dup = dict_pickle([("a.b", tensor_ops("0")), ("a", b"}" + op_str("b") + tensor_ops("0") + b"s")])
    put("duplicate_name.ckpt", archive(dup, [("data/0", floats(4))]), "duplicateTensor",
        "'a.b' and {'a': {'b': …}} give the same name")

    deep = b"\x80\x02" + b"]" * 5000 + b"a" * 4999 + b"."
    put("deep_nesting.ckpt", archive(deep, []), "invalidPickle", "lists nested 5000 deep (limit 1000)")
    marks = b"\x80\x02" + b"(" * 100000 + b"."
    put("deep_marks.ckpt", archive(marks, []), "invalidPickle", "100 000 open MARKs")
    put("truncated_pickle.ckpt", archive(ok_pickle[:-20], [("data/0", floats(4)), ("data/1", floats(2))]), "invalidPickle",
        "data.pkl cut short")
    put("inst_opcode.ckpt", archive(b"(S'x'\nicollections\nOrderedDict\n.", []), "invalidPickle",
        "INST opcode (refused even for a safe global)")
    put("no_data_pkl.ckpt", (lambda b: (write_zip(b, [("data/0", floats(4)), ("version", b"3\n")]), b.getvalue())[1])(io.BytesIO()),
        "invalidArchive", "no data.pkl")
    put("outside_prefix.ckpt", archive(ok_pickle, [("data/0", floats(4)), ("data/1", floats(2))], extra=[("!other/x", b"1")]),
        "invalidArchive", "an entry outside the archive folder")
    put("dotdot.ckpt", archive(ok_pickle, [("data/0", floats(4)), ("data/1", floats(2))], extra=[("../x", b"1")]),
        "invalidArchive", "an entry name with '..'")
    put("no_prefix.ckpt", (lambda b: (write_zip(b, [("!data.pkl", ok_pickle)]), b.getvalue())[1])(io.BytesIO()),
        "invalidArchive", "entries not in a folder")

    # DEFLATE zip bomb: 32 MiB of zeros in data/0 (about 32 KiB compressed).
    bomb_pickle = dict_pickle([("w", tensor_ops("0", numel=8 << 20, size=(8 << 20,)))])
    put("zip_bomb.ckpt", archive(bomb_pickle, [("data/0", b"\x00" * (32 << 20))], compress={"data/0": zipfile.ZIP_DEFLATED}),
        "invalidArchive", "DEFLATE-compressed storage (zip bomb): refused")

    good = archive(ok_pickle, [("data/0", floats(4)), ("data/1", floats(2))])
    # Duplicate entry: append a second data/0 (zipfile warns but writes it).
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        buf = io.BytesIO()
        write_zip(buf, [("data.pkl", ok_pickle), ("data/0", floats(4)), ("data/1", floats(2)), ("data/0", floats(4, 9.0))])
    put("duplicate_entry.ckpt", buf.getvalue(), "invalidArchive", "data/0 appears twice")

    def patch_flags(data, name, bit):
        data = bytearray(data)
        n = name.encode()
        i = data.find(b"PK\x03\x04")
        while i >= 0:
            ln = struct.unpack_from("<H", data, i + 26)[0]
            if data[i + 30:i + 30 + ln] == n:
                struct.pack_into("<H", data, i + 6, struct.unpack_from("<H", data, i + 6)[0] | bit)
            i = data.find(b"PK\x03\x04", i + 4)
        i = data.find(b"PK\x01\x02")
        while i >= 0:
            ln = struct.unpack_from("<H", data, i + 28)[0]
            if data[i + 46:i + 46 + ln] == n:
                struct.pack_into("<H", data, i + 8, struct.unpack_from("<H", data, i + 8)[0] | bit)
            i = data.find(b"PK\x01\x02", i + 4)
        return bytes(data)
    put("encrypted_entry.ckpt", patch_flags(good, "archive/data/0", 0x1), "invalidArchive", "flag bit 0 (encrypted) on data/0")
    put("strong_encryption.ckpt", patch_flags(good, "archive/data.pkl", 0x40), "invalidArchive", "flag bit 6 on data.pkl")

    mismatch = bytearray(good)
    name_at = 30
    mismatch[name_at + len("archive/data.p")] = ord("x")  # local name archive/data.pxl
    put("local_name_mismatch.ckpt", bytes(mismatch), "invalidArchive", "local header name differs from the central one")

    crc = bytearray(good)
    j = crc.find(ok_pickle)
    crc[j + 8] ^= 0x01  # flip a bit of the key 'w' inside data.pkl
    put("crc_mismatch.ckpt", bytes(crc), "checksumMismatch", "data.pkl altered after its CRC-32 was computed")

    put("truncated_zip.ckpt", good[: len(good) // 2], "invalidArchive", "zip cut in half: no central directory")
    put("not_a_checkpoint.pt", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "invalidArchive", "PNG magic (picklescan bad_pytorch.pt)")

    ts_like = archive(ok_pickle, [("data/0", floats(4)), ("data/1", floats(2))],
                      extra=[("constants.pkl", b"\x80\x02).") , ("code/__torch__.py", b"")])
    put("torchscript_like.pt", ts_like, "invalidArchive", "constants.pkl and code/: a TorchScript archive")

    # Tar format (PyTorch 0.1.x): refused by name.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for n in ["sys_info", "pickle", "storages", "tensors"]:
            info = tarfile.TarInfo(n)
            info.size = 1
            t.addfile(info, io.BytesIO(b"\x80"))
    put("tar_format.pt", buf.getvalue(), "invalidArchive", "tar-format (PyTorch 0.1.x) checkpoint")

    if not with_torch:
        return
    import torch
    buf = io.BytesIO()
    torch.save({"w": torch.arange(4.0), "v": torch.arange(3.0)}, buf, _use_new_zipfile_serialization=False)
    legacy = buf.getvalue()
    put("legacy_truncated.pt", legacy[:-6], "storageOutOfRange", "legacy file cut inside its last storage")
    wrong_magic = bytearray(legacy)
    wrong_magic[4] ^= 0x01
    put("legacy_bad_magic.pt", bytes(wrong_magic), "invalidArchive", "legacy magic number altered")
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2, dtype=torch.complex128)}, buf)
    put("real_complex128.ckpt", buf.getvalue(), "unsupportedDType", "real torch.save of a complex128 tensor")
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), buf)
    put("torchscript.pt", buf.getvalue(), "invalidArchive", "real TorchScript archive (torch.jit.save)")


def prove(out):
    """Loads each malicious plain pickle in a child process and checks that its marker appears."""
    for item in MANIFEST:
        if item["kind"] != "malicious" or item["expect"] != "unsafeGlobal":
            continue
        path = os.path.join(out, item["file"])
        m = item["marker"]
        if os.path.exists(m):
            os.remove(m)
        if path.endswith(".pkl"):
            code = "import pickle,sys\nf=open(sys.argv[1],'rb')\nwhile True:\n  try: pickle.load(f)\n  except Exception: break\n"
        else:
            code = ("import torch,sys\ntry: torch.load(sys.argv[1], weights_only=False)\nexcept Exception as e: print(e)\n")
            if item["file"].endswith("zip_second_pickle.ckpt"):
                code = "import zipfile,pickle,sys\nz=zipfile.ZipFile(sys.argv[1]);pickle.loads(z.read('archive/.data/extra_state'))\n"
        subprocess.run([sys.executable, "-c", code, path], capture_output=True, timeout=120)
        live = os.path.exists(m)
        print(("live   " if live else "INERT  ") + item["file"])
        if live:
            os.remove(m)


def write_readme(out, with_torch):
    versions = "python %s" % sys.version.split()[0]
    if with_torch:
        import numpy
        import safetensors
        import torch
        versions += ", torch %s, numpy %s, safetensors %s" % (torch.__version__, numpy.__version__, safetensors.__version__)
    counts = collections.Counter(item["kind"] for item in MANIFEST)
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("# PyTorch checkpoint fixtures\n\n")
        f.write("Generated by `Fixtures/generate/make_torch_fixtures.py` (%s); do not edit by hand.\n\n" % versions)
        f.write("- `valid/` (%d): real `torch.save` files; each `*.golden.safetensors` was written by\n"
                "  `safetensors.torch.save_file` from contiguous clones of the expected tensors, and the\n"
                "  script checks that `torch.load` gives back exactly those tensors.\n" % counts["valid"])
        f.write("- `malicious/` (%d): payloads that would `touch /tmp/weightpack-pwned-<name>`;\n"
                "  `--prove` shows they are live under CPython pickle / torch.load(weights_only=False).\n" % counts["malicious"])
        f.write("- `malformed/` (%d): one broken rule each.\n\n" % counts["malformed"])
        f.write("`manifest.json` lists every file with the FormatError code TorchCheckpoint must report.\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--prove", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()
    with_torch = not args.no_torch
    if os.path.isdir(args.out):
        shutil.rmtree(args.out)
    os.makedirs(args.out)
    if with_torch:
        make_valid(args.out)
    make_malicious(args.out, with_torch)
    make_malformed(args.out, with_torch)
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(MANIFEST, f, indent=1)
        f.write("\n")
    write_readme(args.out, with_torch)
    total = sum(os.path.getsize(os.path.join(r, n)) for r, _, ns in os.walk(args.out) for n in ns)
    print("wrote %d fixtures, %d bytes" % (len(MANIFEST), total))
    if args.prove:
        prove(args.out)


if __name__ == "__main__":
    main()
