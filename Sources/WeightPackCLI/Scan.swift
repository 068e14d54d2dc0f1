import ArgumentParser
import CheckpointFormats
import SafePickle
import StrictJSON
import TensorCore

struct Scan: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List every Python global a checkpoint's pickles name, and say which are dangerous.",
        discussion: """
            Every pickle in the file is walked (data.pkl, any other member that is a pickle, the \
            five pickles of a legacy file) without executing anything. Each global is classed safe \
            (the torch rebuild functions, storages, OrderedDict, …), unknown, or dangerous (os, \
            subprocess, builtins.eval/exec/getattr/__import__, runpy, socket, …).

            Exit codes: 0 nothing dangerous; 1 a dangerous global was found; 65 not a pickle-based \
            checkpoint or unreadable as one; 66 missing input.
            """)

    @Argument(help: "A .ckpt, .pt, .pth, .bin or pickle file.")
    var input: String

    @Flag(help: "Print one JSON document on stdout.")
    var json = false

    @Flag(help: "Print the underlying cause of errors.")
    var verbose = false

    func run() throws {
        try runReporting(verbose: verbose) {
            let report = try TorchCheckpoint.scan(path: input)
            if json {
                print(Self.json(report, path: input).serialized(pretty: true))
            } else {
                print(Self.table(report, path: input))
            }
            if report.isDangerous {
                printError(
                    "weightpack: dangerous: \(input): "
                        + report.dangerous.prefix(3).map { $0.isResolved ? $0.qualifiedName : "an unresolvable \($0.opcode)" }.joined(separator: ", ")
                        + (report.dangerous.count > 3 ? " and \(report.dangerous.count - 3) more" : ""))
                throw ExitCode(ExitStatus.problemFound.rawValue)
            }
        }
    }

    static func json(_ report: PickleScanReport, path: String) -> JSONValue {
        var root = JSONObject()
        root["path"] = .string(path)
        root["format"] = .string(report.format)
        root["verdict"] = .string(report.worst.rawValue)
        root["pickles"] = .array(report.pickles.map { .string($0) })
        root["globals"] = .array(
            report.findings.map { f in
                [
                    "module": .string(f.module), "name": .string(f.name), "class": .string(f.safety.rawValue),
                    "entry": .string(f.entry), "offset": JSONValue(f.offset), "opcode": .string(f.opcode), "resolved": .bool(f.isResolved),
                ]
            })
        root["problems"] = .array(report.problems.map { .string($0) })
        return .object(root)
    }

    static func table(_ report: PickleScanReport, path: String) -> String {
        var lines = [
            "file:     \(path)", "format:   \(report.format)", "pickles:  \(report.pickles.joined(separator: ", "))",
            "verdict:  \(report.worst.rawValue)", "",
        ]
        // One row per distinct global and entry, with how often it appears.
        var rows: [[String]] = [["CLASS", "GLOBAL", "ENTRY", "COUNT", "FIRST AT"]]
        var seen: [String: Int] = [:]
        for f in report.findings {
            let key = "\(f.safety)|\(f.qualifiedName)|\(f.entry)|\(f.isResolved)"
            if let i = seen[key] {
                rows[i][3] = String(Int(rows[i][3])! + 1)
            } else {
                seen[key] = rows.count
                rows.append([
                    f.safety.rawValue, f.isResolved ? f.qualifiedName : "<unresolved \(f.opcode)>", f.entry, "1", "\(f.opcode) @\(f.offset)",
                ])
            }
        }
        let order: [String: Int] = ["dangerous": 0, "unknown": 1, "safe": 2]
        let body = rows.dropFirst().sorted { (order[$0[0]] ?? 3, $0[1]) < (order[$1[0]] ?? 3, $1[1]) }
        let tableIndex = lines.count
        lines.append(renderTable([rows[0]] + body))
        for p in report.problems { lines.append("problem:  \(p)") }
        return lines.enumerated().map { $0.offset == tableIndex ? $0.element : PrintableText.escaped($0.element) }.joined(separator: "\n")
    }
}
