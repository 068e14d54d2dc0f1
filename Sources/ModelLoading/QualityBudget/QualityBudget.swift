import CheckpointFormats
import DiffusionEngine
import Dispatch
import Foundation
import ModelCatalog
import Quantization
import StrictJSON
import TensorCore

#if canImport(Glibc)
import Glibc
#endif

/// `convert --dtype auto` and `export --format gguf --dtype auto`: each weight's storage chosen
/// from its measured effect, against a quality or a size budget, and the result proved.
///
/// 1. Calibration (``Calibration``) runs the whole cascade on a few prompts at a reduced size and
///    records every linear and convolution layer's per-input-channel mean squares (and, for a
///    proof in int8 compute, what quantising the UNet layers' inputs adds to them).
/// 2. ``Sensitivity`` predicts each weight's relative output error in every storage of the
///    ladder from those statistics (on a sample of rows, with the real quantisers).
/// 3. ``LayerGains`` measures how much each block of layers' error reaches the image: the
///    proof's generation run once per block with only that block quantised. Where the proof
///    computes in int8 (``Options/predictsInt8Inputs``), ``Int8InputGain`` then measures what
///    the int8 products' quantised inputs are worth against those gains (two more runs).
/// 4. ``BudgetAllocator`` picks the storages: the smallest file whose predicted image PSNR meets
///    the target, or the lowest predicted error within the size, each layer's error weighted by
///    its block's gain.
/// 5. The file is written; before it is given its name, ``Verification`` runs it against the
///    source (the staged report of `weightpack verify`; the source's half is run once, before
///    the first attempt, and compared with every file). A quality target missed sends the
///    prediction, corrected by what was measured, round again (``Options/maxAttempts``); the file
///    is named only when it passes, with the measured figures added to its header.
///
/// ```swift
/// let source = try StableDiffusionModel(path: "model.safetensors")
/// let result = try QualityBudget.run(source, to: "model.wpk", options: .init(goal: .psnr(35)))
/// print(result.predictedPSNR, result.measuredPSNR)
/// ```
public enum QualityBudget {
    /// What the budget bounds.
    public enum Goal: Sendable, Hashable {
        /// The image PSNR against the source, in dB, that the file must keep (`--target-psnr`).
        case psnr(Double)
        /// The file's size in bytes (`--max-size`).
        case bytes(Int)
    }

    /// The file written.
    public enum Format: String, Sendable {
        /// `.wpk`: engine rows (a convolution's `in·kh·kw`), int8 available.
        case wpk
        /// GGUF for stable-diffusion.cpp: its rows (the last dimension) and name rules.
        case gguf
    }

    public struct Options: Sendable {
        public var goal: Goal
        public var format: Format = .wpk
        /// The storages to choose from, best first; `nil` takes ``defaultLadder(for:)``.
        public var ladder: [StorageChoice]?
        /// `nil` takes ``Calibration/Settings/defaults(for:)``.
        public var calibration: Calibration.Settings?
        /// The generation the proof runs; `nil`: a prompt not among the calibration's, seed 0,
        /// 6 steps, at the calibration's size, the model's own scheduler.
        public var verification: StableDiffusionPipeline.Request?
        /// Rows per tensor the prediction quantises (``Sensitivity/measure(_:names:ladder:rows:statistics:sampleRows:progress:)``).
        public var sampleRows = 64
        /// Writes (and proofs) at most; each after the first corrects the prediction by what the
        /// previous one measured.
        public var maxAttempts = defaultMaxAttempts
        /// Four: two misses, a pass, and the refinement of a pass that overshot (Docs/quantization.md:
        /// on the full-size model at uniform q8_0's PSNR with the token embedding kept, three
        /// attempts ended on a file 0.5 % larger than uniform, the fourth refined it to 11 % smaller).
        public static let defaultMaxAttempts = 4
        /// The prediction's offset before anything is measured (``defaultOffset``).
        public var offset: Double?
        /// Tensors kept out of the ladder (F16/F32), as `--keep`.
        public var keepPatterns: [String] = []
        /// A diffusers folder whose configurations the source needed (`--config`), for the proof.
        public var configurationFolder: String?
        public var overwrite = false
        public var tool = "weightpack"
        public var recordSourceDigest = true
        /// Pass each weight's calibration statistics to ggml's searches as its importance (an
        /// importance matrix), and predict with them; `false` quantises as `--dtype q4_k` does
        /// (unit importance).
        public var importanceWeighted = true
        /// Measure each block of layers' effect on the image before the first attempt
        /// (``LayerGains``) and weight the prediction by it; `false` counts every layer's
        /// relative error alike.
        public var measuredGains = true
        /// The arithmetic the proof runs the candidate's UNet in; `nil` takes what `generate`
        /// and `verify` choose for the file by default (``ComputePrecision/automatic(for:int8Products:bf16Products:)``:
        /// int8 products for its Q8_0 weights where the processor has them), so the target holds
        /// as the file will be run. Where that is int8 (``predictsInt8Inputs``) the prediction
        /// adds each int8 or Q8_0 layer's input quantisation noise, from the calibration
        /// (``Sensitivity/Candidate/inputError``).
        public var compute: ComputePrecision?

