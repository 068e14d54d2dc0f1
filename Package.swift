// swift-tools-version:6.1
import PackageDescription

/// Settings shared by every Swift target.
let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "WeightPack",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "weightpack", targets: ["weightpack"]),
        .library(name: "TensorCore", targets: ["TensorCore"]),
        .library(name: "CheckpointFormats", targets: ["CheckpointFormats"]),
        .library(name: "ModelCatalog", targets: ["ModelCatalog"]),
        .library(name: "DiffusionEngine", targets: ["DiffusionEngine"]),
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
        .target(
            name: "MappedIO",
            dependencies: ["TensorCore", "CCrypto", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: strict),
        .target(name: "StrictJSON", dependencies: ["CJSONC"], swiftSettings: strict),
        .target(name: "SafePickle", dependencies: ["TensorCore"], swiftSettings: strict),
        .target(
            name: "CheckpointFormats",
            dependencies: ["TensorCore", "MappedIO", "StrictJSON", "SafePickle", "Quantization", "CZstd"],
            swiftSettings: strict),
        .target(name: "ModelCatalog", dependencies: ["TensorCore", "StrictJSON"], resources: [.copy("Data")], swiftSettings: strict),
        .target(name: "Quantization", dependencies: ["TensorCore"], swiftSettings: strict),
        .target(
            name: "DiffusionEngine",
            dependencies: ["TensorCore", "Quantization", "StrictJSON", "COpenBLAS", "CZlib"],
            resources: [.copy("Resources")],
            swiftSettings: strict),
        .target(
            name: "WeightPackCLI",
            dependencies: [
                "TensorCore", "MappedIO", "StrictJSON", "SafePickle", "CheckpointFormats", "ModelCatalog", "Quantization", "DiffusionEngine", "CPNG",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict),
        .executableTarget(name: "weightpack", dependencies: ["WeightPackCLI"], swiftSettings: strict),

        .testTarget(name: "TensorCoreTests", dependencies: ["TensorCore"], swiftSettings: strict),
        .testTarget(name: "QuantizationTests", dependencies: ["Quantization", "TensorCore"], swiftSettings: strict),
        .testTarget(name: "StrictJSONTests", dependencies: ["StrictJSON"], swiftSettings: strict),
        .testTarget(
            name: "CheckpointFormatsTests",
            dependencies: ["CheckpointFormats", "MappedIO", "Quantization", "TensorCore", "StrictJSON"],
            swiftSettings: strict),
        .testTarget(
            name: "ModelCatalogTests",
            dependencies: ["ModelCatalog", "CheckpointFormats", "TensorCore", "StrictJSON"],
            swiftSettings: strict),
        .testTarget(name: "SafePickleTests", dependencies: ["SafePickle", "TensorCore"], swiftSettings: strict),
        .testTarget(name: "DiffusionEngineTests", dependencies: ["DiffusionEngine", "CheckpointFormats", "Quantization", "StrictJSON", "TensorCore"], swiftSettings: strict),
        .testTarget(
            name: "WeightPackCLITests",
            dependencies: ["WeightPackCLI", "weightpack", "CheckpointFormats", "StrictJSON", "TensorCore"],
            swiftSettings: strict),
    ]
)
