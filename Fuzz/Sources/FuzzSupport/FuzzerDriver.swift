import CLibFuzzer

/// The signature of `LLVMFuzzerTestOneInput`.
public typealias FuzzTestOneInput = @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt

/// Runs libFuzzer's driver on `testOneInput` with the process's command line.
///
/// SwiftPM links an executable target with `main` aliased to `<Module>_main`, so each target
/// defines that symbol (with `@_cdecl`) and calls this; libFuzzer's own `main` is never linked.
public func runLibFuzzer(
    argc: CInt, argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>, _ testOneInput: FuzzTestOneInput
) -> CInt {
    var count = argc
    var vector: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = argv
    return LLVMFuzzerRunDriver(&count, &vector, testOneInput)
}
