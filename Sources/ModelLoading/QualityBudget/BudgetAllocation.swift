import Foundation
import Quantization

/// Which storage each tensor gets under a budget, from the predicted cost and error of every
/// storage (``Sensitivity``).
///
/// The prediction model: the relative output noise of every quantised layer, times the layer's
/// measured gain (``LayerGains``, 1 when not measured), adds up, and the image PSNR against the
/// source is `offset − 10 log10(Σ gain · noise)`, with `offset` fitted to a measurement (the
/// gains' own, then a verify of a written file). A choice minimises bytes for a noise budget or
/// noise for a byte budget: the Lagrangian `noise + λ·bytes` picks each tensor's storage for a
/// given `λ`, a bisection on `λ` meets the budget, and a greedy pass then spends what the
/// bisection left (the best bytes per noise first).
public struct BudgetAllocation: Sendable {
    /// One tensor's pick.
    public struct Pick: Sendable, Hashable {
        public var name: String
        public var storage: StorageChoice
        public var bytes: Int
        /// Predicted relative output noise of the layer (``Sensitivity/Candidate/relativeError``).
        public var relativeError: Double
        /// Predicted relative output noise from quantising the layer's inputs, in int8 compute
        /// (``Sensitivity/Candidate/inputError``); 0 otherwise.
        public var inputError: Double
        /// Its share of the image's noise: `relativeError` plus `inputError`, times the layer's gain.
        public var noise: Double
        /// The sampled weight SNR of this storage, in dB.
        public var weightSNR: Double
    }

    /// In the order of the tensors given.
    public var picks: [Pick]
    /// Bytes of the tensors outside the ladder (norms, biases, embeddings, kept layers).
    public var fixedBytes: Int

    /// The file's tensor bytes.
    public var bytes: Int { fixedBytes + picks.reduce(0) { $0 + $1.bytes } }
    /// Predicted total noise (each layer's relative noise times its gain).
    public var noise: Double { picks.reduce(0) { $0 + $1.noise } }

    /// The predicted image PSNR for a fitted `offset` (`.infinity` when nothing is lossy).
    public func predictedPSNR(offset: Double) -> Double { BudgetAllocator.psnr(noise: noise, offset: offset) }

    /// Tensors per storage label.
    public var counts: [String: Int] { Dictionary(grouping: picks, by: \.storage.label).mapValues(\.count) }
}

/// Chooses storages against a budget (see ``BudgetAllocation``).
public enum BudgetAllocator {
    /// What the choice must meet.
    public enum Goal: Sendable, Hashable {
        /// The smallest file whose predicted image PSNR is at least this many dB.
        case psnr(Double)
        /// The lowest predicted noise within this many bytes of tensor data.
        case bytes(Int)
    }

    /// `offset − 10 log10(noise)`.
    public static func psnr(noise: Double, offset: Double) -> Double {
        noise > 0 ? offset - 10 * log10(noise) : .infinity
    }

    /// The noise that gives `psnr` at `offset`.
    public static func noise(forPSNR psnr: Double, offset: Double) -> Double {
        pow(10, (offset - psnr) / 10)
    }

    /// Each tensor's candidates without the dominated ones (another is no larger and no
    /// noisier), by increasing size; `relativeError` here is the gain-weighted noise
    /// (``Sensitivity/TensorOptions/noise(_:)``).
    static func frontiers(_ tensors: [Sensitivity.TensorOptions]) -> [[Sensitivity.Candidate]] {
        tensors.map { t in
            let scaled = t.candidates.map { c in
                Sensitivity.Candidate(storage: c.storage, bytes: c.bytes, relativeError: t.noise(c), weightSNR: c.weightSNR)
            }
            let sorted = scaled.sorted { ($0.bytes, $0.relativeError) < ($1.bytes, $1.relativeError) }
            var kept: [Sensitivity.Candidate] = []
            // Walking up in size, a candidate stays only if it is quieter than every smaller one.
            for c in sorted where kept.last.map({ c.relativeError < $0.relativeError && c.bytes > $0.bytes }) ?? true {
                kept.append(c)
            }
            return kept
        }
    }

