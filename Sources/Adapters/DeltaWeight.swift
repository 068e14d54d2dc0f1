import TensorCore

/// The size of the weight a module's product has: `out` rows of `inner` values (a
/// convolution's `in·kh·kw` flattened), computed with overflow checks from the factors' shapes.
public struct DeltaShape: Sendable, Hashable {
    public var out: Int
    public var inner: Int

    /// Whether a base weight of `shape` has this size (same rows, same values per row).
    public func matches(_ shape: Shape) -> Bool {
        guard shape.rank >= 1, shape[0] == out else { return false }
        guard let rest = try? Shape(Array(shape.dimensions.dropFirst())).elementCount() else { return false }
        return rest == inner
    }

    static func product(_ values: [Int], _ key: String) throws(AdapterError) -> Int {
        var n = 1
        for v in values {
            let (r, o) = n.multipliedReportingOverflow(by: v)
            guard !o, r <= Int(Int32.max) * 64 else {
                throw AdapterError(.tooLarge, "module '\(key)' declares a product of \(values) elements, beyond any layer", tensor: key)
            }
            n = r
        }
        return n
    }

    /// The shape of `module`'s product.
    public static func implied(by m: AdapterModule) throws(AdapterError) -> DeltaShape {
        let s = m.shapes
        func dims(_ r: AdapterRole) -> [Int] { s[r]?.dimensions ?? [] }
        switch m.algorithm {
        case .lora:
            let down = dims(.down), up = dims(.up)
            if let mid = s[.mid] { return DeltaShape(out: up[0], inner: try product([down[1], mid[2], mid[3]], m.key)) }
            return DeltaShape(out: up[0], inner: try product(Array(down.dropFirst()), m.key))
        case .loha:
            if let t = s[.hadaT1] { return DeltaShape(out: dims(.hadaW1A)[1], inner: try product([dims(.hadaW1B)[1], t[2], t[3]], m.key)) }
            return DeltaShape(out: dims(.hadaW1A)[0], inner: dims(.hadaW1B)[1])
        case .lokr:
            let (o1, i1) = s[.lokrW1].map { ($0[0], $0[1]) } ?? (dims(.lokrW1A)[0], dims(.lokrW1B)[1])
            let o2: Int, i2: Int
            if let w2 = s[.lokrW2] {
                o2 = w2[0]
                i2 = try product(Array(w2.dimensions.dropFirst()), m.key)
            } else if let t = s[.lokrT2] {
                o2 = dims(.lokrW2A)[1]
                i2 = try product([dims(.lokrW2B)[1], t[2], t[3]], m.key)
            } else {
                o2 = dims(.lokrW2A)[0]
                i2 = dims(.lokrW2B)[1]
            }
            return DeltaShape(out: try product([o1, o2], m.key), inner: try product([i1, i2], m.key))
        case .full:
            let d = dims(.diff)
            return DeltaShape(out: d.first ?? 1, inner: try product(Array(d.dropFirst()), m.key))
        }
    }
}

/// A module's change to its weight as f32 values (`out × inner`, row-major), α/dim applied and
/// the user's scale not: the arithmetic ComfyUI (`comfy/weight_adapter`) and A1111 use.
enum DeltaWeight {
    /// Reads a factor as f32.
    static func factor(_ m: AdapterModule, _ role: AdapterRole, _ store: any TensorStore) throws -> [Float] {
        guard let name = m.tensors[role] else { throw AdapterError(.malformed, "module '\(m.key)' lacks \(role.rawValue)", tensor: m.key) }
        let values = try store.tensor(named: name).floats()
        guard values.allSatisfy(\.isFinite) else {
            throw AdapterError(.malformed, "tensor '\(name)' holds NaN or infinite values", tensor: name)
        }
        return values
    }

