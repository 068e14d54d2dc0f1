// Times WeightPack's engine for Benchmarks/engine.sh; the diffusers side is
// Benchmarks/python/engine_text_encoder.py and engine_vae.py, which take the same inputs and
// print the same JSON line.
//
//   EngineBench text-encoder DIR RUNS OUT.f32   (DIR: a diffusers text_encoder/ folder)
//   EngineBench vae DIR LATENT.f32 RUNS OUT.f32 (DIR: a diffusers vae/ folder)
//   EngineBench kernels                         (convolution and sgemm GFLOP/s)
//   EngineBench unet DIR|FILE.wpk INPUTS RUNS OUT.f32 (DIR: a diffusers unet/ folder;
//                                               ENGINE_BENCH_PROFILE=1: time per layer kind)
//   EngineBench unet-pair A B INPUTS PAIRS      (two UNets, A and B as for `unet`, steps alternated;
//                                               ENGINE_BENCH_PROFILE=1: time per shape and route)
//   EngineBench attention | unet-convolutions   (one core, SD 1.5 shapes)
//   EngineBench unet-dtypes UNETDIR OUTDIR      (writes OUTDIR/unet-f16.wpk and unet-int8.wpk)
//   EngineBench backend                         (prints ComputeBackend.current)
//   EngineBench dequant FILE.wpk RUNS           (decoding speed of its packed UNet weights, by type)
import CEngineKernels
import CheckpointFormats
import Foundation
import StrictJSON
import TensorCore

@testable import DiffusionEngine

#if canImport(Glibc)
import Glibc
#endif

/// Peak resident set of this process in MiB (`ru_maxrss` is in KiB on Linux).
func peakRSSMiB() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_maxrss) / 1024
}

func seconds(_ body: () throws -> Void) rethrows -> Double {
    let start = ContinuousClock.now
    try body()
    let d = ContinuousClock.now - start
    return Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18
}

func loadAverage() -> String {
    (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))?.split(separator: " ").prefix(3).joined(separator: " ") ?? "?"
}

func report(_ task: String, load: Double, runs: [Double]) {
    let list = runs.map { String(format: "%.4f", $0) }.joined(separator: ", ")
    print(
        String(
            format:
                "{\"side\": \"weightpack\", \"task\": \"%@\", \"best\": %.4f, \"runs\": [%@], \"load_seconds\": %.3f, \"peak_rss_mib\": %.1f, \"loadavg\": \"%@\"}",
            task, runs.min()!, list, load, peakRSSMiB(), loadAverage()))
}

func writeFloats(_ t: FloatTensor, to path: String) throws {
    let data = t.withUnsafeBufferPointer { Data(buffer: $0) }
    try data.write(to: URL(fileURLWithPath: path))
}

/// The benchmark's two prompts as token ids (the Python side builds the same): one full
/// sequence and one short one padded with the end token.
func benchmarkTokens() -> [[Int]] {
    let full = [49406] + (0..<75).map { ($0 * 7919 + 11) % 49406 } + [49407]
    let short = [49406] + (0..<20).map { ($0 * 104_729 + 5) % 49406 } + [Int](repeating: 49407, count: 56)
    return [full, short]
}

func textEncoder(_ dir: String, runs: Int, out: String) throws {
    var model: CLIPTextModel!
    let load = try seconds {
        let config = try CLIPTextConfiguration(jsonText: String(contentsOfFile: dir + "/config.json", encoding: .utf8))
        let store = try SafetensorsFile(path: dir + "/model.safetensors")
        model = try CLIPTextModel(store: store, configuration: config)
    }
    let tokens = benchmarkTokens()
    var result = try model.encode(tokens)  // warm-up: maps the weights in
    var times: [Double] = []
    for _ in 0..<runs { times.append(try seconds { result = try model.encode(tokens) }) }
    try writeFloats(result, to: out)
    report("text_encoder", load: load, runs: times)
}