        /// Whether the proof's arithmetic quantises the inputs of layers stored as int8 or Q8_0:
        /// ``compute`` is ``ComputePrecision/int8``, or `nil` on a processor with the int8
        /// products (where any such weight makes ``ComputePrecision/automatic(for:int8Products:bf16Products:)`` pick them).
        public var predictsInt8Inputs: Bool {
            compute.map { $0 == .int8 } ?? ComputeBackend.current.int8Products
        }

        public init(goal: Goal) { self.goal = goal }
    }

    /// The prediction's offset before any measurement: image PSNR = offset − 10 log10(Σ noise).
    /// Measured 26.2 dB on the random full-size SD 1.5 and 30.2 dB on the tiny fixture
    /// (`Docs/quantization.md`); the lower one, so that a first attempt errs towards quality
    /// (``refineSlack`` then tries a smaller file).
    public static let defaultOffset = 26.0

    /// dB above the target a passing attempt may keep before one more, smaller attempt is tried.
    public static let refineSlack = 1.0

    /// f16 down to q2_K; int8 too for `.wpk` (GGUF has no int8).
    public static func defaultLadder(for format: Format) -> [StorageChoice] {
        var ladder: [StorageChoice] = [.ggml(.f16)]
        if format == .wpk { ladder.append(.int8) }
        ladder += [GGMLType.q8_0, .q6_K, .q5_K, .q5_1, .q5_0, .q4_K, .q4_1, .q4_0, .q3_K, .q2_K].map { .ggml($0) }
        return ladder
    }

    /// What the command reports as it goes.
    public enum Event: Sendable {
        /// A phase begins: `calibrate`, `measure`, `reference` (the source's half of every proof),
        /// `gains` (each block of layers run quantised, ``LayerGains``), `int8 inputs`
        /// (``Int8InputGain``), `write`, `verify`.
        case phase(String, attempt: Int?)
        /// Work done in the current phase.
        case progress(done: Int, total: Int)
        /// An attempt was measured.
        case measured(Attempt)
    }

    /// One write and its proof.
    public struct Attempt: Sendable {
        public var number: Int
        /// The offset its prediction used.
        public var offset: Double
        /// What it aimed at: the target plus a margin, or the byte budget.
        public var aim: Goal
        public var predictedPSNR: Double
        /// Tensor bytes of the allocation.
        public var predictedBytes: Int
        public var fileBytes: Int
        public var measuredPSNR: Double
        /// Each stage of the proof: name, SNR or PSNR in dB.
        public var stages: [(name: String, value: Double)]
        public var passed: Bool
        public var counts: [String: Int]

        /// The attempt as recorded (`previous_attempts`, `quality_budget_measured`).
        public var json: JSONValue {
            [
                "attempt": JSONValue(number), "offset_db": JSONValue(offset), "predicted_image_psnr": JSONValue(predictedPSNR),
                "predicted_bytes": JSONValue(predictedBytes), "file_bytes": JSONValue(fileBytes),
                "measured_image_psnr": JSONValue(measuredPSNR), "passed": .bool(passed),
                "stages": .object(JSONObject(stages.map { ($0.name, JSONValue($0.value)) })),
                "types": .object(JSONObject(counts.sorted { $0.key < $1.key }.map { ($0.key, JSONValue($0.value)) })),
            ]
        }
    }

