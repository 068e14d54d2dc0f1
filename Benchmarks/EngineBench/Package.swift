// swift-tools-version:6.1
import PackageDescription

// Release-built timing executable for the engine benchmark (Benchmarks/engine.sh). Kept out of
// the main package so that stays light. Built with `-Xswiftc -enable-testing` so the `kernels`
// command can time the internal compute layer with `@testable import`.
let package = Package(
    name: "EngineBench",
    platforms: [.macOS(.v14)],
    dependencies: [.package(name: "WeightPack", path: "../..")],
    targets: [
        .executableTarget(
            name: "EngineBench",
            dependencies: [
                .product(name: "DiffusionEngine", package: "WeightPack"),
                .product(name: "CheckpointFormats", package: "WeightPack"),
                .product(name: "TensorCore", package: "WeightPack"),
            ])
    ]
)
