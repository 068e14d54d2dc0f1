import SafePickle
import Testing

/// Expected values measured with CPython 3.11.7 (the fixture venv): `_pickle.loads` of
/// `Va\np<INDEX>\n0g0\n.` returns 'a' exactly when the index reads as 0, and `int()`/
/// `PyLong_FromString` give the other values (Fixtures/generate/make_pickle_bypasses.py --verify
/// re-checks the memo cases with torch's unpickler).
@Suite("CPython integer reading of text memo indices")
struct PythonIntegerTests {
    struct Case: CustomTestStringConvertible, Sendable {
        var line: [UInt8]
        var value: Int?
        var testDescription: String { "\(line) → \(value.map(String.init) ?? "error")" }
    }

    static let cases: [Case] = [
        Case(line: Array("0".utf8), value: 0),
        Case(line: Array("00".utf8), value: 0),
        Case(line: Array(" 0".utf8), value: 0),
        Case(line: Array("0 ".utf8), value: 0),
        Case(line: Array("+0".utf8), value: 0),
        Case(line: Array("-0".utf8), value: 0),
        Case(line: Array("0_0".utf8), value: 0),
        Case(line: Array("1_0".utf8), value: 10),
        Case(line: Array("-12".utf8), value: -12),
        Case(line: [0x09, 0x30, 0x0D], value: 0),
        Case(line: [0x0B, 0x30, 0x0C], value: 0),
        Case(line: [0x30, 0x00] + Array("junk".utf8), value: 0),
        Case(line: [0x30, 0x20, 0x00, 0x78], value: 0),
        Case(line: Array("0\n".utf8), value: 0),
        Case(line: Array("00000000000000000000000000000".utf8), value: 0),
        Case(line: Array("_0".utf8), value: nil),
        Case(line: Array("0__0".utf8), value: nil),
        Case(line: Array("0_".utf8), value: nil),
        Case(line: Array("0x0".utf8), value: nil),
        Case(line: Array("1e0".utf8), value: nil),
        Case(line: [], value: nil),
        Case(line: Array(" ".utf8), value: nil),
        Case(line: [0x00], value: nil),
        Case(line: [0x20, 0x00], value: nil),
        Case(line: [0xA0, 0x30], value: nil),
        Case(line: [0xD9, 0xA0], value: nil),
        Case(line: Array("99999999999999999999999".utf8), value: nil),
    ]

    @Test("PyLong_FromString(line, NULL, 10)", arguments: cases)
    func parse(_ c: Case) {
        #expect(PythonInteger.parseDecimalLine(c.line) == c.value)
    }
}

@Suite("globals resolve as CPython's find_class and torch's UnpicklerWrapper do")
struct GlobalResolutionTests {
    struct Case: CustomTestStringConvertible, Sendable {
        var module: String
        var name: String
        var proto: Int
        var context: UnpicklerContext = .pickle
        var resolved: String
        var safety: GlobalSafety
        var testDescription: String { "\(context) p\(proto) \(module) + \(name) → \(resolved) (\(safety))" }
    }

