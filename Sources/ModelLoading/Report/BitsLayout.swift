/// Where everything on the per-layer bits chart goes.
///
/// The title sits 10 px from the top (2× font when it fits), a legend of block types under it
/// (one coloured square per type, highest mean bits first, wrapped onto as many lines as the height
/// allows), then the y-axis title ("bits per weight") and the plot. The y axis runs from 0 to 16
/// bits, or further when a layer has more, in 1-2-5 ticks. The plot's columns are shared out among
/// the layers in model order: layer `i` of `n` starts at column `plot.x + i * plot.width / n`, so
/// every bar is at least one pixel wide; when there are more layers than columns each column shows
/// the mean bits of its layers, coloured by their most common type. Layers whose names share a first
/// component (`text_encoder.`, `unet.`, `model.diffusion_model.`, `vae.`, `first_stage_model.`, …)
/// are grouped and each group is labelled under the axis.
struct BitsLayout {
    /// One drawn bar: its columns, height in bits, colour index and the layers it stands for.
    struct Bar: Equatable {
        var x: Int
        var width: Int
        var bits: Double
        var type: Int
        var layers: Range<Int>
    }

    /// One legend entry: the type, how many layers use it, their mean bits and its colour.
    struct TypeEntry: Equatable {
        var name: String
        var count: Int
        var meanBits: Double
        var color: ChartColor
    }

    /// A run of consecutive layers sharing a first name component.
    struct Group: Equatable {
        var label: String
        var layers: Range<Int>
    }

    /// Colours for types in legend order (highest bits first): cool to warm, then others.
    static let palette: [ChartColor] = [
        ChartColor(49, 99, 189), ChartColor(23, 160, 190), ChartColor(44, 160, 44), ChartColor(150, 186, 30),
        ChartColor(230, 171, 2), ChartColor(245, 120, 20), ChartColor(214, 39, 40), ChartColor(150, 60, 150),
        ChartColor(140, 86, 60), ChartColor(227, 119, 194), ChartColor(110, 110, 110), ChartColor(60, 60, 140),
    ]

    let width: Int
    let height: Int
    let title: (text: String, scale: Int)
    let plot: PixelRect
    let yAxis: ChartAxis
    let types: [TypeEntry]
    let bars: [Bar]
    let groups: [Group]
    let layerCount: Int
    /// Legend rows: each entry's index in `types` and its box (swatch and text).
    let legend: [(type: Int, box: PixelRect)]
    /// Types left out of the legend for want of room.
    let hiddenTypes: Int
    let legendBottom: Int

