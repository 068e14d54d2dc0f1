// swift-tools-version:6.1
import PackageDescription

#if os(Linux)
import Foundation
#endif

/// Settings shared by every Swift target.
let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny")
]

/// The instruction set the engine's Swift kernels are compiled for: baseline x86-64 by default,
/// so one binary runs on every x86-64 machine (the matrix products and the C kernels of
/// `CEngineKernels` choose AVX-512, AVX2+FMA or baseline code at run time from CPUID; see
/// Docs/engine.md). Opt-in: `WEIGHTPACK_TARGET_CPU=native` compiles the Swift kernels for the
/// build machine (AVX-512 where `/proc/cpuinfo` lists it, else AVX2+FMA), or any LLVM CPU name;
/// such a binary needs that CPU, which `weightpack` checks at start-up
/// (`Sources/WeightPackCLI/ProcessorCheck.swift`, exit 69).
let engineTarget: (cpu: String, level: String)? = {
    #if os(Linux) && arch(x86_64)
    guard let cpu = Context.environment["WEIGHTPACK_TARGET_CPU"] else { return nil }
    switch cpu {
    case "", "x86-64": return nil
    case "haswell": return (cpu, "AVX2")
    case "skylake-avx512": return (cpu, "AVX512")
    case "native": break
    default: return (cpu, "CUSTOM")
    }
    guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
        let line = info.split(separator: "\n").first(where: { $0.hasPrefix("flags") })
    else { return nil }
    let flags = Set(line.split(separator: " ").map(String.init))
    if flags.isSuperset(of: ["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd", "avx2", "fma", "f16c", "bmi2"]) {
        return ("skylake-avx512", "AVX512")
    }
    if flags.isSuperset(of: ["avx2", "fma", "f16c", "bmi2"]) { return ("haswell", "AVX2") }
    return nil
    #else
    return nil
    #endif
}()

/// Settings of the engine target (its kernels are where wide vectors pay) and the define that
/// tells the command line what to check.
let engineSettings: [SwiftSetting] =
    strict
    + (engineTarget.map {
        [.unsafeFlags(["-target-cpu", $0.cpu]), .define("WEIGHTPACK_ENGINE_\($0.level)")]
    } ?? [])
let cliSettings: [SwiftSetting] = strict + (engineTarget.map { [.define("WEIGHTPACK_ENGINE_\($0.level)")] } ?? [])

