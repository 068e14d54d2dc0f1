import ArgumentParser
import DiffusionEngine
import Foundation
import ModelLoading
import Quantization
import StrictJSON

#if canImport(Glibc)
import Glibc
#endif

/// `--dtype auto`'s options, shared by `convert` (.wpk) and `export --format gguf`.
struct QualityBudgetOptions: ParsableArguments {
    @Option(help: ArgumentHelp("With --dtype auto: the smallest file whose image PSNR against the source stays at or above DB.", valueName: "DB"))
    var targetPsnr: Double?

    @Option(
        help: ArgumentHelp(
            "With --dtype auto: the best images in at most SIZE (bytes, or with a unit: KB, MB, GB = 1000^n; KiB, MiB, GiB = 1024^n).",
            valueName: "SIZE"))
    var maxSize: String?

    @Option(help: ArgumentHelp("With --dtype auto: write size-vs-psnr.png, bits-per-layer.png and report.json to this folder.", valueName: "DIR"))
    var report: String?

    @Option(
        name: .customLong("calibration-prompt"),
        help: ArgumentHelp("With --dtype auto: a calibration prompt (repeatable; default: three built-in prompts).", valueName: "TEXT"))
    var calibrationPrompts: [String] = []

    @Option(
        help: ArgumentHelp("With --dtype auto: calibration and proof image size in pixels (default 256, smaller models their own).", valueName: "PX"))
    var calibrationSize: Int?

    @Option(help: ArgumentHelp("With --dtype auto: denoising steps of the calibration run (default 4).", valueName: "N"))
    var calibrationSteps: Int?

    @Option(
        help: ArgumentHelp(
            "With --dtype auto: writes and proofs at most (1-5; each corrects the prediction by the last measurement, and a pass with more than 1 dB to spare may be refined).",
            valueName: "N"))
    var attempts: Int = QualityBudget.Options.defaultMaxAttempts

    @Option(help: ArgumentHelp("With --dtype auto: rows of each weight the prediction quantises (16-4096).", valueName: "N"))
    var sampleRows: Int = 64

    @Flag(
        help: ArgumentHelp(
            "With --dtype auto: quantise with unit importance (as --dtype q4_k does) instead of passing each weight's calibration statistics to ggml's searches."
        ))
    var noImportance = false

    @Flag(
        help: ArgumentHelp(
            "With --dtype auto: count every layer's predicted error alike instead of first measuring each block of layers' effect on the image (one proof generation per block)."
        ))
    var uniformGains = false

    var isUsed: Bool {
        targetPsnr != nil || maxSize != nil || report != nil || !calibrationPrompts.isEmpty || calibrationSize != nil || calibrationSteps != nil
    }

    /// Checks the options for `--dtype auto` (`auto` true) or their absence otherwise.
    func validate(auto: Bool) throws {
        guard auto else {
            if isUsed || noImportance || uniformGains {
                throw ValidationError(
                    "--target-psnr, --max-size, --report, --no-importance, --uniform-gains and the calibration options apply to --dtype auto")
            }
            return
        }
        switch (targetPsnr, maxSize) {
        case (nil, nil): throw ValidationError("--dtype auto needs --target-psnr DB or --max-size SIZE")
        case (.some, .some): throw ValidationError("--dtype auto takes --target-psnr or --max-size, not both")
        default: break
        }
        if let targetPsnr, !(targetPsnr.isFinite && targetPsnr > 0 && targetPsnr <= 200) {
            throw ValidationError("--target-psnr must be a number of dB above 0 and at most 200")
        }
        if let maxSize { _ = try Self.parseSize(maxSize) }
        if let calibrationSize, !(64...2048).contains(calibrationSize) || calibrationSize % 8 != 0 {
            throw ValidationError("--calibration-size must be a multiple of 8 from 64 to 2048")
        }
        if let calibrationSteps, !(1...50).contains(calibrationSteps) { throw ValidationError("--calibration-steps must be from 1 to 50") }
        guard (1...5).contains(attempts) else { throw ValidationError("--attempts must be from 1 to 5") }
        guard (16...4096).contains(sampleRows) else { throw ValidationError("--sample-rows must be from 16 to 4096") }
        guard calibrationPrompts.count <= 32 else { throw ValidationError("at most 32 --calibration-prompt") }
        for p in calibrationPrompts where p.utf8.count > 4096 { throw ValidationError("a --calibration-prompt is longer than 4096 bytes") }
    }

