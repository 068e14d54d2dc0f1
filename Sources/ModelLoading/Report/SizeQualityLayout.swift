/// Where everything on the size-versus-PSNR chart goes.
///
/// The title sits 10 px from the top (2× font when it fits), the y-axis title ("PSNR (dB)") above the
/// plot's left edge, the plot below them; tick labels to the left of and under the plot, the x-axis
/// title ("file size (MB)") under those. The x axis is in decimal B/KB/MB/GB/TB chosen by the largest
/// size shown; both axes cover the data (and the target and size limit) padded by 6 % and rounded out
/// to 1-2-5 ticks. A PSNR of +infinity is drawn on the plot's top edge with an arrow and "inf".
struct SizeQualityLayout {
    static let uniformColor = ChartColor(49, 99, 189)
    static let mixColor = ChartColor(245, 130, 20)
    static let chosenColor = ChartColor(214, 39, 40)
    static let chosenOutline = ChartColor(120, 10, 10)
    static let measuredColor = ChartColor(30, 150, 60)
    static let targetColor = ChartColor(148, 83, 189)
    static let limitColor = ChartColor(140, 86, 60)

    static let uniformRadius = 4
    static let chosenRadius = 7
    /// Larger than the chosen diamond, so the ring shows around it when the two coincide.
    static let measuredRadius = 10

    let chart: BudgetChart.SizeQuality
    let width: Int
    let height: Int
    /// The plotting area: `x` maps to `plot.x ... plot.maxX - 1`, `y` to `plot.maxY - 1 ... plot.y`.
    let plot: PixelRect
    /// The x axis in `unit`s.
    let xAxis: ChartAxis
    /// The y axis in dB.
    let yAxis: ChartAxis
    /// The x axis unit's name and size in bytes.
    let unit: (name: String, bytes: Double)
    let title: (text: String, scale: Int)

    init(_ chart: BudgetChart.SizeQuality, width: Int, height: Int) throws {
        try BudgetChart.checkDimensions(width: width, height: height)
        guard !chart.uniform.isEmpty else { throw BudgetChart.ChartError("the size-quality chart needs at least one uniform type") }
        let all = chart.uniform + chart.mixes + [chart.chosen] + (chart.measured.map { [$0] } ?? [])
        for point in all {
            guard point.bytes >= 0 else { throw BudgetChart.ChartError("point '\(point.label)' has a negative size (\(point.bytes) bytes)") }
            guard !point.psnr.isNaN else { throw BudgetChart.ChartError("point '\(point.label)' has a PSNR that is not a number") }
            guard point.psnr == .infinity || abs(point.psnr) <= BudgetChart.largestPSNR else {
                throw BudgetChart.ChartError("point '\(point.label)' has PSNR \(point.psnr) dB, outside ±\(BudgetChart.largestPSNR) dB")
            }
        }
        if let target = chart.target {
            guard target.isFinite, abs(target) <= BudgetChart.largestPSNR else {
                throw BudgetChart.ChartError("target PSNR \(target) dB is not a finite value within ±\(BudgetChart.largestPSNR) dB")
            }
        }
        if let limit = chart.sizeLimit, limit < 0 { throw BudgetChart.ChartError("size limit \(limit) bytes is negative") }
        self.chart = chart
        self.width = width
        self.height = height

        title = BudgetChart.fittedTitle(chart.title, available: width - 20)
        let top = 10 + 7 * title.scale + 10 + BitmapFont.lineHeight + 8
        let bottom = height - 46
        let plotHeight = max(20, bottom - top)

        let psnrs = all.map(\.psnr).filter(\.isFinite) + (chart.target.map { [$0] } ?? [])
        var low = psnrs.min() ?? 0
        var high = psnrs.max() ?? 50
        let pad = (high - low) * 0.06
        low -= pad
        high += pad
        yAxis = ChartAxis(covering: low, high, intervals: max(2, min(12, plotHeight / 55)), minimumSpan: 2)

        let largest = max(all.map(\.bytes).max() ?? 0, chart.sizeLimit ?? 0)
        let names = ["B", "KB", "MB", "GB", "TB", "PB", "EB"]
        var index = 0
        var scale = 1.0
        while index < names.count - 1, Double(largest) >= scale * 1000 {
            scale *= 1000
            index += 1
        }
        unit = (names[index], scale)
        let sizes = all.map { Double($0.bytes) / scale } + (chart.sizeLimit.map { [Double($0) / scale] } ?? [])
        let smallest = sizes.min() ?? 0
        let biggest = sizes.max() ?? 1
        let xPad = (biggest - smallest) * 0.06
        var xLow = smallest - xPad
        let xHigh = biggest + xPad
        if xLow < 0 { xLow = 0 }

        let yAxis = self.yAxis
        let labelWidth = yAxis.ticks.map { BitmapFont.width(of: yAxis.label($0)) }.max() ?? 0
        let left = max(44, labelWidth + 16)
        let right = 24
        let plotWidth = max(20, width - left - right)
        xAxis = ChartAxis(
            covering: xLow, xHigh, intervals: max(2, min(12, plotWidth / 110)), minimumSpan: max(biggest * 0.2, 1e-3))
        plot = PixelRect(x: left, y: top, width: plotWidth, height: plotHeight)
    }

