import CPNG
import Foundation
import Testing

@testable import ModelLoading

/// A PNG decoded with libpng's simplified API into 8-bit RGB.
private struct DecodedPNG {
    var width: Int
    var height: Int
    var rgb: [UInt8]

    init(_ bytes: [UInt8]) throws {
        var image = png_image()
        image.version = png_uint_32(PNG_IMAGE_VERSION)
        var pixels: [UInt8] = []
        let ok = bytes.withUnsafeBytes { raw -> Bool in
            guard png_image_begin_read_from_memory(&image, raw.baseAddress, raw.count) != 0 else { return false }
            image.format = png_uint_32(PNG_FORMAT_RGB)
            pixels = [UInt8](repeating: 0, count: Int(image.width) * Int(image.height) * 3)
            return pixels.withUnsafeMutableBytes {
                png_image_finish_read(&image, nil, $0.baseAddress, png_int_32(Int(image.width) * 3), nil) != 0
            }
        }
        try #require(ok, "libpng could not read the chart")
        width = Int(image.width)
        height = Int(image.height)
        rgb = pixels
    }

    func color(_ x: Int, _ y: Int) -> ChartColor {
        let i = (y * width + x) * 3
        return ChartColor(rgb[i], rgb[i + 1], rgb[i + 2])
    }

    /// How many pixels of column `x` within `rows` have `color`.
    func count(_ color: ChartColor, inColumn x: Int, rows: Range<Int>) -> Int { rows.filter { self.color(x, $0) == color }.count }
}

private let mb = 1_000_000

/// A size-quality chart shaped like a real run: uniform types from f16 to q2_K, mixes a few dB
/// above the uniform types' line, a target line and the chosen mix with its measured PSNR.
private func sampleSizeQuality(title: String = "tiny-sd1: --target-psnr 40") -> BudgetChart.SizeQuality {
    let ladder: [(String, Int, Double)] = [
        ("q2_K", 300, 24.8), ("q3_K", 380, 31.5), ("q4_0", 470, 36.2), ("q4_K", 490, 37.9), ("q5_K", 600, 41.6), ("q6_K", 710, 44.8),
        ("q8_0", 920, 47.9), ("f16", 1_720, 58.2),
    ]
    let uniform = ladder.map { BudgetChart.Point(bytes: $0.1 * mb, psnr: $0.2, label: $0.0) }
    // Piecewise-linear through the uniform types, plus a bonus that shrinks towards f16.
    func uniformLine(_ size: Int) -> Double {
        let upper = ladder.firstIndex { $0.1 >= size } ?? ladder.count - 1
        guard upper > 0 else { return ladder[0].2 }
        let (a, b) = (ladder[upper - 1], ladder[upper])
        return a.2 + (b.2 - a.2) * Double(size - a.1) / Double(b.1 - a.1)
    }
    let mixes = stride(from: 320, through: 1_700, by: 40).map { size in
        BudgetChart.Point(bytes: size * mb, psnr: uniformLine(size) + 3 * Double(1_720 - size) / 1_400, label: "")
    }
    let chosen = mixes.first { $0.psnr >= 40 }!
    return BudgetChart.SizeQuality(
        title: title, uniform: uniform, mixes: mixes, chosen: .init(bytes: chosen.bytes, psnr: chosen.psnr, label: "auto"),
        measured: .init(bytes: chosen.bytes, psnr: chosen.psnr - 0.7, label: "measured"), target: 40, sizeLimit: nil)
}

