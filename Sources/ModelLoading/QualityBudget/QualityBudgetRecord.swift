import Foundation
import StrictJSON

/// The recipe of a `--dtype auto` file and what its proof measured, as read back: from a
/// `.wpk` header (`quality_budget`, `quality_budget_measured`) or GGUF metadata
/// (`weightpack.quality_budget`, `weightpack.quality_budget.measured`, JSON text).
public struct QualityBudgetRecord: Sendable {
    public var recipe: JSONObject
    public var measured: JSONObject?

    /// `nil` when the file records no budget (or records one that is not a JSON object).
    public init?(header: JSONObject?, metadata: [String: String]) {
        if let recipe = header?["quality_budget"]?.objectValue {
            self.recipe = recipe
            measured = header?["quality_budget_measured"]?.objectValue
            return
        }
        guard let text = metadata[ModelExport.GGUFBudget.recipeKey], let recipe = Self.object(text) else { return nil }
        self.recipe = recipe
        measured = metadata[ModelExport.GGUFBudget.measuredKey].flatMap(Self.object)
    }

    private static func object(_ text: String) -> JSONObject? {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        guard !trimmed.isEmpty else { return nil }
        return (try? JSONParser.parse(trimmed))?.objectValue
    }

    /// The predicted relative output error (dB) of a tensor, by canonical name.
    public func predictedErrorDB(of name: String) -> Double? {
        recipe["tensors"]?.objectValue?[name]?.objectValue?["predicted_error_db"]?.doubleValue
    }

    /// What `inspect` prints: the goal, predicted against measured, the calibration and the proof.
    public var lines: [String] {
        var out: [String] = []
        let goal = recipe["goal"]?.objectValue
        var text: String
        if let t = goal?["target_psnr"]?.doubleValue {
            text = "target image PSNR \(QualityBudget.format(t)) dB"
        } else if let b = goal?["max_size"]?.intValue {
            text = "at most \(b) bytes"
        } else {
            text = "unknown goal"
        }
        text += "; predicted \(Self.dB(recipe["predicted_image_psnr"]))"
        if let m = measured {
            text += ", measured \(Self.dB(m["measured_image_psnr"]))"
            if let compute = m["compute"]?.stringValue, compute != "f32", compute.count <= 8 { text += " in \(compute) compute" }
            text += " (\(m["passed"]?.boolValue == true ? "met" : "not met"))"
        } else {
            text += ", not measured"
        }
        if let attempt = recipe["attempt"]?.intValue { text += "; attempt \(attempt)" }
        out.append(text)
        if let c = recipe["calibration"]?.objectValue {
            let prompts = c["prompts"]?.arrayValue?.count ?? 0
            let seeds = c["seeds"]?.arrayValue?.compactMap(\.intValue).map(String.init).joined(separator: ",") ?? "?"
            out.append(
                "calibrated on \(prompts) prompt\(prompts == 1 ? "" : "s"), seed \(seeds), \(c["steps"]?.intValue ?? 0) steps at \(c["width"]?.intValue ?? 0)x\(c["height"]?.intValue ?? 0)"
            )
        }
        if let v = recipe["verification"]?.objectValue {
            out.append(
                "proved on \"\(v["prompt"]?.stringValue ?? "")\", seed \(v["seed"]?.stringValue ?? "?"), \(v["steps"]?.intValue ?? 0) steps at \(v["width"]?.intValue ?? 0)x\(v["height"]?.intValue ?? 0)"
            )
        }
        if let groups = recipe["gains"]?.arrayValue?.compactMap(\.objectValue) {
            let measured = groups.compactMap { g -> (String, Double)? in
                guard let gain = g["gain_db"]?.doubleValue, gain.isFinite else { return nil }
                return (g["group"]?.stringValue ?? "?", gain)
            }.sorted { $0.1 < $1.1 }
            if let low = measured.first, let high = measured.last {
                out.append(
                    "gains measured for \(measured.count) of \(groups.count) blocks: \(QualityBudget.format(low.1)) dB (\(low.0)) to \(QualityBudget.format(high.1)) dB (\(high.0))"
                )
            }
        }
        if let i = recipe["int8_inputs"]?.objectValue, let scale = i["scale_db"]?.doubleValue, let tensors = i["tensors"]?.intValue {
            out.append(
                "int8 inputs of \(tensors) layers measured at \(QualityBudget.format(scale)) dB over the layer gains (image \(Self.dB(i["image_psnr_f32"])) in float, \(Self.dB(i["image_psnr_int8"])) in int8 compute)"
            )
        }
        if let ladder = recipe["ladder"]?.arrayValue?.compactMap(\.stringValue) {
            out.append("ladder \(ladder.joined(separator: " ")); \(recipe["tool"]?.stringValue ?? "")")
        }
        return out
    }

    private static func dB(_ v: JSONValue?) -> String {
        if let d = v?.doubleValue { return "\(QualityBudget.format(d)) dB" }
        return v?.stringValue.map { "\($0) dB" } ?? "?"
    }
}