func vae(_ dir: String, latentPath: String, runs: Int, out: String) throws {
    var model: AutoencoderKL!
    let load = try seconds {
        let config = try AutoencoderKLConfiguration(jsonText: String(contentsOfFile: dir + "/config.json", encoding: .utf8))
        let store = try SafetensorsFile(path: dir + "/diffusion_pytorch_model.safetensors")
        model = try AutoencoderKL(store: store, configuration: config)
    }
    let bytes = try Data(contentsOf: URL(fileURLWithPath: latentPath))
    let latent = FloatTensor(shape: [1, 4, 64, 64])
    precondition(bytes.count == latent.count * 4, "latent file must hold 1x4x64x64 f32")
    latent.withUnsafeMutableBufferPointer { p in _ = bytes.copyBytes(to: p) }
    var result: FloatTensor!
    var times: [Double] = []
    for _ in 0..<runs { times.append(try seconds { result = try model.decode(latent) }) }
    try writeFloats(result, to: out)
    report("vae_decode", load: load, runs: times)
}

/// GFLOP/s of the convolution paths on the VAE decoder's 3x3 shapes, and of sgemm alone.
/// One SD 1.5 UNet step with guidance: batch 2 at 64x64, timestep 999, inputs from a file
/// (sample [2,4,64,64] then text embeddings [2,77,768]); the same as `engine_unet.py`.
/// A UNet from a diffusers folder or a `.wpk`, with the benchmark's environment applied
/// (WEIGHTPACK_KEEP_RESIDENT, ENGINE_BENCH_SHARED_MIB, ENGINE_BENCH_COMPUTE).
func loadUNet(_ dir: String) throws -> UNet2DConditionModel {
    let model: UNet2DConditionModel
    if dir.hasSuffix(".wpk") {
        // A canonical .wpk (any dtype, int8 included): the UNet under `unet.`, or a UNet alone
        // (`unet-dtypes` writes those).
        let file = try WPKFile(path: dir)
        let prefix = file.descriptor(named: "unet.conv_in.weight") != nil ? "unet." : ""
        model = try UNet2DConditionModel(store: file, configuration: .sd15, prefix: prefix)
    } else {
        let config = try UNetConfiguration(jsonText: String(contentsOfFile: dir + "/config.json", encoding: .utf8))
        let store = try SafetensorsFile(path: dir + "/diffusion_pytorch_model.safetensors")
        model = try UNet2DConditionModel(store: store, configuration: config)
    }
    // WEIGHTPACK_KEEP_RESIDENT=1: leave mapped weight pages resident (the engine drops them
    // after each layer by default).
    if ProcessInfo.processInfo.environment["WEIGHTPACK_KEEP_RESIDENT"] == "1" { model.weights.releasesPagesAfterUse = false }
    // ENGINE_BENCH_SHARED_MIB: the budget of the guidance pair's shared weight conversions.
    if let mib = ProcessInfo.processInfo.environment["ENGINE_BENCH_SHARED_MIB"].flatMap(Int.init) {
        model.sharedConversionBudgetFloats = mib << 18
    }
    // ENGINE_BENCH_COMPUTE=f32|bf16|int8: the products' arithmetic (`generate --compute`);
    // auto: what `generate` chooses by default (int8 for int8/Q8_0 weights with VNNI, else f32).
    // Unset: f32.
    let requested = ProcessInfo.processInfo.environment["ENGINE_BENCH_COMPUTE"]
    if requested == "auto" {
        model.computePrecision = .automatic(for: model)
    } else if let compute = requested.flatMap(ComputePrecision.init(rawValue:)) {
        model.computePrecision = compute
    }
    return model
}

/// The guidance pair's inputs from a file: sample [2,4,64,64] then text embeddings [2,77,768].
func unetInputs(_ path: String) throws -> (sample: FloatTensor, context: FloatTensor) {
    let data = try Data(contentsOf: URL(fileURLWithPath: path))
    let values = data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    let sampleCount = 2 * 4 * 64 * 64
    precondition(values.count == sampleCount + 2 * 77 * 768, "inputs file must hold 2x4x64x64 then 2x77x768 f32")
    return (
        FloatTensor(shape: [2, 4, 64, 64], values: Array(values[0..<sampleCount])),
        FloatTensor(shape: [2, 77, 768], values: Array(values[sampleCount...]))
    )
}

