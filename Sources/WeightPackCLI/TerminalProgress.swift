import CheckpointFormats
import ModelLoading

#if canImport(Glibc)
import Glibc
#endif

/// A progress bar on stderr, drawn only when stderr is a terminal and the work is large.
final class TerminalProgress: ProgressReporter {
    private let label: String
    private var total = 0
    private var done = 0
    private var lastDraw = 0.0
    private var start = 0.0
    private var active = false

    /// `nil` unless stderr is a terminal.
    static func make(_ label: String) -> TerminalProgress? {
        isatty(STDERR_FILENO) != 0 ? TerminalProgress(label: label) : nil
    }

    private init(label: String) { self.label = label }

    func begin(total: Int) {
        self.total = total
        done = 0
        start = now()
        active = total >= 64 << 20
    }

    func advance(by amount: Int) {
        done += amount
        guard active else { return }
        let t = now()
        if t - lastDraw >= 0.1 {
            lastDraw = t
            draw(t)
        }
    }

    func finish() {
        guard active else { return }
        draw(now())
        writeStandardError("\n")
        active = false
    }

    private func draw(_ t: Double) {
        let fraction = total > 0 ? min(1, Double(done) / Double(total)) : 1
        let width = 30
        let filled = Int(fraction * Double(width))
        let bar = String(repeating: "=", count: filled) + String(repeating: " ", count: width - filled)
        let rate = t > start ? Double(done) / (t - start) : 0
        writeStandardError("\r\(label) [\(bar)] \(Int(fraction * 100))% \(formatBytes(done))/\(formatBytes(total)) \(formatBytes(Int(rate)))/s ")
    }

    private func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}

/// `1.2 GB`, `340 MB`, `12 KB`, `5 B` (decimal units).
func formatBytes(_ n: Int) -> String { Formatting.bytes(n) }

/// One decimal place.
func format1(_ v: Double) -> String { Formatting.oneDecimal(v) }
