import TensorCore

/// A UNet's hyper-parameters as its tensors show them (the way ComfyUI's model_detection reads
/// them): widths from weight shapes, counts from indices. Head counts are not in the weights.
public struct UNetStructure: Sendable, Hashable {
    public var inChannels: Int
    public var outChannels: Int
    public var blockOutChannels: [Int]
    public var layersPerBlock: Int
    /// Transformer blocks per down level (0: no attention) and in the mid block.
    public var transformerDepth: [Int]
    public var upTransformerDepth: [Int]
    public var midTransformerDepth: Int
    public var contextDim: Int?
    public var linearProjection: Bool?
    public var timeEmbedDim: Int
    /// Input width of the added (SDXL text/time) embedding.
    public var additionEmbed: Int?

    /// Reads the structure from canonical `unet.*` tensors; `nil` without `unet.conv_in.weight`.
    public init?(_ shapes: [String: Shape]) {
        guard let convIn = shapes["unet.conv_in.weight"], convIn.rank == 4 else { return nil }
        inChannels = convIn[1]
        outChannels = shapes["unet.conv_out.weight"].map { $0[0] } ?? 0
        timeEmbedDim = shapes["unet.time_embedding.linear_1.weight"].map { $0[0] } ?? 0
        additionEmbed = shapes["unet.add_embedding.linear_1.weight"].map { $0[1] }
        var levels = 0, layers = 0
        var depth: [Int: Int] = [:], upDepth: [Int: Int] = [:]
        var mid = 0
        var context: Int?, linear: Bool?
        for (name, shape) in shapes {
            let p = name.split(separator: ".")
            guard p.count > 3, p[0] == "unet" else { continue }
            if p[1] == "down_blocks", let b = Int(p[2]) {
                levels = max(levels, b + 1)
                if p[3] == "resnets", b == 0, p.count > 4, let l = Int(p[4]) { layers = max(layers, l + 1) }
                if p[3] == "attentions", p.count > 6, p[5] == "transformer_blocks", let k = Int(p[6]) { depth[b] = max(depth[b] ?? 0, k + 1) }
            }
            if p[1] == "up_blocks", let b = Int(p[2]), p[3] == "attentions", p.count > 6, p[5] == "transformer_blocks", let k = Int(p[6]) {
                upDepth[b] = max(upDepth[b] ?? 0, k + 1)
            }
            if p[1] == "mid_block", p[2] == "attentions", p.count > 5, p[4] == "transformer_blocks", let k = Int(p[5]) { mid = max(mid, k + 1) }
            if context == nil, name.hasSuffix("attn2.to_k.weight"), shape.rank == 2 { context = shape[1] }
            if linear == nil, name.hasSuffix(".proj_in.weight") { linear = shape.rank == 2 }
        }
        blockOutChannels = (0..<levels).map { b in shapes["unet.down_blocks.\(b).resnets.0.conv1.weight"].map { $0[0] } ?? 0 }
        layersPerBlock = layers
        transformerDepth = (0..<levels).map { depth[$0] ?? 0 }
        upTransformerDepth = (0..<levels).map { upDepth[$0] ?? 0 }
        midTransformerDepth = mid
        contextDim = context
        linearProjection = linear
    }