    static let cases: [Case] = [
        // Protocol 4 walks dotted names through module attributes.
        Case(module: "torch", name: "serialization.os.system", proto: 4, resolved: "torch.serialization.os.system", safety: .dangerous),
        Case(module: "argparse", name: "_os.system", proto: 4, resolved: "argparse._os.system", safety: .dangerous),
        Case(module: "__main__", name: "os.system", proto: 4, resolved: "__main__.os.system", safety: .dangerous),
        Case(module: "logging", name: "os.system", proto: 4, resolved: "logging.os.system", safety: .dangerous),
        Case(module: "my_project", name: "helpers.subprocess.run", proto: 5, resolved: "my_project.helpers.subprocess.run", safety: .dangerous),
        Case(module: "my_project", name: "helpers._sys.exit", proto: 4, resolved: "my_project.helpers._sys.exit", safety: .dangerous),
        Case(module: "numpy", name: "lib.npyio.savetxt", proto: 4, resolved: "numpy.lib.npyio.savetxt", safety: .dangerous),
        Case(
            module: "torch", name: "fx.graph_module.reduce_graph_module", proto: 4, resolved: "torch.fx.graph_module.reduce_graph_module",
            safety: .dangerous),
        Case(module: "x", name: "y.system", proto: 4, resolved: "x.y.system", safety: .dangerous),
        Case(module: "collections", name: "OrderedDict.fromkeys", proto: 4, resolved: "collections.OrderedDict.fromkeys", safety: .unknown),
        Case(module: "torch", name: "nn.Linear", proto: 4, resolved: "torch.nn.Linear", safety: .unknown),
        // Below protocol 4 a dotted name is one attribute, which no module has: never allowed,
        // and judged for danger as if walked.
        Case(module: "torch", name: "serialization.os.system", proto: 2, resolved: "torch.serialization.os.system", safety: .dangerous),
        Case(module: "collections", name: "OrderedDict.fromkeys", proto: 2, resolved: "collections.OrderedDict.fromkeys", safety: .unknown),
        Case(module: "collections", name: "OrderedDict", proto: 4, resolved: "collections.OrderedDict", safety: .safe),
        // fix_imports renames below protocol 3 only (_compat_pickle).
        Case(module: "__builtin__", name: "set", proto: 2, resolved: "builtins.set", safety: .safe),
        Case(module: "__builtin__", name: "set", proto: 0, resolved: "builtins.set", safety: .safe),
        Case(module: "__builtin__", name: "set", proto: 3, resolved: "__builtin__.set", safety: .unknown),
        Case(module: "__builtin__", name: "reduce", proto: 2, resolved: "functools.reduce", safety: .dangerous),
        Case(module: "__builtin__", name: "intern", proto: 2, resolved: "sys.intern", safety: .dangerous),
        Case(module: "commands", name: "getoutput", proto: 2, resolved: "subprocess.getoutput", safety: .dangerous),
        Case(module: "urllib", name: "urlopen", proto: 1, resolved: "urllib.request.urlopen", safety: .dangerous),
        Case(module: "copy_reg", name: "_reconstructor", proto: 2, resolved: "copyreg._reconstructor", safety: .unknown),
        Case(module: "exceptions", name: "ValueError", proto: 2, resolved: "builtins.ValueError", safety: .unknown),
        Case(module: "__builtin__", name: "eval", proto: 4, resolved: "__builtin__.eval", safety: .dangerous),
        // torch's UnpicklerWrapper: storage names, and torch.tensor → torch._tensor for zips.
        Case(module: "os", name: "FloatStorage", proto: 2, context: .torchZip, resolved: "torch.FloatStorage", safety: .safe),
        Case(module: "os", name: "FloatStorage", proto: 2, context: .torchLegacy, resolved: "torch.FloatStorage", safety: .safe),
        Case(module: "os", name: "FloatStorage", proto: 2, context: .pickle, resolved: "os.FloatStorage", safety: .dangerous),
        Case(module: "torch", name: "UntypedStorage", proto: 2, context: .torchZip, resolved: "torch.UntypedStorage", safety: .safe),
        Case(module: "torch", name: "FloatStorage.x", proto: 4, context: .torchZip, resolved: "torch.FloatStorage.x", safety: .unknown),
        Case(
            module: "torch.tensor", name: "_rebuild_from_type_v2", proto: 2, context: .torchZip, resolved: "torch._tensor._rebuild_from_type_v2",
            safety: .safe),
        Case(
            module: "torch.tensor", name: "_rebuild_from_type_v2", proto: 2, context: .torchLegacy, resolved: "torch.tensor._rebuild_from_type_v2",
            safety: .unknown),
        // Import-by-name helpers, file writers, exec.
        Case(module: "torch._utils", name: "_import_dotted_name", proto: 2, resolved: "torch._utils._import_dotted_name", safety: .dangerous),
        Case(module: "importlib", name: "import_module", proto: 2, resolved: "importlib.import_module", safety: .dangerous),
        Case(module: "builtins", name: "__import__", proto: 3, resolved: "builtins.__import__", safety: .dangerous),
        Case(module: "builtins", name: "getattr", proto: 3, resolved: "builtins.getattr", safety: .dangerous),
        Case(module: "operator", name: "attrgetter", proto: 2, resolved: "operator.attrgetter", safety: .dangerous),
        Case(module: "pydoc", name: "locate", proto: 2, resolved: "pydoc.locate", safety: .dangerous),
        Case(module: "codecs", name: "open", proto: 2, resolved: "codecs.open", safety: .dangerous),
        Case(module: "io", name: "open", proto: 2, resolved: "io.open", safety: .dangerous),
        Case(module: "numpy", name: "savetxt", proto: 2, resolved: "numpy.savetxt", safety: .dangerous),
        Case(module: "numpy", name: "save", proto: 2, resolved: "numpy.save", safety: .dangerous),
        Case(module: "shutil", name: "copyfile", proto: 2, resolved: "shutil.copyfile", safety: .dangerous),
        Case(
            module: "torch.fx.graph_module", name: "reduce_graph_module", proto: 2, resolved: "torch.fx.graph_module.reduce_graph_module",
            safety: .dangerous),
        Case(module: "tarfile", name: "open", proto: 2, resolved: "tarfile.open", safety: .dangerous),
        // The allow-list itself.
        Case(module: "torch._utils", name: "_rebuild_tensor_v2", proto: 2, resolved: "torch._utils._rebuild_tensor_v2", safety: .safe),
        Case(module: "torch._utils", name: "_rebuild_tensor_v2", proto: 4, resolved: "torch._utils._rebuild_tensor_v2", safety: .safe),
        Case(module: "torch", name: "_utils._rebuild_tensor_v2", proto: 4, resolved: "torch._utils._rebuild_tensor_v2", safety: .unknown),
        Case(module: "my_project.models", name: "UNet", proto: 2, resolved: "my_project.models.UNet", safety: .unknown),
        Case(module: "__main__", name: "Net", proto: 2, resolved: "__main__.Net", safety: .unknown),
        // A final attribute is only a name; walking through it is what reaches the module.
        Case(module: "my_project.models", name: "code", proto: 2, resolved: "my_project.models.code", safety: .unknown),
        Case(module: "my_project", name: "models.code", proto: 4, resolved: "my_project.models.code", safety: .unknown),
        Case(
            module: "my_project", name: "code.InteractiveInterpreter", proto: 4, resolved: "my_project.code.InteractiveInterpreter",
            safety: .dangerous),
    ]