    /// C[m×n] = A[m×k] · B[k×n].
    static func matmul(_ a: [Float], _ b: [Float], m: Int, k: Int, n: Int) -> [Float] {
        var c = [Float](repeating: 0, count: m * n)
        a.withUnsafeBufferPointer { a in
            b.withUnsafeBufferPointer { b in
                c.withUnsafeMutableBufferPointer { c in
                    for i in 0..<m {
                        let row = c.baseAddress! + i * n
                        for p in 0..<k {
                            let x = a[i * k + p]
                            if x == 0 { continue }
                            let brow = b.baseAddress! + p * n
                            for j in 0..<n { row[j] += x * brow[j] }
                        }
                    }
                }
            }
        }
        return c
    }

    /// Aᵀ for A[m×n].
    static func transpose(_ a: [Float], m: Int, n: Int) -> [Float] {
        var t = [Float](repeating: 0, count: m * n)
        for i in 0..<m { for j in 0..<n { t[j * m + i] = a[i * n + j] } }
        return t
    }

    /// einsum('i j k l, j r, i p -> p r k l', t, b, a): a Tucker core `t [i, j, kh, kw]` joined
    /// with `b [j, r]` and `a [i, p]`; gives `[p, r·kh·kw]`.
    static func tucker(t: [Float], tShape: Shape, b: [Float], bShape: Shape, a: [Float], aShape: Shape) -> [Float] {
        let i = tShape[0], j = tShape[1], kk = tShape[2] * tShape[3], r = bShape[1], p = aShape[1]
        // temp[i, r, kk] = Σ_j t[i, j, kk] · b[j, r]
        var temp = [Float](repeating: 0, count: i * r * kk)
        for x in 0..<i {
            for y in 0..<j {
                for z in 0..<r {
                    let w = b[y * r + z]
                    if w == 0 { continue }
                    for s in 0..<kk { temp[(x * r + z) * kk + s] += t[(x * j + y) * kk + s] * w }
                }
            }
        }
        // out[p, r·kk] = aᵀ[p, i] · temp[i, r·kk]
        return matmul(transpose(a, m: i, n: p), temp, m: p, k: i, n: r * kk)
    }

    /// ΔW of `m` (α/dim applied), `shape.out × shape.inner` values.
    static func compute(_ m: AdapterModule, store: any TensorStore, shape: DeltaShape) throws -> [Float] {
        var delta: [Float]
        switch m.algorithm {
        case .lora:
            let up = try factor(m, .up, store), down = try factor(m, .down, store)
            let upShape = m.shapes[.up]!, r = upShape[1]
            var downMatrix = down
            if let midShape = m.shapes[.mid] {
                // down'[j, i, kh, kw] = Σ_k mid[j, k, kh, kw] · down[k, i]
                let mid = try factor(m, .mid, store)
                let rDown = midShape[1], inputs = m.shapes[.down]![1], kk = midShape[2] * midShape[3]
                downMatrix = [Float](repeating: 0, count: r * inputs * kk)
                for j in 0..<r {
                    for k in 0..<rDown {
                        for i in 0..<inputs {
                            let d = down[k * inputs + i]
                            if d == 0 { continue }
                            for s in 0..<kk { downMatrix[(j * inputs + i) * kk + s] += mid[(j * rDown + k) * kk + s] * d }
                        }
                    }
                }
            }
            delta = matmul(up, downMatrix, m: shape.out, k: r, n: shape.inner)
        case .loha:
            let w1a = try factor(m, .hadaW1A, store), w1b = try factor(m, .hadaW1B, store)
            let w2a = try factor(m, .hadaW2A, store), w2b = try factor(m, .hadaW2B, store)
            let m1: [Float], m2: [Float]
            if m.hasTucker {
                m1 = tucker(
                    t: try factor(m, .hadaT1, store), tShape: m.shapes[.hadaT1]!, b: w1b, bShape: m.shapes[.hadaW1B]!, a: w1a,
                    aShape: m.shapes[.hadaW1A]!)
                m2 = tucker(
                    t: try factor(m, .hadaT2, store), tShape: m.shapes[.hadaT2]!, b: w2b, bShape: m.shapes[.hadaW2B]!, a: w2a,
                    aShape: m.shapes[.hadaW2A]!)
            } else {
                m1 = matmul(w1a, w1b, m: shape.out, k: m.shapes[.hadaW1A]![1], n: shape.inner)
                m2 = matmul(w2a, w2b, m: shape.out, k: m.shapes[.hadaW2A]![1], n: shape.inner)
            }
            delta = zip(m1, m2).map { $0 * $1 }
        case .lokr:
            let w1: [Float], o1: Int, i1: Int
            if m.tensors[.lokrW1] != nil {
                w1 = try factor(m, .lokrW1, store)
                (o1, i1) = (m.shapes[.lokrW1]![0], m.shapes[.lokrW1]![1])
            } else {
                let a = m.shapes[.lokrW1A]!, b = m.shapes[.lokrW1B]!
                w1 = matmul(try factor(m, .lokrW1A, store), try factor(m, .lokrW1B, store), m: a[0], k: a[1], n: b[1])
                (o1, i1) = (a[0], b[1])
            }
            let w2: [Float]
            if m.tensors[.lokrW2] != nil {
                w2 = try factor(m, .lokrW2, store)
            } else if m.tensors[.lokrT2] != nil {
                w2 = tucker(
                    t: try factor(m, .lokrT2, store), tShape: m.shapes[.lokrT2]!, b: try factor(m, .lokrW2B, store), bShape: m.shapes[.lokrW2B]!,
                    a: try factor(m, .lokrW2A, store), aShape: m.shapes[.lokrW2A]!)
            } else {
                let a = m.shapes[.lokrW2A]!, b = m.shapes[.lokrW2B]!
                w2 = matmul(try factor(m, .lokrW2A, store), try factor(m, .lokrW2B, store), m: a[0], k: a[1], n: b[1])
            }
            let o2 = shape.out / o1, i2 = shape.inner / i1
            delta = [Float](repeating: 0, count: shape.out * shape.inner)
            for a in 0..<o1 {
                for c in 0..<i1 {
                    let x = w1[a * i1 + c]
                    if x == 0 { continue }
                    for b in 0..<o2 {
                        let row = (a * o2 + b) * shape.inner + c * i2
                        for d in 0..<i2 { delta[row + d] = x * w2[b * i2 + d] }
                    }
                }
            }
        case .full:
            delta = try factor(m, .diff, store)
        }
        let factor = Float(m.alphaFactor)
        if factor != 1 { for i in delta.indices { delta[i] *= factor } }
        return delta
    }