    public struct Result: Sendable {
        /// Every attempt, in order (a refinement that missed may follow the file's).
        public var attempts: [Attempt]
        /// The attempt whose file was written.
        public var written: Attempt
        public var allocation: BudgetAllocation
        public var tensors: [Sensitivity.TensorOptions]
        /// The offset fitted to the last measurement.
        public var offset: Double
        public var calibration: Calibration.Settings
        public var verification: StableDiffusionPipeline.Request
        /// The recipe recorded in the file (`quality_budget`).
        public var recipe: JSONValue
        /// The measured record added before the file was named.
        public var measured: JSONValue
        /// Wall time of each phase, in seconds.
        public var seconds: [(phase: String, seconds: Double)]
        public var fixedBytes: Int
        /// The measured gains of the blocks of layers; `nil` when not measured.
        public var gains: LayerGains.Measurement?
        /// The measured scale of the int8 inputs' predicted noise; `nil` when not measured.
        public var int8Inputs: Int8InputGain.Measurement?

        public var predictedPSNR: Double { written.predictedPSNR }
        public var measuredPSNR: Double { written.measuredPSNR }
        public var fileBytes: Int { written.fileBytes }

        /// The trade-off curve of the prediction with the fitted offset: (tensor bytes, PSNR).
        public var frontier: [(bytes: Int, psnr: Double)] {
            BudgetAllocator.frontier(tensors, fixedBytes: fixedBytes).map { ($0.bytes, BudgetAllocator.psnr(noise: $0.noise, offset: offset)) }
        }

        /// Every uniform storage of the ladder as the prediction sees it: (label, tensor bytes,
        /// PSNR). The token embeddings stay F16, as `--dtype TYPE` keeps them.
        public func uniform(_ ladder: [StorageChoice]) -> [(label: String, bytes: Int, psnr: Double)] {
            let asConverted = tensors.map { t in
                var t = t
                if QualityBudget.ladderEmbeddings.contains(where: { t.name.hasSuffix("." + $0) }) {
                    t.candidates = t.candidates.filter { $0.storage == .ggml(.f16) }
                }
                return t
            }
            return ladder.map { storage in
                let a = BudgetAllocator.uniform(asConverted, storage: storage, fixedBytes: fixedBytes)
                return (storage.label, a.bytes, a.predictedPSNR(offset: offset))
            }
        }
    }

    /// Thrown out of the writer's check to discard an attempt that missed its target.
    struct Missed: Error {
        var attempt: Attempt
    }