/// A bits chart shaped like SD 1.5: text encoder, UNet and VAE layers, each kind of layer with the
/// type a budget might give it (attention and the UNet's middle lower, the ends and the VAE higher).
private func sampleBits(layerCount: Int = 1_100, title: String = "bits per layer") -> BudgetChart.Bits {
    let bits = ["f16": 16, "q8_0": 8.5, "q6_K": 6.5625, "q5_K": 5.5, "q4_K": 4.5, "q3_K": 3.4375]
    var layers: [(name: String, bits: Double, type: String)] = []
    for i in 0..<layerCount {
        let type: String
        let prefix: String
        if i < layerCount / 6 {
            prefix = "text_encoder.layers"
            type = i % 6 < 4 ? "q5_K" : "q6_K"
        } else if i < layerCount * 5 / 6 {
            prefix = "unet.blocks"
            let depth = Double(i - layerCount / 6) / Double(layerCount * 2 / 3)
            let middle = abs(depth - 0.5) < 0.2
            type =
                i == layerCount / 6 || i == layerCount * 5 / 6 - 1 ? "f16" : middle ? (i % 5 == 0 ? "q4_K" : "q3_K") : (i % 4 == 0 ? "q6_K" : "q4_K")
        } else {
            prefix = "vae.decoder"
            type = i % 3 == 0 ? "f16" : "q8_0"
        }
        layers.append((name: "\(prefix).\(i).weight", bits: bits[type]!, type: type))
    }
    return BudgetChart.Bits(title: title, layers: layers)
}

@Suite("BudgetChart")
struct BudgetChartTests {
    @Test("the axis rounds out to 1-2-5 ticks that cover the data")
    func niceTicks() {
        #expect(ChartAxis.niceStep(for: 0.13) == 0.2)
        #expect(ChartAxis.niceStep(for: 1) == 1)
        #expect(ChartAxis.niceStep(for: 2.5) == 5)
        #expect(ChartAxis.niceStep(for: 7) == 10)
        let axis = ChartAxis(covering: 0.3, 7.7, intervals: 5, minimumSpan: 1)
        #expect(axis.step == 2)
        #expect(axis.lower == 0)
        #expect(axis.upper == 8)
        #expect(axis.ticks == [0, 2, 4, 6, 8])
        let flat = ChartAxis(covering: 41, 41, intervals: 4, minimumSpan: 2)
        #expect(flat.lower <= 40 && flat.upper >= 42)
        let fine = ChartAxis(covering: 0, 0.1, intervals: 2, minimumSpan: 1)
        #expect(fine.step == 0.05 && fine.decimals == 2)
        #expect(fine.label(0.15) == "0.15" && fine.label(0) == "0.00")
    }

    @Test("the size axis maps its first and last tick to the plot's edges, +inf to the top edge")
    func sizeQualityMapping() throws {
        let chart = sampleSizeQuality()
        let layout = try SizeQualityLayout(chart, width: 960, height: 600)
        #expect(layout.unit.name == "GB")  // 1.72 GB is the largest size
        let sizes = (chart.uniform + chart.mixes).map { Double($0.bytes) / 1e9 }
        #expect(layout.xAxis.lower <= sizes.min()! && layout.xAxis.upper >= sizes.max()!)
        let psnrs = (chart.uniform + chart.mixes).map(\.psnr) + [40]
        #expect(layout.yAxis.lower <= psnrs.min()! && layout.yAxis.upper >= psnrs.max()!)
        #expect(layout.pixelX(bytes: Int(layout.xAxis.lower * 1e9)) == layout.plot.x)
        #expect(layout.pixelX(bytes: Int((layout.xAxis.upper * 1e9).rounded())) == layout.plot.maxX - 1)
        #expect(layout.pixelY(psnr: layout.yAxis.lower) == layout.plot.maxY - 1)
        #expect(layout.pixelY(psnr: layout.yAxis.upper) == layout.plot.y)
        #expect(layout.pixelY(psnr: .infinity) == layout.plot.y)
        // Halfway between two ticks is halfway between their pixels (within rounding).
        let a = layout.xAxis.lower
        let b = layout.xAxis.lower + layout.xAxis.step
        let middle = layout.pixelX(bytes: Int(((a + b) / 2 * 1e9).rounded()))
        let expected = (layout.pixelX(bytes: Int((a * 1e9).rounded())) + layout.pixelX(bytes: Int((b * 1e9).rounded()))) / 2
        #expect(abs(middle - expected) <= 1)
        // Larger PSNR is higher up (smaller row).
        #expect(layout.pixelY(psnr: 45) < layout.pixelY(psnr: 30))
    }

