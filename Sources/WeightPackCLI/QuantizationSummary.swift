import CheckpointFormats
import Quantization
import TensorCore

/// What an int8 conversion did, in one line: how much was quantised and the error it took.
struct QuantizationSummary {
    let quantized: [(name: String, metrics: QuantizationMetrics?)]
    let quantizedParameters: Int
    let totalParameters: Int

    init(_ entries: [WPKTensorEntry]) {
        quantized = entries.compactMap { e in e.quantization.map { (e.descriptor.name, $0.metrics) } }
        quantizedParameters = entries.filter { $0.quantization != nil }.reduce(0) { $0 + $1.descriptor.elementCount }
        totalParameters = entries.reduce(0) { $0 + $1.descriptor.elementCount }
    }

    var line: String {
        var text = "int8: \(quantized.count) tensors quantised, \(formatCount(quantizedParameters)) of \(formatCount(totalParameters)) parameters"
        let snrs = quantized.compactMap { t in t.metrics?.snrDecibels.map { (t.name, $0) } }
        if let worst = snrs.min(by: { $0.1 < $1.1 }) {
            let mean = snrs.reduce(0) { $0 + $1.1 } / Double(snrs.count)
            text += "; SNR mean \(format1(mean)) dB, lowest \(format1(worst.1)) dB (\(worst.0))"
        }
        return text
    }
}
