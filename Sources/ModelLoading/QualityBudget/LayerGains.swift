import DiffusionEngine
import Dispatch
import Foundation
import Quantization
import StrictJSON
import TensorCore

/// How much image noise each block of layers adds per unit of its predicted layer noise,
/// measured end to end (issue 14).
///
/// ``Sensitivity`` predicts each layer's relative output error; how that error reaches the image
/// depends on where the layer is (a text-encoder layer feeds every cross-attention of every step,
/// a VAE decoder layer only the last decode). For each block of layers (``group(of:layerCounts:)``:
/// the token embedding, a third of a text encoder's layers, each UNet down, mid and up block, each
/// VAE decoder block) the block's weights alone are stored in a probe storage (Q4_0 where the
/// ladder has it) and read back, the proof's generation is run with them, and the image's noise
/// (mean squared error over the peak², `10^(−PSNR/10)`) is divided by the block's summed predicted
/// noise. A VAE decoder block needs only the decode of the source's final latents, which are
/// unchanged. The VAE encoder is not run by the proof (text to image); its layers get the median
/// gain, as if they mattered as much as a typical block.
///
/// The allocation then minimises `Σ gain · noise`: errors of independent blocks add in the image's
/// mean square while they are small, which is the regime of a budget worth having.
public enum LayerGains {
    /// How a block's effect on the image is measured.
    enum Stage: Sendable {
        /// The whole generation (text encoder and UNet blocks).
        case generation
        /// The decode of the source's final latents (VAE decoder blocks).
        case decode
        /// Not run by the proof (VAE encoder): not measured.
        case none
    }

    /// One block of layers and what storing it in the probe did to the image.
    public struct Group: Sendable {
        public var name: String
        public var tensors: [String]
        /// Probe storages used, label → tensors.
        public var probes: [String: Int]
        /// Σ of the probe storage's predicted relative error over the block.
        public var probeNoise: Double
        /// The image PSNR against the source with only this block in the probe storage;
        /// `nil` when not run.
        public var imagePSNR: Double?
        /// Image noise (mean square over peak²) per unit of predicted noise; `nil` when not
        /// measured (not run, lossless probe, or an image that did not change).
        public var gain: Double?

        /// The block as recorded in the recipe (`quality_budget.gains`).
        public func json(reference: Double) -> JSONValue {
            var o = JSONObject([
                ("group", .string(name)), ("tensors", JSONValue(tensors.count)),
                ("probe", .object(JSONObject(probes.sorted { $0.key < $1.key }.map { ($0.key, JSONValue($0.value)) }))),
                ("probe_noise_db", dB(10 * log10(probeNoise))),
            ])
            if let imagePSNR { o["image_psnr"] = dB(imagePSNR) }
            if let gain { o["gain_db"] = dB(10 * log10(gain / reference)) }
            return .object(o)
        }
    }

    /// What ``measure(_:reference:tensors:importance:configurationFolder:progress:)`` found.
    public struct Measurement: Sendable {
        public var groups: [Group]
        /// The geometric mean of the measured gains: the gains below are relative to it.
        public var reference: Double
        /// Each tensor's gain relative to ``reference`` (unmeasured blocks: the median).
        public var gains: [String: Double]

        /// The prediction's offset these gains imply: image PSNR = offset − 10 log10(Σ gain · noise).
        public var offset: Double { -10 * log10(reference) }

        public var json: JSONValue { .array(groups.map { $0.json(reference: reference) }) }
    }

    /// The block `name` belongs to and how its effect is measured. `layerCounts` holds each text
    /// encoder's number of layers (a block is a third of them).
    static func group(of name: String, layerCounts: [String: Int]) -> (name: String, stage: Stage) {
        let parts = name.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        let component = parts[0]
        switch component {
        case "text_encoder", "text_encoder_2":
            if let i = parts.firstIndex(of: "layers"), i + 1 < parts.count, let n = Int(parts[i + 1]), n >= 0 {
                let count = max(layerCounts[component] ?? (n + 1), n + 1)
                let size = max(1, (count + 2) / 3)
                let low = n / size * size
                return ("\(component) layers \(low)-\(min(count, low + size) - 1)", .generation)
            }
            if name.hasSuffix("token_embedding.weight") { return ("\(component) token embedding", .generation) }
            return ("\(component) other", .generation)
        case "unet":
            if parts.count > 2, parts[1] == "down_blocks" || parts[1] == "up_blocks" { return ("unet \(parts[1]).\(parts[2])", .generation) }
            if parts.count > 1, parts[1] == "mid_block" { return ("unet mid_block", .generation) }
            return ("unet other", .generation)
        case "vae":
            guard parts.count > 1 else { return ("vae", .none) }
            if parts[1] == "decoder" {
                if parts.count > 3, parts[2] == "up_blocks" { return ("vae decoder.up_blocks.\(parts[3])", .decode) }
                if parts.count > 2, parts[2] == "mid_block" { return ("vae decoder.mid_block", .decode) }
                return ("vae decoder other", .decode)
            }
            if parts[1] == "post_quant_conv" { return ("vae decoder other", .decode) }
            return ("vae encoder", .none)
        default:
            return (component, .generation)
        }
    }