    @Test("the size-quality PNG has the asked size and the markers sit where the mapping puts them")
    func sizeQualityMarkers() throws {
        let chart = sampleSizeQuality()
        let png = try DecodedPNG(try BudgetChart.render(chart))
        #expect(png.width == 960 && png.height == 600)
        let layout = try SizeQualityLayout(chart, width: 960, height: 600)
        let chosen = layout.pixel(chart.chosen)
        #expect(png.color(chosen.x, chosen.y) == SizeQualityLayout.chosenColor)
        let measured = layout.pixel(chart.measured!)
        #expect(png.color(measured.x + SizeQualityLayout.measuredRadius - 1, measured.y) == SizeQualityLayout.measuredColor)
        for point in chart.uniform {
            let p = layout.pixel(point)
            #expect(png.color(p.x, p.y) == SizeQualityLayout.uniformColor, "uniform \(point.label) at \(p)")
        }
        let targetRow = layout.pixelY(psnr: 40)
        let targetPixels = (layout.plot.x..<layout.plot.maxX).filter { png.color($0, targetRow) == SizeQualityLayout.targetColor }.count
        #expect(targetPixels > layout.plot.width / 3, "the dashed target line")
    }

    @Test(
        "odd data renders without a crash: one point, equal points, huge, tiny and infinite values",
        arguments: [
            ([BudgetChart.Point(bytes: 1, psnr: 40, label: "one")], BudgetChart.Point(bytes: 1, psnr: 40, label: "it")),
            (Array(repeating: BudgetChart.Point(bytes: 5_000, psnr: 30, label: "same"), count: 3), .init(bytes: 5_000, psnr: 30, label: "same")),
            ([.init(bytes: Int.max, psnr: 1e6, label: "huge")], .init(bytes: Int.max / 2, psnr: -1e6, label: "big")),
            ([.init(bytes: 0, psnr: .infinity, label: "f32")], .init(bytes: 0, psnr: .infinity, label: "lossless")),
            (
                [.init(bytes: 10, psnr: .infinity, label: "f32"), .init(bytes: 5, psnr: 20, label: "q4")],
                .init(bytes: 7, psnr: .infinity, label: "x")
            ),
        ])
    func oddData(uniform: [BudgetChart.Point], chosen: BudgetChart.Point) throws {
        let chart = BudgetChart.SizeQuality(
            title: "odd", uniform: uniform, mixes: uniform, chosen: chosen, measured: chosen, target: 35, sizeLimit: 0)
        for (w, h) in [(200, 200), (960, 600)] {
            let png = try DecodedPNG(try BudgetChart.render(chart, width: w, height: h))
            #expect(png.width == w && png.height == h)
            let p = try SizeQualityLayout(chart, width: w, height: h).pixel(chosen)
            #expect(png.color(p.x, p.y) == SizeQualityLayout.chosenColor)
            if w == 960 {
                // Measured at the same place: its ring shows around the chosen diamond.
                #expect(png.color(p.x + SizeQualityLayout.measuredRadius - 1, p.y) == SizeQualityLayout.measuredColor)
            }
        }
    }

    @Test("labels of points at the plot's corners stay on the canvas: its outermost pixels stay white")
    func labelsStayOnCanvas() throws {
        let long = String(repeating: "W", count: 40)
        let corners = [
            BudgetChart.Point(bytes: 0, psnr: 10, label: long), .init(bytes: 0, psnr: 60, label: long),
            .init(bytes: 4_000_000_000, psnr: 10, label: long), .init(bytes: 4_000_000_000, psnr: .infinity, label: long),
        ]
        for (w, h) in [(200, 200), (960, 600)] {
            let chart = BudgetChart.SizeQuality(
                title: long + long, uniform: corners, mixes: [], chosen: .init(bytes: 4_000_000_000, psnr: 60, label: long + long),
                measured: .init(bytes: 0, psnr: 10, label: "m"), target: 60, sizeLimit: 4_000_000_000)
            let png = try DecodedPNG(try BudgetChart.render(chart, width: w, height: h))
            let border = (0..<w).flatMap { [($0, 0), ($0, h - 1)] } + (0..<h).flatMap { [(0, $0), (w - 1, $0)] }
            #expect(border.allSatisfy { png.color($0.0, $0.1) == .white }, "\(w)x\(h)")
        }
    }

