/// The pictures of a quality-budget conversion (`convert --dtype auto --report DIR`): the
/// size-versus-PSNR chart and the per-layer bits chart, drawn without any plotting library and
/// encoded as PNG. The same input always gives the same bytes. `SizeQualityLayout` and
/// `BitsLayout` describe where everything goes.
public enum BudgetChart {
    /// One model on the size–quality chart.
    public struct Point: Sendable, Hashable {
        /// The file size in bytes (0 or more).
        public var bytes: Int
        /// The image PSNR against the source in dB; `+infinity` when identical.
        public var psnr: Double
        /// What the point is called on the chart (`q4_K`).
        public var label: String

        public init(bytes: Int, psnr: Double, label: String) {
            self.bytes = bytes
            self.psnr = psnr
            self.label = label
        }
    }

    /// The size-versus-PSNR chart.
    public struct SizeQuality: Sendable {
        public var title: String
        /// Each uniform type: a labelled dot. At least one is required.
        public var uniform: [Point]
        /// The mixes the allocation passed through, drawn as a curve in size order (labels unused).
        public var mixes: [Point]
        /// The file written: a distinct marker and label.
        public var chosen: Point
        /// The chosen file's measured PSNR when known: a second marker joined to `chosen` by a dashed line.
        public var measured: Point?
        /// The target PSNR (`--target-psnr`): a horizontal dashed line.
        public var target: Double?
        /// The size limit in bytes (`--max-size`): a vertical dashed line.
        public var sizeLimit: Int?

        public init(
            title: String, uniform: [Point], mixes: [Point], chosen: Point, measured: Point? = nil, target: Double? = nil,
            sizeLimit: Int? = nil
        ) {
            self.title = title
            self.uniform = uniform
            self.mixes = mixes
            self.chosen = chosen
            self.measured = measured
            self.target = target
            self.sizeLimit = sizeLimit
        }
    }

    /// The per-layer bits chart.
    public struct Bits: Sendable {
        public var title: String
        /// One entry per layer in model order: its name, bits per weight and block type. At least one is required.
        public var layers: [(name: String, bits: Double, type: String)]

        public init(title: String, layers: [(name: String, bits: Double, type: String)]) {
            self.title = title
            self.layers = layers
        }
    }

    /// Why a chart was refused: one line naming the bad value.
    public struct ChartError: Error, CustomStringConvertible, Sendable {
        public var description: String

        /// Keeps the message on one line whatever the labels in it hold.
        init(_ description: String) { self.description = String(description.map { $0.isNewline ? " " : $0 }) }
    }

    /// The accepted image widths and heights in pixels.
    public static let dimensions = 200...8192
    /// The largest |PSNR| in dB accepted (finite values beyond it are refused as nonsense).
    public static let largestPSNR = 1e6
    /// The largest bits per weight accepted.
    public static let largestBits = 1024.0
    /// The most layers a bits chart takes.
    public static let maximumLayers = 10_000_000

    /// Draws the size-versus-PSNR chart as PNG bytes.
    /// - Throws: ``ChartError`` when the size is outside ``dimensions``, `uniform` is empty, a byte
    ///   count or size limit is negative, or a PSNR or the target is NaN, `-infinity` or beyond ``largestPSNR``.
    /// - Complexity: O(width × height + points²).
    public static func render(_ chart: SizeQuality, width: Int = 960, height: Int = 600) throws -> [UInt8] {
        let layout = try SizeQualityLayout(chart, width: width, height: height)
        var canvas = ChartCanvas(width: width, height: height)
        layout.draw(on: &canvas)
        return try encode(canvas, title: chart.title, kind: "size-quality")
    }

    /// Draws the per-layer bits chart as PNG bytes.
    /// - Throws: ``ChartError`` when the size is outside ``dimensions``, `layers` is empty or longer
    ///   than ``maximumLayers``, or a layer's bits are NaN, negative, infinite or beyond ``largestBits``.
    /// - Complexity: O(width × height + layers).
    public static func render(_ chart: Bits, width: Int = 1200, height: Int = 500) throws -> [UInt8] {
        let layout = try BitsLayout(chart, width: width, height: height)
        var canvas = ChartCanvas(width: width, height: height)
        layout.draw(on: &canvas)
        return try encode(canvas, title: chart.title, kind: "bits-per-layer")
    }

    static func checkDimensions(width: Int, height: Int) throws {
        guard dimensions.contains(width), dimensions.contains(height) else {
            throw ChartError("chart size \(width)x\(height) is outside \(dimensions.lowerBound)...\(dimensions.upperBound) pixels per side")
        }
    }

    private static func encode(_ canvas: ChartCanvas, title: String, kind: String) throws -> [UInt8] {
        try PNGImage.encode(
            rgb: canvas.pixels, width: canvas.width, height: canvas.height,
            text: [("Software", "WeightPack"), ("Title", title), ("Comment", "quality-budget report: \(kind)")])
    }

    /// `text` cut to at most `characters` characters, ending in `...` when cut.
    static func truncated(_ text: String, _ characters: Int) -> String {
        guard text.count > characters else { return text }
        guard characters > 3 else { return String(text.prefix(max(0, characters))) }
        return String(text.prefix(characters - 3)) + "..."
    }

    /// The largest title scale (2 or 1) and text that fit in `available` pixels.
    static func fittedTitle(_ title: String, available: Int) -> (text: String, scale: Int) {
        let flat = String(title.map { $0.isNewline ? " " : $0 })
        if BitmapFont.width(of: flat) * 2 <= available { return (flat, 2) }
        let characters = max(1, (available + 1) / BitmapFont.advance)
        return (truncated(flat, characters), 1)
    }
}