    /// `123`, `800MB`, `1.2 GB`, `512MiB` in bytes; a usage error for anything else.
    static func parseSize(_ text: String) throws -> Int {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let digits = trimmed.prefix { $0.isNumber || $0 == "." }
        let unit = trimmed.dropFirst(digits.count).trimmingCharacters(in: .whitespaces).lowercased()
        let scale: Double? =
            switch unit {
            case "", "b": 1
            case "k", "kb": 1e3
            case "m", "mb": 1e6
            case "g", "gb": 1e9
            case "kib": 1024
            case "mib": 1_048_576
            case "gib": 1_073_741_824
            default: nil
            }
        guard let scale, let value = Double(digits), value.isFinite, value > 0, value * scale <= 1e15 else {
            throw ValidationError("--max-size '\(text)' is not a size (bytes, or a number with KB, MB, GB, KiB, MiB or GiB), up to 1 PB")
        }
        return Int(value * scale)
    }

    var goal: QualityBudget.Goal {
        if let targetPsnr { return .psnr(targetPsnr) }
        return .bytes((try? Self.parseSize(maxSize ?? "")) ?? 0)
    }

    /// Runs `--dtype auto` from `input` to `output` and prints what it did.
    func run(
        input: String, output: String, format: QualityBudget.Format, inputOptions: InputOptions, configurationFolder: String?,
        keep: [String], force: Bool, recordSourceDigest: Bool, json: Bool
    ) throws {
        if let report { try Self.checkReportFolder(report) }
        if let report, !force {
            for name in Self.reportFiles where FileManager.default.fileExists(atPath: URL(fileURLWithPath: report).appendingPathComponent(name).path)
            {
                throw ValidationError("\(report)/\(name) exists; use --force to replace the report")
            }
        }
        let source = try StableDiffusionModel(path: input, options: inputOptions.modelInputOptions, configurationFolder: configurationFolder)
        var options = QualityBudget.Options(goal: goal)
        options.format = format
        var settings = Calibration.Settings.defaults(for: source)
        if !calibrationPrompts.isEmpty { settings.prompts = calibrationPrompts }
        if let calibrationSize {
            settings.width = calibrationSize
            settings.height = calibrationSize
        }
        if let calibrationSteps { settings.steps = calibrationSteps }
        options.calibration = settings
        options.maxAttempts = attempts
        options.sampleRows = sampleRows
        options.importanceWeighted = !noImportance
        options.measuredGains = !uniformGains
        options.keepPatterns = keep
        options.configurationFolder = configurationFolder
        options.overwrite = force
        options.recordSourceDigest = recordSourceDigest
        options.tool = "weightpack \(WeightPackCommand.version)"
        let counter = PhaseCounter()
        let result = try QualityBudget.run(source, to: output, options: options, events: { counter.handle($0) })
        counter.finish()
        let ladder = options.ladder ?? QualityBudget.defaultLadder(for: format)
        if let report { try writeReport(result, ladder: ladder, folder: report, output: output, force: force) }
        let last = result.written
        let counts = last.counts.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", ")
        printError("wrote \(output): \(formatBytes(last.fileBytes)); quantised tensors: \(counts)")
        printError(
            "image PSNR against the source: predicted \(QualityBudget.format(last.predictedPSNR)) dB, measured \(QualityBudget.format(last.measuredPSNR)) dB (attempt \(last.number) of at most \(attempts))"
        )
        if let report { printError("report: \(report)") }
        if json {
            var root = JSONObject()
            root["output"] = .string(output)
            root["format"] = .string(format.rawValue)
            root["recipe"] = result.recipe
            root["measured"] = result.measured
            root["attempts"] = .array(result.attempts.map(\.json))
            root["seconds"] = .object(JSONObject(result.seconds.map { ($0.phase, JSONValue(($0.seconds * 10).rounded() / 10)) }))
            print(JSONValue.object(root).serialized(pretty: true))
        }
    }

    /// The report folder: the two charts and the JSON behind them.
    private func writeReport(_ result: QualityBudget.Result, ladder: [StorageChoice], folder: String, output: String, force: Bool) throws {
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let last = result.written
        // Predicted points count tensor bytes; the header and alignment the written file measured
        // are added to every point, so the axis is file size throughout.
        let overhead = max(0, last.fileBytes - result.allocation.bytes)
        let uniform = result.uniform(ladder).map { (label: $0.label, bytes: $0.bytes + overhead, psnr: $0.psnr) }
        let frontier = result.frontier.map { (bytes: $0.bytes + overhead, psnr: $0.psnr) }
        let goalText: String =
            switch goal {
            case .psnr(let t): "target \(QualityBudget.format(t)) dB"
            case .bytes(let b): "at most \(formatBytes(b))"
            }
        var target: Double?
        var sizeLimit: Int?
        switch goal {
        case .psnr(let t): target = t
        case .bytes(let b): sizeLimit = b
        }
        let chart = BudgetChart.SizeQuality(
            title: "\(URL(fileURLWithPath: output).lastPathComponent): predicted image PSNR against size (\(goalText))",
            uniform: uniform.map { BudgetChart.Point(bytes: $0.bytes, psnr: $0.psnr, label: $0.label) },
            mixes: frontier.map { BudgetChart.Point(bytes: $0.bytes, psnr: $0.psnr, label: "") },
            chosen: BudgetChart.Point(bytes: last.fileBytes, psnr: last.predictedPSNR, label: "chosen (predicted)"),
            measured: BudgetChart.Point(bytes: last.fileBytes, psnr: last.measuredPSNR, label: "measured"),
            target: target, sizeLimit: sizeLimit)
        let valueCounts = Dictionary(uniqueKeysWithValues: result.tensors.map { ($0.name, $0.shape.reduce(1, *)) })
        let bits = BudgetChart.Bits(
            title: "bits per weight chosen, layer by layer",
            layers: result.allocation.picks.map { p in
                let values = max(1, valueCounts[p.name] ?? 1)
                return (name: p.name, bits: Double(p.bytes) * 8 / Double(values), type: p.storage.label)
            })
        let document: JSONValue = [
            "output": .string(output), "recipe": result.recipe, "measured": result.measured,
            "offset_db": JSONValue(result.offset), "fixed_bytes": JSONValue(result.fixedBytes), "header_bytes": JSONValue(overhead),
            "uniform": .array(uniform.map { ["type": .string($0.label), "bytes": JSONValue($0.bytes), "predicted_psnr": Self.number($0.psnr)] }),
            "mixes": .array(frontier.map { ["bytes": JSONValue($0.bytes), "predicted_psnr": Self.number($0.psnr)] }),
            "attempts": .array(result.attempts.map(\.json)), "gains": result.gains?.json ?? .null,
        ]
        let files: [(String, [UInt8])] = [
            ("size-vs-psnr.png", try BudgetChart.render(chart)), ("bits-per-layer.png", try BudgetChart.render(bits)),
            ("report.json", Array(document.serialized(pretty: true).utf8)),
        ]
        for (name, bytes) in files {
            try OutputFile.write(bytes, to: URL(fileURLWithPath: folder).appendingPathComponent(name).path, overwrite: force)
        }
    }

    static let reportFiles = ["size-vs-psnr.png", "bits-per-layer.png", "report.json"]

    /// Refuses, before anything runs, a report folder that could not be written at the end
    /// (a file, or under one, or not writable), so a model is never written and then followed
    /// by a failure. Nothing is created here: a run that fails leaves no empty folder.
    static func checkReportFolder(_ path: String) throws {
        var url = URL(fileURLWithPath: path).standardizedFileURL
        var isFolder: ObjCBool = false
        if FileManager.default.fileExists(atPath: url.path, isDirectory: &isFolder) {
            guard isFolder.boolValue else { throw ValidationError("--report \(path) is a file, not a folder") }
        } else {
            // The nearest folder that exists must be one we can create folders in.
            repeat {
                url.deleteLastPathComponent()
            } while !FileManager.default.fileExists(atPath: url.path, isDirectory: &isFolder) && url.path != "/"
            guard isFolder.boolValue else { throw ValidationError("--report \(path): \(url.path) is a file, not a folder") }
        }
        guard access(url.path, W_OK) == 0 else { throw ValidationError("--report \(path): \(url.path) is not writable") }
    }

    private static func number(_ x: Double) -> JSONValue { x.isFinite ? JSONValue(x) : .string(QualityBudget.format(x)) }
}

