// swift-tools-version:6.1
// libFuzzer targets for WeightPack's parsers (Docs/fuzzing.md). A separate package, so that the
// main package's `swift build` and `swift test` never build them. Build and run with
// `Fuzz/run.sh TARGET SECONDS`; the sanitizer flags are passed on the command line so that the
// parser modules of the main package are instrumented too.
import PackageDescription

/// Every fuzz target is a library-style module whose `main` comes from libFuzzer.
let fuzzSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .unsafeFlags(["-parse-as-library"]),
]

let package = Package(
    name: "WeightPackFuzz",
    platforms: [.macOS(.v14)],
    dependencies: [
        .package(name: "WeightPack", path: "..")
    ],
    targets: [
        .target(name: "CLibFuzzer"),
        .target(
            name: "FuzzSupport",
            dependencies: ["CLibFuzzer", .product(name: "TensorCore", package: "WeightPack")],
            swiftSettings: [.enableUpcomingFeature("ExistentialAny")]),
        .executableTarget(
            name: "FuzzSafetensors",
            dependencies: ["FuzzSupport", .product(name: "CheckpointFormats", package: "WeightPack")],
            swiftSettings: fuzzSettings),
        .executableTarget(
            name: "FuzzWPK",
            dependencies: ["FuzzSupport", .product(name: "CheckpointFormats", package: "WeightPack")],
            swiftSettings: fuzzSettings),
        .executableTarget(
            name: "FuzzGGUF",
            dependencies: ["FuzzSupport", .product(name: "CheckpointFormats", package: "WeightPack")],
            swiftSettings: fuzzSettings),
        .executableTarget(
            name: "FuzzTorch",
            dependencies: ["FuzzSupport", .product(name: "CheckpointFormats", package: "WeightPack")],
            swiftSettings: fuzzSettings),
        // SafePickle and StrictJSON are not products of the main package; they are built as
        // dependencies of CheckpointFormats and imported from there.
        .executableTarget(
            name: "FuzzPickle",
            dependencies: ["FuzzSupport", .product(name: "CheckpointFormats", package: "WeightPack")],
            swiftSettings: fuzzSettings),
        .executableTarget(
            name: "FuzzJSON",
            dependencies: ["FuzzSupport", .product(name: "CheckpointFormats", package: "WeightPack")],
            swiftSettings: fuzzSettings),
        .executableTarget(
            name: "FuzzTokenizer",
            dependencies: ["FuzzSupport", .product(name: "DiffusionEngine", package: "WeightPack")],
            swiftSettings: fuzzSettings),
    ]
)
