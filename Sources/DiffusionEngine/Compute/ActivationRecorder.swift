import Synchronization

/// The energy of one layer's inputs per input channel, over everything it saw.
public struct ChannelEnergy: Sendable, Hashable {
    /// One per input channel: a linear layer's last dimension, a convolution's input channel
    /// (averaged over the real input pixels, zero padding not counted).
    public var meanSquares: [Double]
    /// Rows (linear) or input pixels (convolution) summed.
    public var samples: Int

    public init(meanSquares: [Double], samples: Int) {
        self.meanSquares = meanSquares
        self.samples = samples
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
        var squares: [Double]
        var samples: Int
    }

    private let sums = Mutex<[String: Sums]>([:])

    public init() {}

    /// Keyed by the weight's full name as the engine resolves it (`weights.prefix + name + ".weight"`).
    public func statistics() -> [String: ChannelEnergy] {
        sums.withLock { table in
            table.mapValues { s in
                let n = Double(max(s.samples, 1))
                return ChannelEnergy(meanSquares: s.squares.map { $0 / n }, samples: s.samples)
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

    private static func add(_ local: [Double], samples: Int, to sums: inout Sums) {
        for i in 0..<local.count { sums.squares[i] += local[i] }
        sums.samples += samples
    }

    private func merge(_ local: [Double], samples: Int, weight: String) {
        sums.withLock { table in
            guard table[weight]?.squares.count == local.count else {
                // A first call (a layer never changes width within a network).
                table[weight] = Sums(squares: local, samples: samples)
                return
            }
            Self.add(local, samples: samples, to: &table[weight]!)
        }
    }
}