    /// Every tensor diffusers' `UNet2DConditionModel` has for this structure (canonical names).
    public var expectedTensors: [(String, Shape)] {
        var out: [(String, Shape)] = []
        let c0 = blockOutChannels.first ?? 0
        let t = timeEmbedDim
        func add(_ n: String, _ s: [Int]) { out.append(("unet." + n, Shape(s))) }
        func linear(_ n: String, _ o: Int, _ i: Int, bias: Bool = true) { add(n + ".weight", [o, i]); if bias { add(n + ".bias", [o]) } }
        func norm(_ n: String, _ c: Int) { add(n + ".weight", [c]); add(n + ".bias", [c]) }
        func conv(_ n: String, _ o: Int, _ i: Int, _ k: Int) { add(n + ".weight", [o, i, k, k]); add(n + ".bias", [o]) }
        func resnet(_ n: String, _ i: Int, _ o: Int) {
            norm(n + ".norm1", i); conv(n + ".conv1", o, i, 3); linear(n + ".time_emb_proj", o, t)
            norm(n + ".norm2", o); conv(n + ".conv2", o, o, 3)
            if i != o { conv(n + ".conv_shortcut", o, i, 1) }
        }
        func transformer(_ n: String, _ c: Int, _ depth: Int) {
            let ctx = contextDim ?? c
            norm(n + ".norm", c)
            if linearProjection == true {
                linear(n + ".proj_in", c, c); linear(n + ".proj_out", c, c)
            } else {
                conv(n + ".proj_in", c, c, 1); conv(n + ".proj_out", c, c, 1)
            }
            for k in 0..<depth {
                let b = n + ".transformer_blocks.\(k)"
                norm(b + ".norm1", c); norm(b + ".norm2", c); norm(b + ".norm3", c)
                for a in ["attn1", "attn2"] {
                    linear(b + ".\(a).to_q", c, c, bias: false)
                    linear(b + ".\(a).to_k", c, a == "attn1" ? c : ctx, bias: false)
                    linear(b + ".\(a).to_v", c, a == "attn1" ? c : ctx, bias: false)
                    linear(b + ".\(a).to_out.0", c, c)
                }
                linear(b + ".ff.net.0.proj", 8 * c, c); linear(b + ".ff.net.2", c, 4 * c)
            }
        }
        conv("conv_in", c0, inChannels, 3)
        linear("time_embedding.linear_1", t, c0); linear("time_embedding.linear_2", t, t)
        if let a = additionEmbed { linear("add_embedding.linear_1", t, a); linear("add_embedding.linear_2", t, t) }
        let n = blockOutChannels.count
        var previous = c0
        for (b, c) in blockOutChannels.enumerated() {
            for l in 0..<layersPerBlock {
                resnet("down_blocks.\(b).resnets.\(l)", l == 0 ? previous : c, c)
                if transformerDepth[b] > 0 { transformer("down_blocks.\(b).attentions.\(l)", c, transformerDepth[b]) }
            }
            if b < n - 1 { conv("down_blocks.\(b).downsamplers.0.conv", c, c, 3) }
            previous = c
        }
        if let last = blockOutChannels.last {
            resnet("mid_block.resnets.0", last, last)
            if midTransformerDepth > 0 { transformer("mid_block.attentions.0", last, midTransformerDepth) }
            resnet("mid_block.resnets.1", last, last)
        }
        let reversed = Array(blockOutChannels.reversed())
        var previousOut = reversed.first ?? 0
        for b in 0..<n {
            let o = reversed[b]
            let input = reversed[min(b + 1, n - 1)]
            for l in 0...layersPerBlock {
                let skip = l == layersPerBlock ? input : o
                let resnetIn = l == 0 ? previousOut : o
                resnet("up_blocks.\(b).resnets.\(l)", resnetIn + skip, o)
                if upTransformerDepth[b] > 0 { transformer("up_blocks.\(b).attentions.\(l)", o, upTransformerDepth[b]) }
            }
            if b < n - 1 { conv("up_blocks.\(b).upsamplers.0.conv", o, o, 3) }
            previousOut = o
        }
        norm("conv_norm_out", c0)
        conv("conv_out", outChannels, c0, 3)
        return out
    }
}

/// An `AutoencoderKL`'s structure as its tensors show it.
public struct VAEStructure: Sendable, Hashable {
    public var blockOutChannels: [Int]
    public var layersPerBlock: Int
    public var latentChannels: Int
    public var inChannels: Int
    public var outChannels: Int
    public var hasEncoder: Bool
    public var hasDecoder: Bool

    public init?(_ shapes: [String: Shape]) {
        let enc = shapes["vae.encoder.conv_in.weight"], dec = shapes["vae.decoder.conv_out.weight"]
        guard enc != nil || dec != nil else { return nil }
        hasEncoder = enc != nil
        hasDecoder = dec != nil
        inChannels = enc?[1] ?? 3
        outChannels = dec?[0] ?? 3
        latentChannels = shapes["vae.post_quant_conv.weight"]?[0] ?? shapes["vae.decoder.conv_in.weight"]?[1] ?? 4
        var levels = 0, encoderLayers = 0, decoderLayers = 0
        for name in shapes.keys {
            let p = name.split(separator: ".")
            guard p.count > 5, p[0] == "vae", p[2] == "down_blocks" || p[2] == "up_blocks", let b = Int(p[3]) else { continue }
            levels = max(levels, b + 1)
            if p[1] == "encoder", p[4] == "resnets", let l = Int(p[5]) { encoderLayers = max(encoderLayers, l + 1) }
            if p[1] == "decoder", p[4] == "resnets", let l = Int(p[5]) { decoderLayers = max(decoderLayers, l) }
        }
        layersPerBlock = enc != nil ? encoderLayers : decoderLayers
        blockOutChannels = (0..<levels).map { b in
            shapes["vae.encoder.down_blocks.\(b).resnets.0.conv1.weight"]?[0] ?? shapes[
                "vae.decoder.up_blocks.\(levels - 1 - b).resnets.0.conv1.weight"]?[0] ?? 0
        }
    }

