#!/usr/bin/env python3
"""Writes WeightPack's scanner-bypass fixtures (issue 16): Fixtures/torch/bypass/.

Each file recreates one published technique for getting a pickle past a static scanner
(picklescan/modelscan/fickling advisories, Trail of Bits' notes, torch's own loader quirks),
built opcode by opcode; nothing here unpickles a payload. The public corpora named in
Docs/torch-checkpoints.md are not shipped in any PyPI package (the picklescan 1.0.5, modelscan
0.8.8 and fickling 0.1.12 sdists hold no test data), so every technique is recreated here.

    bypass/manifest.json   [{"file", "technique", "scan", "resolved", "open", "why"}]

"scan" is the class `weightpack scan` must report ("dangerous"), "resolved" a qualified name
that must be among the dangerous findings (what CPython's find_class would look up), "open" the
FormatError code TorchCheckpoint must throw without --allow-unsafe-globals.

--verify builds harmless twins of the loader-side techniques (the same structure with a
harmless target: os.getpid, builtins.print, or a plain dict) and loads them with the venv's
torch.load / pickle in a child process, to show that torch really reads them as the fixture
assumes: dotted protocol-4 names resolve through module attributes, a text memo index " 0" is
index 0, torch finds archive/DATA.PKL, a file starting with NEWTRUE is unpickled, a FRAME is
ignored by the C unpickler. Payloads themselves are never loaded.

Usage: make_pickle_bypasses.py [--out DIR] [--verify]    (python 3.11.7; --verify needs torch 2.15.0)
"""

import argparse
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_torch_fixtures as base  # noqa: E402  (opcode helpers; importing it writes nothing)

DEFAULT_OUT = os.path.normpath(os.path.join(HERE, "..", "torch", "bypass"))
MANIFEST = []


def cmd(name):
    return "touch /tmp/weightpack-pwned-" + name


def su(s):
    """SHORT_BINUNICODE (protocol 4)."""
    b = s.encode()
    return b"\x8c" + bytes([len(b)]) + b


def stack_global(module, name, proto=4):
    return b"\x80" + bytes([proto]) + su(module) + su(name) + b"\x93"


def call1(arg):
    """Push one string argument as a 1-tuple and REDUCE."""
    return base.op_str(arg) + b"\x85R"


def zip_with_pickle(name, pickle_bytes, extra=()):
    buf = io.BytesIO()
    members = [(name, pickle_bytes), ("byteorder", b"little"), ("data/0", base.floats(4)), ("version", b"3\n")]
    base.write_zip(buf, members + list(extra))
    return buf.getvalue()


def put(out, name, data, technique, resolved, why, scan="dangerous", open_code="unsafeGlobal"):
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
    MANIFEST.append({"file": name, "technique": technique, "scan": scan, "resolved": resolved,
                     "open": open_code, "why": why})