/// Two UNets in one process, their steps alternated (A B, then B A, and so on), so that the
/// machine's slow and fast spells fall on both alike: per model the median and best step, and
/// the median of B's time over A's in each pair, with the largest difference of their predictions.
func unetPair(_ first: String, _ second: String, inputsPath: String, pairs: Int) throws {
    var a: UNet2DConditionModel!, b: UNet2DConditionModel!
    let load = try seconds {
        a = try loadUNet(first)
        b = try loadUNet(second)
    }
    let (sample, context) = try unetInputs(inputsPath)
    var outA = try a.predict(sample, timestep: 999, encoderHiddenStates: context)  // warm-up
    var outB = try b.predict(sample, timestep: 999, encoderHiddenStates: context)
    // ENGINE_BENCH_PROFILE=1: the products of both models' timed steps, per shape and route.
    let profiling = ProcessInfo.processInfo.environment["ENGINE_BENCH_PROFILE"] == "1"
    if profiling { wp_profile_start() }
    let withoutTiles = ProcessInfo.processInfo.environment["ENGINE_BENCH_B_WITHOUT_F32_TILES"] == "1"
    var timesA: [Double] = [], timesB: [Double] = [], ratios: [Double] = []
    for pair in 0..<pairs {
        let stepA = { try seconds { outA = try a.predict(sample, timestep: 999, encoderHiddenStates: context) } }
        // ENGINE_BENCH_B_WITHOUT_F32_TILES=1: B's steps send every float product to oneDNN
        // (`GEMM.f32TilesEnabled`), to compare the routes on one model (A and B the same file).
        let stepB = {
            GEMM.f32TilesEnabled = !withoutTiles
            defer { GEMM.f32TilesEnabled = true }
            return try seconds { outB = try b.predict(sample, timestep: 999, encoderHiddenStates: context) }
        }
        let (ta, tb): (Double, Double)
        if pair % 2 == 0 {
            ta = try stepA()
            tb = try stepB()
        } else {
            tb = try stepB()
            ta = try stepA()
        }
        timesA.append(ta)
        timesB.append(tb)
        ratios.append(tb / ta)
    }
    if profiling {
        wp_profile_stop()
        printProfile(steps: 2 * pairs, wall: timesA.reduce(0, +) + timesB.reduce(0, +))
    }
    func median(_ v: [Double]) -> Double {
        let s = v.sorted()
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }
    var largest: Float = 0
    outA.withUnsafeBufferPointer { pa in outB.withUnsafeBufferPointer { pb in for i in 0..<pa.count { largest = max(largest, abs(pa[i] - pb[i])) } } }
    func list(_ v: [Double]) -> String { v.map { String(format: "%.4f", $0) }.joined(separator: ", ") }
    func name(_ path: String, _ model: UNet2DConditionModel) -> String {
        (path as NSString).lastPathComponent + (model.computePrecision == .f32 ? "" : " (compute \(model.computePrecision.rawValue))")
    }
    let nameB = name(second, b) + (withoutTiles ? " (every float product by oneDNN)" : "")
    print(
        String(
            format:
                "{\"side\": \"weightpack\", \"task\": \"unet_step pair: %@ then %@, %@\", \"a_median\": %.4f, \"b_median\": %.4f, \"a_best\": %.4f, \"b_best\": %.4f, \"ratio_median\": %.4f, \"ratios\": [%@], \"a_runs\": [%@], \"b_runs\": [%@], \"largest_difference\": %.3g, \"load_seconds\": %.3f, \"peak_rss_mib\": %.1f, \"loadavg\": \"%@\"}",
            name(first, a), nameB, ComputeBackend.current.description, median(timesA), median(timesB), timesA.min()!,
            timesB.min()!, median(ratios), list(ratios), list(timesA), list(timesB), Double(largest), load, peakRSSMiB(), loadAverage()))
}

func unet(_ dir: String, inputsPath: String, runs: Int, out: String) throws {
    var model: UNet2DConditionModel!
    let load = try seconds { model = try loadUNet(dir) }
    let (sample, context) = try unetInputs(inputsPath)
    var result: FloatTensor!
    var times: [Double] = []
    // ENGINE_BENCH_PROFILE=1: time the products and fused attention of every step after the
    // first (which includes oneDNN's kernel generation) and print them per layer kind.
    let profiling = ProcessInfo.processInfo.environment["ENGINE_BENCH_PROFILE"] == "1"
    for run in 0..<runs {
        if profiling && run == 1 { wp_profile_start() }
        times.append(try seconds { result = try model.predict(sample, timestep: 999, encoderHiddenStates: context) })
    }
    if profiling {
        wp_profile_stop()
        printProfile(steps: runs - 1, wall: times.dropFirst().reduce(0, +))
    }
    try writeFloats(result, to: out)
    if let shared = model.lastSharedConversions {
        FileHandle.standardError.write(
            "shared conversions: \(shared.conversions) tensors, \(shared.reuses) reuses, peak \(shared.peakFloatsHeld >> 18) MiB held, \(shared.floatsAllocated >> 18) MiB allocated\n"
                .data(using: .utf8)!)
    }
    let compute = model.computePrecision == .f32 ? "" : ", compute \(model.computePrecision.rawValue)"
    report("unet_step " + (dir as NSString).lastPathComponent + compute + ", " + ComputeBackend.current.description, load: load, runs: times)
}

