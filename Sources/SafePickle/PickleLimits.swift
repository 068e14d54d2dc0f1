/// Hard bounds on the work and memory a pickle may ask of the machine.
///
/// The defaults are far above what a Stable Diffusion checkpoint needs (SD 1.x full-EMA
/// `data.pkl` runs about 100 000 opcodes) and far below what would exhaust a machine.
public struct PickleLimits: Hashable, Sendable {
    /// Opcodes executed, `STOP` included.
    public var maximumOpcodes: Int
    /// Values on the stack at once (marks excluded).
    public var maximumStackDepth: Int
    /// `MARK`s open at once.
    public var maximumMarkDepth: Int
    /// Distinct memo entries.
    public var maximumMemoEntries: Int
    /// Values created (every string, number, container, symbol) plus container elements.
    public var maximumValues: Int
    /// Nesting depth of containers and symbolic calls, measured as values are built.
    public var maximumNesting: Int
    /// Bytes of one string or bytes literal (always also bounded by the remaining input).
    public var maximumLiteralBytes: Int
    /// Decimal digits of one protocol-0 integer literal, or bytes of one `LONG1`/`LONG4`.
    public var maximumIntegerDigits: Int

    public init(
        maximumOpcodes: Int = 50_000_000,
        maximumStackDepth: Int = 1_000_000,
        maximumMarkDepth: Int = 1_000,
        maximumMemoEntries: Int = 10_000_000,
        maximumValues: Int = 50_000_000,
        maximumNesting: Int = 1_000,
        maximumLiteralBytes: Int = 1 << 30,
        maximumIntegerDigits: Int = 4_096
    ) {
        self.maximumOpcodes = maximumOpcodes
        self.maximumStackDepth = maximumStackDepth
        self.maximumMarkDepth = maximumMarkDepth
        self.maximumMemoEntries = maximumMemoEntries
        self.maximumValues = maximumValues
        self.maximumNesting = maximumNesting
        self.maximumLiteralBytes = maximumLiteralBytes
        self.maximumIntegerDigits = maximumIntegerDigits
    }

    /// The limits used when none are given.
    public static let `default` = PickleLimits()
}