    /// Chooses, writes and proves (see ``QualityBudget``).
    ///
    /// - Throws: ``ModelLoadingError/Code/budgetUnreachable`` when no storage mix can meet the
    ///   goal (a size below the smallest mix, a PSNR above the best), or when the last attempt
    ///   still measured below the target (nothing is written then); the writers' and the engine's errors.
    public static func run(
        _ source: StableDiffusionModel, to output: String, options: Options, events: (@Sendable (Event) -> Void)? = nil
    ) throws -> Result {
        if case .psnr(let target) = options.goal, !(target.isFinite && target > 0) {
            throw ModelLoadingError(.budgetUnreachable, "the target PSNR must be a finite number of dB above 0")
        }
        if case .bytes(let limit) = options.goal, limit <= 0 {
            throw ModelLoadingError(.budgetUnreachable, "the size budget must be above 0 bytes")
        }
        let model = source.canonical
        guard model.isCanonical else {
            throw ModelLoadingError(.notAModel, "--dtype auto needs a recognised Stable Diffusion model", path: model.path)
        }
        var seconds: [(String, Double)] = []
        func timed<T>(_ phase: String, _ body: () throws -> T) rethrows -> T {
            let start = DispatchTime.now().uptimeNanoseconds
            defer { seconds.append((phase, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)) }
            return try body()
        }
        let ladder = options.ladder ?? defaultLadder(for: options.format)
        if options.format == .gguf, ladder.contains(.int8) {
            throw ModelLoadingError(.budgetUnreachable, "GGUF has no int8 type; leave int8 out of the ladder")
        }
        let settings = options.calibration ?? Calibration.Settings.defaults(for: source)
        let verification = options.verification ?? defaultVerification(settings)

        // 1–2: statistics and predictions.
        events?(.phase("calibrate", attempt: nil))
        let statistics = try timed("calibrate") {
            try Calibration.run(
                source, settings: settings, int8InputNoise: options.predictsInt8Inputs,
                progress: { done, total in events?(.progress(done: done, total: total)) })
        }
        let names = try candidates(model, format: options.format, keep: options.keepPatterns)
        events?(.phase("measure", attempt: nil))
        var tensors = try timed("measure") {
            try Sensitivity.measure(
                model.store, names: names, ladder: ladder, rows: options.format == .wpk ? .allButFirstDimension : .lastDimension,
                statistics: statistics, sampleRows: options.sampleRows, importanceWeighted: options.importanceWeighted,
                int8Inputs: options.predictsInt8Inputs, progress: { done, total in events?(.progress(done: done, total: total)) })
        }
        let fixedBytes = try fixedTensorBytes(model, excluding: Set(names), keep: options.keepPatterns)
        // Header and alignment, so that a size budget bounds the file and not only its tensors.
        let overhead = 64 * 1024 + model.store.tensors.count * 512
        // A size no mix reaches is refused now, not after the runs that take most of the time.
        if case .bytes(let limit) = options.goal, smallestBytes(tensors, fixedBytes: fixedBytes) > limit - overhead {
            throw unreachable(options.goal, tensors: tensors, fixedBytes: fixedBytes, overhead: overhead, offset: options.offset ?? defaultOffset)
        }

        // The source's half of every proof, run once for all attempts.
        events?(.phase("reference", attempt: nil))
        let referenceRun = try timed("reference") {
            var total = verification.steps
            return try Verification.ReferenceRun(source, request: verification) { event in
                switch event {
                case .schedule(let timesteps): total = max(1, timesteps.count)
                case .step(let index, _, _, _): events?(.progress(done: index + 1, total: total))
                default: break
                }
            }
        }

        let importance = options.importanceWeighted ? importanceVectors(model, names: names, statistics: statistics, format: options.format) : [:]

        // Each block of layers' effect on the image, measured against the same source run.
        var gains: LayerGains.Measurement?
        if options.measuredGains {
            events?(.phase("gains", attempt: nil))
            let measurement = try timed("gains") {
                try LayerGains.measure(
                    source, reference: referenceRun, tensors: tensors, importance: importance, configurationFolder: options.configurationFolder,
                    progress: { done, total in events?(.progress(done: done, total: total)) })
            }
            if !measurement.gains.isEmpty {
                for i in tensors.indices { tensors[i].gain = measurement.gains[tensors[i].name] ?? 1 }
                gains = measurement
            }
        }
        // What the int8 products' quantised inputs are worth in the image, against those gains.
        var int8Inputs: Int8InputGain.Measurement?
        if options.measuredGains, options.predictsInt8Inputs, !Int8InputGain.measured(tensors).isEmpty {
            events?(.phase("int8 inputs", attempt: nil))
            int8Inputs = try timed("int8 inputs") {
                try Int8InputGain.measure(
                    source, reference: referenceRun, tensors: tensors, configurationFolder: options.configurationFolder,
                    progress: { done, total in events?(.progress(done: done, total: total)) })
            }
            if let scale = int8Inputs?.scale {
                for i in tensors.indices {
                    for c in tensors[i].candidates.indices { tensors[i].candidates[c].inputError *= scale }
                }
            }
        }

        // 3–4: allocate, write, prove; again with a corrected offset while the target is missed.
        var offset = options.offset ?? gains?.offset ?? defaultOffset
        var attempts: [Attempt] = []
        var written: (allocation: BudgetAllocation, recipe: JSONValue, measured: JSONValue)?
        var sizeRoom = 0
        var misses = 0
        // After a pass with more than `refineSlack` dB to spare, one more attempt aims lower with
        // the corrected prediction: it replaces the file only if it passes too.
        var refining = false
        // What each proof measured against how fine its allocation was: x = −10 log10(Σ noise).
        var measuredPoints: [(x: Double, psnr: Double)] = []
        for number in 1...max(1, options.maxAttempts) {
            let aim: Goal
            switch options.goal {
            case .psnr(let target): aim = .psnr(target + (refining ? 0.3 : [0, 0.5, 1.5, 3][min(misses, 3)]))
            case .bytes(let limit): aim = .bytes(limit - overhead - sizeRoom)
            }
            let allocatorGoal: BudgetAllocator.Goal =
                switch aim {
                case .psnr(let p): .psnr(p)
                case .bytes(let b): .bytes(b)
                }
            guard let allocation = BudgetAllocator.allocate(tensors, fixedBytes: fixedBytes, goal: allocatorGoal, offset: offset) else {
                throw unreachable(options.goal, tensors: tensors, fixedBytes: fixedBytes, overhead: overhead, offset: offset)
            }
            let predicted = allocation.predictedPSNR(offset: offset)
            let recipe = recipeJSON(
                options: options, ladder: ladder, settings: settings, verification: verification, allocation: allocation, tensors: tensors,
                gains: gains, int8Inputs: int8Inputs, offset: offset, predicted: predicted, previous: attempts)
            events?(.phase("write", attempt: number))
            let check = Locked<(Attempt, JSONValue)?>(nil)
            let offsetUsed = offset
            // The writer calls the proof on this thread, before it returns.
            let reference = SameThread(referenceRun)
            let prove: @Sendable (String, [String: QuantizationMetrics]) throws -> JSONValue = { path, metrics in
                events?(.phase("verify", attempt: number))
                let candidate = try StableDiffusionModel(path: path, configurationFolder: options.configurationFolder)
                let report = try Verification.verify(
                    reference.value, candidate: candidate, compute: options.compute ?? .automatic(for: candidate.pipeline.unet))
                let image = report.stages.first { $0.name == "image" }?.metrics.psnr ?? -.infinity
                // stat(2) follows `/proc/self/fd/N` to the file (FileManager would describe the link).
                var info = stat()
                let size = stat(path, &info) == 0 ? Int(info.st_size) : 0
                var passed = true
                switch options.goal {
                case .psnr(let target): passed = image >= target
                case .bytes(let limit): passed = size <= limit
                }
                let attempt = Attempt(
                    number: number, offset: offsetUsed, aim: aim, predictedPSNR: predicted, predictedBytes: allocation.bytes, fileBytes: size,
                    measuredPSNR: image, stages: report.stages.map { ($0.name, $0.value) }, passed: passed, counts: allocation.counts)
                let measured = measuredJSON(attempt, report: report, metrics: metrics)
                check.withLock { $0 = (attempt, measured) }
                events?(.measured(attempt))
                guard passed else { throw Missed(attempt: attempt) }
                return measured
            }
            do {
                try timed("write+verify \(number)") {
                    try write(
                        model, allocation: allocation, importance: importance, to: output,
                        format: options.format, options: options,
                        overwrite: options.overwrite || written != nil, recipe: recipe, prove: prove, events: events)
                }
                let (attempt, measured) = check.withLock { $0 }!
                attempts.append(attempt)
                written = (allocation, recipe, measured)
                if case .psnr(let target) = options.goal, !refining, number < options.maxAttempts, attempt.measuredPSNR - target > refineSlack,
                    attempt.predictedPSNR.isFinite, attempt.measuredPSNR.isFinite
                {
                    refining = true
                    measuredPoints.append((attempt.predictedPSNR - attempt.offset, attempt.measuredPSNR))
                    offset = Self.correctedOffset(measuredPoints, aim: target + 0.3)
                    continue
                }
                break
            } catch {
                guard let missed = Self.missed(in: error) else { throw error }
                attempts.append(missed.attempt)
                // A refinement that missed leaves the file it meant to replace.
                if refining, written != nil { break }
                misses += 1
                // Correct the prediction by what was measured; a size overrun leaves more room.
                if case .psnr(let target) = options.goal, missed.attempt.measuredPSNR.isFinite, predicted.isFinite {
                    measuredPoints.append((predicted - offset, missed.attempt.measuredPSNR))
                    offset = Self.correctedOffset(measuredPoints, aim: target + [0, 0.5, 1.5, 3][min(misses, 3)])
                }
                if case .bytes(let limit) = options.goal { sizeRoom += max(0, missed.attempt.fileBytes - limit) + 4096 }
                if number == options.maxAttempts {
                    let goal =
                        switch options.goal {
                        case .psnr(let t): "image PSNR \(format(t)) dB"
                        case .bytes(let b): "\(b) bytes"
                        }
                    let last = missed.attempt
                    throw ModelLoadingError(
                        .budgetUnreachable,
                        "\(attempts.count) attempt(s) missed the \(goal): the last measured \(format(last.measuredPSNR)) dB in \(last.fileBytes) bytes (predicted \(format(last.predictedPSNR)) dB); nothing was written"
                    )
                }
            }
        }
        guard let written, let last = attempts.last(where: \.passed) else { preconditionFailure("the loop writes or throws") }
        // The prediction fitted to the file written.
        offset = last.offset
        if last.measuredPSNR.isFinite, last.predictedPSNR.isFinite { offset += last.measuredPSNR - last.predictedPSNR }
        return Result(
            attempts: attempts, written: last, allocation: written.allocation, tensors: tensors, offset: offset, calibration: settings,
            verification: verification, recipe: written.recipe, measured: written.measured, seconds: seconds, fixedBytes: fixedBytes,
            gains: gains, int8Inputs: int8Inputs)
    }

