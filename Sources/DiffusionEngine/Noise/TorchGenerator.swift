#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A random generator that draws the same numbers as `torch.Generator().manual_seed(seed)` on the
/// CPU: a 32-bit Mersenne Twister, torch's uniform conversions, and `torch.randn`'s two normal
/// samplers (Box-Muller over 16-value blocks for 16 or more elements, the scalar
/// `normal_distribution<double>` with its cached second value for fewer).
/// Matches PyTorch's CPUGeneratorImpl and normal_kernel, https://github.com/pytorch/pytorch/blob/main/aten/src/ATen/native/cpu/DistributionTemplates.h
public struct TorchGenerator: Sendable {
    private var state = [UInt32](repeating: 0, count: 624)
    private var index = 624
    /// The second Box-Muller value of the scalar sampler, kept for its next call (as torch does).
    private var cachedNormal: Double?
    public let seed: UInt64

    /// `torch.Generator().manual_seed(seed)`.
    public init(seed: UInt64) {
        self.seed = seed
        state[0] = UInt32(truncatingIfNeeded: seed)
        for i in 1..<624 {
            let previous = state[i - 1]
            state[i] = 1_812_433_253 &* (previous ^ (previous >> 30)) &+ UInt32(i)
        }
        index = 624
    }

    /// The next 32 bits of MT19937.
    public mutating func nextUInt32() -> UInt32 {
        if index >= 624 { twist() }
        var y = state[index]
        index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C_5680
        y ^= (y << 15) & 0xEFC6_0000
        y ^= y >> 18
        return y
    }

    private mutating func twist() {
        for i in 0..<624 {
            let y = (state[i] & 0x8000_0000) | (state[(i + 1) % 624] & 0x7FFF_FFFF)
            var next = state[(i + 397) % 624] ^ (y >> 1)
            if y & 1 != 0 { next ^= 0x9908_B0DF }
            state[i] = next
        }
        index = 0
    }

    /// torch's `random64()`: two draws, the first in the high half.
    public mutating func nextUInt64() -> UInt64 {
        let high = UInt64(nextUInt32()), low = UInt64(nextUInt32())
        return high << 32 | low
    }

    /// `uniform_real_distribution<float>(0, 1)`: 24 random bits.
    public mutating func nextUniformFloat() -> Float {
        Float(nextUInt32() & 0xFF_FFFF) * (1 / Float(1 << 24))
    }

    /// `uniform_real_distribution<double>(0, 1)`: 53 random bits of `random64()`.
    public mutating func nextUniformDouble() -> Double {
        Double(nextUInt64() & ((1 << 53) - 1)) * (1 / Double(UInt64(1) << 53))
    }

    /// `normal_distribution<double>(0, 1)`, torch's scalar sampler.
    public mutating func nextNormalDouble() -> Double {
        if let cached = cachedNormal {
            cachedNormal = nil
            return cached
        }
        let u1 = nextUniformDouble(), u2 = nextUniformDouble()
        let r = (-2 * log1p(-u2)).squareRoot()
        let theta = 2 * Double.pi * u1
        cachedNormal = r * sin(theta)
        return r * cos(theta)
    }

    /// `torch.randn(count, generator=g)` for a contiguous float32 tensor.
    ///
    /// With 16 or more elements the values agree with torch to float rounding: torch's AVX2
    /// kernel evaluates log, sin and cos with its own float approximations, which can differ in
    /// the last bit from the C library's.
    public mutating func normalFloats(_ count: Int) -> [Float] {
        guard count > 0 else { return [] }
        if count < 16 {
            return (0..<count).map { _ in Float(nextNormalDouble()) }
        }
        var data = (0..<count).map { _ in nextUniformFloat() }
        var i = 0
        while i + 16 <= count {
            Self.boxMuller16(&data, at: i)
            i += 16
        }
        if count % 16 != 0 {
            // torch redraws the last 16 values and transforms them again.
            for j in (count - 16)..<count { data[j] = nextUniformFloat() }
            Self.boxMuller16(&data, at: count - 16)
        }
        return data
    }

    /// A `FloatTensor` of `torch.randn(shape, generator=g)`.
    public mutating func randn(_ shape: [Int]) -> FloatTensor {
        FloatTensor(shape: shape, values: normalFloats(shape.reduce(1, *)))
    }

    /// Box-Muller over 16 uniforms: values 0..<8 take the cosine, 8..<16 the sine.
    private static func boxMuller16(_ data: inout [Float], at start: Int) {
        for j in 0..<8 {
            let u1 = 1 - data[start + j]
            let u2 = data[start + j + 8]
            let radius = (-2 * logf(u1)).squareRoot()
            let theta = Float(2 * Double.pi) * u2
            data[start + j] = radius * cosf(theta)
            data[start + j + 8] = radius * sinf(theta)
        }
    }
}
