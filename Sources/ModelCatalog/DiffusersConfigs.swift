import StrictJSON

/// The JSON configuration files of a diffusers folder for a detected model, for exports from
/// layouts that carry none (an LDM file). What the weights do not hold (attention head counts,
/// the scheduler, sample sizes) comes from the family's published configuration, and where the
/// widths are not the published ones, from the rules in `Docs/model-knowledge.md`.
public enum DiffusersConfigs {
    /// Relative path → JSON document, for the components `detection` found.
    public static func files(for detection: Detection, predictionType: Detection.PredictionType?) -> [(String, JSONValue)] {
        let family = detection.family
        var out: [(String, JSONValue)] = []
        var index = JSONObject()
        index["_class_name"] = .string(family?.pipeline ?? "StableDiffusionPipeline")
        if let u = detection.unet {
            index["unet"] = ["diffusers", "UNet2DConditionModel"]
            out.append(("unet/config.json", unetConfig(u, family: family, pooledWidth: detection.pooledProjectionWidth)))
        }
        if let v = detection.vae {
            index["vae"] = ["diffusers", "AutoencoderKL"]
            out.append(("vae/config.json", vaeConfig(v, family: family)))
        }
        for t in detection.textEncoders {
            let slot = family?.textEncoder(t.component)
            let cls = slot?.diffusersClass ?? (t.projection != nil ? "CLIPTextModelWithProjection" : "CLIPTextModel")
            index[t.component.rawValue] = ["transformers", .string(cls)]
            let tokenizer = t.component == .textEncoder ? "tokenizer" : "tokenizer_2"
            index[tokenizer] = [nil, nil]
            var layers = t.layers
            if slot?.diffusersDropsLastLayer == true, t.projection != nil { layers -= 1 }
            out.append(("\(t.component.rawValue)/config.json", textConfig(t, slot: slot, className: cls, layers: layers)))
        }
        if let family, detection.unet != nil {
            var scheduler = family.scheduler
            scheduler["prediction_type"] = .string((predictionType ?? .epsilon).rawValue)
            let cls = scheduler["_class_name"]?.stringValue ?? "PNDMScheduler"
            index["scheduler"] = ["diffusers", .string(cls)]
            out.append(("scheduler/scheduler_config.json", .object(scheduler)))
        }
        if let family, detection.unet != nil || family.forceZerosForEmptyPrompt {
            for (key, value) in family.pipelineOptions { index[key] = value }
        }
        out.insert(("model_index.json", .object(index)), at: 0)
        return out
    }

    /// Heads for a width: the family's fixed count, or width / head_dim, or 1 when neither divides.
    static func heads(_ width: Int, family: ArchitectureCatalog.Family?) -> Int {
        if let h = family?.unet.heads, width % h == 0 { return h }
        let dim = family?.unet.headDim ?? 64
        return width % dim == 0 ? max(1, width / dim) : 1
    }

    /// The UNet's configuration. `pooledWidth` is the pooled projection width of the text encoder
    /// that feeds SDXL's added embedding, when the weights hold it.
    static func unetConfig(_ u: UNetStructure, family: ArchitectureCatalog.Family?, pooledWidth: Int? = nil) -> JSONValue {
        var o = JSONObject()
        o["_class_name"] = "UNet2DConditionModel"
        o["sample_size"] = JSONValue(family?.variant(inChannels: u.inChannels)?.sampleSize ?? 64)
        o["in_channels"] = JSONValue(u.inChannels)
        o["out_channels"] = JSONValue(u.outChannels)
        o["block_out_channels"] = .array(u.blockOutChannels.map { JSONValue($0) })
        o["layers_per_block"] = JSONValue(u.layersPerBlock)
        o["down_block_types"] = .array(u.transformerDepth.map { .string($0 > 0 ? "CrossAttnDownBlock2D" : "DownBlock2D") })
        o["up_block_types"] = .array(u.upTransformerDepth.map { .string($0 > 0 ? "CrossAttnUpBlock2D" : "UpBlock2D") })
        o["mid_block_type"] = u.midTransformerDepth > 0 ? "UNetMidBlock2DCrossAttn" : nil
        o["cross_attention_dim"] = JSONValue(u.contextDim ?? u.blockOutChannels.last ?? 0)
        o["use_linear_projection"] = .bool(u.linearProjection ?? false)
        o["attention_head_dim"] = .array(u.blockOutChannels.map { JSONValue(heads($0, family: family)) })
        let down = u.transformerDepth.map { max($0, 1) }
        o["transformer_layers_per_block"] = .array(down.map { JSONValue($0) })
        let up = u.upTransformerDepth.map { max($0, 1) }
        if up != Array(down.reversed()) { o["reverse_transformer_layers_per_block"] = .array(up.map { JSONValue($0) }) }
        if let a = u.additionEmbed {
            o["addition_embed_type"] = "text_time"
            o["projection_class_embeddings_input_dim"] = JSONValue(a)
            o["addition_time_embed_dim"] = JSONValue(
                additionTimeEmbedDim(inputWidth: a, pooledWidth: pooledWidth, timeIDs: family?.addedTimeIDs ?? 6))
        }
        return .object(o)
    }

