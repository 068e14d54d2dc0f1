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

/// Which unpickler will read a pickle: it decides how a global's name is resolved.
public enum UnpicklerContext: String, Sendable, Hashable {
    /// CPython's `pickle.load` (`_pickle.Unpickler.find_class`): the legacy format's magic,
    /// protocol, sys_info and storage-key pickles, and any plain pickle.
    case pickle
    /// torch's `UnpicklerWrapper` for a zip archive's `data.pkl` (`torch/serialization.py`
    /// `_load`): a name that is one of torch's 17 legacy storage types is a storage whatever
    /// its module, and the module `torch.tensor` is read as `torch._tensor`.
    case torchZip
    /// torch's `UnpicklerWrapper` for the legacy format's object pickle (`_legacy_load`):
    /// the storage rule, without the module mapping.
    case torchLegacy
}

/// What a global resolves to when an unpickler looks it up: the module it imports and the
/// attributes it then reads, one `getattr` each.
public struct ResolvedGlobal: Hashable, Sendable, CustomStringConvertible {
    /// The module `__import__`ed (after Python 2 renames).
    public var module: String
    /// The attribute path read from the module: one name, or several for a protocol 4+
    /// dotted name (`serialization.os.system`).
    public var attributes: [String]
    /// A torch legacy storage type (`FloatStorage`…) that torch's unpickler maps itself.
    public var isTorchStorage: Bool

    public init(module: String, attributes: [String], isTorchStorage: Bool = false) {
        self.module = module
        self.attributes = attributes
        self.isTorchStorage = isTorchStorage
    }

    /// `module.attribute.attribute…`.
    public var qualifiedName: String {
        let path = attributes.joined(separator: ".")
        return module.isEmpty ? path : "\(module).\(path)"
    }

    public var description: String { qualifiedName }
}

/// Resolves a `GLOBAL`/`STACK_GLOBAL`/`INST` name exactly as `Unpickler.find_class` does.
///
/// CPython (`Lib/pickle.py` and `Modules/_pickle.c`, `find_class`): when the protocol in force
/// (the last `PROTO` seen, 0 without one) is below 3 and `fix_imports` is on, a
/// (module, name) pair in `_compat_pickle.NAME_MAPPING` is renamed, else a module in
/// `IMPORT_MAPPING`; the module is imported; then with protocol 4 or more the name is split on
/// `.` and each part read with `getattr` in turn, below 4 it is one `getattr`. torch's
/// `UnpicklerWrapper.find_class` runs first (see `UnpicklerContext`).
public enum GlobalResolver {
    /// torch's legacy storage type names (`torch/storage.py` `_dtype_to_storage_type_map`).
    static let torchStorageTypes: Set<String> = [
        "DoubleStorage", "FloatStorage", "HalfStorage", "LongStorage", "IntStorage", "ShortStorage", "CharStorage",
        "ByteStorage", "BoolStorage", "BFloat16Storage", "ComplexDoubleStorage", "ComplexFloatStorage",
        "QInt8Storage", "QInt32Storage", "QUInt8Storage", "QUInt4x2Storage", "QUInt2x4Storage",
    ]

    /// Resolves `module` + `name` under `protocolVersion` for `context`.
    public static func resolve(module: String, name: String, protocolVersion: Int, context: UnpicklerContext) -> ResolvedGlobal {
        var module = module
        var name = name
        if context != .pickle {
            if name.contains("Storage"), torchStorageTypes.contains(name) {
                return ResolvedGlobal(module: "torch", attributes: [name], isTorchStorage: true)
            }
            if context == .torchZip, module == "torch.tensor" { module = "torch._tensor" }
        }
        if protocolVersion < 3 {
            if let renamed = CompatPickleMapping.names[module + "\n" + name] {
                module = renamed.module
                name = renamed.name
            } else if let renamed = CompatPickleMapping.modules[module] {
                module = renamed
            }
        }
        if protocolVersion >= 4 {
            return ResolvedGlobal(module: module, attributes: name.split(separator: ".", omittingEmptySubsequences: false).map(String.init))
        }
        // Below protocol 4 a dotted name is one attribute name, which a module does not have;
        // the lookup fails, so nothing runs. It is kept whole (and never allowed).
        return ResolvedGlobal(module: module, attributes: [name])
    }
}