    /// Each text encoder's layer count, from the names (`text_encoder.….layers.N.…`).
    static func layerCounts(_ names: [String]) -> [String: Int] {
        var counts: [String: Int] = [:]
        for name in names {
            let parts = name.split(separator: ".").map(String.init)
            guard let component = parts.first, component.hasPrefix("text_encoder"), let i = parts.firstIndex(of: "layers"), i + 1 < parts.count,
                let n = Int(parts[i + 1]), n >= 0, n < 10_000
            else { continue }
            counts[component] = max(counts[component] ?? 0, n + 1)
        }
        return counts
    }

    /// The storage a tensor is probed in: Q4_0 when it is a candidate, else its smallest one.
    static func probe(_ t: Sensitivity.TensorOptions) -> Sensitivity.Candidate? {
        t.candidates.first { $0.storage == .ggml(.q4_0) } ?? t.candidates.min { ($0.bytes, -$0.relativeError) < ($1.bytes, -$1.relativeError) }
    }

    /// Measures every block's gain (see ``LayerGains``).
    ///
    /// - Parameters:
    ///   - reference: the source's run of the proof (its final latents and image).
    ///   - importance: the importance each quantised tensor's writer passes (``QualityBudget``).
    ///   - progress: blocks done and the total.
    /// - Throws: the engine's and the quantisers' errors.
    public static func measure(
        _ source: StableDiffusionModel, reference: Verification.ReferenceRun, tensors: [Sensitivity.TensorOptions],
        importance: [String: [Float]], configurationFolder: String?, progress: ((Int, Int) -> Void)? = nil
    ) throws -> Measurement {
        let counts = layerCounts(tensors.map(\.name))
        var order: [String] = []
        var members: [String: [Int]] = [:]
        var stages: [String: Stage] = [:]
        for (i, t) in tensors.enumerated() {
            let (name, stage) = group(of: t.name, layerCounts: counts)
            if members[name] == nil {
                order.append(name)
                stages[name] = stage
            }
            members[name, default: []].append(i)
        }
        let store = source.canonical.store
        let referenceImage = reference.output.image.scalars
        let runs = order.filter { stages[$0] != Stage.none }.count
        var done = 0
        progress?(0, runs)
        var groups: [Group] = []
        for name in order {
            let indices = members[name]!
            var probes: [String: Int] = [:]
            var picked: [(index: Int, storage: StorageChoice)] = []
            var probeNoise = 0.0
            for i in indices {
                guard let c = probe(tensors[i]), c.relativeError > 0 else { continue }
                probes[c.storage.label, default: 0] += 1
                picked.append((i, c.storage))
                probeNoise += c.relativeError
            }
            var group = Group(name: name, tensors: indices.map { tensors[$0].name }, probes: probes, probeNoise: probeNoise)
            guard stages[name] != Stage.none else {
                groups.append(group)
                continue
            }
            defer {
                done += 1
                progress?(done, runs)
            }
            guard probeNoise > 0 else {
                groups.append(group)
                continue
            }
            // The block's weights as the probe stores them, computed on both cores.
            let jobs = picked
            let results = Locked<[Result<[Float], any Error>?]>(Array(repeating: nil, count: jobs.count))
            DispatchQueue.concurrentPerform(iterations: jobs.count) { k in
                let t = tensors[jobs[k].index]
                let result = Result<[Float], any Error> {
                    let values = try store.tensor(named: t.name).floats()
                    let rowLength = t.shape.dropFirst().reduce(1, *)
                    return try Sensitivity.roundTrip(values, rowLength: rowLength, storage: jobs[k].storage, importance: importance[t.name])
                }
                results.withLock { $0[k] = result }
            }
            var replacements: [String: [Float]] = [:]
            for (k, r) in results.withLock({ $0 }).enumerated() { replacements[tensors[picked[k].index].name] = try r!.get() }
            let candidate = try StableDiffusionModel(
                source.canonical.replacingStore(SubstitutedStore(base: store, replacements: replacements)), configurationFolder: configurationFolder)
            let image: FloatTensor
            switch stages[name]! {
            case .decode: image = try candidate.pipeline.vae.decodeImage(latents: reference.output.latents)
            default: image = try candidate.pipeline.generate(reference.request).image
            }
            let psnr = ParityMetrics(reference: referenceImage, candidate: image.scalars, peak: 1).psnr
            group.imagePSNR = psnr
            // A block that breaks the image (no finite PSNR below zero) counts as 0 dB.
            if psnr.isFinite || psnr < 0 { group.gain = pow(10, -max(0, psnr) / 10) / probeNoise }
            groups.append(group)
        }
        let measured = groups.compactMap(\.gain).filter { $0 > 0 && $0.isFinite }
        guard !measured.isEmpty else { return Measurement(groups: groups, reference: 1, gains: [:]) }
        let reference = exp(measured.map { log($0) }.reduce(0, +) / Double(measured.count))
        let sorted = measured.sorted()
        let median = sorted[sorted.count / 2]
        var gains: [String: Double] = [:]
        for g in groups {
            let gain = (g.gain.flatMap { $0 > 0 && $0.isFinite ? $0 : nil } ?? median) / reference
            for name in g.tensors { gains[name] = gain }
        }
        return Measurement(groups: groups, reference: reference, gains: gains)
    }