    /// The offset for the next allocation aiming at `aim` dB, from the measured points
    /// (x = −10 log10 Σ noise of an allocation, the image PSNR it measured): one point moves the
    /// offset by the miss; with two or more, the last two give the slope of PSNR against x
    /// (bounded to 0.25…2, as the errors of many layers do not add up exactly), and the offset
    /// is the one that makes the allocation reach the x that line asks for.
    static func correctedOffset(_ points: [(x: Double, psnr: Double)], aim: Double) -> Double {
        guard let last = points.last else { return defaultOffset }
        var slope = 1.0
        if points.count >= 2 {
            let before = points[points.count - 2]
            if abs(last.x - before.x) > 0.1 { slope = min(2, max(0.25, (last.psnr - before.psnr) / (last.x - before.x))) }
        }
        let needed = last.x + (aim - last.psnr) / slope
        return aim - needed
    }

    /// The proof's generation by default: a prompt unlike the calibration's, 6 steps.
    public static func defaultVerification(_ settings: Calibration.Settings) -> StableDiffusionPipeline.Request {
        var request = StableDiffusionPipeline.Request(prompt: "a lighthouse on a rocky coast under a stormy sky")
        request.steps = 6
        request.seed = 0
        request.width = settings.width
        request.height = settings.height
        return request
    }