/// One line per phase on stderr, and a running count on a terminal.
private final class PhaseCounter: @unchecked Sendable {
    private let lock = NSLock()
    private let terminal = isatty(STDERR_FILENO) != 0
    private var label = ""
    private var counting = false

    func handle(_ event: QualityBudget.Event) {
        lock.lock()
        defer { lock.unlock() }
        switch event {
        case .phase(let name, let attempt):
            endCount()
            label = attempt.map { "attempt \($0): \(name)" } ?? name
            let what =
                switch name {
                case "calibrate": "running the cascade on the calibration prompts"
                case "measure": "predicting each weight's error in each type"
                case "reference": "running the source on the proof's prompt (once for every attempt)"
                case "gains": "running the proof with each block of layers quantised alone"
                case "int8 inputs": "running the proof with the int8 layers in float, then in int8 compute"
                case "write": "quantising and writing"
                default: "running the file against the source"
                }
            writeStandardError("\(label): \(what)\n")
        case .progress(let done, let total):
            guard terminal, total > 0 else { return }
            counting = true
            writeStandardError("\r\(label): \(Int(Double(done) / Double(total) * 100))% ")
        case .measured(let a):
            endCount()
            writeStandardError(
                "attempt \(a.number): predicted \(QualityBudget.format(a.predictedPSNR)) dB, measured \(QualityBudget.format(a.measuredPSNR)) dB, \(formatBytes(a.fileBytes)): \(a.passed ? "kept" : "missed, trying again with the prediction corrected")\n"
            )
        }
    }

    func finish() {
        lock.lock()
        defer { lock.unlock() }
        endCount()
    }

    private func endCount() {
        if counting { writeStandardError("\n") }
        counting = false
    }
}