    /// The pixel column of a size in bytes.
    func pixelX(bytes: Int) -> Int {
        let f = xAxis.fraction(Double(bytes) / unit.bytes)
        return plot.x + Int((f * Double(plot.width - 1)).rounded())
    }

    /// The pixel row of a PSNR (the plot's top edge for +infinity).
    func pixelY(psnr: Double) -> Int {
        guard psnr.isFinite else { return plot.y }
        let f = yAxis.fraction(psnr)
        return plot.maxY - 1 - Int((f * Double(plot.height - 1)).rounded())
    }

    /// Where `point`'s marker is centred.
    func pixel(_ point: BudgetChart.Point) -> (x: Int, y: Int) { (pixelX(bytes: point.bytes), pixelY(psnr: point.psnr)) }

    private func psnrText(_ psnr: Double) -> String {
        psnr.isFinite ? Formatting.oneDecimal(psnr) + " dB" : "inf dB"
    }

    private func sizeText(_ bytes: Int) -> String { Formatting.bytes(bytes) }

    /// The legend's rows: a symbol kind and its text.
    private enum Symbol { case dot, curve, diamond, ring, dashedHorizontal, dashedVertical }

    private var legendEntries: [(Symbol, String)] {
        var entries: [(Symbol, String)] = [(.dot, "uniform type")]
        if !chart.mixes.isEmpty { entries.append((.curve, "chosen mixes")) }
        entries.append((.diamond, "file written"))
        if chart.measured != nil { entries.append((.ring, "measured PSNR")) }
        if chart.target != nil { entries.append((.dashedHorizontal, "target PSNR")) }
        if chart.sizeLimit != nil { entries.append((.dashedVertical, "size limit")) }
        return entries
    }