    @Test("a taller bar has more pixels of its type's colour in its column")
    func barHeights() throws {
        let chart = BudgetChart.Bits(
            title: "three", layers: [("unet.a.weight", 4.5, "q4_K"), ("unet.b.weight", 8.5, "q8_0"), ("unet.c.weight", 16, "f16")])
        let png = try DecodedPNG(try BudgetChart.render(chart))
        #expect(png.width == 1200 && png.height == 500)
        let layout = try BitsLayout(chart, width: 1200, height: 500)
        #expect(layout.bars.count == 3)
        let counts = layout.bars.map { png.count(layout.types[$0.type].color, inColumn: $0.x + $0.width / 2, rows: layout.plot.y..<layout.plot.maxY) }
        #expect(counts[0] < counts[1] && counts[1] < counts[2], "\(counts)")
        // Each bar is as tall as the axis says: bits / top tick of the plot height.
        for (bar, count) in zip(layout.bars, counts) {
            let expected = bar.bits / layout.yAxis.upper * Double(layout.plot.height)
            #expect(abs(Double(count) - expected) <= 1, "\(bar.bits) bits: \(count) pixels, expected \(expected)")
        }
        #expect(layout.types.map(\.name) == ["f16", "q8_0", "q4_K"])
    }

    @Test("a layer of a few hundredths of a bit still shows one pixel; a layer of zero bits none")
    func tinyBars() throws {
        let chart = BudgetChart.Bits(title: "tiny", layers: [("unet.a", 0.01, "sparse"), ("unet.b", 0, "pruned"), ("unet.c", 4.5, "q4_K")])
        let layout = try BitsLayout(chart, width: 600, height: 300)
        let png = try DecodedPNG(try BudgetChart.render(chart, width: 600, height: 300))
        let counts = layout.bars.map { png.count(layout.types[$0.type].color, inColumn: $0.x + $0.width / 2, rows: layout.plot.y..<layout.plot.maxY) }
        #expect(counts[0] == 1 && counts[1] == 0 && counts[2] > 1, "\(counts)")
    }

    @Test("more layers than columns: one bar per column showing the mean bits of its layers")
    func manyLayers() throws {
        let layers = (0..<5_000).map { i in (name: "unet.l\(i).weight", bits: i < 2_500 ? 2.625 : 16.0, type: i < 2_500 ? "q2_K" : "f16") }
        let chart = BudgetChart.Bits(title: "many", layers: layers)
        let layout = try BitsLayout(chart, width: 800, height: 400)
        #expect(layout.bars.count == layout.plot.width)
        #expect(layout.bars.allSatisfy { $0.width == 1 })
        #expect(layout.bars.first!.layers.lowerBound == 0 && layout.bars.last!.layers.upperBound == 5_000)
        for (a, b) in zip(layout.bars, layout.bars.dropFirst()) { #expect(a.layers.upperBound == b.layers.lowerBound) }
        let png = try DecodedPNG(try BudgetChart.render(chart, width: 800, height: 400))
        let low = layout.bars.first!
        let high = layout.bars.last!
        #expect(
            png.count(layout.types[low.type].color, inColumn: low.x, rows: layout.plot.y..<layout.plot.maxY)
                < png.count(layout.types[high.type].color, inColumn: high.x, rows: layout.plot.y..<layout.plot.maxY))
        // A column straddling the switch shows the mean of its layers.
        if let mixed = layout.bars.first(where: { $0.layers.contains(2_499) && $0.layers.contains(2_500) }) {
            let expected = layers[mixed.layers].map(\.bits).reduce(0, +) / Double(mixed.layers.count)
            #expect(mixed.bits == expected)
        }
    }