    /// SDXL's `addition_time_embed_dim`: the weights determine it when the pooled width is known
    /// (`add_embedding.linear_1` takes the pooled projection and `timeIDs` embeddings of this
    /// width); otherwise the published 256 when it fits, else an even share.
    static func additionTimeEmbedDim(inputWidth a: Int, pooledWidth: Int?, timeIDs: Int) -> Int {
        if let p = pooledWidth, a > p, (a - p) % timeIDs == 0 { return (a - p) / timeIDs }
        let rest = a - timeIDs * 256
        return rest > 0 && rest % 64 == 0 ? 256 : max(1, a / (timeIDs + 1))
    }

    static func vaeConfig(_ v: VAEStructure, family: ArchitectureCatalog.Family?) -> JSONValue {
        var o = JSONObject()
        o["_class_name"] = "AutoencoderKL"
        o["in_channels"] = JSONValue(v.inChannels)
        o["out_channels"] = JSONValue(v.outChannels)
        o["down_block_types"] = .array(v.blockOutChannels.map { _ in "DownEncoderBlock2D" })
        o["up_block_types"] = .array(v.blockOutChannels.map { _ in "UpDecoderBlock2D" })
        o["block_out_channels"] = .array(v.blockOutChannels.map { JSONValue($0) })
        o["layers_per_block"] = JSONValue(v.layersPerBlock)
        o["latent_channels"] = JSONValue(v.latentChannels)
        o["norm_num_groups"] = 32
        o["sample_size"] = JSONValue(family?.vaeSampleSize ?? 512)
        o["scaling_factor"] = JSONValue(family?.vaeScalingFactor ?? 0.18215)
        return .object(o)
    }

    static func textConfig(_ t: TextEncoderStructure, slot: ArchitectureCatalog.TextEncoderSlot?, className: String, layers: Int) -> JSONValue {
        var o = JSONObject()
        o["architectures"] = [.string(className)]
        o["model_type"] = "clip_text_model"
        o["hidden_size"] = JSONValue(t.hidden)
        o["intermediate_size"] = JSONValue(t.intermediate)
        o["num_hidden_layers"] = JSONValue(layers)
        let reference = slot?.model
        let heads =
            reference.map { $0.hidden == t.hidden ? $0.heads : (t.hidden % 64 == 0 ? t.hidden / 64 : 1) } ?? (t.hidden % 64 == 0 ? t.hidden / 64 : 1)
        o["num_attention_heads"] = JSONValue(heads)
        o["max_position_embeddings"] = JSONValue(t.positions)
        o["vocab_size"] = JSONValue(t.vocab)
        o["hidden_act"] = .string(reference?.activation ?? "quick_gelu")
        o["projection_dim"] = JSONValue(t.projection ?? reference?.projection ?? t.hidden)
        o["layer_norm_eps"] = 1e-05
        // CLIP's special tokens are the last two of its 49408; a smaller vocabulary ends with them too.
        o["bos_token_id"] = JSONValue(t.vocab - 2)
        o["eos_token_id"] = JSONValue(t.vocab - 1)
        o["pad_token_id"] = 1
        o["torch_dtype"] = "float32"
        return .object(o)
    }
}
