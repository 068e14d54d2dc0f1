/// How much we trust a global a pickle names.
public enum GlobalSafety: String, Sendable, Hashable, Comparable, CaseIterable {
    /// On the allow-list: torch rebuild functions, storage types, dtypes, plain containers,
    /// numpy scalars and the Lightning checkpoint callback.
    case safe
    /// Neither allowed nor known to be dangerous (a model class, an unusual helper).
    case unknown
    /// Runs commands, evaluates code, opens files or sockets, or reaches arbitrary attributes.
    case dangerous

    public static func < (a: GlobalSafety, b: GlobalSafety) -> Bool { a.rank < b.rank }
    private var rank: Int {
        switch self {
        case .safe: 0
        case .unknown: 1
        case .dangerous: 2
        }
    }
}

/// A global named by a pickle, where it was named, and whether its operands could be resolved.
public struct PickleGlobalReference: Hashable, Sendable, CustomStringConvertible {
    public var module: String
    public var name: String
    /// Byte offset of the naming opcode.
    public var offset: Int
    /// `GLOBAL`, `STACK_GLOBAL`, `INST` or `EXT1`/`EXT2`/`EXT4`.
    public var opcode: PickleOpcode
    /// `false` when a `STACK_GLOBAL`'s operands (or an `EXT` code) could not be resolved
    /// statically; `module` and `name` are then `"unknown"`.
    public var isResolved: Bool

    public init(module: String, name: String, offset: Int, opcode: PickleOpcode, isResolved: Bool = true) {
        self.module = module
        self.name = name
        self.offset = offset
        self.opcode = opcode
        self.isResolved = isResolved
    }

    /// `module.name`.
    public var qualifiedName: String { module.isEmpty ? name : "\(module).\(name)" }

    /// The classification; unresolved references are dangerous (as picklescan treats them).
    public var safety: GlobalSafety {
        isResolved ? GlobalClassifier.classify(module: module, name: name) : .dangerous
    }

    public var description: String { "\(opcode.name) \(qualifiedName) at byte \(offset)" }
}

/// Classifies globals as safe (allow-list), dangerous (deny-list) or unknown.
///
/// Sources: torch's `weights_only` allow-list (`torch/_weights_only_unpickler.py`),
/// AUTOMATIC1111's `modules/safe.py`, picklescan's `_safe_globals`/`_unsafe_globals`,
/// modelscan's `unsafe_globals`, fickling's `UNSAFE_IMPORTS` (see Docs/torch-checkpoints.md).
/// Classification never imports anything; it only compares names.
public enum GlobalClassifier {
    /// Classifies `module.name`.
    ///
    /// Python 2 module names are mapped first (`__builtin__` → `builtins`). A dotted `name`
    /// (protocol 4 qualified names) is checked at every split of the full dotted path, so
    /// `torch` + `serialization.load` and `os.path` + `join` are both caught. Only exact,
    /// undotted matches are safe.
    public static func classify(module rawModule: String, name: String) -> GlobalSafety {
        let module = normalizedModule(rawModule)
        let components = (module.split(separator: ".", omittingEmptySubsequences: false) +
                          name.split(separator: ".", omittingEmptySubsequences: false)).map(String.init)
        if components.contains(where: { $0.isEmpty }) || module.isEmpty || name.isEmpty { return .dangerous }
        // Dangerous at any split point: a module (or any parent module) in the module list, or
        // a (module, first name component) pair in the name list.
        for split in 1..<components.count {
            let candidateModule = components[0..<split].joined(separator: ".")
            let candidateName = components[split]
            if isDangerous(module: candidateModule, name: candidateName) { return .dangerous }
        }
        // Attribute walks through dunder names (`__globals__`, `__builtins__`, `__subclasses__`)
        // are the classic way from a harmless object to `eval`.
        if components.dropFirst().contains(where: { $0.hasPrefix("__") && $0.hasSuffix("__") && $0 != "__main__" }) {
            return .dangerous
        }
        if !name.contains("."), isSafe(module: module, name: name) { return .safe }
        return .unknown
    }