    /// The tensors the ladder applies to: weights of rank 2 or more that a block conversion
    /// would quantise (not kept by the rules or `keep`), whose rows hold 32-value blocks; for
    /// `.wpk`, also the text encoders' token embedding tables (``ladderEmbeddings``).
    static func candidates(_ model: CanonicalModel, format: Format, keep: [String]) throws -> [String] {
        switch format {
        case .wpk:
            let rules = GGMLTypeRules(target: .q8_0, rows: .allButFirstDimension, keep: keep)
            return model.store.tensors.filter { d in
                if isLadderEmbedding(d, keep: keep) { return true }
                let decision = rules.decision(for: d)
                return decision.type.isBlockQuantized && decision.fallbackFrom == nil
            }.map(\.name)
        case .gguf:
            let kept = Set(model.store.tensors.filter { d in keep.contains { Glob.matches($0, d.name) } }.map(\.name))
            return try ModelExport.ggufQuantizedTensors(model).filter { !kept.contains($0) }
        }
    }

    /// Name endings of the embedding tables `--dtype auto` measures like any weight when it
    /// writes `.wpk`: the CLIP token embeddings (49408 rows, 11 % of a uniform Q4_K SD 1.5).
    /// The uniform block types keep them F16, as every peer's rules do; the engine reads a
    /// quantised table row by row (only the prompt's rows are decoded). GGUF keeps them:
    /// stable-diffusion.cpp does not quantise embeddings.
    static let ladderEmbeddings = ["token_embedding.weight"]

    static func isLadderEmbedding(_ d: TensorDescriptor, keep: [String]) -> Bool {
        d.shape.rank == 2 && d.dtype.isConvertibleFloat && ladderEmbeddings.contains { d.name.hasSuffix("." + $0) }
            && !keep.contains { Glob.matches($0, d.name) }
    }

    /// Bytes of every other tensor as a block conversion stores it (F16 matrices, F32 vectors,
    /// non-float tensors as they are).
    static func fixedTensorBytes(_ model: CanonicalModel, excluding: Set<String>, keep: [String]) throws -> Int {
        let rules = GGMLTypeRules(target: .f16, rows: .allButFirstDimension, keep: keep)
        var total = 0
        for d in model.store.tensors where !excluding.contains(d.name) {
            if d.dtype.isConvertibleFloat {
                total += rules.decision(for: d).type.byteCount(values: d.elementCount) ?? d.byteCount
            } else {
                total += d.byteCount
            }
        }
        return total
    }