    init(_ chart: BudgetChart.Bits, width: Int, height: Int) throws {
        try BudgetChart.checkDimensions(width: width, height: height)
        let layers = chart.layers
        guard !layers.isEmpty else { throw BudgetChart.ChartError("the bits chart needs at least one layer") }
        guard layers.count <= BudgetChart.maximumLayers else {
            throw BudgetChart.ChartError("the bits chart takes at most \(BudgetChart.maximumLayers) layers, not \(layers.count)")
        }
        for layer in layers {
            guard layer.bits.isFinite, layer.bits >= 0, layer.bits <= BudgetChart.largestBits else {
                throw BudgetChart.ChartError("layer '\(layer.name)' has \(layer.bits) bits per weight, outside 0...\(Int(BudgetChart.largestBits))")
            }
        }
        self.width = width
        self.height = height
        layerCount = layers.count
        title = BudgetChart.fittedTitle(chart.title, available: width - 20)

        // Types, highest mean bits first (then by name), each with a palette colour.
        var totals: [String: (count: Int, bits: Double)] = [:]
        for layer in layers {
            let sofar = totals[layer.type] ?? (0, 0)
            totals[layer.type] = (sofar.count + 1, sofar.bits + layer.bits)
        }
        let sorted = totals.map { (name: $0.key, count: $0.value.count, mean: $0.value.bits / Double($0.value.count)) }
            .sorted { ($1.mean, $0.name) < ($0.mean, $1.name) }
        types = sorted.enumerated().map { i, t in
            TypeEntry(name: t.name, count: t.count, meanBits: t.mean, color: Self.palette[i % Self.palette.count])
        }
        var typeIndex: [String: Int] = [:]
        for (i, t) in types.enumerated() { typeIndex[t.name] = i }

        // Legend: flow layout under the title, as many lines as leave room for the plot.
        let legendTop = 10 + 7 * title.scale + 12
        let maxLines = max(1, (height - 200) / 40)
        var placed: [(type: Int, box: PixelRect)] = []
        var x = 20
        var line = 0
        for (i, t) in types.enumerated() {
            let w = 14 + BitmapFont.width(of: Self.legendText(t))
            if x + w > width - 20, x > 20 {
                line += 1
                x = 20
            }
            if line >= maxLines { break }
            placed.append((i, PixelRect(x: x, y: legendTop + line * 14, width: w, height: 10)))
            x += w + 18
        }
        // When types are left out, make room for "+N more" at the end of the last line.
        while placed.count < types.count, let last = placed.last,
            last.box.maxX + 18 + BitmapFont.width(of: "+\(types.count - placed.count) more") > width - 20, placed.count > 1
        {
            placed.removeLast()
        }
        legend = placed
        hiddenTypes = types.count - placed.count
        legendBottom = legendTop + (placed.map { $0.box.maxY }.max().map { $0 - legendTop } ?? 10)

        // Axes and plot.
        let top = legendBottom + 10 + BitmapFont.lineHeight + 6
        let bottom = height - 42
        let plotHeight = max(20, bottom - top)
        let largest = max(16, layers.map(\.bits).max() ?? 0)
        let axis = ChartAxis(covering: 0, largest, intervals: max(2, min(16, plotHeight / 32)), minimumSpan: 1, binary: true)
        yAxis = axis
        let labelWidth = axis.ticks.map { BitmapFont.width(of: axis.label($0)) }.max() ?? 0
        let left = max(36, labelWidth + 16)
        let plotWidth = max(20, width - left - 20)
        plot = PixelRect(x: left, y: top, width: plotWidth, height: plotHeight)

        // Bars: a slot per layer, or a column per group of layers.
        let n = layers.count
        var bars: [Bar] = []
        if n <= plotWidth {
            for i in 0..<n {
                let x0 = i * plotWidth / n
                let x1 = (i + 1) * plotWidth / n
                let w = x1 - x0 >= 4 ? x1 - x0 - 1 : x1 - x0
                bars.append(Bar(x: left + x0, width: w, bits: layers[i].bits, type: typeIndex[layers[i].type]!, layers: i..<(i + 1)))
            }
        } else {
            var counts = [Int](repeating: 0, count: types.count)
            for c in 0..<plotWidth {
                let first = c * n / plotWidth
                let end = (c + 1) * n / plotWidth
                var sum = 0.0
                for i in 0..<counts.count { counts[i] = 0 }
                for i in first..<end {
                    sum += layers[i].bits
                    counts[typeIndex[layers[i].type]!] += 1
                }
                var common = 0
                for i in counts.indices where counts[i] > counts[common] { common = i }
                bars.append(Bar(x: left + c, width: 1, bits: sum / Double(end - first), type: common, layers: first..<end))
            }
        }
        self.bars = bars

        // Groups by first name component.
        var groups: [Group] = []
        var start = 0
        var current = Self.component(of: layers[0].name)
        for i in 1...n {
            let next = i < n ? Self.component(of: layers[i].name) : nil
            if i == n || next != current {
                if let current { groups.append(Group(label: current, layers: start..<i)) }
                start = i
                current = next
            }
        }
        self.groups = groups
    }

    /// The group label of a layer name: a readable name for the components Stable Diffusion
    /// checkpoints use, the first component itself otherwise, nil when the name has no `.`.
    static func component(of name: String) -> String? {
        let parts = name.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count > 1 else { return nil }
        switch parts[0] {
        case "text_encoder", "cond_stage_model", "conditioner", "te": return "text encoder"
        case "text_encoder_2": return "text encoder 2"
        case "unet": return "UNet"
        case "model" where parts[1] == "diffusion_model": return "UNet"
        case "vae", "first_stage_model": return "VAE"
        default: return String(parts[0])
        }
    }