def make(out):
    os.makedirs(out, exist_ok=True)

    # 1. Dotted names: protocol >= 4 find_class splits the name on '.' and walks attributes.
    for fname, module, name, why in [
        ("dotted_torch_serialization_os.pkl", "torch", "serialization.os.system",
         "torch.serialization imports os; protocol 4 resolves torch + 'serialization.os.system' to os.system"),
        ("dotted_argparse_os.pkl", "argparse", "_os.system", "argparse imports os as _os"),
        ("dotted_main_os.pkl", "__main__", "os.system", "the loading script's own module: whatever it imported"),
        ("dotted_logging_os.pkl", "logging", "os.system", "logging imports os"),
    ]:
        put(out, fname, stack_global(module, name) + call1(cmd(fname.split(".")[0])) + b".",
            "dotted attribute name (protocol 4 STACK_GLOBAL)", module + "." + name, why)
    # The same walk through the text GLOBAL opcode once PROTO 4 is in force.
    put(out, "dotted_global_opcode.pkl",
        b"\x80\x04" + base.op_global("torch", "serialization.os.system") + call1(cmd("dotted_global_opcode")) + b".",
        "dotted attribute name (GLOBAL opcode under PROTO 4)", "torch.serialization.os.system",
        "find_class splits the name whichever opcode named it")
    # PROTO may come anywhere: the protocol in force when the global is named is what counts.
    put(out, "late_proto_dotted.pkl",
        b"\x80\x02N0\x80\x04" + base.op_global("argparse", "_os.system") + call1(cmd("late_proto_dotted")) + b".",
        "PROTO 4 after PROTO 2, then a dotted name", "argparse._os.system",
        "CPython sets the protocol at every PROTO; a scanner that reads only the first sees protocol 2")
    # The same in a torch zip's data.pkl.
    put(out, "dotted_in_zip.ckpt",
        zip_with_pickle("data.pkl", stack_global("torch", "serialization.os.system") + call1(cmd("dotted_in_zip")) + b"."),
        "dotted attribute name inside archive/data.pkl", "torch.serialization.os.system", "torch's own loader path")

    # 2. Import-by-name helpers and attribute getters.
    put(out, "import_dotted_name.pkl",
        b"\x80\x02" + base.op_global("torch._utils", "_import_dotted_name") + base.op_str("os.system") + b"\x85R"
        + base.op_str(cmd("import_dotted_name")) + b"\x85R.",
        "import by name: torch._utils._import_dotted_name", "torch._utils._import_dotted_name",
        "_import_dotted_name('os.system') returns os.system, which is then called")
    put(out, "importlib_import_module.pkl",
        b"\x80\x02" + base.op_global("__builtin__", "getattr") + base.op_global("importlib", "import_module")
        + base.op_str("os") + b"\x85R" + base.op_str("system") + b"\x86R" + call1(cmd("importlib_import_module")) + b".",
        "import by name: importlib.import_module + getattr", "importlib.import_module", "")
    put(out, "attrgetter_import.pkl",
        b"\x80\x03" + base.op_global("operator", "attrgetter") + base.op_str("system") + b"\x85R"
        + base.op_global("builtins", "__import__") + base.op_str("os") + b"\x85R\x85R" + call1(cmd("attrgetter_import")) + b".",
        "operator.attrgetter applied to builtins.__import__('os')", "operator.attrgetter", "")
    put(out, "pydoc_locate.pkl",
        b"\x80\x02" + base.op_global("pydoc", "locate") + base.op_str("os.system") + b"\x85R" + call1(cmd("pydoc_locate")) + b".",
        "import by name: pydoc.locate", "pydoc.locate", "")

    # 3. File writers (a REDUCE that creates or truncates a file is enough).
    target = "/tmp/weightpack-pwned-"
    put(out, "codecs_open.pkl",
        b"\x80\x02" + base.op_global("codecs", "open") + base.op_str(target + "codecs_open") + base.op_str("w") + b"\x86R.",
        "file writer: codecs.open(path, 'w') creates/truncates", "codecs.open", "")
    put(out, "io_open.pkl",
        b"\x80\x02" + base.op_global("io", "open") + base.op_str(target + "io_open") + base.op_str("w") + b"\x86R.",
        "file writer: io.open(path, 'w')", "io.open", "")
    put(out, "numpy_savetxt.pkl",
        b"\x80\x02" + base.op_global("numpy", "savetxt") + base.op_str(target + "numpy_savetxt")
        + b"]" + base.op_int(1) + b"a" + b"\x86R.",
        "file writer: numpy.savetxt(path, [1])", "numpy.savetxt", "")
    put(out, "numpy_save.pkl",
        b"\x80\x02" + base.op_global("numpy", "save") + base.op_str(target + "numpy_save")
        + b"]" + base.op_int(1) + b"a" + b"\x86R.",
        "file writer: numpy.save(path, [1])", "numpy.save", "")
    put(out, "shutil_copyfile.pkl",
        b"\x80\x02" + base.op_global("shutil", "copyfile") + base.op_str("/etc/hostname") + base.op_str(target + "shutil") + b"\x86R.",
        "file writer: shutil.copyfile", "shutil.copyfile", "")

    # 4. Code execution through torch.fx: reduce_graph_module(body, import_block) execs Python source.
    body = b"}" + base.op_str("_code") + base.op_str("import os\nos.system('%s')\ndef forward(self): pass\n" % cmd("fx")) + b"s"
    put(out, "fx_reduce_graph_module.pkl",
        b"\x80\x02" + base.op_global("torch.fx.graph_module", "reduce_graph_module") + body + base.op_str("") + b"\x86R.",
        "torch.fx.graph_module.reduce_graph_module (runs exec)", "torch.fx.graph_module.reduce_graph_module", "")

    # 5. Text memo indices CPython reads as ints and a naive parser does not: the decoy
    # (torch.LongStorage) stays in a naive scanner's memo, CPython overwrites it with posix.system.
    for fname, index0, index1 in [
        ("text_memo_space.pkl", b" 0", b" 1"),
        ("text_memo_underscore.pkl", b"0_0", b"0_1"),
        ("text_memo_nul.pkl", b"0\x00decoy", b"1\x00decoy"),
        ("text_memo_whitespace.pkl", b"\t0\r", b"\x0b1\x0c"),
    ]:
        data = (b"\x80\x04" + b"Vtorch\np0\n0" + b"VLongStorage\np1\n0"
                + b"Vposix\np" + index0 + b"\n0" + b"Vsystem\np" + index1 + b"\n0"
                + b"g0\ng1\n\x93" + call1(cmd(fname.split(".")[0])) + b".")
        put(out, fname, data, "text memo index CPython reads as an int (%r)" % index0.decode("latin-1"), "posix.system",
            "PUT %r overwrites memo 0 in CPython; the decoy torch.LongStorage stays in a parser that skips it" % index0.decode("latin-1"))

    # 6. Zip member names: torch finds data.pkl case-insensitively.
    evil0 = base.op_global("posix", "system") + b"(V" + cmd("zip_DATA_PKL").encode() + b"\ntR."
    put(out, "zip_DATA_PKL.ckpt", zip_with_pickle("DATA.PKL", evil0),
        "archive/DATA.PKL (torch's zip lookup ignores case); a protocol 0 pickle that does not start with 0x80",
        "posix.system", "torch reads it as data.pkl")
    benign = base.dict_pickle([("w", base.tensor_ops("0"))])
    evil = base.pickle.dumps(base.Reduce(os_system_stub(), cmd("zip_case_ambiguous")), protocol=2)
    put(out, "zip_case_ambiguous.ckpt", zip_with_pickle("data.pkl", benign, extra=[("Data.pkl", evil)]),
        "archive/data.pkl (benign) and archive/Data.pkl (malicious)", "posix.system",
        "which member torch's sorted, case-insensitive lookup returns is not ours to guess: both are walked and the file is ambiguous")

    # 7. A first opcode other than PROTO: torch.load unpickles any non-zip file from byte 0.
    put(out, "newtrue_first.pt", b"\x88" + b"0" + base.op_global("posix", "system") + b"(V" + cmd("newtrue_first").encode() + b"\ntR.",
        "file starting with NEWTRUE (0x88), not PROTO", "posix.system", "torch's legacy loader unpickles it as the 'magic number' pickle")
    put(out, "mark_first.pt", b"(" + b"V" + cmd("mark_first").encode() + b"\n" + b"iposix\nsystem\n.",
        "protocol 0 INST file (first byte MARK)", "posix.system", "")

    # 8. FRAME boundaries: the C unpickler ignores them; a strict reader stops at the crossing.
    frame = b"\x80\x04\x95" + struct.pack("<Q", 2) + base.op_global("os", "system") + call1(cmd("frame_crossing")) + b"."
    put(out, "frame_crossing.pkl", frame, "a GLOBAL line crossing a 2-byte FRAME", "os.system",
        "the C unpickler (torch.load) reads through the frame end; a frame-enforcing walk stopped before the GLOBAL")

    # 9. Tar archive without the ustar magic (v7 header): tarfile.open accepts it and torch
    # unpickles its 'storages' member.
    evil_storages = base.pickle.dumps(base.Reduce(os_system_stub(), cmd("v7_tar")), protocol=2)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for n, payload in [("sys_info", b"\x80\x02}."), ("storages", evil_storages), ("tensors", b"\x80\x02K\x00."), ("pickle", b"\x80\x02}.")]:
            info = tarfile.TarInfo(n)
            info.size = len(payload)
            info.mtime = 0
            t.addfile(info, io.BytesIO(payload))
    tar = bytearray(buf.getvalue())
    tar[257:265] = b"\x00" * 8  # no 'ustar' magic: a v7 header
    tar[148:156] = b" " * 8
    chk = sum(tar[:512])
    tar[148:156] = ("%06o\x00 " % chk).encode()
    put(out, "v7_tar.pt", bytes(tar), "tar checkpoint with a v7 header (no ustar magic)", "unknown.unknown",
        "torch.load tries tarfile.open first and unpickles the members; the tar walk is not done, so the file is flagged",
        open_code="invalidArchive")

    # 10. Amplification: stride-0 and overlapping views of tiny storages.
    gib_floats = 1 << 28  # 1 GiB of float32
    stride0 = base.dict_pickle([("w%d" % i, base.tensor_ops("0", numel=1, size=(gib_floats,), stride=(0,))) for i in range(3)])
    buf = io.BytesIO()
    base.write_zip(buf, [("data.pkl", stride0), ("byteorder", b"little"), ("data/0", base.floats(1)), ("version", b"3\n")])
    put(out, "expansion_stride0.ckpt", buf.getvalue(), "three stride-0 views of one float stretched to 1 GiB each",
        "", "3 GiB from 4 stored bytes", scan="safe", open_code="unsupportedTensor")
    side = 1 << 14
    overlap = base.dict_pickle([("w", base.tensor_ops("0", numel=2 * side, size=(side, side), stride=(1, 1)))])
    buf = io.BytesIO()
    base.write_zip(buf, [("data.pkl", overlap), ("byteorder", b"little"), ("data/0", base.floats(2 * side)), ("version", b"3\n")])
    put(out, "expansion_overlap.ckpt", buf.getvalue(), "one overlapping-stride view (stride (1, 1)) of 128 KiB stretched to 1 GiB",
        "", "1 GiB from 128 KiB: 8192x", scan="safe", open_code="unsupportedTensor")
    small = base.dict_pickle([("w", base.tensor_ops("0", numel=1, size=(1 << 18,), stride=(0,)))])
    buf = io.BytesIO()
    base.write_zip(buf, [("data.pkl", small), ("byteorder", b"little"), ("data/0", base.floats(1)), ("version", b"3\n")])
    put(out, "expansion_small.ckpt", buf.getvalue(), "a 1 MiB stride-0 view of one float (under the 64 MiB allowance)",
        "", "accepted", scan="safe", open_code="ok")


