import StrictJSON

/// The fields of one diffusers/transformers configuration object, read with the checks and
/// error messages the four engine configurations share (``UNetConfiguration``,
/// ``AutoencoderKLConfiguration``, ``CLIPTextConfiguration``, ``SchedulerConfiguration``).
///
/// Absent and `null` fields are alike: the reader's default. A present field of the wrong type
/// is an ``EngineError/Code/invalidConfiguration`` naming it.
struct ConfigurationFields {
    let object: JSONObject
    /// How a field error names the configuration ("UNet configuration", "scheduler").
    let subject: String

    /// The value of `key`, or `nil` when it is absent or `null`.
    func present(_ key: String) -> JSONValue? {
        guard let v = object[key], v != .null else { return nil }
        return v
    }

    private func invalid(_ key: String, _ what: String) -> EngineError {
        EngineError(.invalidConfiguration, "\(subject) field '\(key)' is not \(what)")
    }

    func int(_ key: String) throws(EngineError) -> Int? {
        guard let v = present(key) else { return nil }
        guard let n = v.nonNegativeInt else { throw invalid(key, "a non-negative integer") }
        return n
    }

    func int(_ key: String, _ fallback: Int) throws(EngineError) -> Int { try int(key) ?? fallback }

    /// A finite number, as a double.
    func number(_ key: String) throws(EngineError) -> Double? {
        guard let v = present(key) else { return nil }
        guard let d = v.doubleValue, d.isFinite else { throw invalid(key, "a finite number") }
        return d
    }

    /// A number finite at float precision.
    func float(_ key: String, _ fallback: Float) throws(EngineError) -> Float {
        guard let v = present(key) else { return fallback }
        guard let d = v.doubleValue, Float(d).isFinite else { throw invalid(key, "a finite number") }
        return Float(d)
    }

    func bool(_ key: String) throws(EngineError) -> Bool? {
        guard let v = present(key) else { return nil }
        guard let b = v.boolValue else { throw invalid(key, "a boolean") }
        return b
    }

    func string(_ key: String) throws(EngineError) -> String? {
        guard let v = present(key) else { return nil }
        guard let s = v.stringValue else { throw invalid(key, "a string") }
        return s
    }

    /// Parses a configuration file's text; a syntax error is `malformed <name> configuration`.
    static func parse(_ text: String, name: String) throws(EngineError) -> JSONValue {
        do { return try JSONParser.parse(text) } catch {
            throw EngineError(.invalidConfiguration, "malformed \(name) configuration", underlying: error)
        }
    }

    /// Refuses `value` outside `range` (nothing to check when it is `nil`, a default):
    /// `<name> <field> <value> is outside <range>`.
    static func check<T: Comparable>(_ value: T?, _ range: ClosedRange<T>, _ field: String, in name: String) throws(EngineError) {
        guard let value else { return }
        guard range.contains(value) else {
            throw EngineError(.invalidConfiguration, "\(name) \(field) \(value) is outside \(range.lowerBound)...\(range.upperBound)")
        }
    }
}