/// A global named by a pickle, where it was named, and whether its operands could be resolved.
public struct PickleGlobalReference: Hashable, Sendable, CustomStringConvertible {
    /// The module as written in the pickle.
    public var module: String
    /// The name as written in the pickle.
    public var name: String
    /// Byte offset of the naming opcode.
    public var offset: Int
    /// `GLOBAL`, `STACK_GLOBAL` or `INST` or `EXT1`/`EXT2`/`EXT4`; for a pickle the walk could
    /// not follow to its end, the opcode where it stopped.
    public var opcode: PickleOpcode
    /// `false` when a `STACK_GLOBAL`'s operands (or an `EXT` code) could not be resolved
    /// statically, or the rest of the pickle is hidden from the walk; `module` and `name` are
    /// then `"unknown"` and `reason` says why.
    public var isResolved: Bool
    /// The protocol in force when the global was named (the last `PROTO`, 0 without one).
    public var protocolVersion: Int
    /// The unpickler the pickle is meant for.
    public var context: UnpicklerContext
    /// Why an unresolved reference is unresolved.
    public var reason: String?

    public init(
        module: String, name: String, offset: Int, opcode: PickleOpcode, isResolved: Bool = true,
        protocolVersion: Int = 2, context: UnpicklerContext = .pickle, reason: String? = nil
    ) {
        self.module = module
        self.name = name
        self.offset = offset
        self.opcode = opcode
        self.isResolved = isResolved
        self.protocolVersion = protocolVersion
        self.context = context
        self.reason = reason
    }

    /// `module.name` as written.
    public var qualifiedName: String { module.isEmpty ? name : "\(module).\(name)" }

    /// What `find_class` looks up (see `GlobalResolver`).
    public var resolved: ResolvedGlobal {
        GlobalResolver.resolve(module: module, name: name, protocolVersion: protocolVersion, context: context)
    }