    @Test("resolution and class", arguments: cases)
    func resolve(_ c: Case) {
        let reference = PickleGlobalReference(
            module: c.module, name: c.name, offset: 0, opcode: .global,
            protocolVersion: c.proto, context: c.context)
        #expect(reference.resolved.qualifiedName == c.resolved)
        #expect(reference.safety == c.safety)
    }
}

/// Globals of published advisories and bypass tests (picklescan's `init_data_files.py` GHSA
/// payloads, fickling's `test_bypasses.py`, modelscan's settings), as they are written in those
/// payloads: protocol 4 where the payload names a method through a class (`Class.method`).
@Suite("published bypass globals are dangerous once resolved")
struct PublishedGlobalsTests {
    struct Case: CustomTestStringConvertible, Sendable {
        var module: String
        var name: String
        var proto: Int = 4
        var testDescription: String { "\(module) + \(name)" }
    }

    static let cases: [Case] = [
        Case(module: "torch.utils.bottleneck.__main__", name: "run_cprofile"),
        Case(module: "torch._dynamo.guards", name: "GuardBuilder.get"),
        Case(module: "torch._inductor.codecache", name: "compile_file"),
        Case(module: "torch.fx.experimental.symbolic_shapes", name: "ShapeEnv.evaluate_guards_expression"),
        Case(module: "torch.jit.unsupported_tensor_ops", name: "execWrapper"),
        Case(module: "torch.utils._config_module", name: "ConfigModule.load_config"),
        Case(module: "torch.utils.collect_env", name: "run"),
        Case(module: "torch.utils.data.datapipes.utils.decoder", name: "basichandlers"),
        Case(module: "torch.serialization", name: "load", proto: 2),
        Case(module: "torch.storage", name: "_load_from_bytes", proto: 2),
        Case(module: "trace", name: "Trace.runctx"),
        Case(module: "cProfile", name: "runctx", proto: 2),
        Case(module: "profile", name: "Profile.run"),
        Case(module: "timeit", name: "timeit", proto: 2),
        Case(module: "lib2to3.pgen2.pgen", name: "ParserGenerator.make_label"),
        Case(module: "idlelib.pyshell", name: "ModifiedInterpreter.runcode"),
        Case(module: "code", name: "InteractiveInterpreter.runcode"),
        Case(module: "doctest", name: "debug_script", proto: 2),
        Case(module: "ensurepip", name: "_run_pip", proto: 2),
        Case(module: "pkgutil", name: "resolve_name", proto: 2),
        Case(module: "logging", name: "FileHandler", proto: 2),
        Case(module: "distutils.file_util", name: "write_file", proto: 2),
        Case(module: "asyncio.unix_events", name: "_UnixSubprocessTransport._start"),
        Case(module: "ctypes", name: "CDLL", proto: 2),
        Case(module: "operator", name: "methodcaller", proto: 2),
        Case(module: "pty", name: "spawn", proto: 2),
        Case(module: "numpy.f2py.crackfortran", name: "getlincoef", proto: 2),
        Case(module: "uuid", name: "_get_command_stdout", proto: 2),
        Case(module: "_osx_support", name: "_read_output", proto: 2),
        Case(module: "_aix_support", name: "_read_cmd_output", proto: 2),
        Case(module: "imaplib", name: "IMAP4_stream", proto: 2),
        Case(module: "_pyrepl.pager", name: "pipe_pager", proto: 2),
        Case(module: "io", name: "FileIO", proto: 2),
        Case(module: "urllib.request", name: "urlopen", proto: 2),
        Case(module: "types", name: "CodeType", proto: 2),
        Case(module: "marshal", name: "loads", proto: 2),
        Case(module: "cloudpickle.cloudpickle", name: "_make_function", proto: 2),
        Case(module: "_xxsubinterpreters", name: "run_string", proto: 2),
        Case(module: "_interpreters", name: "exec", proto: 2),
        Case(module: "multiprocessing.util", name: "spawnv_passfds", proto: 2),
        Case(module: "venv", name: "create", proto: 2),
        Case(module: "pip", name: "main", proto: 2),
        Case(module: "pydoc", name: "pipepager", proto: 2),
        Case(module: "functools", name: "partial", proto: 2),
        Case(module: "bdb", name: "Bdb.run"),
        Case(module: "runpy", name: "_run_code", proto: 2),
        Case(module: "builtins", name: "breakpoint", proto: 3),
        Case(module: "webbrowser", name: "open", proto: 2),
        Case(module: "socket", name: "create_connection", proto: 2),
        Case(module: "requests.api", name: "get", proto: 2),
        Case(module: "aiohttp.client", name: "ClientSession", proto: 2),
        Case(module: "modelscan.settings", name: "DEFAULT_SETTINGS", proto: 2),
        Case(module: "picklescan.scanner", name: "scan_pickle_bytes", proto: 2),
        Case(module: "fickling", name: "load", proto: 2),
    ]

