import Adapters
import ArgumentParser
import CheckpointFormats
import DiffusionEngine
import MappedIO
import ModelCatalog
import ModelLoading
import Quantization
import SafePickle
import StrictJSON
import TensorCore

#if canImport(Glibc)
import Glibc
#endif

/// The exit codes of product.md, in the sysexits tradition.
enum ExitStatus: Int32 {
    case ok = 0
    case problemFound = 1
    case usage = 64
    case dataError = 65
    case noInput = 66
    /// The processor lacks vector instructions that were asked for: `generate --compute bf16`
    /// without AVX512_BF16, `--compute int8` without AVX512_VNNI, or an opt-in `WEIGHTPACK_TARGET_CPU` build on an older processor.
    case unavailable = 69
    case cannotCreate = 73
    case ioError = 74
}

extension ExitStatus {
    /// The status for an error thrown by the library.
    static func of(_ error: any Error) -> ExitStatus {
        switch error {
        case let io as IOError: return of(io)
        case let format as FormatError:
            if format.code == .io, let io = format.underlying as? IOError { return of(io) }
            return format.code == .io ? .ioError : .dataError
        case let loading as ModelLoadingError:
            if let io = loading.underlying as? IOError { return of(io) }
            if loading.code == .budgetUnreachable { return .problemFound }
            return loading.code == .missingFile ? .noInput : .dataError
        // A bad adapter (for the base, or in itself), whatever its code.
        case let adapter as AdapterError:
            if let io = adapter.underlying as? IOError { return of(io) }
            return .dataError
        // Problems with the input's content: unmappable layouts, unusable configurations or
        // weights, bad quantisation records, pickles, JSON or element data.
        case is CatalogError, is EngineError, is QuantizationError, is PickleError, is JSONError, is TensorCoreError: return .dataError
        default: return .dataError
        }
    }

    static func of(_ io: IOError) -> ExitStatus {
        switch io.code {
        case .notFound, .permissionDenied, .isDirectory, .notRegularFile, .symlinkLoop: .noInput
        case .exists, .noSpace, .cannotCreate, .outputIsInput, .outputIsFolder, .refusedTarget: .cannotCreate
        default: .ioError
        }
    }
}

/// Prints one line for `error` on stderr and returns the exit code to leave with.
func report(_ error: any Error, verbose: Bool = false) -> ExitCode {
    let status = ExitStatus.of(error)
    var line = "weightpack: error: \(PrintableText.escaped("\(error)"))"
    if verbose, let cause = (error as? FormatError)?.underlying ?? (error as? ModelLoadingError)?.underlying {
        line += " (cause: \(PrintableText.escaped("\(cause)")))"
    }
    printError(verbose ? line : shortened(line))
    return ExitCode(status.rawValue)
}

/// The longest error line printed without `--verbose`, in characters.
let maximumErrorLineLength = 400

/// `line` cut to ``maximumErrorLineLength`` characters, saying how much was left out.
func shortened(_ line: String) -> String {
    guard line.count > maximumErrorLineLength else { return line }
    let kept = line.prefix(maximumErrorLineLength - 60)
    return kept + "… (\(line.count - kept.count) more characters; --verbose prints all)"
}

func printError(_ text: String) {
    var line = text
    if !line.hasSuffix("\n") { line += "\n" }
    writeStandardError(line)
}

/// Writes text to file descriptor 2 unbuffered.
func writeStandardError(_ text: String) {
    var bytes = Array(text.utf8)
    var offset = 0
    while offset < bytes.count {
        let n = bytes.withUnsafeMutableBytes { write(STDERR_FILENO, $0.baseAddress! + offset, $0.count - offset) }
        if n < 0 { if errno == EINTR { continue }; return }
        offset += n
    }
}

/// Runs `body`, turning library errors into one stderr line and the documented exit code.
func runReporting(verbose: Bool = false, _ body: () throws -> Void) throws {
    // No thread may still be running when the process exits (libcrypto's exit handlers free
    // what a hashing thread is using).
    defer { BackgroundWork.cancelAndWaitForAll() }
    do {
        try body()
    } catch let error as ExitCode {
        throw error
    } catch let error as ValidationError {
        throw error
    } catch {
        throw report(error, verbose: verbose)
    }
}

/// One `weightpack: warning:` line on stderr, escaped (it may quote names from a file) and
/// shortened as error lines are.
func printWarning(_ text: String) {
    printError(shortened("weightpack: warning: \(PrintableText.escaped(text))"))
}