    /// The classification of the resolved target; unresolved references are dangerous (as
    /// picklescan treats them).
    public var safety: GlobalSafety {
        isResolved ? GlobalClassifier.classify(resolved) : .dangerous
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
    /// Classifies `module.name` as written, resolved the way the most permissive unpickler
    /// would: a dotted name as protocol 4 resolves it (an attribute walk), an undotted one as
    /// protocol 2 does (with the Python 2 renames). Use `classify(_:)` with the reference's
    /// own protocol where it is known.
    public static func classify(module: String, name: String) -> GlobalSafety {
        classify(GlobalResolver.resolve(module: module, name: name, protocolVersion: name.contains(".") ? 4 : 2, context: .pickle))
    }

    /// Classifies what an unpickler will look up.
    ///
    /// Safe only when the target is on the allow-list: one attribute of one module, listed
    /// exactly (or a torch storage type that torch maps itself). Dangerous when the module or
    /// any parent is on the module deny-list; when (module, attribute) is on the name deny-list
    /// at any split of the full dotted path (`torch` + `serialization.load`); when an attribute
    /// on the way names a dangerous module (`serialization.os.system`, `_os.system`: modules
    /// re-export what they import); when any attribute is a dunder (`__globals__`,
    /// `__builtins__`); or when an attribute walk ends on a name that runs or writes something
    /// (`system`, `exec`, `open`…). Everything else is unknown, which the gate refuses too.
    public static func classify(_ target: ResolvedGlobal) -> GlobalSafety {
        if target.isTorchStorage { return .safe }
        if target.attributes.isEmpty { return .dangerous }
        // A dotted name below protocol 4 is one attribute CPython cannot find; it is never safe,
        // and for danger it is judged as if walked (an unpickler that walks it would reach the
        // same target).
        let attributes = target.attributes.flatMap { $0.split(separator: ".", omittingEmptySubsequences: false).map(String.init) }
        let moduleParts = target.module.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        let components = moduleParts + attributes
        if components.contains(where: { $0.isEmpty }) { return .dangerous }
        // Python 2 spellings count for danger whatever the protocol.
        let normalized = [normalizedModule(components[0])] + components.dropFirst()
        for parts in [components, normalized] {
            for split in 1..<parts.count where isDangerous(module: parts[0..<split].joined(separator: "."), name: parts[split]) {
                return .dangerous
            }
        }
        // An attribute walked through that names a dangerous module: `argparse._os`,
        // `torch.serialization.os`, `__main__.subprocess`; and what is read from it. (A final
        // attribute is only a name: `models.code` is a model's own thing.)
        for i in moduleParts.count..<(components.count - 1) {
            let alias = String(components[i].drop(while: { $0 == "_" }))
            for candidate in Set([components[i], alias]) where !candidate.isEmpty {
                if dangerousModules.contains(candidate) || dangerousModules.contains(normalizedModule(candidate)) { return .dangerous }
                if i + 1 < components.count, isDangerous(module: normalizedModule(candidate), name: components[i + 1]) { return .dangerous }
            }
        }
        // Attribute walks through dunder names (`__globals__`, `__builtins__`, `__subclasses__`)
        // are the classic way from a harmless object to `eval`.
        if components.dropFirst().contains(where: { $0.hasPrefix("__") && $0.hasSuffix("__") && $0 != "__main__" }) {
            return .dangerous
        }
        if attributes.count > 1 {
            if let last = attributes.last, sinkNames.contains(last) { return .dangerous }
            return .unknown
        }
        if isSafe(module: target.module, name: attributes[0]) { return .safe }
        return .unknown
    }

    /// Python 2 module names that CPython's unpickler maps to Python 3 ones (`_compat_pickle`).
    static func normalizedModule(_ module: String) -> String {
        if module == "exceptions" { return "builtins" }
        return CompatPickleMapping.modules[module] ?? module
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
            storageNames.contains(name)
        {
            return true
        }
        if module == "numpy.dtypes", name.hasSuffix("DType"), name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber) }) { return true }
        return false
    }

    /// Names that, at the end of an attribute walk, run commands or code, or write, move or
    /// delete files (whatever object they are read from).
    static let sinkNames: Set<String> = [
        "system", "popen", "popen2", "popen3", "exec", "eval", "execv", "execve", "execl", "execle", "execlp", "execvp",
        "execvpe", "spawnl", "spawnle", "spawnv", "spawnve", "spawnvp", "posix_spawn", "posix_spawnp", "startfile", "run",
        "call", "check_call", "check_output", "Popen", "getoutput", "getstatusoutput", "__import__", "import_module",
        "_import_dotted_name", "compile", "open", "remove", "unlink", "rmtree", "rmdir", "removedirs", "rename",
        "renames", "replace", "move", "copy", "copyfile", "copytree", "write", "writelines", "write_text",
        "write_bytes", "save", "savez", "savetxt", "tofile", "dump", "load", "loads", "getattr", "setattr", "delattr",
        "globals", "locals", "vars", "breakpoint", "input", "kill", "killpg", "fork", "forkpty", "putenv", "chmod",
        "chown", "symlink", "link", "truncate", "mkdir", "makedirs", "urlopen", "urlretrieve", "connect",
        "create_connection", "exit", "_exit", "abort", "attrgetter", "methodcaller", "itemgetter", "resolve_name",
        "locate", "run_module", "run_path", "_run_code", "runcode", "runsource", "interact", "execfile",
    ]

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
        // Import by name, compile or exec code (torch.fx regenerates and execs Python source).
        "torch.fx", "torch.utils.model_zoo", "numpy.ctypeslib", "cffi", "_multiprocessing",
        // Write, move or delete files and databases.
        "zipfile", "tarfile", "shelve", "dbm", "sqlite3", "_sqlite3", "mmap", "gzip", "bz2", "lzma", "zipapp", "filecmp",
        "resource", "atexit", "_posixshmem", "_winapi", "msvcrt", "winreg", "_winreg", "nturl2path",
    ]

    /// Specific dangerous names, by module.
    static let dangerousNames: [String: Set<String>] = [
        "builtins": [
            "eval", "exec", "execfile", "compile", "getattr", "setattr", "delattr", "__import__", "open", "apply",
            "breakpoint", "input", "globals", "locals", "vars", "help", "exit", "quit", "reload", "memoryview",
            "__build_class__", "__loader__", "__spec__", "type", "object", "super", "classmethod", "staticmethod",
            "property",
        ],
        "io": ["FileIO", "open", "open_code", "BufferedWriter", "BufferedRandom", "BufferedRWPair", "TextIOWrapper"],
        "_io": ["FileIO", "open", "open_code", "BufferedWriter", "BufferedRandom", "BufferedRWPair", "TextIOWrapper"],
        "codecs": ["open", "EncodedFile", "StreamReaderWriter", "StreamRecoder", "StreamWriter", "getwriter", "iterencode"],
        "functools": ["partial", "reduce", "partialmethod", "singledispatch", "wraps", "update_wrapper", "cached_property"],
        "operator": ["attrgetter", "itemgetter", "methodcaller", "call"],
        "_operator": ["attrgetter", "itemgetter", "methodcaller", "call"],
        "logging": ["FileHandler", "config"],
        "logging.handlers": [
            "RotatingFileHandler", "TimedRotatingFileHandler", "WatchedFileHandler", "SocketHandler",
            "DatagramHandler", "SysLogHandler", "SMTPHandler", "HTTPHandler",
        ],
        "logging.config": ["listen", "fileConfig", "dictConfig"],
        "collections": ["namedtuple"],
        "numpy": [
            "load", "loads", "fromfile", "save", "savez", "savez_compressed", "savetxt", "tofile", "memmap",
            "DataSource",
        ],
        "numpy.lib.npyio": ["load", "save", "savez", "savez_compressed", "savetxt", "DataSource"],
        "numpy.lib._npyio_impl": ["load", "save", "savez", "savez_compressed", "savetxt", "DataSource"],
        "numpy.lib.format": ["open_memmap", "write_array", "read_array"],
        "numpy.core.memmap": ["memmap"],
        "numpy._core.memmap": ["memmap"],
        "numpy.lib.utils": ["source"],
        "torch": [
            "load", "save", "compile", "_load_global_deps", "jit", "hub", "package", "from_file", "fx", "_dynamo",
            "_inductor", "_import_dotted_name",
        ],
        "torch._utils": ["_import_dotted_name"],
        "torch.serialization": [
            "load", "_load", "_legacy_load", "save", "_save", "_legacy_save", "_open_file",
            "_open_file_like", "_open_zipfile_writer", "_open_zipfile_reader", "_open_buffer_writer",
        ],
        "torch.library": ["Library", "define", "impl", "register_fake", "custom_op"],
        "torch._ops": ["ops", "import_module"],
        "torch.utils.data": ["datapipes"],
        "torch.storage": ["_load_from_bytes"],
        "torch.utils": ["bottleneck", "collect_env", "cpp_extension", "model_zoo"],
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
        "builtins": [
            "set", "frozenset", "bytearray", "complex", "slice", "range", "dict", "list", "tuple", "int",
            "float", "str", "bytes", "bool",
        ],
        "_codecs": ["encode"],
        "codecs": ["encode"],
        "numpy": [
            "dtype", "ndarray", "float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8",
            "bool_",
        ],
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