    /// Applies a DoRA module as ComfyUI's `weight_decompose` does: V = W + ΔW, normalised per
    /// input channel (`dora_scale` [1, in, …]) or per output channel (`dora_scale` [out, 1, …]),
    /// times the magnitude; the scale `s` interpolates W + s·(V' − W).
    static func decompose(
        weight: inout [Float], delta: [Float], magnitude: [Float], magnitudeShape: Shape, shape: DeltaShape, kernel: Int, scale: Float
    ) throws {
        let out = shape.out, inner = shape.inner
        let inputs = kernel > 0 ? inner / kernel : inner
        var v = weight
        for i in v.indices { v[i] += delta[i] }
        let perOutput = magnitudeShape.rank >= 1 && magnitudeShape[0] == out && magnitude.count == out && !(magnitudeShape[0] == 1 && out != 1)
        if perOutput {
            for o in 0..<out {
                var sum = 0.0
                for j in 0..<inner { let x = Double(v[o * inner + j]); sum += x * x }
                let f = magnitude[o] / Float(sum.squareRoot())
                for j in 0..<inner { v[o * inner + j] *= f }
            }
        } else {
            guard magnitude.count == inputs else {
                throw AdapterError(
                    .shapeMismatch, "dora_scale \(magnitudeShape) fits neither the \(out) outputs nor the \(inputs) inputs of the layer")
            }
            var sums = [Double](repeating: 0, count: inputs)
            let k = max(kernel, 1)
            for o in 0..<out { for j in 0..<inner { let x = Double(v[o * inner + j]); sums[j / k] += x * x } }
            for o in 0..<out { for j in 0..<inner { v[o * inner + j] *= magnitude[j / k] / Float(sums[j / k].squareRoot()) } }
        }
        if scale == 1 {
            weight = v
        } else {
            for i in weight.indices { weight[i] += scale * (v[i] - weight[i]) }
        }
    }
}
