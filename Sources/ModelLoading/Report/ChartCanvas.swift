/// An 8-bit RGB colour.
struct ChartColor: Hashable, Sendable {
    var r: UInt8
    var g: UInt8
    var b: UInt8

    init(_ r: UInt8, _ g: UInt8, _ b: UInt8) {
        self.r = r
        self.g = g
        self.b = b
    }

    static let white = ChartColor(255, 255, 255)
    static let ink = ChartColor(34, 34, 34)
    static let axis = ChartColor(90, 90, 90)
    static let grid = ChartColor(228, 228, 228)
    static let faint = ChartColor(120, 120, 120)
}

/// An axis-aligned rectangle in pixels (`x`, `y` top-left; `width`, `height` may be zero).
struct PixelRect: Hashable, Sendable {
    var x: Int
    var y: Int
    var width: Int
    var height: Int

    var maxX: Int { x + width }
    var maxY: Int { y + height }

    /// The area shared with `other` (0 when they do not meet).
    func overlap(_ other: PixelRect) -> Int {
        let w = min(maxX, other.maxX) - max(x, other.x)
        let h = min(maxY, other.maxY) - max(y, other.y)
        return w > 0 && h > 0 ? w * h : 0
    }

    /// Whether `other` lies wholly inside this rectangle.
    func contains(_ other: PixelRect) -> Bool {
        other.x >= x && other.y >= y && other.maxX <= maxX && other.maxY <= maxY
    }

    /// Whether the pixel (`px`, `py`) lies inside.
    func contains(x px: Int, y py: Int) -> Bool { px >= x && px < maxX && py >= y && py < maxY }

    /// This rectangle shrunk by `d` pixels on every side (grown when `d` is negative).
    func inset(by d: Int) -> PixelRect { PixelRect(x: x + d, y: y + d, width: width - 2 * d, height: height - 2 * d) }
}

/// A raster of RGB pixels that clips everything drawn to its bounds.
struct ChartCanvas {
    let width: Int
    let height: Int
    private(set) var pixels: [UInt8]

    /// A canvas filled with `background`; the caller has checked the size.
    init(width: Int, height: Int, background: ChartColor = .white) {
        self.width = width
        self.height = height
        var row = [UInt8]()
        row.reserveCapacity(width * 3)
        for _ in 0..<width { row += [background.r, background.g, background.b] }
        var all = [UInt8]()
        all.reserveCapacity(width * height * 3)
        for _ in 0..<height { all += row }
        pixels = all
    }

    /// The colour at (`x`, `y`), or nil outside the canvas.
    func color(x: Int, y: Int) -> ChartColor? {
        guard x >= 0, y >= 0, x < width, y < height else { return nil }
        let i = (y * width + x) * 3
        return ChartColor(pixels[i], pixels[i + 1], pixels[i + 2])
    }

    /// Paints one pixel; outside the canvas nothing happens.
    mutating func set(x: Int, y: Int, _ color: ChartColor) {
        guard x >= 0, y >= 0, x < width, y < height else { return }
        let i = (y * width + x) * 3
        pixels[i] = color.r
        pixels[i + 1] = color.g
        pixels[i + 2] = color.b
    }

    /// Fills `rect` (clipped).
    mutating func fill(_ rect: PixelRect, _ color: ChartColor) {
        let x0 = max(0, rect.x)
        let x1 = min(width, rect.maxX)
        let y0 = max(0, rect.y)
        let y1 = min(height, rect.maxY)
        guard x0 < x1, y0 < y1 else { return }
        for y in y0..<y1 {
            for x in x0..<x1 { set(x: x, y: y, color) }
        }
    }

    /// Draws the outline of `rect`, one pixel wide, inside its bounds.
    mutating func stroke(_ rect: PixelRect, _ color: ChartColor) {
        guard rect.width > 0, rect.height > 0 else { return }
        fill(PixelRect(x: rect.x, y: rect.y, width: rect.width, height: 1), color)
        fill(PixelRect(x: rect.x, y: rect.maxY - 1, width: rect.width, height: 1), color)
        fill(PixelRect(x: rect.x, y: rect.y, width: 1, height: rect.height), color)
        fill(PixelRect(x: rect.maxX - 1, y: rect.y, width: 1, height: rect.height), color)
    }