    /// For each tensor, the index in `frontier` minimising `noise + λ·bytes`.
    static func lagrangian(_ frontier: [[Sensitivity.Candidate]], lambda: Double) -> [Int] {
        frontier.map { options in
            var best = 0
            var bestCost = Double.infinity
            for (k, c) in options.enumerated() {
                let cost = c.relativeError + lambda * Double(c.bytes)
                if cost < bestCost {
                    bestCost = cost
                    best = k
                }
            }
            return best
        }
    }

    static func totals(_ frontier: [[Sensitivity.Candidate]], _ pick: [Int]) -> (bytes: Int, noise: Double) {
        var bytes = 0
        var noise = 0.0
        for (options, k) in zip(frontier, pick) {
            bytes += options[k].bytes
            noise += options[k].relativeError
        }
        return (bytes, noise)
    }

    static func allocation(
        _ tensors: [Sensitivity.TensorOptions], _ frontier: [[Sensitivity.Candidate]], _ pick: [Int], fixedBytes: Int
    ) -> BudgetAllocation {
        BudgetAllocation(
            picks: zip(tensors, zip(frontier, pick)).map { t, choice in
                let c = choice.0[choice.1]
                return Self.pick(t, t.candidates.first { $0.storage == c.storage } ?? c)
            }, fixedBytes: fixedBytes)
    }

    static func pick(_ t: Sensitivity.TensorOptions, _ c: Sensitivity.Candidate) -> BudgetAllocation.Pick {
        BudgetAllocation.Pick(
            name: t.name, storage: c.storage, bytes: c.bytes, relativeError: c.relativeError, inputError: c.inputError, noise: t.noise(c),
            weightSNR: c.weightSNR)
    }

    /// The choice for `goal`, or `nil` when no choice meets it (a byte budget below the
    /// smallest storages, a PSNR above what the largest reach).
    ///
    /// - Parameters:
    ///   - fixedBytes: bytes of the tensors outside the ladder, counted against a byte budget.
    ///   - offset: the fitted offset of the prediction (``BudgetAllocation``).
    public static func allocate(
        _ tensors: [Sensitivity.TensorOptions], fixedBytes: Int, goal: Goal, offset: Double
    ) -> BudgetAllocation? {
        let frontier = frontiers(tensors)
        guard !frontier.contains(where: \.isEmpty) else { return nil }
        let smallest = frontier.map { _ in 0 }
        let largest = frontier.map { $0.count - 1 }
        var pick: [Int]
        switch goal {
        case .psnr(let target):
            let budget = noise(forPSNR: target, offset: offset)
            guard totals(frontier, largest).noise <= budget else { return nil }
            if totals(frontier, smallest).noise <= budget {
                pick = smallest
            } else {
                // The largest λ (smallest file) whose noise stays within the budget.
                pick = bisect(frontier, keep: { $0.noise <= budget }, preferLargerLambda: true)
                pick = spend(frontier, pick, downward: true) { $0.noise <= budget }
            }
        case .bytes(let limit):
            let room = limit - fixedBytes
            guard totals(frontier, smallest).bytes <= room else { return nil }
            if totals(frontier, largest).bytes <= room {
                pick = largest
            } else {
                // The smallest λ (largest file) that still fits.
                pick = bisect(frontier, keep: { $0.bytes <= room }, preferLargerLambda: false)
                pick = spend(frontier, pick, downward: false) { $0.bytes <= room }
            }
        }
        return allocation(tensors, frontier, pick, fixedBytes: fixedBytes)
    }

