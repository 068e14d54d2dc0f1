import DiffusionEngine
import Dispatch
import Foundation
import Quantization
import StrictJSON
import TensorCore

/// How much image noise the int8 products' quantised inputs add per unit of their predicted
/// layer noise (``Sensitivity/Candidate/inputError``), measured end to end, for a proof that
/// computes in ``ComputePrecision/int8``.
///
/// The layer gains (``LayerGains``) are measured with weight errors, and an input's rounding
/// error reaches the image differently: it is not a smooth function of the input, so the two
/// passes of classifier-free guidance (with and without the prompt), whose inputs differ after
/// the first cross-attention, get independent errors, which the guidance scale `s` amplifies
/// (up to `(1 − s)² + s²` in power, 98× at 7.5), where a weight's error is nearly the same in
/// both passes and mostly cancels in their difference. On the tiny fixture the layer-gain
/// prediction put the inputs' share at a third of the weights' where the image measured over
/// five times it (Docs/quantization.md).
///
/// The measurement: every UNet layer that takes the int8 products (those with a predicted
/// input error) stored as int8 blocks, all other tensors as the source's, the proof run once in
/// float and once in int8 compute. The float run's image noise is what the layers' predicted
/// weight noise `W` is worth; the int8 run's extra noise is what their predicted input noise
/// `P` is worth, so each input error is scaled by `(noise_int8 − noise_float) / noise_float ·
/// W / P`.
public enum Int8InputGain {
    /// What one measurement found.
    public struct Measurement: Sendable {
        /// Tensors stored as int8 blocks for it.
        public var tensors: Int
        /// Image PSNR against the source in float and in int8 compute.
        public var floatPSNR: Double
        public var int8PSNR: Double
        /// Σ gain · relative error of the int8 weights, and Σ gain · input error, predicted.
        public var predictedWeightNoise: Double
        public var predictedInputNoise: Double
        /// What every predicted input error is multiplied by (0 when the int8 run measured no
        /// more noise than the float one).
        public var scale: Double

        public var json: JSONValue {
            [
                "tensors": JSONValue(tensors), "image_psnr_f32": dB(floatPSNR), "image_psnr_int8": dB(int8PSNR),
                "predicted_weight_noise_db": dB(10 * log10(predictedWeightNoise)),
                "predicted_input_noise_db": dB(10 * log10(predictedInputNoise)), "scale_db": dB(10 * log10(scale)),
            ]
        }
    }

    /// The tensors measured: the UNet's with a predicted input error, and their int8 candidate
    /// (int8, else Q8_0: the same blocks of 32 for this purpose).
    static func measured(_ tensors: [Sensitivity.TensorOptions]) -> [(index: Int, candidate: Sensitivity.Candidate)] {
        tensors.enumerated().compactMap { i, t in
            guard t.name.hasPrefix("unet."),
                let c = t.candidates.first(where: { $0.storage == .int8 && $0.inputError > 0 })
                    ?? t.candidates.first(where: { $0.storage == .ggml(.q8_0) && $0.inputError > 0 })
            else { return nil }
            return (i, c)
        }
    }

    /// Measures the scale (see ``Int8InputGain``); `nil` when no tensor has a predicted input
    /// error or the float run's image is identical to the source's (nothing to scale against).
    ///
    /// - Parameters:
    ///   - tensors: the predictions, with their gains (``Sensitivity/TensorOptions/gain``).
    ///   - progress: runs done (of 2).
    /// - Throws: the engine's and the quantiser's errors; ``ModelLoadingError/Code/invalidCalibration``
    ///   when the processor lacks the int8 products.
    public static func measure(
        _ source: StableDiffusionModel, reference: Verification.ReferenceRun, tensors: [Sensitivity.TensorOptions],
        configurationFolder: String?, progress: ((Int, Int) -> Void)? = nil
    ) throws -> Measurement? {
        let picked = measured(tensors)
        guard !picked.isEmpty else { return nil }
        guard ComputeBackend.current.int8Products else {
            throw ModelLoadingError(.invalidCalibration, "int8 inputs cannot be measured on a processor without the int8 products")
        }
        let store = source.canonical.store
        let results = Locked<[Result<(Int8BlockLayout, OwnedBuffer), any Error>?]>(Array(repeating: nil, count: picked.count))
        DispatchQueue.concurrentPerform(iterations: picked.count) { k in
            let t = tensors[picked[k].index]
            let result = Result<(Int8BlockLayout, OwnedBuffer), any Error> {
                let values = try store.tensor(named: t.name).floats()
                let layout = try Int8BlockLayout(shape: Shape(t.shape))
                let packed = try values.withUnsafeBufferPointer { try Int8Quantizer.quantize($0, layout: layout) }
                return (layout, packed.buffer)
            }
            results.withLock { $0[k] = result }
        }
        var quantized: [String: (layout: Int8BlockLayout, buffer: OwnedBuffer)] = [:]
        for (k, r) in results.withLock({ $0 }).enumerated() {
            let (layout, buffer) = try r!.get()
            quantized[tensors[picked[k].index].name] = (layout, buffer)
        }
        let candidate = try StableDiffusionModel(
            source.canonical.replacingStore(SubstitutedStore(base: store, replacements: [:], quantized: quantized)),
            configurationFolder: configurationFolder)
        let referenceImage = reference.output.image.scalars
        var psnr: [Double] = []
        progress?(0, 2)
        for compute in [ComputePrecision.f32, .int8] {
            var request = reference.request
            request.computePrecision = compute
            let image = try candidate.pipeline.generate(request).image
            psnr.append(ParityMetrics(reference: referenceImage, candidate: image.scalars, peak: 1).psnr)
            progress?(psnr.count, 2)
        }
        let weightNoise = picked.reduce(0) { $0 + tensors[$1.index].gain * $1.candidate.relativeError }
        let inputNoise = picked.reduce(0) { $0 + tensors[$1.index].gain * $1.candidate.inputError }
        let floatNoise = pow(10, -psnr[0] / 10), int8Noise = pow(10, -psnr[1] / 10)
        guard floatNoise > 0, floatNoise.isFinite, int8Noise.isFinite, weightNoise > 0, inputNoise > 0 else { return nil }
        let scale = max(0, int8Noise - floatNoise) / floatNoise * weightNoise / inputNoise
        return Measurement(
            tensors: picked.count, floatPSNR: psnr[0], int8PSNR: psnr[1], predictedWeightNoise: weightNoise, predictedInputNoise: inputNoise,
            scale: scale)
    }

    private static func dB(_ x: Double) -> JSONValue { x.isFinite ? JSONValue((x * 100).rounded() / 100) : .string(QualityBudget.format(x)) }
}
