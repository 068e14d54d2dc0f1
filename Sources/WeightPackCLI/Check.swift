import ArgumentParser
import CheckpointFormats
import StrictJSON

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Verify a .wpk file: its header and every tensor checksum.",
        discussion: """
            Exit codes: 0 intact; 1 corruption found (each damaged tensor is named); 65 not a .wpk \
            file or an unsupported version; 66 missing input.
            """)

    @Argument(help: "The .wpk file to check.")
    var input: String

    @Flag(help: "Print the result as JSON.")
    var json = false

    @Flag(help: "Print the underlying cause of errors.")
    var verbose = false

    func run() throws {
        try runReporting(verbose: verbose) {
            let file: WPKFile
            do {
                file = try WPKFile(path: input)
            } catch let error as FormatError where [.checksumMismatch, .corruptHeader, .duplicateTensor].contains(error.code) {
                printError("weightpack: corrupt: \(error)")
                if json { print(#"{"ok": false, "header": "damaged", "damaged": []}"#) }
                throw ExitCode(ExitStatus.problemFound.rawValue)
            }
            let damage = file.verifyChecksums(progress: TerminalProgress.make("check"))
            if json {
                let items: [JSONValue] = damage.map { ["tensor": .string($0.tensor), "reason": .string($0.reason)] }
                let result: JSONValue = [
                    "ok": .bool(damage.isEmpty), "tensors": JSONValue(file.entries.count), "bytes": JSONValue(file.dataLength),
                    "damaged": .array(items),
                ]
                print(result.serialized(pretty: true))
            }
            if damage.isEmpty {
                if !json { print("ok: \(input): header and \(file.entries.count) tensor checksums verified (\(formatBytes(file.dataLength)))") }
                return
            }
            for d in damage { printError("weightpack: corrupt: \(input): tensor '\(d.tensor)': \(d.reason)") }
            throw ExitCode(ExitStatus.problemFound.rawValue)
        }
    }
}