/// The recorded products and fused attention per layer kind (told apart by shape, for the SD
/// models' UNets: the Winograd weight transform is 36 x 9 times the filters; an unpadded product
/// whose depth is a multiple of 9 is an im2col convolution; a product with a transposed B is a
/// linear layer, or attention's products where the fused kernels are not used), on stderr.
func printProfile(steps: Int, wall: Double) {
    guard steps > 0 else { return }
    var records = [wp_profile_record](repeating: wp_profile_record(), count: 2048)
    let count = Int(records.withUnsafeMutableBufferPointer { wp_profile_read($0.baseAddress, Int64($0.count)) })
    var kinds: [String: (seconds: Double, flops: Double, calls: Int)] = [:]
    var shapes: [(String, Double, Double, Int)] = []
    for r in records.prefix(min(count, records.count)) {
        let flops = (r.kind == 1 ? 4.0 : 2.0) * Double(r.m) * Double(r.n) * Double(r.k) * Double(r.calls)
        let kind: String
        switch (r.kind, r.flags & 2 != 0) {
        case (1, _): kind = "attention, fused kernels"
        case (0, _) where r.m == 36 && r.k == 9: kind = "Winograd weight transform"
        case (0, true): kind = "linear layers (and unfused attention products)"
        case (0, false) where r.k % 9 == 0 && r.k >= 36: kind = "3x3 convolution, im2col products"
        case (0, false): kind = "Winograd products, 1x1 convolutions"
        default: kind = "beyond the table"
        }
        kinds[kind, default: (0, 0, 0)].seconds += r.seconds
        kinds[kind, default: (0, 0, 0)].flops += flops
        kinds[kind, default: (0, 0, 0)].calls += Int(r.calls)
        let route =
            r.kind != 0
            ? ""
            : r.flags & 16 != 0
                ? " [split bf16 on AMX]"
                : r.flags & 8 != 0
                    ? " [our float tiles]"
                    : r.flags & 4 != 0 ? " [F16 as stored]" : ""
        shapes.append(("\(kind): \(r.m) x \(r.n) x \(r.k)\(route)", r.seconds, flops, Int(r.calls)))
    }
    var lines = [
        String(
            format: "profile of %d step(s), %.2f s wall per step; seconds are per calling thread (core-seconds for single-threaded calls)",
            steps, wall / Double(steps))
    ]
    let total = kinds.values.reduce(0) { $0 + $1.seconds }
    func padded(_ text: String, _ width: Int) -> String { text + String(repeating: " ", count: max(0, width - text.count)) }
    for (kind, t) in kinds.sorted(by: { $0.value.seconds > $1.value.seconds }) {
        lines.append(
            "  " + padded(kind, 48)
                + String(
                    format: "%6.2f s per step, %6.1f GFLOP per step, %6.1f GFLOP/s, %6d calls", t.seconds / Double(steps),
                    t.flops / Double(steps) / 1e9, t.flops / t.seconds / 1e9, t.calls / steps))
    }
    lines.append("  " + padded("recorded in all", 48) + String(format: "%6.2f s per step", total / Double(steps)))
    lines.append("  largest shapes (m x n x k; attention: rows x keys x width):")
    // ENGINE_BENCH_PROFILE_SHAPES: how many shapes to list (12 by default).
    let listed = ProcessInfo.processInfo.environment["ENGINE_BENCH_PROFILE_SHAPES"].flatMap(Int.init) ?? 12
    for (name, t, flops, calls) in shapes.sorted(by: { $0.1 > $1.1 }).prefix(max(0, listed)) {
        lines.append(
            "    " + padded(name, 72)
                + String(format: "%6.3f s per step, %6.1f GFLOP/s, %5d calls", t / Double(steps), flops / t / 1e9, calls / steps))
    }
    FileHandle.standardError.write((lines.joined(separator: "\n") + "\n").data(using: .utf8)!)
}