    func draw(on canvas: inout ChartCanvas) {
        let plot = self.plot
        // Title and axis titles.
        let titleWidth = BitmapFont.width(of: title.text) * title.scale
        canvas.text(title.text, x: max(10, (width - titleWidth) / 2), y: 10, .ink, scale: title.scale)
        canvas.text("PSNR (dB)", x: max(4, plot.x - 30), y: plot.y - BitmapFont.lineHeight - 6, .ink)
        let xTitle = "file size (\(unit.name))"
        let xTitleWidth = BitmapFont.width(of: xTitle)
        canvas.text(xTitle, x: plot.x + (plot.width - xTitleWidth) / 2, y: plot.maxY + 26, .ink)

        // Grid, frame, ticks and tick labels.
        for tick in yAxis.ticks {
            let y = plot.maxY - 1 - Int((yAxis.fraction(tick) * Double(plot.height - 1)).rounded())
            canvas.fill(PixelRect(x: plot.x, y: y, width: plot.width, height: 1), .grid)
            canvas.fill(PixelRect(x: plot.x - 5, y: y, width: 4, height: 1), .axis)
            let label = yAxis.label(tick)
            canvas.text(label, x: plot.x - 8 - BitmapFont.width(of: label), y: y - 3, .ink)
        }
        var lastLabelEnd = Int.min
        for tick in xAxis.ticks {
            let x = plot.x + Int((xAxis.fraction(tick) * Double(plot.width - 1)).rounded())
            canvas.fill(PixelRect(x: x, y: plot.y, width: 1, height: plot.height), .grid)
            canvas.fill(PixelRect(x: x, y: plot.maxY + 1, width: 1, height: 4), .axis)
            let label = xAxis.label(tick)
            let w = BitmapFont.width(of: label)
            let lx = min(max(2, x - w / 2), width - 2 - w)
            if lx > lastLabelEnd + 6 {
                canvas.text(label, x: lx, y: plot.maxY + 8, .ink)
                lastLabelEnd = lx + w
            }
        }
        canvas.stroke(plot.inset(by: -1), .axis)

        var occupied: [PixelRect] = []
        func marker(_ x: Int, _ y: Int, _ r: Int) -> PixelRect { PixelRect(x: x - r - 1, y: y - r - 1, width: 2 * r + 3, height: 2 * r + 3) }

        // Target and size-limit lines with their labels.
        var lineLabels: [(String, PixelRect, ChartColor)] = []
        if let target = chart.target {
            let y = pixelY(psnr: target)
            canvas.line(plot.x, y, plot.maxX - 1, y, Self.targetColor, thickness: 1, dash: (6, 4))
            let text = "target " + psnrText(target)
            let w = BitmapFont.width(of: text)
            let box = PixelRect(x: plot.maxX - 6 - w, y: y > plot.y + 14 ? y - 12 : y + 4, width: w, height: BitmapFont.glyphHeight)
            lineLabels.append((text, box, Self.targetColor))
        }
        if let limit = chart.sizeLimit {
            let x = pixelX(bytes: limit)
            canvas.line(x, plot.y, x, plot.maxY - 1, Self.limitColor, thickness: 1, dash: (6, 4))
            let text = "max " + sizeText(limit)
            let w = BitmapFont.width(of: text)
            let box = PixelRect(x: x + 5 + w < plot.maxX ? x + 5 : x - 5 - w, y: plot.y + 5, width: w, height: BitmapFont.glyphHeight)
            lineLabels.append((text, box, Self.limitColor))
        }
        occupied += lineLabels.map(\.1)

        // The mixes' curve, in size order.
        let mixes = chart.mixes.sorted { ($0.bytes, $0.psnr, $0.label) < ($1.bytes, $1.psnr, $1.label) }
        let mixPixels = mixes.map(pixel)
        for (a, b) in zip(mixPixels, mixPixels.dropFirst()) { canvas.line(a.x, a.y, b.x, b.y, Self.mixColor, thickness: 2) }
        for p in mixPixels { canvas.disc(p.x, p.y, radius: 2, Self.mixColor) }

        // Uniform types.
        let uniform = chart.uniform.sorted { ($0.bytes, $0.psnr, $0.label) < ($1.bytes, $1.psnr, $1.label) }
        for point in uniform {
            let p = pixel(point)
            if !point.psnr.isFinite { canvas.upArrow(p.x, tipY: p.y - 12, size: 8, Self.uniformColor) }
            canvas.disc(p.x, p.y, radius: Self.uniformRadius, Self.uniformColor)
            occupied.append(marker(p.x, p.y, Self.uniformRadius))
        }

        // Measured, joined to chosen.
        let chosen = pixel(chart.chosen)
        occupied.append(marker(chosen.x, chosen.y, Self.chosenRadius))
        if let measured = chart.measured {
            let m = pixel(measured)
            canvas.line(chosen.x, chosen.y, m.x, m.y, Self.measuredColor, thickness: 1, dash: (3, 3))
            if !measured.psnr.isFinite { canvas.upArrow(m.x, tipY: m.y - 14, size: 8, Self.measuredColor) }
            canvas.ring(m.x, m.y, radius: Self.measuredRadius, thickness: 2, Self.measuredColor)
            occupied.append(marker(m.x, m.y, Self.measuredRadius))
        }
        if !chart.chosen.psnr.isFinite { canvas.upArrow(chosen.x, tipY: chosen.y - 15, size: 8, Self.chosenColor) }

        // The legend, in the plot corner that covers the fewest markers and curve points; left out
        // when it would take more than half the plot's width or height.
        let entries = legendEntries
        let legendWidth = 6 + 24 + (entries.map { BitmapFont.width(of: $0.1) }.max() ?? 0) + 8
        let legendHeight = 6 + entries.count * 14
        let corners = [
            PixelRect(x: plot.maxX - 6 - legendWidth, y: plot.maxY - 6 - legendHeight, width: legendWidth, height: legendHeight),
            PixelRect(x: plot.x + 6, y: plot.y + 6, width: legendWidth, height: legendHeight),
            PixelRect(x: plot.maxX - 6 - legendWidth, y: plot.y + 6, width: legendWidth, height: legendHeight),
            PixelRect(x: plot.x + 6, y: plot.maxY - 6 - legendHeight, width: legendWidth, height: legendHeight),
        ]
        let curveSamples = mixPixels.map { PixelRect(x: $0.x - 2, y: $0.y - 2, width: 5, height: 5) }
        var legend: PixelRect?
        if 2 * legendWidth <= plot.width && 2 * legendHeight <= plot.height {
            let scored = corners.map { c in (c, (occupied + curveSamples).reduce(0) { $0 + c.overlap($1) }) }
            legend = scored.min { $0.1 < $1.1 }!.0
            occupied.append(legend!)
        }
        occupied += curveSamples

        // Labels: the chosen file's first (shortened when the long form finds no free place), then
        // the measured one, then each uniform type's where it fits without covering anything.
        var labels: [(String, PixelRect, ChartColor)] = []
        let name = BudgetChart.truncated(chart.chosen.label, 32)
        let chosenTexts = [name + ": " + sizeText(chart.chosen.bytes) + ", " + psnrText(chart.chosen.psnr), name]
        if let (text, box) = place(chosenTexts, at: chosen, radius: Self.chosenRadius, required: true, avoiding: &occupied) {
            labels.append((text, box, Self.chosenOutline))
        }
        if let measured = chart.measured,
            let (text, box) = place(
                ["measured " + psnrText(measured.psnr)], at: pixel(measured), radius: Self.measuredRadius, required: false, avoiding: &occupied)
        {
            labels.append((text, box, Self.measuredColor))
        }
        for point in uniform {
            let text = BudgetChart.truncated(point.label, 24) + (point.psnr.isFinite ? "" : " (inf)")
            if let (text, box) = place([text], at: pixel(point), radius: Self.uniformRadius, required: false, avoiding: &occupied) {
                labels.append((text, box, .ink))
            }
        }

        // Draw the legend and the text last, so lines never cross them.
        if let legend {
            canvas.fill(legend, .white)
            canvas.stroke(legend, ChartColor(180, 180, 180))
            for (i, entry) in entries.enumerated() {
                let cy = legend.y + 10 + i * 14
                let cx = legend.x + 6 + 10
                switch entry.0 {
                case .dot: canvas.disc(cx, cy, radius: Self.uniformRadius, Self.uniformColor)
                case .curve: canvas.line(cx - 9, cy + 2, cx + 9, cy - 2, Self.mixColor, thickness: 2)
                case .diamond: canvas.diamond(cx, cy, radius: 5, fill: Self.chosenColor, outline: Self.chosenOutline)
                case .ring: canvas.ring(cx, cy, radius: 5, thickness: 2, Self.measuredColor)
                case .dashedHorizontal: canvas.line(cx - 9, cy, cx + 9, cy, Self.targetColor, dash: (4, 3))
                case .dashedVertical: canvas.line(cx, cy - 5, cx, cy + 5, Self.limitColor, dash: (3, 2))
                }
                canvas.text(entry.1, x: legend.x + 6 + 24, y: cy - 3, .ink)
            }
        }
        for (text, box, color) in lineLabels + labels {
            canvas.fill(box.inset(by: -1), .white)
            canvas.text(text, x: box.x, y: box.y, color)
        }
        canvas.diamond(chosen.x, chosen.y, radius: Self.chosenRadius, fill: Self.chosenColor, outline: Self.chosenOutline)
    }

