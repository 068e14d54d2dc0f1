// UNet and VAE tables match diffusers' LDM conversion (scripts/convert_diffusers_to_original_stable_diffusion.py):
// https://github.com/huggingface/diffusers/blob/main/scripts/convert_diffusers_to_original_stable_diffusion.py

/// Name rewriting inside one component, between the LDM naming and diffusers' (canonical)
/// naming. Each function maps one name without its component prefix and returns `nil` for a
/// name that has no counterpart.
enum ComponentNames {
    private static let resnetLDMToDiffusers: [(String, String)] = [
        ("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("emb_layers.1.", "time_emb_proj."),
        ("out_layers.0.", "norm2."), ("out_layers.3.", "conv2."), ("skip_connection.", "conv_shortcut."),
    ]

    private static func rename(_ rest: String, _ table: [(String, String)], reverse: Bool = false) -> String? {
        for (a, b) in table {
            let (from, to) = reverse ? (b, a) : (a, b)
            if rest.hasPrefix(from) { return to + rest.dropFirst(from.count) }
        }
        return nil
    }

    private static func split(_ name: String) -> [Substring] { name.split(separator: ".", omittingEmptySubsequences: false) }

    // MARK: UNet

    private static let unetSimple: [(String, String)] = [
        ("time_embed.0.", "time_embedding.linear_1."), ("time_embed.2.", "time_embedding.linear_2."),
        ("label_emb.0.0.", "add_embedding.linear_1."), ("label_emb.0.2.", "add_embedding.linear_2."),
        ("input_blocks.0.0.", "conv_in."), ("out.0.", "conv_norm_out."), ("out.2.", "conv_out."),
    ]

    /// LDM UNet name → diffusers name. `layersPerBlock` is the number of resnets per down level.
    static func unetToDiffusers(_ name: String, layersPerBlock L: Int) -> String? {
        if let simple = rename(name, unetSimple) { return simple }
        let p = split(name)
        if p.count >= 3, p[0] == "middle_block", let i = Int(p[1]) {
            let rest = p[2...].joined(separator: ".")
            if i == 1 { return "mid_block.attentions.0." + rest }
            if i == 0 || i == 2 { return rename(rest, resnetLDMToDiffusers).map { "mid_block.resnets.\(i / 2)." + $0 } }
            return nil
        }
        guard p.count >= 4, let i = Int(p[1]), let slot = Int(p[2]) else { return nil }
        let rest = p[3...].joined(separator: ".")
        switch p[0] {
        case "input_blocks":
            guard i >= 1 else { return nil }
            let level = (i - 1) / (L + 1), l = (i - 1) % (L + 1)
            if l == L {
                guard slot == 0, rest.hasPrefix("op.") else { return nil }
                return "down_blocks.\(level).downsamplers.0.conv." + rest.dropFirst(3)
            }
            if slot == 0 { return rename(rest, resnetLDMToDiffusers).map { "down_blocks.\(level).resnets.\(l)." + $0 } }
            if slot == 1 { return "down_blocks.\(level).attentions.\(l)." + rest }
            return nil
        case "output_blocks":
            let level = i / (L + 1), l = i % (L + 1)
            if slot == 0 { return rename(rest, resnetLDMToDiffusers).map { "up_blocks.\(level).resnets.\(l)." + $0 } }
            if rest.hasPrefix("conv."), slot == 1 || slot == 2 { return "up_blocks.\(level).upsamplers.0." + rest }
            if slot == 1 { return "up_blocks.\(level).attentions.\(l)." + rest }
            return nil
        default:
            return nil
        }
    }

    /// diffusers UNet name → LDM name. `upWithAttention` holds the up levels that have attentions
    /// (their upsampler sits in slot 2, otherwise slot 1).
    static func unetToLDM(_ name: String, layersPerBlock L: Int, upWithAttention: Set<Int>) -> String? {
        if let simple = rename(name, unetSimple, reverse: true) { return simple }
        let p = split(name)
        guard p.count >= 4 else { return nil }
        switch p[0] {
        case "down_blocks":
            guard let b = Int(p[1]), let l = Int(p[3]) else { return nil }
            let rest = p[4...].joined(separator: ".")
            switch p[2] {
            case "resnets": return rename(rest, resnetLDMToDiffusers, reverse: true).map { "input_blocks.\((L + 1) * b + l + 1).0." + $0 }
            case "attentions": return "input_blocks.\((L + 1) * b + l + 1).1." + rest
            case "downsamplers":
                guard l == 0, rest.hasPrefix("conv.") else { return nil }
                return "input_blocks.\((L + 1) * (b + 1)).0.op." + rest.dropFirst(5)
            default: return nil
            }
        case "mid_block":
            guard let l = Int(p[2]) else { return nil }
            let rest = p[3...].joined(separator: ".")
            if p[1] == "resnets" { return rename(rest, resnetLDMToDiffusers, reverse: true).map { "middle_block.\(2 * l)." + $0 } }
            if p[1] == "attentions", l == 0 { return "middle_block.1." + rest }
            return nil
        case "up_blocks":
            guard let b = Int(p[1]), let l = Int(p[3]) else { return nil }
            let rest = p[4...].joined(separator: ".")
            switch p[2] {
            case "resnets": return rename(rest, resnetLDMToDiffusers, reverse: true).map { "output_blocks.\((L + 1) * b + l).0." + $0 }
            case "attentions": return "output_blocks.\((L + 1) * b + l).1." + rest
            case "upsamplers":
                guard l == 0 else { return nil }
                return "output_blocks.\((L + 1) * b + L).\(upWithAttention.contains(b) ? 2 : 1)." + rest
            default: return nil
            }
        default:
            return nil
        }
    }

    // MARK: VAE

    private static let vaeAttention: [(String, String)] = [
        ("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0."),
    ]
    /// diffusers < 0.14 names of the VAE attention, read as aliases.
    private static let vaeAttentionLegacy: [(String, String)] = [
        ("query.", "to_q."), ("key.", "to_k."), ("value.", "to_v."), ("proj_attn.", "to_out.0."),
    ]

    /// LDM VAE name → (diffusers name, whether the tensor is a 1×1 conv that diffusers stores as linear).
    static func vaeToDiffusers(_ name: String, levels N: Int) -> (String, Bool)? {
        if name.hasPrefix("quant_conv.") || name.hasPrefix("post_quant_conv.") { return (name, false) }
        let p = split(name)
        guard p.count >= 3, p[0] == "encoder" || p[0] == "decoder" else { return nil }
        let side = String(p[0])
        let q = Array(p[1...])
        let shortcut: [(String, String)] = [("nin_shortcut.", "conv_shortcut.")]
        func resnet(_ rest: String) -> String { rename(rest, shortcut) ?? rest }
        switch q[0] {
        case "conv_in", "conv_out": return (name, false)
        case "norm_out": return ("\(side).conv_norm_out." + q[1...].joined(separator: "."), false)
        case "mid":
            guard q.count >= 3 else { return nil }
            let rest = q[2...].joined(separator: ".")
            if q[1] == "block_1" || q[1] == "block_2" { return ("\(side).mid_block.resnets.\(q[1] == "block_1" ? 0 : 1)." + resnet(rest), false) }
            if q[1] == "attn_1", let renamed = rename(rest, vaeAttention) {
                return ("\(side).mid_block.attentions.0." + renamed, renamed.hasSuffix(".weight") && !renamed.hasPrefix("group_norm."))
            }
            return nil
        case "down", "up":
            guard q.count >= 4, let k = Int(q[1]) else { return nil }
            let level = side == "encoder" ? k : N - 1 - k
            let blocks = side == "encoder" ? "down_blocks" : "up_blocks"
            if q[2] == "block", let j = Int(q[3]), q.count >= 5 {
                return ("\(side).\(blocks).\(level).resnets.\(j)." + resnet(q[4...].joined(separator: ".")), false)
            }
            if q[2] == "downsample" || q[2] == "upsample" {
                return ("\(side).\(blocks).\(level).\(side == "encoder" ? "downsamplers" : "upsamplers").0." + q[3...].joined(separator: "."), false)
            }
            return nil
        default:
            return nil
        }
    }

    /// diffusers VAE name → (LDM name, whether the linear tensor becomes a 1×1 conv).
    static func vaeToLDM(_ name: String, levels N: Int) -> (String, Bool)? {
        if name.hasPrefix("quant_conv.") || name.hasPrefix("post_quant_conv.") { return (name, false) }
        let p = split(name)
        guard p.count >= 3, p[0] == "encoder" || p[0] == "decoder" else { return nil }
        let side = String(p[0])
        let q = Array(p[1...])
        let shortcut: [(String, String)] = [("nin_shortcut.", "conv_shortcut.")]
        func resnet(_ rest: String) -> String { rename(rest, shortcut, reverse: true) ?? rest }
        switch q[0] {
        case "conv_in", "conv_out": return (name, false)
        case "conv_norm_out": return ("\(side).norm_out." + q[1...].joined(separator: "."), false)
        case "mid_block":
            guard q.count >= 4 else { return nil }
            let rest = q[3...].joined(separator: ".")
            if q[1] == "resnets", let l = Int(q[2]), l < 2 { return ("\(side).mid.block_\(l + 1)." + resnet(rest), false) }
            if q[1] == "attentions", q[2] == "0", let renamed = rename(rest, vaeAttention, reverse: true) {
                return ("\(side).mid.attn_1." + renamed, renamed.hasSuffix(".weight") && !renamed.hasPrefix("norm."))
            }
            return nil
        case "down_blocks", "up_blocks":
            guard q.count >= 4, let b = Int(q[1]) else { return nil }
            let level = side == "encoder" ? b : N - 1 - b
            let ldm = side == "encoder" ? "down" : "up"
            if q[2] == "resnets", let j = Int(q[3]), q.count >= 5 {
                return ("\(side).\(ldm).\(level).block.\(j)." + resnet(q[4...].joined(separator: ".")), false)
            }
            if (q[2] == "downsamplers" || q[2] == "upsamplers"), q[3] == "0" {
                return ("\(side).\(ldm).\(level).\(side == "encoder" ? "downsample" : "upsample")." + q[4...].joined(separator: "."), false)
            }
            return nil
        default:
            return nil
        }
    }

    /// Renames diffusers < 0.14 VAE attention names to the current ones.
    static func vaeModernized(_ name: String) -> String {
        let marker = "mid_block.attentions.0."
        guard let r = name.range(of: marker) else { return name }
        let rest = String(name[r.upperBound...])
        guard let renamed = rename(rest, vaeAttentionLegacy) else { return name }
        return String(name[..<r.upperBound]) + renamed
    }

    // MARK: OpenCLIP (text tower) — matches diffusers' convert_open_clip_checkpoint:
    // https://github.com/huggingface/diffusers/blob/main/src/diffusers/loaders/single_file_utils.py

    private static let openCLIPLayer: [(String, String)] = [
        ("ln_1.", "layer_norm1."), ("ln_2.", "layer_norm2."), ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2."),
        ("attn.out_proj.", "self_attn.out_proj."),
    ]

    /// The tower's names outside the residual blocks, one pair each, read in both directions.
    private static let openCLIPTop: [(openCLIP: String, canonical: String)] = [
        ("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
        ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
        ("ln_final.weight", "text_model.final_layer_norm.weight"),
        ("ln_final.bias", "text_model.final_layer_norm.bias"),
    ]

    enum OpenCLIPName: Equatable {
        /// A one-to-one rename.
        case plain(String)
        /// `attn.in_proj_weight`/`_bias` of layer `layer`: split into q, k, v.
        case inProjection(layer: Int, kind: String)
        /// `text_projection` [D, P]: transposed to `text_projection.weight` [P, D].
        case projection
    }

    /// OpenCLIP name → canonical (transformers-4) name inside the component.
    static func openCLIPToCanonical(_ name: String) -> OpenCLIPName? {
        if name == "text_projection" { return .projection }
        if let canonical = openCLIPTop.first(where: { $0.openCLIP == name })?.canonical { return .plain(canonical) }
        let p = split(name)
        guard p.count >= 4, p[0] == "transformer", p[1] == "resblocks", let n = Int(p[2]) else { return nil }
        let rest = p[3...].joined(separator: ".")
        if rest == "attn.in_proj_weight" { return .inProjection(layer: n, kind: "weight") }
        if rest == "attn.in_proj_bias" { return .inProjection(layer: n, kind: "bias") }
        return rename(rest, openCLIPLayer).map { .plain("text_model.encoder.layers.\(n)." + $0) }
    }

    /// Canonical text encoder name → OpenCLIP name; q/k/v map to their fused tensor.
    static func canonicalToOpenCLIP(_ name: String) -> OpenCLIPName? {
        if name == "text_projection.weight" { return .projection }
        if let openCLIP = openCLIPTop.first(where: { $0.canonical == name })?.openCLIP { return .plain(openCLIP) }
        let p = split(name)
        guard p.count >= 6, p[0] == "text_model", p[1] == "encoder", p[2] == "layers", let n = Int(p[3]) else { return nil }
        let rest = p[4...].joined(separator: ".")
        for (qkv, kind) in [("q", "weight"), ("k", "weight"), ("v", "weight"), ("q", "bias"), ("k", "bias"), ("v", "bias")]
        where rest == "self_attn.\(qkv)_proj.\(kind)" {
            return .inProjection(layer: n, kind: kind)
        }
        return rename(rest, openCLIPLayer, reverse: true).map { .plain("transformer.resblocks.\(n)." + $0) }
    }
}