let package = Package(
    name: "WeightPack",
    products: [
        .executable(name: "weightpack", targets: ["weightpack"]),
        .library(name: "TensorCore", targets: ["TensorCore"]),
        .library(name: "CheckpointFormats", targets: ["CheckpointFormats"]),
        .library(name: "ModelCatalog", targets: ["ModelCatalog"]),
        .library(name: "DiffusionEngine", targets: ["DiffusionEngine"]),
        .library(name: "Adapters", targets: ["Adapters"]),
        .library(name: "ModelLoading", targets: ["ModelLoading"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
    ],
    targets: [
        // C libraries from Debian packages.
        .systemLibrary(name: "CJSONC", path: "Sources/CJSONC", pkgConfig: "json-c", providers: [.apt(["libjson-c-dev"])]),
        .systemLibrary(name: "CZstd", path: "Sources/CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        .systemLibrary(name: "CCrypto", path: "Sources/CCrypto", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CZlib", path: "Sources/CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "COpenBLAS", path: "Sources/COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CPNG", path: "Sources/CPNG", pkgConfig: "libpng", providers: [.apt(["libpng-dev"])]),

        // The library, in layers (see Docs/architecture.md).
        .target(name: "TensorCore", swiftSettings: strict),
        // One Linux file call that Swift's Glibc module does not import (`sync_file_range`).
        .target(name: "CFileSync"),
        .target(
            name: "MappedIO",
            dependencies: ["TensorCore", "CCrypto", "CFileSync", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: strict),
        .target(name: "StrictJSON", dependencies: ["CJSONC"], swiftSettings: strict),
        .target(name: "SafePickle", dependencies: ["TensorCore"], swiftSettings: strict),
        .target(
            name: "CheckpointFormats",
            dependencies: ["TensorCore", "MappedIO", "StrictJSON", "SafePickle", "Quantization", "CZstd"],
            swiftSettings: strict),
        .target(name: "ModelCatalog", dependencies: ["TensorCore", "StrictJSON", "Quantization"], resources: [.copy("Data")], swiftSettings: strict),
        .target(name: "Quantization", dependencies: ["TensorCore"], swiftSettings: strict),
        // The engine's compute back end in C: CPUID dispatch, oneDNN's products (libdnnl-dev,
        // Debian), and kernels compiled per instruction-set family (Docs/engine.md).
        .target(
            name: "CEngineKernels",
            cSettings: [.unsafeFlags(["-O3", "-fno-math-errno"])],
            linkerSettings: [.linkedLibrary("dnnl")]),
        .target(
            name: "Adapters",
            dependencies: ["TensorCore", "MappedIO", "StrictJSON", "CheckpointFormats", "ModelCatalog"],
            swiftSettings: strict),
        .target(
            name: "DiffusionEngine",
            dependencies: ["TensorCore", "Quantization", "StrictJSON", "CEngineKernels", "CZlib"],
            resources: [.copy("Resources")],
            swiftSettings: engineSettings),
        // Opening a model under canonical names, assembling its pipeline, converting, verifying,
        // writing images: the API a Swift program uses, and the command line's only way in.
        .target(
            name: "ModelLoading",
            dependencies: [
                "TensorCore", "MappedIO", "StrictJSON", "CheckpointFormats", "ModelCatalog", "Quantization", "DiffusionEngine", "Adapters", "CPNG",
                "CEngineKernels",
            ],
            swiftSettings: strict),
        .target(
            name: "WeightPackCLI",
            dependencies: [
                "TensorCore", "MappedIO", "StrictJSON", "SafePickle", "CheckpointFormats", "ModelCatalog", "Quantization", "DiffusionEngine",
                "Adapters", "ModelLoading",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: cliSettings),
        .executableTarget(name: "weightpack", dependencies: ["WeightPackCLI"], swiftSettings: strict),

        // What the test targets share (fixture paths, scratch folders, an in-memory store, comparisons).
        .target(name: "TestSupport", dependencies: ["StrictJSON", "TensorCore"], path: "Tests/TestSupport", swiftSettings: strict),
        .testTarget(name: "TensorCoreTests", dependencies: ["TensorCore"], swiftSettings: strict),
        .testTarget(name: "MappedIOTests", dependencies: ["MappedIO", "CFileSync"], swiftSettings: strict),
        .testTarget(name: "QuantizationTests", dependencies: ["Quantization", "TensorCore"], swiftSettings: strict),
        .testTarget(name: "StrictJSONTests", dependencies: ["StrictJSON"], swiftSettings: strict),
        .testTarget(
            name: "CheckpointFormatsTests",
            dependencies: ["TestSupport", "CheckpointFormats", "MappedIO", "Quantization", "TensorCore", "StrictJSON"],
            swiftSettings: strict),
        .testTarget(
            name: "ModelCatalogTests",
            dependencies: ["TestSupport", "ModelCatalog", "CheckpointFormats", "TensorCore", "StrictJSON"],
            swiftSettings: strict),
        .testTarget(
            name: "AdaptersTests",
            dependencies: ["TestSupport", "Adapters", "CheckpointFormats", "ModelCatalog", "StrictJSON", "TensorCore"],
            swiftSettings: strict),
        .testTarget(name: "SafePickleTests", dependencies: ["SafePickle", "TensorCore"], swiftSettings: strict),
        .testTarget(
            name: "DiffusionEngineTests",
            dependencies: ["TestSupport", "DiffusionEngine", "CEngineKernels", "CheckpointFormats", "Quantization", "StrictJSON", "TensorCore"],
            swiftSettings: strict),
        .testTarget(
            name: "ModelLoadingTests",
            dependencies: [
                "TestSupport", "ModelLoading", "Adapters", "CheckpointFormats", "ModelCatalog", "DiffusionEngine", "Quantization", "StrictJSON",
                "TensorCore", "CPNG",
            ],
            swiftSettings: strict),
        .testTarget(
            name: "WeightPackCLITests",
            dependencies: ["TestSupport", "WeightPackCLI", "weightpack", "CheckpointFormats", "StrictJSON", "TensorCore"],
            swiftSettings: strict),
    ]
)
