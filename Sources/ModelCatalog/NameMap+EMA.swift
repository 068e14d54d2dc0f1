import TensorCore

/// EMA copies under their flattened names, and checkpoints that kept only them.
///
/// CompVis' `LitEma` stores the EMA copy of `model.diffusion_model.input_blocks.0.0.weight` as
/// `model_ema.diffusion_modelinput_blocks00weight`: the dots are dropped. Some shared "EMA-only"
/// checkpoints kept those copies and dropped `model.diffusion_model.*`. The dotted names come
/// back by reading the flat name as a sequence of the LDM UNet's name segments.
extension NameMap {
    /// The prefix of an EMA copy of a UNet weight (`model_ema.` + `diffusion_model`).
    static let emaUNetPrefix = "model_ema.diffusion_model"

    /// The name segments of CompVis' `openaimodel.UNetModel` (`input_blocks`, `in_layers`,
    /// `transformer_blocks`, `attn1`, `to_q`, …), longest first so `out_layers` wins over `out`
    /// and `norm1` over `norm`. Numbers are read separately.
    private static let unetSegments: [String] = [
        "input_blocks", "middle_block", "output_blocks", "time_embed", "label_emb",
        "in_layers", "emb_layers", "out_layers", "skip_connection",
        "norm", "proj_in", "proj_out", "transformer_blocks",
        "attn1", "attn2", "to_q", "to_k", "to_v", "to_out", "ff", "net", "proj", "norm1", "norm2", "norm3",
        "op", "conv", "out", "weight", "bias",
    ].sorted { $0.count > $1.count }

    /// The LDM name whose EMA copy is `flat`: the inverse of ``emaName(of:)`` for UNet weights
    /// (`model_ema.diffusion_modelinput_blocks00weight` → `model.diffusion_model.input_blocks.0.0.weight`).
    ///
    /// A run of digits is one index, except after `input_blocks`/`output_blocks`, where its last
    /// digit is the layer inside the block (a block holds at most three: resnet, attention,
    /// up/downsampler), and after `label_emb`, where each digit is an index (`label_emb.0.0`).
    ///
    /// - Returns: `nil` when `flat` is not an EMA UNet weight made of known segments.
    /// - Complexity: O(n · s) for a name of n characters and s segments.
    public static func unflattenedEMAName(_ flat: String) -> String? {
        guard flat.hasPrefix(emaUNetPrefix) else { return nil }
        let rest = Array(flat.utf8.dropFirst(emaUNetPrefix.utf8.count))
        var parts: [String] = []
        var i = 0
        while i < rest.count {
            if rest[i] >= UInt8(ascii: "0"), rest[i] <= UInt8(ascii: "9") {
                var j = i
                while j < rest.count, rest[j] >= UInt8(ascii: "0"), rest[j] <= UInt8(ascii: "9") { j += 1 }
                let digits = String(decoding: rest[i..<j], as: UTF8.self)
                switch parts.last {
                case "input_blocks", "output_blocks":
                    guard digits.count >= 2 else { return nil }
                    parts.append(String(digits.dropLast()))
                    parts.append(String(digits.last!))
                case "label_emb":
                    parts += digits.map { String($0) }
                case nil:
                    return nil
                default:
                    parts.append(digits)
                }
                i = j
                continue
            }
            guard
                let segment = unetSegments.first(where: { s in
                    s.utf8.count <= rest.count - i && rest[i..<(i + s.utf8.count)].elementsEqual(s.utf8)
                })
            else { return nil }
            parts.append(segment)
            i += segment.utf8.count
        }
        guard let last = parts.last, last == "weight" || last == "bias", parts.count >= 2 else { return nil }
        let name = "model.diffusion_model." + parts.joined(separator: ".")
        return emaName(of: name) == flat ? name : nil
    }

    /// The EMA copies of an "EMA-only" checkpoint, flat source name → LDM UNet name: `nil`
    /// unless the names hold no `model.diffusion_model.*` weight and at least one
    /// `model_ema.diffusion_model*` copy that reads back as a UNet name.
    public static func emaOnlyUNet(_ names: [String]) -> [String: String]? {
        var map: [String: String] = [:]
        for name in names {
            if name.hasPrefix("model.diffusion_model.") { return nil }
            if let dotted = unflattenedEMAName(name) { map[name] = dotted }
        }
        return map.isEmpty ? nil : map
    }
}