    @Test("layers are grouped by their first name component")
    func groups() throws {
        let names = [
            "text_encoder.a", "text_encoder.b", "model.diffusion_model.in.0", "model.diffusion_model.out.1", "first_stage_model.dec", "vae.enc",
            "plain", "lora.x",
        ]
        let chart = BudgetChart.Bits(title: "groups", layers: names.map { (name: $0, bits: 8, type: "q8_0") })
        let layout = try BitsLayout(chart, width: 1200, height: 500)
        #expect(
            layout.groups == [
                .init(label: "text encoder", layers: 0..<2), .init(label: "UNet", layers: 2..<4), .init(label: "VAE", layers: 4..<6),
                .init(label: "lora", layers: 7..<8),
            ])
    }

    @Test("the glyphs '8' and 'q' render the pixels the font table gives them")
    func glyphs() throws {
        #expect(BitmapFont.table.count == 95)
        let eight = BitmapFont.glyph(for: "8")
        let q = BitmapFont.glyph(for: "q")
        // The table's '8': two stacked loops, nothing below the baseline; 'q' descends below it.
        #expect(eight.rows[7] == 0 && eight.rows[8] == 0)
        #expect(eight.rows[0] == eight.rows[3] && eight.rows[3] == eight.rows[6] && eight.rows[0] != 0)
        #expect(q.rows[7] != 0 && q.rows[8] != 0)
        #expect(BitmapFont.glyph(for: "é") == BitmapFont.glyph(for: "?"))

        var canvas = ChartCanvas(width: 20, height: 14)
        canvas.text("8q", x: 2, y: 1, .ink)
        for (index, glyph) in [eight, q].enumerated() {
            for row in 0..<BitmapFont.glyphHeight {
                for column in 0..<BitmapFont.advance {
                    let x = 2 + index * BitmapFont.advance + column
                    let expected: ChartColor = glyph.isSet(column: column, row: row) ? .ink : .white
                    #expect(canvas.color(x: x, y: 1 + row) == expected, "glyph \(index) column \(column) row \(row)")
                }
            }
        }

        // In a chart: the title "8q" is drawn at 2× from y = 10, centred.
        let chart = BudgetChart.Bits(title: "8q", layers: [("unet.a", 4.5, "q4_K")])
        let png = try DecodedPNG(try BudgetChart.render(chart, width: 400, height: 300))
        let left = (400 - BitmapFont.width(of: "8q") * 2) / 2
        for row in 0..<BitmapFont.glyphHeight {
            for column in 0..<BitmapFont.glyphWidth {
                let expected: ChartColor = eight.isSet(column: column, row: row) ? .ink : .white
                #expect(png.color(left + 2 * column, 10 + 2 * row) == expected)
                #expect(png.color(left + 2 * column + 1, 10 + 2 * row + 1) == expected)
            }
        }
    }

    @Test("the same input gives the same bytes; a different title gives different ones")
    func determinism() throws {
        let a = try BudgetChart.render(sampleSizeQuality())
        let b = try BudgetChart.render(sampleSizeQuality())
        #expect(a == b)
        #expect(a != (try BudgetChart.render(sampleSizeQuality(title: "another title"))))
        let c = try BudgetChart.render(sampleBits())
        let d = try BudgetChart.render(sampleBits())
        #expect(c == d)
        #expect(Array(a.prefix(8)) == [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
    }

    private static let point = BudgetChart.Point(bytes: 100, psnr: 40, label: "p")

    @Test(
        "bad size-quality input is refused with one line",
        arguments: [
            (BudgetChart.SizeQuality(title: "", uniform: [point], mixes: [], chosen: point), 199, 600, "outside 200...8192"),
            (BudgetChart.SizeQuality(title: "", uniform: [point], mixes: [], chosen: point), 960, 8193, "outside 200...8192"),
            (BudgetChart.SizeQuality(title: "", uniform: [], mixes: [point], chosen: point), 960, 600, "at least one uniform"),
            (
                BudgetChart.SizeQuality(title: "", uniform: [.init(bytes: 1, psnr: .nan, label: "n")], mixes: [], chosen: point), 960, 600,
                "not a number"
            ),
            (
                BudgetChart.SizeQuality(title: "", uniform: [point], mixes: [.init(bytes: 1, psnr: -.infinity, label: "m")], chosen: point), 960, 600,
                "outside ±"
            ),
            (
                BudgetChart.SizeQuality(title: "", uniform: [point], mixes: [], chosen: .init(bytes: -1, psnr: 3, label: "c")), 960, 600,
                "negative size"
            ),
            (
                BudgetChart.SizeQuality(title: "", uniform: [point], mixes: [], chosen: point, measured: .init(bytes: 1, psnr: .nan, label: "m")),
                960, 600, "not a number"
            ),
            (BudgetChart.SizeQuality(title: "", uniform: [point], mixes: [], chosen: point, target: .nan), 960, 600, "target PSNR"),
            (BudgetChart.SizeQuality(title: "", uniform: [point], mixes: [], chosen: point, sizeLimit: -5), 960, 600, "negative"),
        ])
    func sizeQualityRefusals(chart: BudgetChart.SizeQuality, width: Int, height: Int, message: String) {
        let error = #expect(throws: BudgetChart.ChartError.self) { try BudgetChart.render(chart, width: width, height: height) }
        #expect(error?.description.contains(message) == true, "\(error?.description ?? "")")
        #expect(error?.description.contains("\n") == false)
    }

    @Test(
        "bad bits input is refused with one line",
        arguments: [
            ([(name: String, bits: Double, type: String)](), 1200, 500, "at least one layer"),
            ([("a", 4.5, "q4_K")], 1200, 100, "outside 200...8192"),
            ([("a", .nan, "q4_K")], 1200, 500, "bits per weight"),
            ([("a", -1, "q4_K")], 1200, 500, "bits per weight"),
            ([("a", .infinity, "q4_K")], 1200, 500, "bits per weight"),
            ([("two\nlines", -2, "q4_K")], 1200, 500, "two lines"),
        ])
    func bitsRefusals(layers: [(name: String, bits: Double, type: String)], width: Int, height: Int, message: String) {
        let error = #expect(throws: BudgetChart.ChartError.self) {
            try BudgetChart.render(BudgetChart.Bits(title: "t", layers: layers), width: width, height: height)
        }
        #expect(error?.description.contains(message) == true, "\(error?.description ?? "")")
        #expect(error?.description.contains("\n") == false)
    }

    @Test("example charts render at the default and the smallest size (written to $BUDGET_CHART_EXAMPLES when set)")
    func examples() throws {
        let folder = ProcessInfo.processInfo.environment["BUDGET_CHART_EXAMPLES"]
        var limited = sampleSizeQuality(title: "tiny-sd1: --max-size 650 MB")
        limited.target = nil
        limited.sizeLimit = 650 * mb
        limited.measured = nil
        var infinite = sampleSizeQuality(title: "lossless types reach +inf dB")
        infinite.uniform.append(.init(bytes: 3_440 * mb, psnr: .infinity, label: "f32"))
        infinite.chosen = .init(bytes: 3_440 * mb, psnr: .infinity, label: "f32 copy")
        infinite.measured = nil
        let examples: [(String, [UInt8])] = [
            ("size-quality.png", try BudgetChart.render(sampleSizeQuality())),
            ("size-quality-limit.png", try BudgetChart.render(limited)),
            ("size-quality-small.png", try BudgetChart.render(sampleSizeQuality(), width: 200, height: 200)),
            ("size-quality-inf.png", try BudgetChart.render(infinite)),
            ("bits.png", try BudgetChart.render(sampleBits())),
            ("bits-many.png", try BudgetChart.render(sampleBits(layerCount: 3_000, title: "3000 layers in 1200 pixels"))),
            ("bits-few.png", try BudgetChart.render(sampleBits(layerCount: 12, title: "12 layers"), width: 400, height: 260)),
            ("bits-small.png", try BudgetChart.render(sampleBits(), width: 200, height: 200)),
        ]
        for (name, bytes) in examples {
            let png = try DecodedPNG(bytes)
            #expect(png.width >= 200 && png.height >= 200)
            if let folder { try Data(bytes).write(to: URL(fileURLWithPath: folder).appendingPathComponent(name)) }
        }
    }
}
