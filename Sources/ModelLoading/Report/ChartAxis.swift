/// A linear axis with "nice" ticks (1, 2 or 5 times a power of ten) that cover a data range.
struct ChartAxis: Sendable, Equatable {
    /// The value at the start (left or bottom) of the axis: the first tick.
    var lower: Double
    /// The value at the end of the axis: the last tick.
    var upper: Double
    /// The distance between ticks.
    var step: Double

    /// Ticks covering `low...high` with about `count` intervals: the bounds are rounded outwards to
    /// multiples of a 1-2-5 step (a power of two when `binary`, as for bits: 0...16 in steps of 2, 4
    /// or 8). A range narrower than a hundredth of `minimumSpan` (a single value)
    /// is widened to `minimumSpan` around its middle first.
    init(covering low: Double, _ high: Double, intervals count: Int, minimumSpan: Double, binary: Bool = false) {
        var low = low
        var high = high
        if !(high - low >= minimumSpan / 100) {
            let middle = (low + high) / 2
            low = middle - minimumSpan / 2
            high = middle + minimumSpan / 2
        }
        let raw = (high - low) / Double(max(1, count))
        let step = binary ? ChartAxis.powerOfTwoStep(for: raw) : ChartAxis.niceStep(for: raw)
        self.step = step
        lower = (low / step).rounded(.down) * step
        upper = (high / step).rounded(.up) * step
        if !(upper > lower) { upper = lower + step }
    }

    /// The smallest 1-2-5 step that is at least `raw`.
    static func niceStep(for raw: Double) -> Double {
        guard raw.isFinite, raw > 0 else { return 1 }
        var power = 1.0
        while power > raw { power /= 10 }
        while power * 10 <= raw { power *= 10 }
        for factor in [1.0, 2, 5, 10] where power * factor >= raw * (1 - 1e-12) { return power * factor }
        return power * 10
    }

    /// The smallest power of two that is at least `raw` (at least 1/1024).
    static func powerOfTwoStep(for raw: Double) -> Double {
        guard raw.isFinite, raw > 0 else { return 1 }
        var step = 1.0 / 1024
        while step < raw * (1 - 1e-12), step < 1e300 { step *= 2 }
        return step
    }

    /// The tick values from `lower` to `upper` (at most 200).
    var ticks: [Double] {
        let n = min(200, Int(((upper - lower) / step).rounded()))
        return (0...max(0, n)).map { lower + Double($0) * step }
    }

    /// Where `value` falls along the axis, 0 at `lower` and 1 at `upper`.
    func fraction(_ value: Double) -> Double { (value - lower) / (upper - lower) }

    /// Decimal places that show every tick exactly (0 to 6).
    var decimals: Int {
        var places = 0
        var scaled = step
        while places < 6, abs(scaled - scaled.rounded()) > 1e-9 * max(1, abs(scaled)) {
            scaled *= 10
            places += 1
        }
        return places
    }

    /// A tick label: `value` with `decimals` places (`-0` shown as `0`).
    func label(_ value: Double) -> String {
        let places = decimals
        if places == 0 {
            let rounded = value.rounded()
            guard abs(rounded) < 1e15 else { return String(rounded) }
            return String(Int(rounded))
        }
        let text = Formatting.decimals(value, places)
        return text.hasPrefix("-") && Double(text) == 0 ? String(text.dropFirst()) : text
    }
}