    /// A straight line from (`x0`, `y0`) to (`x1`, `y1`), `thickness` pixels wide; with `dash`
    /// (`on`, `off` lengths in pixels) it is dashed. Endpoints far outside the canvas are clipped to
    /// a box around it first, so the walk stays short.
    mutating func line(
        _ x0: Int, _ y0: Int, _ x1: Int, _ y1: Int, _ color: ChartColor, thickness: Int = 1, dash: (on: Int, off: Int)? = nil
    ) {
        let limit = 4 * max(width, height) + 16
        func clamp(_ v: Int) -> Int { min(max(v, -limit), limit) }
        var x = clamp(x0)
        var y = clamp(y0)
        let xEnd = clamp(x1)
        let yEnd = clamp(y1)
        let dx = abs(xEnd - x)
        let dy = -abs(yEnd - y)
        let sx = x < xEnd ? 1 : -1
        let sy = y < yEnd ? 1 : -1
        var error = dx + dy
        var step = 0
        let offset = (thickness - 1) / 2
        while true {
            let inked: Bool
            if let dash, dash.on > 0 { inked = step % (dash.on + max(0, dash.off)) < dash.on } else { inked = true }
            if inked {
                if thickness <= 1 {
                    set(x: x, y: y, color)
                } else {
                    fill(PixelRect(x: x - offset, y: y - offset, width: thickness, height: thickness), color)
                }
            }
            if x == xEnd && y == yEnd { break }
            let e2 = 2 * error
            if e2 >= dy {
                error += dy
                x += sx
            }
            if e2 <= dx {
                error += dx
                y += sy
            }
            step += 1
        }
    }

    /// A filled disc of radius `r` centred on (`cx`, `cy`).
    mutating func disc(_ cx: Int, _ cy: Int, radius r: Int, _ color: ChartColor) {
        for dy in -r...r {
            for dx in -r...r where dx * dx + dy * dy <= r * r + r / 2 { set(x: cx + dx, y: cy + dy, color) }
        }
    }

    /// A ring (circle outline) of radius `r`, `thickness` pixels wide.
    mutating func ring(_ cx: Int, _ cy: Int, radius r: Int, thickness: Int, _ color: ChartColor) {
        let inner = max(0, r - thickness)
        for dy in -r...r {
            for dx in -r...r {
                let d = dx * dx + dy * dy
                if d <= r * r + r / 2 && d > inner * inner + inner / 2 { set(x: cx + dx, y: cy + dy, color) }
            }
        }
    }

    /// A filled diamond (|dx| + |dy| <= r) with a one-pixel `outline`.
    mutating func diamond(_ cx: Int, _ cy: Int, radius r: Int, fill color: ChartColor, outline: ChartColor) {
        for dy in -r...r {
            for dx in -r...r where abs(dx) + abs(dy) <= r {
                set(x: cx + dx, y: cy + dy, abs(dx) + abs(dy) == r ? outline : color)
            }
        }
    }

    /// A filled triangle pointing up with its tip at (`cx`, `tipY`), `size` pixels tall.
    mutating func upArrow(_ cx: Int, tipY: Int, size: Int, _ color: ChartColor) {
        for row in 0..<size {
            fill(PixelRect(x: cx - row / 2, y: tipY + row, width: row / 2 * 2 + 1, height: 1), color)
        }
    }

    /// Draws `text` with its top-left corner at (`x`, `y`), each font pixel `scale` × `scale`.
    mutating func text(_ text: String, x: Int, y: Int, _ color: ChartColor, scale: Int = 1) {
        var penX = x
        for character in text {
            let glyph = BitmapFont.glyph(for: character)
            for row in 0..<BitmapFont.glyphHeight where glyph.rows[row] != 0 {
                for column in 0..<BitmapFont.glyphWidth where glyph.isSet(column: column, row: row) {
                    fill(PixelRect(x: penX + column * scale, y: y + row * scale, width: scale, height: scale), color)
                }
            }
            penX += BitmapFont.advance * scale
        }
    }

    /// The box `text` occupies when drawn at (`x`, `y`): its width, and the 7 rows above the
    /// baseline plus the descender rows.
    static func textBox(_ text: String, x: Int, y: Int, scale: Int = 1) -> PixelRect {
        PixelRect(x: x, y: y, width: BitmapFont.width(of: text) * scale, height: BitmapFont.glyphHeight * scale)
    }
}
