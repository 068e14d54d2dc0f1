import FuzzSupport
import SafePickle

private let machine = PickleMachine()

/// Small limits, so that every limit is reachable from short inputs.
private let tightMachine = PickleMachine(
    limits: PickleLimits(
        maximumOpcodes: 2_000, maximumStackDepth: 64, maximumMarkDepth: 8, maximumMemoEntries: 32,
        maximumValues: 2_000, maximumNesting: 12, maximumLiteralBytes: 256, maximumIntegerDigits: 40))

/// libFuzzer entry point: one input is a stream of concatenated pickles. Each is run by the
/// machine (default and tight limits) and walked by the global scanner (plain and torch
/// contexts, default and tight limits); every value of a loaded document is then visited
/// through the public accessors. The scanner must never be less alarmed than the machine: when
/// the machine loads the first pickle, the scanner's worst class is at least the machine's.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPickle(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    if let first = try? machine.load(bytes) {
        let machineWorst = first.globals.map(\.safety).max() ?? .safe
        let scanned = PickleGlobalScanner.scan(bytes)
        let scannerWorst = scanned.globals.map(\.safety).max() ?? .safe
        precondition(scannerWorst >= machineWorst, "scanner says \(scannerWorst) where the machine built \(machineWorst) globals")
    }
    for context in [UnpicklerContext.torchZip, .torchLegacy] {
        for g in PickleGlobalScanner.scan(bytes, context: context).globals { _ = g.safety; _ = g.resolved.qualifiedName }
    }
    for g in PickleGlobalScanner.scan(bytes, limits: tightMachine.limits).globals { _ = g.safety }
    var start = 0
    for _ in 0..<4 where start < size {
        guard let document = try? machine.load(bytes, from: start) else { break }
        precondition(document.endOffset > start && document.endOffset <= size, "end offset out of range")
        visit(document)
        start = document.endOffset
    }
    _ = try? tightMachine.load(bytes)
    start = 0
    for _ in 0..<4 where start < size {
        let listing = PickleGlobalScanner.scan(bytes, from: start)
        for global in listing.globals {
            _ = GlobalClassifier.classify(module: global.module, name: global.name)
            _ = global.safety
        }
        guard let end = listing.endOffset else { break }
        precondition(end > start && end <= size, "scanner end offset out of range")
        start = end
    }
    return 0
}

private func visit(_ document: PickleDocument) {
    var total = 0
    var work = [document.root]
    var seen = Set<Int>()
    while let id = work.popLast(), total < 100_000 {
        total += 1
        guard seen.insert(id.index).inserted else { continue }
        _ = document[id].kindName
        _ = document.string(id)
        _ = document.integer(id)
        _ = document.global(id)
        work.append(contentsOf: document.elements(of: id))
        for (key, value) in document.items(of: id) { work.append(key); work.append(value) }
        if let call = document.call(id) { work.append(call.callable); work.append(call.arguments) }
        if let state = document.states[id] { work.append(state) }
        if case .persistent(let pid) = document[id] { work.append(pid) }
        if let items = document.sequence(id) { total += items.count }
    }
}

/// The process entry point (SwiftPM aliases `main` to it): libFuzzer's driver.
@_cdecl("FuzzPickle_main")
public func fuzzPickleMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    runLibFuzzer(argc: argc, argv: argv, fuzzPickle)
}
