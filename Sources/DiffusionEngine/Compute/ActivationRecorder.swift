import Synchronization

/// The energy of one layer's inputs per input channel, over everything it saw.
public struct ChannelEnergy: Sendable, Hashable {
    /// One per input channel: a linear layer's last dimension, a convolution's input channel
    /// (averaged over the real input pixels, zero padding not counted).
    public var meanSquares: [Double]
    /// Rows (linear) or input pixels (convolution) summed.
    public var samples: Int
    /// One per input channel, when the recorder was asked for it and the layer takes the int8
    /// products (``ComputePrecision/int8``): the mean square of the error that quantising its
    /// inputs in blocks of 32 adds to each input value, as those products quantise them (a
    /// convolution's patches, padding included, averaged over its kernel positions and output
    /// pixels). `nil` otherwise.
    public var int8InputNoise: [Double]?

    public init(meanSquares: [Double], samples: Int, int8InputNoise: [Double]? = nil) {
        self.meanSquares = meanSquares
        self.samples = samples
        self.int8InputNoise = int8InputNoise
    }
}

/// Per-input-channel mean squares of the inputs every linear and convolution layer saw
/// (``Workspace/linear(_:_:bias:)`` and ``Workspace/conv2d(_:_:stride:padding:)``): the
/// diagonal of the input's second moment, which an importance matrix weights rounding errors
/// by. Install one on the networks (`activationRecorder`) or a pipeline
/// (``StableDiffusionPipeline/activationRecorder``) and run them; several workspaces may
/// record at once (each call sums locally, then merges under the lock).
public final class ActivationRecorder: Sendable {
    private struct Sums {
        var squares: [Double] = []
        var samples = 0
        var noise: [Double] = []
        var noiseSamples = 0
    }

    private let sums = Mutex<[String: Sums]>([:])
    /// Weights (full names) whose layers also record ``ChannelEnergy/int8InputNoise``.
    private let int8NoisePrefix: String?

    /// - Parameter int8NoisePrefix: also record ``ChannelEnergy/int8InputNoise`` for the layers
    ///   whose weight name starts with it (`"unet."`: the network ``ComputePrecision/int8``
    ///   applies to); `nil` records none.
    public init(int8NoisePrefix: String? = nil) {
        self.int8NoisePrefix = int8NoisePrefix
    }

    /// Keyed by the weight's full name as the engine resolves it (`weights.prefix + name + ".weight"`).
    public func statistics() -> [String: ChannelEnergy] {
        sums.withLock { table in
            table.compactMapValues { s in
                guard !s.squares.isEmpty else { return nil }
                let n = Double(max(s.samples, 1)), m = Double(max(s.noiseSamples, 1))
                let noise = s.noise.count == s.squares.count ? s.noise.map { $0 / m } : nil
                return ChannelEnergy(meanSquares: s.squares.map { $0 / n }, samples: s.samples, int8InputNoise: noise)
            }
        }
    }

    /// Forgets everything recorded so far.
    public func reset() { sums.withLock { $0.removeAll() } }

    /// Adds `rows` rows of `channels` values (row-major) to `weight`'s sums.
    func record(rows x: UnsafePointer<Float>, rows: Int, channels: Int, weight: String) {
        guard rows > 0, channels > 0 else { return }
        var local = [Double](repeating: 0, count: channels)
        var partial = [Float](repeating: 0, count: channels)
        local.withUnsafeMutableBufferPointer { acc in
            partial.withUnsafeMutableBufferPointer { p in
                // Up to 64 rows summed in Float, then widened: short sums stay accurate.
                var r = 0
                while r < rows {
                    let end = min(rows, r + 64)
                    for i in 0..<channels { p[i] = 0 }
                    for row in r..<end {
                        let v = x + row * channels
                        for i in 0..<channels { p[i] += v[i] * v[i] }
                    }
                    for i in 0..<channels { acc[i] += Double(p[i]) }
                    r = end
                }
            }
        }
        merge(local, samples: rows, weight: weight)
    }

    /// Adds the `channels` planes of `plane` values each (`[C, H, W]`) to `weight`'s sums.
    func record(planes x: UnsafePointer<Float>, channels: Int, plane: Int, weight: String) {
        guard channels > 0, plane > 0 else { return }
        var local = [Double](repeating: 0, count: channels)
        for c in 0..<channels {
            let v = x + c * plane
            var total = 0.0
            var start = 0
            while start < plane {
                let end = min(plane, start + 256)
                var s: Float = 0
                for i in start..<end { s += v[i] * v[i] }
                total += Double(s)
                start = end
            }
            local[c] = total
        }
        merge(local, samples: plane, weight: weight)
    }

    /// Adds the error the int8 products' quantisation gives `rows` rows of `channels` values
    /// (a linear layer's input, ``Int8Products/takes(linearInputs:)``), when `weight` is one
    /// the recorder was asked for.
    func recordInt8Noise(rows x: UnsafePointer<Float>, rows: Int, channels: Int, weight: String) {
        guard rows > 0, channels > 0, wantsInt8Noise(weight) else { return }
        var local = [Double](repeating: 0, count: channels)
        local.withUnsafeMutableBufferPointer {
            Int8Products.addNoise(x, rows: rows, k: channels, strideRow: channels, strideValue: 1, into: $0.baseAddress!)
        }
        merge(noise: local, samples: rows, weight: weight)
    }

    /// Adds the error the int8 products' quantisation gives the patches of the convolution `g`
    /// of `x` (``Int8Products/takes(_:)``), per input channel, when `weight` is one the recorder
    /// was asked for.
    func recordInt8Noise(patches x: UnsafePointer<Float>, geometry g: Convolution.Geometry, weight: String) {
        let area = g.kernelHeight * g.kernelWidth, pixels = g.outHeight * g.outWidth
        guard g.inChannels > 0, area > 0, pixels > 0, wantsInt8Noise(weight) else { return }
        var positions = [Double](repeating: 0, count: g.patchSize)
        positions.withUnsafeMutableBufferPointer { Int8Products.addPatchNoise(x, geometry: g, into: $0.baseAddress!) }
        // Per channel: its kernel positions summed, each pixel counting `area` samples.
        let local = (0..<g.inChannels).map { c in positions[(c * area)..<((c + 1) * area)].reduce(0, +) }
        merge(noise: local, samples: pixels * area, weight: weight)
    }

    private func wantsInt8Noise(_ weight: String) -> Bool { int8NoisePrefix.map { weight.hasPrefix($0) } ?? false }

    private func merge(_ local: [Double], samples: Int, weight: String) {
        sums.withLock { table in
            // Moved out and back, so the arrays are not copied.
            var entry = table.removeValue(forKey: weight) ?? Sums()
            Self.add(local, samples: samples, to: &entry.squares, samples: &entry.samples)
            table[weight] = entry
        }
    }

    private func merge(noise local: [Double], samples: Int, weight: String) {
        sums.withLock { table in
            var entry = table.removeValue(forKey: weight) ?? Sums()
            Self.add(local, samples: samples, to: &entry.noise, samples: &entry.noiseSamples)
            table[weight] = entry
        }
    }

    private static func add(_ local: [Double], samples: Int, to sums: inout [Double], samples count: inout Int) {
        guard sums.count == local.count else {
            // A first call (a layer never changes width within a network).
            sums = local
            count = samples
            return
        }
        for i in 0..<local.count { sums[i] += local[i] }
        count += samples
    }
}