func kernels() {
    func filled(_ n: Int, _ scale: Float) -> FloatTensor {
        let t = FloatTensor(shape: [n])
        t.withUnsafeMutableBufferPointer { p in for i in 0..<n { p[i] = Float((i * 7919) % 2001 - 1000) * scale / 1000 } }
        return t
    }
    print("load average: \(loadAverage()); BLAS threads \(GEMM.threadCount); workers \(Parallel.workerCount)")
    let n = 4096, k = 4608, m = 512
    let a = filled(m * k, 0.02), b = filled(k * n, 1), c = FloatTensor(shape: [m * n])
    for threads in [GEMM.threadCount, 1] {
        let previous = GEMM.threadCount
        GEMM.threadCount = threads
        var best = Double.infinity
        for _ in 0..<3 {
            best = min(best, seconds { GEMM.multiply(m: m, n: n, k: k, a: a.base, lda: k, b: b.base, ldb: n, c: c.base, ldc: n) })
        }
        GEMM.threadCount = previous
        print(String(format: "sgemm %dx%dx%d, %d BLAS thread(s): %.1f GFLOP/s", m, n, k, threads, 2.0 * Double(m * n * k) / best / 1e9))
    }
    do {
        let channels = 128, plane = 512 * 512
        let x = filled(channels * plane, 1), y = FloatTensor(shape: [channels * plane])
        let w = filled(channels, 1), b = filled(channels, 0.1)
        var best = Double.infinity
        for _ in 0..<3 {
            best = min(
                best,
                seconds {
                    Kernels.groupNorm(
                        x.base, into: y.base, channels: channels, plane: plane, groups: 32, epsilon: 1e-6,
                        weight: w.base, bias: b.base, silu: true)
                })
        }
        print(String(format: "group norm + SiLU 128x512x512: %.3f s (%.2f GB/s read+write)", best, 8.0 * Double(channels * plane) / best / 1e9))
        let rows = 1024, columns = 4096
        let s = filled(rows * columns, 4)
        best = .infinity
        for _ in 0..<3 { best = min(best, seconds { Kernels.softmaxRows(s.base, rows: rows, columns: columns) }) }
        print(String(format: "softmax 1024x4096: %.3f s", best))
        // The feed-forward and normalisation of SD 1.5's 64x64 transformer blocks, one batch element.
        let tokens = 4096, inner = 1280, width = 320
        let h = filled(tokens * 2 * inner, 3), g = FloatTensor(shape: [tokens * inner])
        best = .infinity
        for _ in 0..<3 { best = min(best, seconds { Kernels.geglu(h.base, rows: tokens, features: inner, into: g.base) }) }
        print(String(format: "GEGLU 4096x1280: %.4f s (%.0f M values/s)", best, Double(tokens * inner) / best / 1e6))
        let t = filled(tokens * width, 2), tn = FloatTensor(shape: [tokens * width])
        let lw = filled(width, 1), lb = filled(width, 0.1)
        best = .infinity
        for _ in 0..<3 {
            best = min(
                best,
                seconds {
                    Kernels.layerNorm(t.base, into: tn.base, rows: tokens, features: width, epsilon: 1e-5, weight: lw.base, bias: lb.base)
                })
        }
        print(String(format: "layer norm 4096x320: %.4f s (%.0f M values/s)", best, Double(tokens * width) / best / 1e6))
    }
    convolutions([(512, 64, 512), (512, 128, 512), (512, 256, 256), (256, 256, 256), (256, 512, 128), (128, 512, 128)])
}