    private static func dB(_ x: Double) -> JSONValue { x.isFinite ? JSONValue((x * 100).rounded() / 100) : .string(QualityBudget.format(x)) }
}

/// A store whose named tensors read as the given F32 values (the same shapes), or as int8
/// blocks (``QuantizedTensorStore``, read by the engine as stored and by everything else
/// dequantised), every other tensor as the base's own: a model with one block of layers
/// quantised, for ``LayerGains`` and ``Int8InputGain``.
final class SubstitutedStore: QuantizedTensorStore, @unchecked Sendable {
    let base: any TensorStore
    let tensors: [TensorDescriptor]
    private let replacements: [String: OwnedBuffer]
    private let quantized: [String: (layout: Int8BlockLayout, buffer: OwnedBuffer)]
    private let byName: [String: Int]
    var formatName: String { base.formatName }
    var metadata: [String: String] { base.metadata }

    init(base: any TensorStore, replacements: [String: [Float]], quantized: [String: (layout: Int8BlockLayout, buffer: OwnedBuffer)] = [:]) {
        self.base = base
        self.replacements = replacements.mapValues { values in
            let buffer = OwnedBuffer(byteCount: values.count * 4)
            values.withUnsafeBytes { buffer.mutableBytes.copyMemory(from: $0) }
            return buffer
        }
        self.quantized = quantized
        var list = base.tensors
        // Int8 tensors present their dequantised dtype, as a `.wpk` file's do.
        for i in list.indices where replacements[list[i].name] != nil || quantized[list[i].name] != nil {
            list[i].dtype = .f32
            list[i].byteCount = list[i].elementCount * 4
        }
        tensors = list
        var index: [String: Int] = [:]
        for (i, d) in list.enumerated() where index[d.name] == nil { index[d.name] = i }
        byName = index
    }

    func descriptor(named name: String) -> TensorDescriptor? { byName[name].map { tensors[$0] } }

    func sourceName(of name: String) -> String? { base.sourceName(of: name) }

    func storedDType(of name: String) -> DType? {
        replacements[name] != nil || quantized[name] != nil ? .f32 : base.storedDType(of: name)
    }

    func tensor(named name: String) throws -> TensorView {
        if let q = try quantizedTensor(named: name) { return try q.dequantized() }
        guard let buffer = replacements[name], let i = byName[name] else { return try base.tensor(named: name) }
        return TensorView(descriptor: tensors[i], bytes: TensorBytes(owner: buffer, buffer: buffer.bytes))
    }

    func quantizedTensor(named name: String) throws -> QuantizedTensorView? {
        guard let q = quantized[name], let i = byName[name] else { return nil }
        return try QuantizedTensorView(
            descriptor: tensors[i], layout: q.layout, bytes: TensorBytes(owner: q.buffer, buffer: q.buffer.bytes), metrics: nil)
    }
}
