import Dispatch
import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A pointer that may cross into `concurrentPerform` workers. Each worker touches a disjoint
/// range, which is what makes this sound.
struct SharedPointer<T>: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<T>
    init(_ pointer: UnsafeMutablePointer<T>) { self.pointer = pointer }
    init(_ pointer: UnsafePointer<T>) { self.pointer = UnsafeMutablePointer(mutating: pointer) }
}

/// Marks threads whose ``Parallel`` calls run inline (see ``Parallel/serially(_:)``).
private let serialThreadKey: pthread_key_t = {
    var key = pthread_key_t()
    precondition(pthread_key_create(&key, nil) == 0, "cannot create a thread-specific key")
    return key
}()

/// Marks threads whose matrix products are not float (see ``GEMM/withPrecision(_:_:)``): the
/// value is 1 + the index of the ``ComputePrecision``; ``Parallel`` carries the mark to its workers.
private let precisionThreadKey: pthread_key_t = {
    var key = pthread_key_t()
    precondition(pthread_key_create(&key, nil) == 0, "cannot create a thread-specific key")
    return key
}()

enum Parallel {
    /// Worker count for elementwise work (the machine's active processors, at most 8).
    static let workerCount: Int = max(1, min(ProcessInfo.processInfo.activeProcessorCount, 8))

    /// Whether ``forRanges(_:grain:_:)`` and ``forEach(_:_:)`` run inline on this thread.
    static var isSerialOnThisThread: Bool { pthread_getspecific(serialThreadKey) != nil }

    /// Runs `body` with every ``Parallel`` call it makes on this thread done inline: for work
    /// that is already one of several coarse tasks spread over the cores (one batch element
    /// each), where splitting again would only add synchronisation.
    static func serially<R>(_ body: () throws -> R) rethrows -> R {
        let outer = pthread_getspecific(serialThreadKey)
        pthread_setspecific(serialThreadKey, UnsafeRawPointer(bitPattern: 1))
        defer { pthread_setspecific(serialThreadKey, outer) }
        return try body()
    }

    /// The arithmetic of this thread's matrix products (set by ``GEMM/withPrecision(_:_:)``).
    static var productPrecisionOnThisThread: ComputePrecision {
        guard let mark = pthread_getspecific(precisionThreadKey) else { return .f32 }
        return ComputePrecision.allCases[Int(bitPattern: mark) - 1]
    }

    /// Whether this thread's matrix products run in bfloat16.
    static var productsInBF16OnThisThread: Bool { productPrecisionOnThisThread == .bf16 }

    /// Whether this thread's products with int8 block weights run in int8 (``ComputePrecision/int8``).
    static var productsInInt8OnThisThread: Bool { productPrecisionOnThisThread == .int8 }

    /// Runs `body` with this thread's products in `precision`, restoring the previous choice.
    static func withProductPrecision<R>(_ precision: ComputePrecision, _ body: () throws -> R) rethrows -> R {
        let outer = pthread_getspecific(precisionThreadKey)
        let index = ComputePrecision.allCases.firstIndex(of: precision)!
        pthread_setspecific(precisionThreadKey, precision == .f32 ? nil : UnsafeRawPointer(bitPattern: index + 1))
        defer { pthread_setspecific(precisionThreadKey, outer) }
        return try body()
    }

    /// Runs `body` on a worker with the calling thread's product precision.
    @inline(__always)
    private static func inheriting(_ precision: ComputePrecision, _ body: () -> Void) {
        if precision == productPrecisionOnThisThread { body() } else { withProductPrecision(precision, body) }
    }

    /// Runs `body` over `0..<count` split into contiguous ranges, one per worker, when the work
    /// is large enough to be worth it (`grain` items at least per range).
    @inline(__always)
    static func forRanges(_ count: Int, grain: Int = 16_384, _ body: (Range<Int>) -> Void) {
        if count <= 0 { return }
        let parts = isSerialOnThisThread ? 1 : min(workerCount, max(1, count / max(grain, 1)))
        if parts == 1 {
            body(0..<count)
            return
        }
        let precision = productPrecisionOnThisThread
        withoutActuallyEscaping(body) { body in
            let shared = UnsafeSendableBox(body)
            DispatchQueue.concurrentPerform(iterations: parts) { p in
                let lo = count * p / parts
                let hi = count * (p + 1) / parts
                inheriting(precision) { shared.value(lo..<hi) }
            }
        }
    }

    /// Runs `body(i)` for each `i` in `0..<count` on all workers (each item is large work).
    static func forEach(_ count: Int, _ body: (Int) -> Void) {
        if count <= 0 { return }
        if count == 1 || workerCount == 1 || isSerialOnThisThread {
            for i in 0..<count { body(i) }
            return
        }
        let precision = productPrecisionOnThisThread
        withoutActuallyEscaping(body) { body in
            let shared = UnsafeSendableBox(body)
            DispatchQueue.concurrentPerform(iterations: count) { i in inheriting(precision) { shared.value(i) } }
        }
    }
}

/// Carries a non-Sendable closure into `concurrentPerform`; sound because callers only touch
/// disjoint memory from each iteration.
struct UnsafeSendableBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