    /// Bisects `log λ` for the extreme `λ` whose Lagrangian choice satisfies `keep`
    /// (`keep` holds for large λ when `preferLargerLambda` is false, and for small λ when true).
    private static func bisect(
        _ frontier: [[Sensitivity.Candidate]], keep: ((bytes: Int, noise: Double)) -> Bool, preferLargerLambda: Bool
    ) -> [Int] {
        // λ spans every trade-off: noise per byte from 1e-30 to 1e10.
        var low = -30.0 * log(10)
        var high = 10.0 * log(10)
        var best = preferLargerLambda ? lagrangian(frontier, lambda: exp(low)) : lagrangian(frontier, lambda: exp(high))
        for _ in 0..<80 {
            let mid = (low + high) / 2
            let pick = lagrangian(frontier, lambda: exp(mid))
            let ok = keep(totals(frontier, pick))
            if preferLargerLambda {
                if ok {
                    best = pick
                    low = mid
                } else {
                    high = mid
                }
            } else {
                if ok {
                    best = pick
                    high = mid
                } else {
                    low = mid
                }
            }
        }
        return best
    }

    /// Greedy moves one step along a tensor's frontier while `keep` holds: `downward` takes the
    /// step saving the most bytes per noise added, upward the one removing the most noise per
    /// byte added.
    private static func spend(
        _ frontier: [[Sensitivity.Candidate]], _ start: [Int], downward: Bool, keep: ((bytes: Int, noise: Double)) -> Bool
    ) -> [Int] {
        var pick = start
        var current = totals(frontier, pick)
        while true {
            var bestIndex: Int?
            var bestRate = -Double.infinity
            for (i, options) in frontier.enumerated() {
                let next = pick[i] + (downward ? -1 : 1)
                guard options.indices.contains(next) else { continue }
                let dBytes = options[next].bytes - options[pick[i]].bytes
                let dNoise = options[next].relativeError - options[pick[i]].relativeError
                let trial = (bytes: current.bytes + dBytes, noise: current.noise + dNoise)
                guard keep(trial) else { continue }
                // Bytes saved per noise added (downward), noise removed per byte added (upward).
                let rate = downward ? Double(-dBytes) / max(dNoise, 1e-300) : -dNoise / Double(max(dBytes, 1))
                if rate > bestRate {
                    bestRate = rate
                    bestIndex = i
                }
            }
            guard let i = bestIndex else { return pick }
            let next = pick[i] + (downward ? -1 : 1)
            current.bytes += frontier[i][next].bytes - frontier[i][pick[i]].bytes
            current.noise += frontier[i][next].relativeError - frontier[i][pick[i]].relativeError
            pick[i] = next
        }
    }

    /// The trade-off curve: the Lagrangian choice for `count` values of λ spread over every
    /// trade-off, as (bytes, noise), without repeats, by increasing size.
    public static func frontier(_ tensors: [Sensitivity.TensorOptions], fixedBytes: Int, count: Int = 48) -> [(bytes: Int, noise: Double)] {
        let frontier = frontiers(tensors)
        guard !frontier.contains(where: \.isEmpty), count >= 2 else { return [] }
        var points: [(bytes: Int, noise: Double)] = []
        for step in 0..<count {
            let logLambda = (-30.0 + 40.0 * Double(step) / Double(count - 1)) * log(10)
            let t = totals(frontier, lagrangian(frontier, lambda: exp(logLambda)))
            if points.last?.bytes != fixedBytes + t.bytes { points.append((fixedBytes + t.bytes, t.noise)) }
        }
        return points.sorted { $0.bytes < $1.bytes }
    }

    /// Every tensor in `storage`, or where it does not fit, the first of `fallbacks(storage)`
    /// that does (F16 when none does): what a uniform `--dtype` would store.
    public static func uniform(
        _ tensors: [Sensitivity.TensorOptions], storage: StorageChoice, fixedBytes: Int
    ) -> BudgetAllocation {
        BudgetAllocation(
            picks: tensors.map { t in
                var wanted: StorageChoice? = storage
                while let w = wanted {
                    if let c = t.candidates.first(where: { $0.storage == w }) { return pick(t, c) }
                    if case .ggml(let type) = w, let f = GGMLTypeRules.fallback(for: type) { wanted = .ggml(f) } else { wanted = nil }
                }
                return pick(t, t.candidates.first { $0.storage == .ggml(.f16) } ?? t.candidates[0])
            }, fixedBytes: fixedBytes)
    }
}