    /// The importance each tensor's block quantisation gets from the calibration statistics
    /// (``Sensitivity/importance(shape:energy:)``), as the writers pass it.
    static func importanceVectors(_ model: CanonicalModel, names: [String], statistics: ActivationStatistics, format: Format) -> [String: [Float]] {
        var importance: [String: [Float]] = [:]
        for name in names {
            guard let d = model.store.descriptor(named: name),
                let vector = Sensitivity.importance(shape: d.shape.dimensions, energy: statistics.channels[name])
            else { continue }
            // GGUF rows are the last dimension: a linear weight's columns, the input channels.
            if format == .wpk || d.shape.rank == 2 { importance[name] = vector }
        }
        return importance
    }

    private static func write(
        _ model: CanonicalModel, allocation: BudgetAllocation, importance all: [String: [Float]], to output: String, format: Format,
        options: Options, overwrite: Bool,
        recipe: JSONValue,
        prove: @escaping @Sendable (String, [String: QuantizationMetrics]) throws -> JSONValue, events: (@Sendable (Event) -> Void)?
    ) throws {
        let progress = events.map { BudgetProgress($0) }
        // Room for the measured record: its fixed part and a line per tensor.
        let reserve = 8192 + allocation.picks.count * 160
        var importance: [String: [Float]] = [:]
        for p in allocation.picks {
            guard case .ggml(let type) = p.storage, type.isBlockQuantized, let vector = all[p.name] else { continue }
            importance[p.name] = vector
        }
        switch format {
        case .wpk:
            var conversion = Conversion.Options(dtype: .keep)
            conversion.storage = Dictionary(uniqueKeysWithValues: allocation.picks.map { ($0.name, $0.storage) })
            conversion.importance = importance
            conversion.keepPatterns = options.keepPatterns
            conversion.recipe = recipe
            conversion.headerReserve = reserve
            conversion.overwrite = overwrite
            conversion.tool = options.tool
            conversion.recordSourceDigest = options.recordSourceDigest
            conversion.beforeCommit = { path, entries in
                var metrics: [String: QuantizationMetrics] = [:]
                for e in entries {
                    if let m = e.blocks?.metrics ?? e.quantization?.metrics { metrics[e.descriptor.name] = m }
                }
                return JSONObject([("quality_budget_measured", try prove(path, metrics))])
            }
            _ = try Conversion.write(model, to: output, options: conversion, progress: progress)
        case .gguf:
            var storage: [String: GGMLType] = [:]
            for p in allocation.picks {
                guard case .ggml(let type) = p.storage else { continue }
                storage[p.name] = type
            }
            var budget = ModelExport.GGUFBudget(
                storage: storage, recipe: recipe.serialized(pretty: false), measuredReserve: reserve,
                beforeCommit: { path, metrics in try prove(path, metrics).serialized(pretty: false) })
            budget.importance = importance
            _ = try ModelExport.writeGGUF(
                model, dtype: .f16, to: output, overwrite: overwrite, tool: options.tool, progress: progress, budget: budget)
        }
    }

    /// The attempt a writer's error carries when the proof discarded it.
    private static func missed(in error: any Error) -> Missed? {
        if let m = error as? Missed { return m }
        if let f = error as? FormatError, let u = f.underlying { return missed(in: u) }
        if let m = error as? ModelLoadingError, let u = m.underlying { return missed(in: u) }
        return nil
    }

    private static func unreachable(
        _ goal: Goal, tensors: [Sensitivity.TensorOptions], fixedBytes: Int, overhead: Int, offset: Double
    )
        -> ModelLoadingError
    {
        let best = BudgetAllocator.allocate(tensors, fixedBytes: fixedBytes, goal: .bytes(.max), offset: offset)
        switch goal {
        case .psnr(let target):
            return ModelLoadingError(
                .budgetUnreachable,
                "no mix of the ladder is predicted to reach \(format(target)) dB (the best is \(format(best?.predictedPSNR(offset: offset) ?? .nan)) dB); lower --target-psnr"
            )
        case .bytes(let limit):
            return ModelLoadingError(
                .budgetUnreachable,
                "the smallest mix of the ladder needs about \(smallestBytes(tensors, fixedBytes: fixedBytes) + overhead) bytes, more than --max-size \(limit)"
            )
        }
    }