    @Test("classed dangerous", arguments: cases)
    func dangerous(_ c: Case) {
        let reference = PickleGlobalReference(module: c.module, name: c.name, offset: 0, opcode: .stackGlobal, protocolVersion: c.proto)
        #expect(reference.safety == .dangerous, "\(reference.resolved)")
    }
}

/// Bytes of a `SHORT_BINUNICODE` string.
private func short(_ s: String) -> [UInt8] { [0x8C, UInt8(s.utf8.count)] + Array(s.utf8) }

@Suite("the globals scanner reads as CPython's C unpickler does")
struct ScannerDifferentialTests {
    /// `PUT` lines CPython reads as index 0 / 1 that a naive parser skips, leaving a decoy.
    static let memoSpellings: [[[UInt8]]] = [
        [Array(" 0".utf8), Array(" 1".utf8)],
        [Array("0_0".utf8), Array("0_1".utf8)],
        [[0x30, 0x00, 0x78], [0x31, 0x00, 0x78]],
        [[0x09, 0x30, 0x0D], [0x0B, 0x31, 0x0C]],
        [Array("+0".utf8), Array("+1".utf8)],
    ]

    @Test("a text memo index CPython reads overwrites the decoy", arguments: memoSpellings)
    func memoDecoy(_ spelling: [[UInt8]]) throws {
        var bytes: [UInt8] = [0x80, 4] + Array("Vtorch\np0\n0VLongStorage\np1\n0Vposix\np".utf8) + spelling[0]
        bytes += Array("\n0Vsystem\np".utf8) + spelling[1] + Array("\n0g0\ng1\n".utf8) + [0x93, 0x4E, 0x85, 0x52, 0x2E]
        let listing = PickleGlobalScanner.scan(bytes)
        #expect(listing.error == nil)
        #expect(listing.globals.map(\.qualifiedName) == ["posix.system"])
        #expect(listing.globals.first?.safety == .dangerous)
        // The machine reads the memo the same way.
        let document = try PickleMachine().load(bytes)
        #expect(document.globals.map(\.qualifiedName) == ["posix.system"])
    }

