import SystemPackage

/// A failed system call on a file: which call, on which path, and the `errno`.
public struct IOError: Error, Sendable, CustomStringConvertible {
    /// What kind of failure, as a stable code.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        fileprivate enum Value: String, Hashable, Sendable {
            case notFound, permissionDenied, isDirectory, readFailed, writeFailed, noSpace, exists
            case mapFailed, syncFailed, renameFailed, unexpectedEnd, cannotCreate
            case outputIsInput, outputIsFolder, refusedTarget
            case notRegularFile, symlinkLoop
        }
        fileprivate let value: Value
        /// The input does not exist.
        public static let notFound = Code(value: .notFound)
        /// The process may not read or write the path.
        public static let permissionDenied = Code(value: .permissionDenied)
        /// A file was expected, a directory was found.
        public static let isDirectory = Code(value: .isDirectory)
        /// Reading failed after the file was opened.
        public static let readFailed = Code(value: .readFailed)
        /// Writing failed.
        public static let writeFailed = Code(value: .writeFailed)
        /// The disk or quota is full.
        public static let noSpace = Code(value: .noSpace)
        /// The output exists and overwriting was not asked for.
        public static let exists = Code(value: .exists)
        /// `mmap` failed.
        public static let mapFailed = Code(value: .mapFailed)
        /// `fsync` failed.
        public static let syncFailed = Code(value: .syncFailed)
        /// `rename` failed.
        public static let renameFailed = Code(value: .renameFailed)
        /// The output file cannot be created (missing folder, read-only file system, …).
        public static let cannotCreate = Code(value: .cannotCreate)
        /// An input is a FIFO, socket or device, not a regular file (unreadable input, like a missing one).
        public static let notRegularFile = Code(value: .notRegularFile)
        /// Resolving the path met a loop of symbolic links (`ELOOP`): unreadable input.
        public static let symlinkLoop = Code(value: .symlinkLoop)
        /// A read returned fewer bytes than the file's size promised.
        public static let unexpectedEnd = Code(value: .unexpectedEnd)
        /// The output is one of the command's inputs (or a folder holding one): never replaced,
        /// whatever `--force` says.
        public static let outputIsInput = Code(value: .outputIsInput)
        /// A file was to be written where a folder is (or the name ends in `/`).
        public static let outputIsFolder = Code(value: .outputIsFolder)
        /// The output folder exists but is not one this writer may write into (it is not of the
        /// kind being written, or a part of it is a symbolic link leading elsewhere).
        public static let refusedTarget = Code(value: .refusedTarget)
        public var description: String { value.rawValue }
    }

    public var code: Code
    public var path: String
    public var call: String
    public var errno: Errno?
    /// Why, where the code alone does not say (which input a folder holds, …).
    public var detail: String?

    public init(_ code: Code, path: String, call: String, errno: Errno? = nil, detail: String? = nil) {
        self.code = code
        self.path = path
        self.call = call
        self.errno = errno
        self.detail = detail
    }

    /// Classifies an error thrown by swift-system. Every failed system call becomes an
    /// ``IOError`` through one of these `from` functions: the package's one errno mapping.
    public static func from(_ error: any Error, path: String, call: String, fallback: Code) -> IOError {
        if let errno = error as? Errno { return from(errno, path: path, call: call, fallback: fallback) }
        return IOError(fallback, path: path, call: call)
    }

    /// Classifies a failed call by the C `errno` it left.
    public static func from(errno: Int32, path: String, call: String, fallback: Code) -> IOError {
        from(Errno(rawValue: errno), path: path, call: call, fallback: fallback)
    }

    /// Classifies a failed call by its errno.
    public static func from(_ errno: Errno, path: String, call: String, fallback: Code) -> IOError {
        let code: Code
        switch errno {
        case .noSuchFileOrDirectory, .notDirectory: code = .notFound
        case .permissionDenied, .notPermitted: code = .permissionDenied
        case .isDirectory: code = .isDirectory
        case .noSpace, .diskQuotaExceeded: code = .noSpace
        case .fileExists: code = .exists
        case .tooManySymbolicLinkLevels: code = .symlinkLoop
        default: code = fallback
        }
        return IOError(code, path: path, call: call, errno: errno)
    }

    public var description: String {
        switch code {
        case .notFound: "\(path): no such file or directory"
        case .permissionDenied: "\(path): permission denied"
        case .isDirectory: "\(path): is a directory"
        case .notRegularFile: "\(path): not a regular file (a FIFO, socket or device cannot be read as a model)"
        case .symlinkLoop: "\(path): too many levels of symbolic links"
        case .exists: "\(path): already exists (use --force to overwrite)"
        case .noSpace: "\(path): no space left on device"
        case .unexpectedEnd: "\(path): file ended early (changed while reading?)"
        case .cannotCreate: "\(path): cannot create output" + (errno.map { ": \($0.description)" } ?? "") + (detail.map { ": \($0)" } ?? "")
        case .outputIsInput:
            "\(path): the output is an input of this command (" + (detail ?? "the same file") + "); refusing to overwrite it, even with --force"
        case .outputIsFolder: "\(path): is a folder, not a file name to write" + (detail.map { " (\($0))" } ?? "")
        case .refusedTarget: "\(path): " + (detail ?? "refusing to write into this folder")
        default: "\(path): \(call) failed" + (errno.map { ": \($0.description)" } ?? "")
        }
    }
}