def os_system_stub():
    """posix.system as pickle names it, without touching the real function."""
    import posix
    return posix.system


def verify(out):
    """Loads harmless twins of the loader-side techniques with torch 2.15 / CPython, in a child."""
    code = r'''
import io, pickle, _pickle, struct, sys, zipfile, torch
def su(s):
    b = s.encode(); return b"\x8c" + bytes([len(b)]) + b
# dotted protocol-4 names reach os through torch.serialization, argparse, __main__
for mod, name in [("torch", "serialization.os.getpid"), ("argparse", "_os.getpid")]:
    data = b"\x80\x04" + su(mod) + su(name) + b"\x93)R."
    buf = io.BytesIO(data)
    import os
    assert _pickle.loads(data) == os.getpid(), (mod, name)
print("dotted names resolve: ok")
# text memo ' 0' / '0_0' / '0\x00x' overwrite index 0 in the C unpickler
for idx in [b" 0", b"0_0", b"0\x00x", b"\t0\r"]:
    data = b"Vdecoy\np0\n0Vreal\np" + idx + b"\n0g0\n."
    assert _pickle.loads(data) == "real", idx
print("text memo indices: ok")
# torch.load finds archive/DATA.PKL (benign dict, weights_only=True)
buf = io.BytesIO()
torch.save({"a": 1}, buf)
z = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
out = io.BytesIO()
with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as w:
    for n in z.namelist():
        w.writestr(n.replace("data.pkl", "DATA.PKL"), z.read(n))
print("DATA.PKL read by torch.load:", torch.load(io.BytesIO(out.getvalue()), weights_only=True))
# the archive prefix is compared case-sensitively (getAllRecords): an entry outside it stops torch.load
out = io.BytesIO()
with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as w:
    for n in z.namelist():
        w.writestr(n, z.read(n))
    w.writestr("ARCHIVE/x", b"1")
try:
    torch.load(io.BytesIO(out.getvalue()), weights_only=True)
    raise SystemExit("an entry outside the prefix was accepted")
except RuntimeError as e:
    print("entry outside the exact-case prefix refused by torch:", str(e)[:60])
# a non-zip file starting with NEWTRUE is unpickled by torch.load's legacy path (harmless print)
data = b"\x88" + b"0" + b"cbuiltins\nprint\n(Vnewtrue-first-unpickled\ntR."
try:
    torch.load(io.BytesIO(data), weights_only=False)
except Exception as e:
    print("torch.load then fails as expected:", type(e).__name__)
# the C unpickler ignores FRAME boundaries
data = b"\x80\x04\x95" + struct.pack("<Q", 2) + b"cbuiltins\nprint\n(Vframe-ignored\ntR."
_pickle.loads(data)
'''
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    print(r.stdout + r.stderr)
    if r.returncode != 0:
        raise SystemExit("verification failed")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--verify", action="store_true")
    args = ap.parse_args()
    make(args.out)
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(MANIFEST, f, indent=1)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(args.out, n)) for n in os.listdir(args.out))
    print("wrote %d fixtures, %d bytes" % (len(MANIFEST), total))
    if args.verify:
        verify(args.out)


if __name__ == "__main__":
    main()