    @Test("a PUT line CPython cannot read ends the walk as it ends the unpickler")
    func unreadablePut() {
        let bytes: [UInt8] = Array("Vos\np_0\ncposix\nsystem\n.".utf8)
        let listing = PickleGlobalScanner.scan(bytes)
        #expect(listing.globals.isEmpty)
        #expect(listing.error?.code == .invalidValue)
    }

    @Test("a later PROTO sets the protocol later globals resolve with")
    func lateProto() {
        let bytes: [UInt8] = [0x80, 2, 0x4E, 0x30, 0x80, 4] + Array("cargparse\n_os.system\n".utf8) + [0x4E, 0x85, 0x52, 0x2E]
        let listing = PickleGlobalScanner.scan(bytes)
        #expect(listing.protocolVersion == 2)
        #expect(listing.globals.first?.protocolVersion == 4)
        #expect(listing.globals.first?.resolved.attributes == ["_os", "system"])
        #expect(listing.globals.first?.safety == .dangerous)
    }

    @Test("FRAME boundaries do not stop the walk (the C unpickler ignores them)")
    func frameCrossing() {
        var bytes: [UInt8] = [0x80, 4, 0x95, 2, 0, 0, 0, 0, 0, 0, 0]
        bytes += Array("cos\nsystem\n".utf8) + [0x4E, 0x85, 0x52, 0x2E]
        let listing = PickleGlobalScanner.scan(bytes)
        #expect(listing.error == nil)
        #expect(listing.globals.map(\.resolved.qualifiedName) == ["os.system"])
        // The machine still refuses the frame violation.
        #expect(throws: PickleError.self) { try PickleMachine().load(bytes) }
    }

    @Test("a walk stopped by our own limit leaves an unresolved, dangerous reference")
    func limitHides() {
        var bytes: [UInt8] = [0x80, 2]
        bytes += Array(repeating: 0x4E, count: 20) + Array("cposix\nsystem\n".utf8) + [0x2E]
        let listing = PickleGlobalScanner.scan(bytes, limits: PickleLimits(maximumOpcodes: 10))
        #expect(listing.error?.code == .limitExceeded)
        #expect(listing.globals.count == 1)
        #expect(listing.globals.first?.isResolved == false)
        #expect(listing.globals.first?.safety == .dangerous)
    }

    @Test("protocol-4 STACK_GLOBAL names carry the protocol")
    func stackGlobal() {
        let bytes: [UInt8] = [0x80, 4] + short("torch") + short("serialization.os.system") + [0x93, 0x2E]
        let listing = PickleGlobalScanner.scan(bytes, context: .torchZip)
        #expect(listing.globals.first?.resolved.qualifiedName == "torch.serialization.os.system")
        #expect(listing.globals.first?.safety == .dangerous)
    }

    struct UnicodeCase: CustomTestStringConvertible, Sendable {
        var line: String
        var value: String
        var testDescription: String { line }
    }

    /// Values from CPython 3.11.7 `_pickle.loads(b"V" + line + b"\n.")`.
    static let unicode: [UnicodeCase] = [
        UnicodeCase(line: "\\u0041", value: "A"),
        UnicodeCase(line: "\\\\u0041", value: "\\\\u0041"),
        UnicodeCase(line: "\\\\\\u0041", value: "\\\\A"),
        UnicodeCase(line: "\\x", value: "\\x"),
    ]

    @Test("UNICODE decodes raw-unicode-escape like CPython (odd backslash runs only)", arguments: unicode)
    func rawUnicode(_ c: UnicodeCase) throws {
        let document = try PickleMachine().load(Array("V\(c.line)\n.".utf8))
        #expect(document.string(document.root) == c.value)
    }

    @Test("STRING decodes \\a \\b \\f \\v like CPython")
    func stringEscapes() throws {
        let document = try PickleMachine().load(Array("S'\\a\\b\\f\\v'\n.".utf8))
        #expect(document.string(document.root) == "\u{07}\u{08}\u{0C}\u{0B}")
    }
}