    /// Python 2 names that CPython's unpickler maps to Python 3 ones (`_compat_pickle`).
    static func normalizedModule(_ module: String) -> String {
        switch module {
        case "__builtin__", "exceptions": "builtins"
        case "copy_reg": "copyreg"
        case "cPickle": "pickle"
        case "httplib": "http.client"
        case "urllib2": "urllib.request"
        case "Tkinter": "tkinter"
        default: module
        }
    }

    private static func isDangerous(module: String, name: String) -> Bool {
        // The module or any of its parents is dangerous as a whole.
        var prefix = module
        while true {
            if dangerousModules.contains(prefix) { return true }
            guard let dot = prefix.lastIndex(of: ".") else { break }
            prefix = String(prefix[..<dot])
        }
        if let names = dangerousNames[module], names.contains(name) { return true }
        return false
    }

    private static func isSafe(module: String, name: String) -> Bool {
        if let names = safeNames[module], names.contains(name) { return true }
        // Storage classes: torch maps any `torch...XStorage` name through its storage table.
        if module == "torch" || module == "torch.cuda" || module == "torch.storage",
           storageNames.contains(name) { return true }
        if module == "numpy.dtypes", name.hasSuffix("DType") { return true }
        return false
    }

    /// Modules dangerous as a whole (submodules included).
    static let dangerousModules: Set<String> = [
        "os", "posix", "nt", "posixpath", "ntpath", "subprocess", "_posixsubprocess", "sys", "pty", "commands",
        "runpy", "socket", "_socket", "ssl", "shutil", "webbrowser", "pickle", "_pickle", "pickletools", "dill",
        "cloudpickle", "joblib", "marshal", "ctypes", "_ctypes", "asyncio", "aiohttp", "bdb", "pdb", "cProfile",
        "profile", "pydoc", "timeit", "test", "http", "urllib", "urllib3", "requests", "httpx", "ftplib",
        "smtplib", "telnetlib", "poplib", "xmlrpc", "socketserver", "uuid", "venv", "pip", "ensurepip",
        "_osx_support", "_aix_support", "_pyrepl", "importlib", "_imp", "imp", "pkgutil", "zipimport", "code",
        "codeop", "multiprocessing", "concurrent", "threading", "_thread", "signal", "types", "gc", "site",
        "sysconfig", "unittest", "doctest", "idlelib", "lib2to3", "distutils", "setuptools", "_interpreters",
        "_xxsubinterpreters", "_frozen_importlib", "_frozen_importlib_external", "trace", "tempfile", "glob",
        "fileinput", "linecache", "tkinter", "turtle", "imaplib", "mailcap", "platform", "pathlib",
        "numpy.f2py", "numpy.distutils", "numpy.testing", "torch.hub", "torch.utils.bottleneck",
        "torch.utils.collect_env", "torch._inductor", "torch._dynamo", "torch.jit.unsupported_tensor_ops",
        "torch.utils.cpp_extension", "torch.utils.data.datapipes", "torch.utils._config_module", "torch.package",
        "fickling", "picklescan", "modelscan", "modelaudit", "IPython", "jinja2", "yaml",
    ]

    /// Specific dangerous names, by module.
    static let dangerousNames: [String: Set<String>] = [
        "builtins": [
            "eval", "exec", "execfile", "compile", "getattr", "setattr", "delattr", "__import__", "open", "apply",
            "breakpoint", "input", "globals", "locals", "vars", "help", "exit", "quit", "reload", "memoryview",
            "__build_class__", "__loader__", "__spec__", "type", "object", "super", "classmethod", "staticmethod",
            "property",
        ],
        "io": ["FileIO", "open", "open_code", "BufferedWriter", "TextIOWrapper"],
        "_io": ["FileIO", "open", "open_code", "BufferedWriter", "TextIOWrapper"],
        "functools": ["partial", "reduce", "partialmethod", "singledispatch", "wraps", "update_wrapper", "cached_property"],
        "operator": ["attrgetter", "itemgetter", "methodcaller", "call"],
        "_operator": ["attrgetter", "itemgetter", "methodcaller", "call"],
        "logging": ["FileHandler", "config"],
        "logging.handlers": ["RotatingFileHandler", "TimedRotatingFileHandler", "WatchedFileHandler", "SocketHandler",
                             "DatagramHandler", "SysLogHandler", "SMTPHandler", "HTTPHandler"],
        "logging.config": ["listen", "fileConfig", "dictConfig"],
        "collections": ["namedtuple"],
        "numpy": ["load", "loads", "fromfile", "save", "savez", "tofile"],
        "numpy.lib.npyio": ["load"],
        "torch": ["load", "save", "compile", "_load_global_deps", "jit", "hub", "package"],
        "torch.serialization": ["load", "_load", "_legacy_load", "save"],
        "torch.storage": ["_load_from_bytes"],
        "torch.utils": ["bottleneck", "collect_env"],
        "torch.utils.checkpoint": ["checkpoint"],
        "torch.jit": ["load", "_load_for_lite_interpreter", "unsupported_tensor_ops", "_script", "script", "trace"],
        "torch.fx.experimental.symbolic_shapes": ["ShapeEnv"],
    ]