    /// A type's legend text: its name and how many layers use it.
    static func legendText(_ type: TypeEntry) -> String { "\(BudgetChart.truncated(type.name, 16)) (\(type.count))" }

    /// A short form of a group label for narrow groups: `TE`, `TE2`, `UNet`, `VAE`, or three characters.
    static func abbreviation(_ label: String) -> String {
        switch label {
        case "text encoder": "TE"
        case "text encoder 2": "TE2"
        case "UNet", "VAE": label
        default: String(label.prefix(3))
        }
    }

    /// The first column of layer `i`.
    func column(ofLayer i: Int) -> Int { plot.x + i * plot.width / layerCount }

    /// The pixel row of the top of a bar `bits` tall: at least one pixel above `plot.maxY` for any
    /// positive value, `plot.maxY` (nothing drawn) for zero.
    func top(bits: Double) -> Int {
        let h = Int((yAxis.fraction(bits) * Double(plot.height)).rounded())
        return plot.maxY - min(max(bits > 0 ? 1 : 0, h), plot.height)
    }

    func draw(on canvas: inout ChartCanvas) {
        let plot = self.plot
        let titleWidth = BitmapFont.width(of: title.text) * title.scale
        canvas.text(title.text, x: max(10, (width - titleWidth) / 2), y: 10, .ink, scale: title.scale)

        for (index, box) in legend {
            let t = types[index]
            canvas.fill(PixelRect(x: box.x, y: box.y, width: 10, height: 10), t.color)
            canvas.text(Self.legendText(t), x: box.x + 14, y: box.y + 1, .ink)
        }
        if hiddenTypes > 0, let last = legend.last {
            canvas.text("+\(hiddenTypes) more", x: last.box.maxX + 18, y: last.box.y + 1, .faint)
        }

        canvas.text("bits per weight", x: max(4, plot.x - 30), y: plot.y - BitmapFont.lineHeight - 4, .ink)
        for tick in yAxis.ticks {
            let y = top(bits: tick)
            canvas.fill(PixelRect(x: plot.x, y: min(y, plot.maxY - 1), width: plot.width, height: 1), .grid)
            canvas.fill(PixelRect(x: plot.x - 5, y: y, width: 4, height: 1), .axis)
            let label = yAxis.label(tick)
            canvas.text(label, x: plot.x - 8 - BitmapFont.width(of: label), y: y - 3, .ink)
        }

        for bar in bars {
            let y = top(bits: bar.bits)
            canvas.fill(PixelRect(x: bar.x, y: y, width: bar.width, height: plot.maxY - y), types[bar.type].color)
        }
        canvas.stroke(plot.inset(by: -1), .axis)

        // Groups: separators through the plot, a bracket and a label under it.
        var lastLabelEnd = Int.min
        for (g, group) in groups.enumerated() {
            let x0 = column(ofLayer: group.layers.lowerBound)
            let x1 = group.layers.upperBound < layerCount ? column(ofLayer: group.layers.upperBound) : plot.maxX
            if g > 0 || group.layers.lowerBound > 0 {
                canvas.line(x0 - 1, plot.y, x0 - 1, plot.maxY + 12, .faint, dash: (2, 3))
            }
            canvas.fill(PixelRect(x: x0 + 1, y: plot.maxY + 5, width: max(1, x1 - x0 - 3), height: 1), .axis)
            let forms = ["\(group.label) (\(group.layers.count))", group.label, Self.abbreviation(group.label)]
            guard let text = forms.first(where: { BitmapFont.width(of: $0) <= x1 - x0 - 4 }) ?? (groups.count == 1 ? forms[2] : nil) else {
                continue
            }
            let w = BitmapFont.width(of: text)
            let lx = min(max(2, x0 + (x1 - x0 - w) / 2), width - 2 - w)
            guard lx > lastLabelEnd + 6 else { continue }
            canvas.text(text, x: lx, y: plot.maxY + 9, .ink)
            lastLabelEnd = lx + w
        }

        let xTitle = "\(layerCount) layer\(layerCount == 1 ? "" : "s") in model order"
        let w = BitmapFont.width(of: xTitle)
        canvas.text(xTitle, x: plot.x + (plot.width - w) / 2, y: height - 14, .ink)
    }
}
