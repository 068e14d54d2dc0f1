import SafePickle
import Testing

@Suite("globals listing and classification")
struct PickleGlobalScannerTests {
    @Test("GLOBAL, INST and STACK_GLOBAL (direct and through the memo) are listed with offsets")
    func listing() {
        var bytes: [UInt8] = [0x80, 4] + Array("ctorch._utils\n_rebuild_tensor_v2\n".utf8)  // offset 2
        bytes += [0x8C, 2] + Array("os".utf8) + [0x94] + [0x8C, 6] + Array("system".utf8) + [0x94] + [0x93]  // direct
        bytes += [0x68, 0, 0x68, 1, 0x93]  // through the memo
        bytes += [0x8C, 1, 0x61, 0x8C, 1, 0x62, 0x30, 0x8C, 1, 0x63, 0x93]  // 'a' 'b' POP 'c': unresolvable
        bytes += Array("(ibuiltins\nexec\n".utf8)
        bytes += [0x2E]
        let listing = PickleGlobalScanner.scan(bytes)
        #expect(listing.error == nil)
        #expect(listing.endOffset == bytes.count)
        #expect(
            listing.globals.map(\.qualifiedName) == [
                "torch._utils._rebuild_tensor_v2", "os.system", "os.system", "unknown.unknown", "builtins.exec",
            ])
        #expect(listing.globals[0].offset == 2)
        #expect(listing.globals.map(\.safety) == [.safe, .dangerous, .dangerous, .dangerous, .dangerous])
        #expect(listing.globals[3].isResolved == false)
        #expect(listing.globals.map(\.opcode) == [.global, .stackGlobal, .stackGlobal, .stackGlobal, .inst])
    }

    @Test("the walk reports what it saw before an error")
    func partial() {
        let bytes: [UInt8] = [0x80, 2] + Array("cposix\nsystem\n".utf8) + [0x58, 0xFF, 0xFF, 0, 0]
        let listing = PickleGlobalScanner.scan(bytes)
        #expect(listing.globals.map(\.qualifiedName) == ["posix.system"])
        #expect(listing.error?.code == .truncated)
        #expect(listing.endOffset == nil)
    }

    @Test("the walk runs where the machine refuses (EXT, OBJ)")
    func refusedOpcodes() {
        let listing = PickleGlobalScanner.scan([0x80, 2, 0x82, 7, 0x28, 0x6F, 0x2E])
        #expect(listing.error == nil)
        #expect(listing.globals.first?.opcode == .ext1)
        #expect(listing.globals.first?.safety == .dangerous)
    }

    struct Case: CustomTestStringConvertible, Sendable {
        var module: String
        var name: String
        var safety: GlobalSafety
        var testDescription: String { "\(module).\(name) → \(safety)" }
    }

    static let classifications: [Case] = [
        Case(module: "torch._utils", name: "_rebuild_tensor_v2", safety: .safe),
        Case(module: "torch._utils", name: "_rebuild_tensor_v3", safety: .safe),
        Case(module: "torch._utils", name: "_rebuild_parameter", safety: .safe),
        Case(module: "torch._tensor", name: "_rebuild_from_type_v2", safety: .safe),
        Case(module: "torch", name: "FloatStorage", safety: .safe),
        Case(module: "torch.cuda", name: "HalfStorage", safety: .safe),
        Case(module: "torch", name: "UntypedStorage", safety: .safe),
        Case(module: "torch", name: "bfloat16", safety: .safe),
        Case(module: "torch", name: "Size", safety: .safe),
        Case(module: "collections", name: "OrderedDict", safety: .safe),
        Case(module: "_codecs", name: "encode", safety: .safe),
        Case(module: "numpy.core.multiarray", name: "scalar", safety: .safe),
        Case(module: "numpy._core.multiarray", name: "_reconstruct", safety: .safe),
        Case(module: "numpy", name: "dtype", safety: .safe),
        Case(module: "numpy.dtypes", name: "Float64DType", safety: .safe),
        Case(module: "pytorch_lightning.callbacks.model_checkpoint", name: "ModelCheckpoint", safety: .safe),
        Case(module: "__builtin__", name: "set", safety: .safe),
        Case(module: "builtins", name: "set", safety: .safe),
        Case(module: "my_project.models", name: "UNet", safety: .unknown),
        Case(module: "torch.nn.modules.linear", name: "Linear", safety: .unknown),
        Case(module: "collections", name: "OrderedDict.fromkeys", safety: .unknown),
        Case(module: "os", name: "system", safety: .dangerous),
        Case(module: "posix", name: "system", safety: .dangerous),
        Case(module: "nt", name: "system", safety: .dangerous),
        Case(module: "os.path", name: "join", safety: .dangerous),
        Case(module: "subprocess", name: "Popen", safety: .dangerous),
        Case(module: "commands", name: "getoutput", safety: .dangerous),
        Case(module: "__builtin__", name: "eval", safety: .dangerous),
        Case(module: "builtins", name: "exec", safety: .dangerous),
        Case(module: "builtins", name: "getattr", safety: .dangerous),
        Case(module: "builtins", name: "__import__", safety: .dangerous),
        Case(module: "builtins", name: "compile", safety: .dangerous),
        Case(module: "builtins", name: "open", safety: .dangerous),
        Case(module: "builtins", name: "breakpoint", safety: .dangerous),
        Case(module: "runpy", name: "_run_code", safety: .dangerous),
        Case(module: "pty", name: "spawn", safety: .dangerous),
        Case(module: "socket", name: "create_connection", safety: .dangerous),
        Case(module: "webbrowser", name: "open", safety: .dangerous),
        Case(module: "pickle", name: "loads", safety: .dangerous),
        Case(module: "_pickle", name: "loads", safety: .dangerous),
        Case(module: "shutil", name: "rmtree", safety: .dangerous),
        Case(module: "sys", name: "exit", safety: .dangerous),
        Case(module: "ctypes", name: "CDLL", safety: .dangerous),
        Case(module: "asyncio.unix_events", name: "_UnixSubprocessTransport", safety: .dangerous),
        Case(module: "httplib", name: "HTTPSConnection", safety: .dangerous),
        Case(module: "http.client", name: "HTTPSConnection", safety: .dangerous),
        Case(module: "requests.api", name: "get", safety: .dangerous),
        Case(module: "functools", name: "partial", safety: .dangerous),
        Case(module: "operator", name: "attrgetter", safety: .dangerous),
        Case(module: "_operator", name: "methodcaller", safety: .dangerous),
        Case(module: "code", name: "InteractiveInterpreter.runcode", safety: .dangerous),
        Case(module: "pkgutil", name: "resolve_name", safety: .dangerous),
        Case(module: "torch", name: "serialization.load", safety: .dangerous),
        Case(module: "torch.serialization", name: "load", safety: .dangerous),
        Case(module: "torch.storage", name: "_load_from_bytes", safety: .dangerous),
        Case(module: "torch._inductor.codecache", name: "compile_file", safety: .dangerous),
        Case(module: "torch.jit.unsupported_tensor_ops", name: "execWrapper", safety: .dangerous),
        Case(module: "numpy.f2py.crackfortran", name: "getlincoef", safety: .dangerous),
        Case(module: "uuid", name: "_get_command_stdout", safety: .dangerous),
        Case(module: "types", name: "CodeType", safety: .dangerous),
        Case(module: "torch", name: "Tensor.__reduce_ex__", safety: .dangerous),
        Case(module: "", name: "system", safety: .dangerous),
        Case(module: "os..path", name: "join", safety: .dangerous),
    ]

    @Test("classification", arguments: classifications)
    func classify(_ c: Case) {
        #expect(GlobalClassifier.classify(module: c.module, name: c.name) == c.safety)
    }
}