/// 3x3 convolutions by im2col and by Winograd; `serial`: on one core, as each batch element of
/// a UNet step with guidance runs (one BLAS thread, no workers).
func convolutions(_ shapes: [(Int, Int, Int)], serial: Bool = false) {
    func filled(_ n: Int, _ scale: Float) -> FloatTensor {
        let t = FloatTensor(shape: [n])
        t.withUnsafeMutableBufferPointer { p in for i in 0..<n { p[i] = Float((i * 7919) % 2001 - 1000) * scale / 1000 } }
        return t
    }
    let previous = GEMM.threadCount
    if serial { GEMM.threadCount = 1 }
    defer { GEMM.threadCount = previous }
    for (inC, size, outC) in shapes {
        let g = Convolution.Geometry(
            inChannels: inC, height: size, width: size, outChannels: outC,
            kernelHeight: 3, kernelWidth: 3, stride: 1, padding: .init(1))
        let x = filled(inC * size * size, 1), w = filled(outC * inC * 9, 0.05), bias = filled(outC, 0.1)
        let y = FloatTensor(shape: [outC * size * size])
        let flops = 2.0 * 9 * Double(inC * outC * size * size)
        let columns = FloatTensor(shape: [g.patchSize * Convolution.im2colBlockPixels(g)])
        let scratch = FloatTensor(shape: [Convolution.winogradScratchCount(g)])
        var im2col = Double.infinity, winograd = Double.infinity
        for _ in 0..<2 {
            im2col = min(
                im2col,
                seconds {
                    let run = {
                        Convolution.loweredForward(x.base, geometry: g, weight: w.base, bias: bias.base, output: y.base, columns: columns.base)
                    }
                    if serial { Parallel.serially(run) } else { run() }
                })
            winograd = min(
                winograd,
                seconds {
                    let run = {
                        Convolution.winogradForward(
                            x.base, geometry: g, weight: w.base, bias: bias.base, residual: nil, output: y.base, scratch: scratch.base)
                    }
                    if serial { Parallel.serially(run) } else { run() }
                })
        }
        print(
            String(
                format: "conv3x3 %3d->%3d at %3dx%-3d: im2col %.3f s (%.0f GFLOP/s), winograd %.3f s (%.0f GFLOP/s effective)",
                inC, outC, size, size, im2col, flops / im2col / 1e9, winograd, flops / winograd / 1e9))
    }
}

/// Decodes every packed (int8 or ggml block) UNet weight of a `.wpk` whole, as the engine does
/// for a layer (tiles of rows over the cores), `runs` times; prints values per second by type.
func dequantize(_ path: String, runs: Int) throws {
    let file = try WPKFile(path: path)
    let provider = WeightProvider(store: file, prefix: "unet.")
    var byType: [String: (values: Int, seconds: Double)] = [:]
    let names = file.tensors.map(\.name).filter { $0.hasPrefix("unet.") }.map { String($0.dropFirst(5)) }
    for name in names where provider.isQuantized(name) {
        let type = provider.blockType(name)?.name ?? "int8"
        let count = try provider.descriptor(name).elementCount
        var best = Double.infinity
        for _ in 0..<runs { best = min(best, try seconds { try provider.withFloats(name) { _ in } }) }
        byType[type, default: (0, 0)].values += count
        byType[type, default: (0, 0)].seconds += best
    }
    for (type, t) in byType.sorted(by: { $0.key < $1.key }) {
        print(
            String(
                format: "%@: %d values, %.3f s, %.0f M values/s (%@)", type, t.values, t.seconds, Double(t.values) / t.seconds / 1e6,
                "\(ComputeBackend.current.kernels)"))
    }
}