    /// Every tensor diffusers' `AutoencoderKL` has for this structure (canonical names).
    public var expectedTensors: [(String, Shape)] {
        var out: [(String, Shape)] = []
        func add(_ n: String, _ s: [Int]) { out.append(("vae." + n, Shape(s))) }
        func norm(_ n: String, _ c: Int) { add(n + ".weight", [c]); add(n + ".bias", [c]) }
        func conv(_ n: String, _ o: Int, _ i: Int, _ k: Int) { add(n + ".weight", [o, i, k, k]); add(n + ".bias", [o]) }
        func resnet(_ n: String, _ i: Int, _ o: Int) {
            norm(n + ".norm1", i); conv(n + ".conv1", o, i, 3); norm(n + ".norm2", o); conv(n + ".conv2", o, o, 3)
            if i != o { conv(n + ".conv_shortcut", o, i, 1) }
        }
        func mid(_ side: String, _ c: Int) {
            resnet(side + ".mid_block.resnets.0", c, c)
            norm(side + ".mid_block.attentions.0.group_norm", c)
            for x in ["to_q", "to_k", "to_v", "to_out.0"] {
                add(side + ".mid_block.attentions.0.\(x).weight", [c, c]); add(side + ".mid_block.attentions.0.\(x).bias", [c])
            }
            resnet(side + ".mid_block.resnets.1", c, c)
        }
        let n = blockOutChannels.count
        guard let c0 = blockOutChannels.first, let last = blockOutChannels.last else { return [] }
        let z = latentChannels
        if hasEncoder {
            conv("encoder.conv_in", c0, inChannels, 3)
            var previous = c0
            for (b, c) in blockOutChannels.enumerated() {
                for l in 0..<layersPerBlock { resnet("encoder.down_blocks.\(b).resnets.\(l)", l == 0 ? previous : c, c) }
                if b < n - 1 { conv("encoder.down_blocks.\(b).downsamplers.0.conv", c, c, 3) }
                previous = c
            }
            mid("encoder", last)
            norm("encoder.conv_norm_out", last)
            conv("encoder.conv_out", 2 * z, last, 3)
            conv("quant_conv", 2 * z, 2 * z, 1)
        }
        if hasDecoder {
            conv("post_quant_conv", z, z, 1)
            conv("decoder.conv_in", last, z, 3)
            mid("decoder", last)
            let reversed = Array(blockOutChannels.reversed())
            var previous = last
            for b in 0..<n {
                let o = reversed[b]
                for l in 0...layersPerBlock { resnet("decoder.up_blocks.\(b).resnets.\(l)", l == 0 ? previous : o, o) }
                if b < n - 1 { conv("decoder.up_blocks.\(b).upsamplers.0.conv", o, o, 3) }
                previous = o
            }
            norm("decoder.conv_norm_out", c0)
            conv("decoder.conv_out", outChannels, c0, 3)
        }
        return out
    }
}

/// A CLIP text tower's structure as its tensors show it.
public struct TextEncoderStructure: Sendable, Hashable {
    public var component: Component
    public var hidden: Int
    public var layers: Int
    public var intermediate: Int
    public var vocab: Int
    public var positions: Int
    public var projection: Int?
    public var hasPositionIDs: Bool

    public init?(_ component: Component, _ shapes: [String: Shape]) {
        let p = component.canonicalPrefix + "text_model."
        guard let token = shapes[p + "embeddings.token_embedding.weight"], token.rank == 2 else { return nil }
        self.component = component
        vocab = token[0]
        hidden = token[1]
        positions = shapes[p + "embeddings.position_embedding.weight"]?[0] ?? 0
        var layers = 0
        for name in shapes.keys where name.hasPrefix(p + "encoder.layers.") {
            if let n = Int(name.dropFirst((p + "encoder.layers.").count).prefix { $0 != "." }) { layers = max(layers, n + 1) }
        }
        self.layers = layers
        intermediate = shapes[p + "encoder.layers.0.mlp.fc1.weight"]?[0] ?? 0
        projection = shapes[component.canonicalPrefix + "text_projection.weight"]?[0]
        hasPositionIDs = shapes[p + "embeddings.position_ids"] != nil
    }

    /// The tensors of this tower (canonical names); `position_ids` is optional and not listed.
    public var expectedTensors: [(String, Shape)] {
        var out: [(String, Shape)] = []
        let p = component.canonicalPrefix + "text_model."
        func add(_ n: String, _ s: [Int]) { out.append((p + n, Shape(s))) }
        add("embeddings.token_embedding.weight", [vocab, hidden])
        add("embeddings.position_embedding.weight", [positions, hidden])
        for n in 0..<layers {
            let l = "encoder.layers.\(n)."
            for x in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                add(l + "self_attn.\(x).weight", [hidden, hidden]); add(l + "self_attn.\(x).bias", [hidden])
            }
            for x in ["layer_norm1", "layer_norm2"] { add(l + x + ".weight", [hidden]); add(l + x + ".bias", [hidden]) }
            add(l + "mlp.fc1.weight", [intermediate, hidden]); add(l + "mlp.fc1.bias", [intermediate])
            add(l + "mlp.fc2.weight", [hidden, intermediate]); add(l + "mlp.fc2.bias", [hidden])
        }
        add("final_layer_norm.weight", [hidden]); add("final_layer_norm.bias", [hidden])
        if let projection { out.append((component.canonicalPrefix + "text_projection.weight", Shape([projection, hidden]))) }
        return out
    }
}