    /// The tensor bytes of the smallest mix: each tensor in its smallest storage, and the rest.
    static func smallestBytes(_ tensors: [Sensitivity.TensorOptions], fixedBytes: Int) -> Int {
        tensors.reduce(fixedBytes) { $0 + ($1.candidates.map(\.bytes).min() ?? 0) }
    }

    /// `12.34`, `inf`, `-inf`, `nan`: dB for messages.
    public static func format(_ x: Double) -> String {
        x.isFinite ? String(format: "%.2f", x) : (x > 0 ? "inf" : x < 0 ? "-inf" : "nan")
    }

    private static func dB(_ x: Double) -> JSONValue { x.isFinite ? JSONValue((x * 100).rounded() / 100) : .string(format(x)) }

    static func recipeJSON(
        options: Options, ladder: [StorageChoice], settings: Calibration.Settings, verification: StableDiffusionPipeline.Request,
        allocation: BudgetAllocation, tensors: [Sensitivity.TensorOptions], gains: LayerGains.Measurement?,
        int8Inputs: Int8InputGain.Measurement?, offset: Double, predicted: Double, previous: [Attempt]
    ) -> JSONValue {
        var goal = JSONObject()
        switch options.goal {
        case .psnr(let t): goal["target_psnr"] = JSONValue(t)
        case .bytes(let b): goal["max_size"] = JSONValue(b)
        }
        let weighted = Dictionary(uniqueKeysWithValues: tensors.map { ($0.name, $0.weighted) })
        var perTensor = JSONObject()
        for p in allocation.picks {
            var entry = JSONObject([
                ("type", .string(p.storage.label)), ("predicted_error_db", dB(10 * log10(p.relativeError))),
                ("predicted_weight_snr_db", dB(p.weightSNR)), ("weighted", .bool(weighted[p.name] ?? false)),
            ])
            if p.inputError > 0 { entry["predicted_input_error_db"] = dB(10 * log10(p.inputError)) }
            if let gain = gains?.gains[p.name] { entry["gain_db"] = dB(10 * log10(gain)) }
            perTensor[p.name] = .object(entry)
        }
        return [
            "version": 1, "tool": .string(options.tool), "format": .string(options.format.rawValue), "goal": .object(goal),
            "ladder": .array(ladder.map { .string($0.label) }), "calibration": settings.json,
            "verification": [
                "prompt": .string(verification.prompt), "seed": .string(String(verification.seed)), "steps": JSONValue(verification.steps),
                "width": JSONValue(verification.width), "height": JSONValue(verification.height),
            ],
            "sample_rows": JSONValue(options.sampleRows), "importance_weighted": .bool(options.importanceWeighted),
            "predicts_int8_inputs": .bool(options.predictsInt8Inputs), "offset_db": JSONValue(offset),
            "predicted_image_psnr": dB(predicted),
            "predicted_bytes": JSONValue(allocation.bytes), "attempt": JSONValue(previous.count + 1),
            "previous_attempts": .array(previous.map(\.json)), "gains": gains?.json ?? .null, "int8_inputs": int8Inputs?.json ?? .null,
            "tensors": .object(perTensor),
        ]
    }

    static func measuredJSON(_ attempt: Attempt, report: Verification.Report, metrics: [String: QuantizationMetrics]) -> JSONValue {
        var perTensor = JSONObject()
        for (name, m) in metrics.sorted(by: { $0.key < $1.key }) { perTensor[name] = dB(m.snrDecibels ?? .infinity) }
        var root = attempt.json.objectValue ?? JSONObject()
        root["weight_snr_db"] = .object(perTensor)
        root["compute"] = JSONValue(report.compute.rawValue)
        return .object(root)
    }
}

/// A value used by a closure that runs on the thread that made it (the writer's check).
private struct SameThread<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

/// Passes the writer's byte progress on as budget events.
private final class BudgetProgress: ProgressReporter, @unchecked Sendable {
    let events: @Sendable (QualityBudget.Event) -> Void
    private var total = 0
    private var done = 0
    init(_ events: @escaping @Sendable (QualityBudget.Event) -> Void) { self.events = events }
    func begin(total: Int) {
        self.total = total
        done = 0
        events(.progress(done: 0, total: total))
    }
    func advance(by count: Int) {
        done += count
        events(.progress(done: done, total: total))
    }
    func finish() { events(.progress(done: total, total: total)) }
}