let arguments = CommandLine.arguments
do {
    switch arguments.count > 1 ? arguments[1] : "" {
    case "text-encoder" where arguments.count == 5:
        try textEncoder(arguments[2], runs: Int(arguments[3])!, out: arguments[4])
    case "vae" where arguments.count == 6:
        try vae(arguments[2], latentPath: arguments[3], runs: Int(arguments[4])!, out: arguments[5])
    case "unet" where arguments.count == 6:
        try unet(arguments[2], inputsPath: arguments[3], runs: Int(arguments[4])!, out: arguments[5])
    case "unet-pair" where arguments.count == 6:
        try unetPair(arguments[2], arguments[3], inputsPath: arguments[4], pairs: Int(arguments[5])!)
    case "kernels":
        kernels()
    case "dequant" where arguments.count == 4:
        try dequantize(arguments[2], runs: Int(arguments[3])!)
    case "backend":
        print(ComputeBackend.current)
    case "unet-dtypes" where arguments.count == 4:
        // Writes the diffusers UNet folder's weights as f16 and int8 `.wpk` files (the UNet
        // alone, no prefix) for `unet` runs on quantised weights.
        let store = try SafetensorsFile(path: arguments[2] + "/diffusion_pytorch_model.safetensors")
        let metadata = JSONObject([("tool", .string("EngineBench"))])
        for (name, plan) in [
            ("unet-f16.wpk", OutputTensor.plan(from: store, dtype: .f16)),
            ("unet-int8.wpk", OutputTensor.plan(from: store, dtype: .int8)),
        ] {
            let path = arguments[3] + "/" + name
            if FileManager.default.fileExists(atPath: path) { continue }
            let t = try seconds { try WPKWriter.write(plan, metadata: metadata, to: path, overwrite: false) }
            print(String(format: "wrote %@ in %.1f s", path, t))
        }
    case "attention":
        // Self-attention shapes of the models on one core: SD 1.5 at 512 px (4096 tokens, 8 heads
        // of 40; 1024 tokens, 8 of 80), SD 2 at 768 px (9216 tokens, 5 heads of 64), SDXL at
        // 1024 px (4096 tokens, 10 heads of 64), the VAE's mid-block (4096 tokens, one head of 512).
        // The BLAS products by chunk size, then the fused kernels (where the AVX-512 family is selected).
        // `attention quick`: the first shape only.
        func filled(_ n: Int, _ scale: Float) -> FloatTensor {
            let t = FloatTensor(shape: [n])
            t.withUnsafeMutableBufferPointer { p in for i in 0..<n { p[i] = Float((i * 7919) % 2001 - 1000) * scale / 1000 } }
            return t
        }
        GEMM.threadCount = 1
        let shapes =
            arguments.count > 2
            ? [(4096, 8, 40)] : [(4096, 8, 40), (1024, 8, 80), (256, 8, 160), (1024, 10, 64), (9216, 5, 64), (4096, 10, 64), (4096, 1, 512)]
        for (tokens, heads, d) in shapes {
            let width = heads * d
            let q = filled(tokens * width, 1), k = filled(tokens * width, 0.7), v = filled(tokens * width, 1)
            let out = FloatTensor(shape: [tokens * width])
            let keyBlock = Attention.usesPackedKernels ? Attention.fusedKeyBlock(keys: tokens, headDimension: d) : 0
            let fused = keyBlock > 0
            let runs = [64, 256, 1024].map { (chunk: $0, packed: false) } + (fused ? [(chunk: 256, packed: true)] : [])
            for (chunk, packed) in runs {
                let scores = FloatTensor(shape: [
                    Attention.scratchCount(queries: tokens, keys: tokens, heads: heads, headDimension: d, chunk: chunk, packed: packed)
                ])
                var best = Double.infinity
                for _ in 0..<2 {
                    best = min(
                        best,
                        seconds {
                            Parallel.serially {
                                Attention.forward(
                                    q: q.base, qStride: width, k: k.base, kStride: width, v: v.base, vStride: width,
                                    out: out.base, outStride: width, queries: tokens, keys: tokens, heads: heads,
                                    headDimension: d, scale: 1 / Float(d).squareRoot(), causal: false, chunk: chunk,
                                    scores: scores.base, packed: packed)
                            }
                        })
                }
                print(
                    String(
                        format: "attention %5d tokens, %2d heads of %3d, %@ chunk %4d: %.3f s (%.1f GFLOP/s)%@", tokens, heads, d,
                        packed ? "fused" : "BLAS ", chunk, best, 4.0 * Double(tokens * tokens * width) / best / 1e9,
                        packed && keyBlock < tokens ? " in blocks of \(keyBlock) keys" : ""))
            }
        }
    case "unet-convolutions":
        // The 3x3 convolutions of an SD 1.5 UNet (in, size, out), as one batch element runs them.
        convolutions(
            [(320, 64, 320), (640, 32, 640), (1280, 16, 1280), (1280, 8, 1280), (2560, 8, 1280), (2560, 16, 1280), (1920, 32, 640)], serial: true)
    default:
        FileHandle.standardError.write("usage: EngineBench text-encoder DIR RUNS OUT | vae DIR LATENT RUNS OUT | kernels\n".data(using: .utf8)!)
        exit(2)
    }
} catch {
    FileHandle.standardError.write("EngineBench: \(error)\n".data(using: .utf8)!)
    exit(1)
}