    /// Every storage class name torch writes.
    static let storageNames: Set<String> = [
        "DoubleStorage", "FloatStorage", "HalfStorage", "BFloat16Storage", "LongStorage", "IntStorage",
        "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage", "ComplexDoubleStorage", "ComplexFloatStorage",
        "QInt8Storage", "QInt32Storage", "QUInt8Storage", "QUInt4x2Storage", "QUInt2x4Storage",
        "UntypedStorage", "TypedStorage",
    ]

    /// The allow-list, by module.
    static let safeNames: [String: Set<String>] = [
        "torch._utils": [
            "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
            "_rebuild_parameter_with_state", "_rebuild_qtensor", "_rebuild_sparse_tensor",
            "_rebuild_meta_tensor_no_storage", "_rebuild_wrapper_subclass", "_rebuild_device_tensor_from_cpu_tensor",
            "_rebuild_device_tensor_from_numpy", "_rebuild_nested_tensor",
        ],
        "torch._tensor": ["_rebuild_from_type_v2"],
        "torch": [
            "Size", "Tensor", "device", "dtype", "float32", "float", "float64", "double", "float16", "half",
            "bfloat16", "int64", "long", "int32", "int", "int16", "short", "int8", "uint8", "bool", "uint16",
            "uint32", "uint64", "complex64", "cfloat", "complex128", "cdouble", "complex32", "chalf",
            "float8_e5m2", "float8_e4m3fn", "float8_e5m2fnuz", "float8_e4m3fnuz", "float8_e8m0fnu",
            "float4_e2m1fn_x2", "bits8", "bits16", "bits1x8", "bits2x4", "bits4x2", "qint8", "quint8", "qint32",
            "quint4x2", "quint2x4", "per_tensor_affine", "per_channel_affine", "per_tensor_symmetric",
            "per_channel_symmetric", "per_channel_affine_float_qparams", "strided", "sparse_coo", "sparse_csr",
            "FloatTensor", "DoubleTensor", "HalfTensor", "BFloat16Tensor", "LongTensor", "IntTensor",
            "ShortTensor", "CharTensor", "ByteTensor", "BoolTensor",
        ],
        "torch.nn.parameter": ["Parameter", "Buffer", "UninitializedParameter"],
        "torch.serialization": ["_get_layout"],
        "torch.nn.modules.container": ["ParameterDict", "ParameterList"],
        "collections": ["OrderedDict", "Counter", "defaultdict", "deque"],
        "builtins": ["set", "frozenset", "bytearray", "complex", "slice", "range", "dict", "list", "tuple", "int",
                     "float", "str", "bytes", "bool"],
        "_codecs": ["encode"],
        "codecs": ["encode"],
        "numpy": ["dtype", "ndarray", "float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8",
                  "bool_"],
        "numpy.core.multiarray": ["_reconstruct", "scalar"],
        "numpy._core.multiarray": ["_reconstruct", "scalar"],
        "numpy.core.numeric": ["_frombuffer"],
        "numpy._core.numeric": ["_frombuffer"],
        "argparse": ["Namespace"],
        "pytorch_lightning.callbacks.model_checkpoint": ["ModelCheckpoint"],
        "lightning.pytorch.callbacks.model_checkpoint": ["ModelCheckpoint"],
        "pytorch_lightning.callbacks.early_stopping": ["EarlyStopping"],
        "lightning.pytorch.callbacks.early_stopping": ["EarlyStopping"],
    ]
}