    /// Chooses where a label goes next to a marker of radius `r` at `p`: for each text in `texts`
    /// (longest form first), the first of sixteen places around the marker that stays inside the plot
    /// and overlaps nothing in `occupied`. When none is free, a `required` label takes the place of
    /// least overlap for its last (shortest) form, kept on the canvas; any other is left out (nil).
    /// The box taken is added to `occupied`.
    private func place(
        _ texts: [String], at p: (x: Int, y: Int), radius r: Int, required: Bool, avoiding occupied: inout [PixelRect]
    ) -> (String, PixelRect)? {
        let area = plot.inset(by: 2)
        var fallback: (text: String, box: PixelRect, score: Int)?
        for text in texts {
            let w = BitmapFont.width(of: text)
            let h = BitmapFont.glyphHeight
            let origins = [
                (p.x + r + 5, p.y - 3), (p.x - r - 5 - w, p.y - 3), (p.x - w / 2, p.y - r - 5 - h), (p.x - w / 2, p.y + r + 5),
                (p.x + r + 3, p.y - r - 3 - h), (p.x + r + 3, p.y + r + 3), (p.x - r - 3 - w, p.y - r - 3 - h), (p.x - r - 3 - w, p.y + r + 3),
                (p.x + r + 5, p.y - 3 - 14), (p.x + r + 5, p.y - 3 + 14), (p.x - r - 5 - w, p.y - 3 - 14), (p.x - r - 5 - w, p.y - 3 + 14),
                (p.x - w / 2, p.y - r - 5 - h - 14), (p.x - w / 2, p.y + r + 5 + 14), (p.x + r + 5, p.y - 3 + 28), (p.x - r - 5 - w, p.y - 3 + 28),
            ]
            fallback = nil
            for (x, y) in origins {
                let box = PixelRect(x: x, y: y, width: w, height: h)
                let outside = area.contains(box) ? 0 : 1_000_000 + (w * h - box.overlap(area))
                let score = outside + occupied.reduce(0) { $0 + box.inset(by: -1).overlap($1) }
                if score == 0 {
                    occupied.append(box)
                    return (text, box)
                }
                if fallback == nil || score < fallback!.score { fallback = (text, box, score) }
            }
        }
        guard required, let fallback else { return nil }
        var text = fallback.text
        var box = fallback.box
        box.x = min(max(2, box.x), width - 2 - box.width)
        box.y = min(max(2, box.y), height - 2 - box.height)
        if box.width > width - 4 {
            text = BudgetChart.truncated(text, max(1, (width - 4 + 1) / BitmapFont.advance))
            box.x = 2
            box.width = BitmapFont.width(of: text)
        }
        occupied.append(box)
        return (text, box)
    }
}
