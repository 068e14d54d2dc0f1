import TensorCore

/// Stable Diffusion's VAE: the encoder that turns an image into a latent distribution and the
/// decoder that turns a latent back into pixels (8x larger on each side).
/// Matches diffusers' AutoencoderKL, https://github.com/huggingface/diffusers/blob/main/src/diffusers/models/autoencoders/autoencoder_kl.py
///
/// Weights use diffusers' names (`decoder.up_blocks.0.resnets.0.conv1.weight`,
/// `decoder.mid_block.attentions.0.to_q.weight`, `post_quant_conv.weight`) under a prefix; the
/// pre-0.14 attention names (`query`, `key`, `value`, `proj_attn`) are accepted too.
/// Images are `[channels, height, width]` (or `[1, channels, height, width]`) in [-1, 1].
/// Not thread-safe: one model serves one thread at a time.
public final class AutoencoderKL {
    public let configuration: AutoencoderKLConfiguration
    public let weights: WeightProvider

    /// Adapters applied at run time to this network's layers (LoRA factors, dense changes);
    /// `nil` runs the weights as stored. Set it before running, checked with
    /// ``RuntimeAdapterTable/validate(shape:)``.
    public var runtimeAdapters: RuntimeAdapterTable?

    /// Records the per-input-channel mean squares of every linear and convolution layer's
    /// inputs while set (calibration, see ``ActivationRecorder``); `nil` records nothing.
    public var activationRecorder: ActivationRecorder?

    /// The mean and log-variance of the encoder's diagonal Gaussian, each `[latentChannels, h, w]`.
    public struct LatentDistribution {
        public let mean: FloatTensor
        /// Clamped to [-30, 20] as diffusers does.
        public let logVariance: FloatTensor
    }

    /// Tiled decoding: the latent is cut into overlapping tiles decoded one at a time and blended
    /// where they overlap, so memory depends on the tile size, not on the image size. The tiles
    /// and the linear blend are diffusers' `enable_tiling()` scheme.
    public struct Tiling: Sendable, Hashable {
        /// Tile edge in image pixels (diffusers: the configuration's `sample_size`).
        public var tileSize: Int
        /// Fraction of a tile shared with its neighbour (diffusers: 0.25).
        public var overlap: Float

        public init(tileSize: Int, overlap: Float = 0.25) {
            self.tileSize = tileSize
            self.overlap = overlap
        }
    }

    /// Creates the VAE over `store`.
    ///
    /// - Parameter prefix: prepended to diffusers' names (empty for a diffusers `vae/` file).
    /// - Throws: ``EngineError`` for an invalid configuration or when `decoder.conv_in` is
    ///   missing or has another shape (other weights are checked as they are used).
    public init(store: any TensorStore, configuration: AutoencoderKLConfiguration, prefix: String = "") throws(EngineError) {
        try configuration.validate()
        self.configuration = configuration
        weights = WeightProvider(store: store, prefix: prefix)
        let shape = try weights.shape("decoder.conv_in.weight")
        let expected = [configuration.blockOutChannels.last!, configuration.latentChannels, 3, 3]
        guard shape == expected else {
            throw EngineError(
                .shapeMismatch, "weight has shape \(Shape(shape)), the configuration expects \(Shape(expected))",
                tensorName: prefix + "decoder.conv_in.weight")
        }
    }

    /// The default tiling for this model (tiles of `sampleSize` pixels, a quarter overlap).
    public var defaultTiling: Tiling { Tiling(tileSize: configuration.sampleSize) }

    // MARK: Public entry points

    /// diffusers' `vae.decode(latents).sample`: no scaling is applied (divide by
    /// ``AutoencoderKLConfiguration/scalingFactor`` first, or use ``decodeImage(latents:tiling:)``).
    ///
    /// - Parameters:
    ///   - latents: `[latentChannels, h, w]` or `[1, latentChannels, h, w]`.
    ///   - tiling: decode in tiles when the latent is larger than one tile.
    /// - Returns: `[outChannels, 8h, 8w]` (with a leading 1 when the input had one), about [-1, 1].
    /// - Complexity: O(h · w · channels² · layers); memory O(h · w · channels) untiled,
    ///   O(tile² · channels) tiled.
    public func decode(_ latents: FloatTensor, tiling: Tiling? = nil) throws(EngineError) -> FloatTensor {
        let (batched, c, h, w) = try Self.imageShape(latents, channels: configuration.latentChannels, what: "latents")
        let result = try run {
            let tile = tiling.map { max(1, $0.tileSize / configuration.downsamplingFactor) }
            if let tiling, let tile, h > tile || w > tile {
                return try decodeTiled(latents, channels: c, height: h, width: w, tiling: tiling)
            }
            let ws = Workspace(weights: weights, adapters: runtimeAdapters, recorder: activationRecorder)
            let z = ws.pool.take([c, h, w])
            z.base.update(from: latents.base, count: z.count)
            return try decodeUntiled(z, ws).copy()
        }
        if batched { result.reshape([1] + result.shape) }
        return result
    }

    /// diffusers' `vae.encode(image).latent_dist` (mean and clamped log-variance, unscaled).
    ///
    /// - Parameter image: `[inChannels, H, W]` or `[1, inChannels, H, W]`, in [-1, 1].
    public func encode(_ image: FloatTensor) throws(EngineError) -> LatentDistribution {
        let (batched, c, h, w) = try Self.imageShape(image, channels: configuration.inChannels, what: "image")
        let (mean, logVariance) = try run {
            let ws = Workspace(weights: weights, adapters: runtimeAdapters, recorder: activationRecorder)
            let x = ws.pool.take([c, h, w])
            x.base.update(from: image.base, count: x.count)
            var y = try encoder(x, ws)
            if configuration.useQuantConv {
                let q = try ws.conv2d(y, "quant_conv", padding: .init(0))
                ws.pool.recycle(y)
                y = q
            }
            let latent = configuration.latentChannels, plane = y.shape[1] * y.shape[2]
            let mean = FloatTensor(shape: [latent, y.shape[1], y.shape[2]])
            let logVariance = FloatTensor(shape: [latent, y.shape[1], y.shape[2]])
            mean.base.update(from: y.base, count: latent * plane)
            for i in 0..<(latent * plane) { logVariance.base[i] = min(max(y.base[latent * plane + i], -30), 20) }
            return (mean, logVariance)
        }
        if batched {
            mean.reshape([1] + mean.shape)
            logVariance.reshape([1] + logVariance.shape)
        }
        return LatentDistribution(mean: mean, logVariance: logVariance)
    }

    /// The picture a pipeline shows: `latents / scalingFactor + shiftFactor` decoded, then mapped
    /// from [-1, 1] to [0, 1] and clamped, as `[H, W, channels]` (diffusers' `output_type="np"`).
    public func decodeImage(latents: FloatTensor, tiling: Tiling? = nil) throws(EngineError) -> FloatTensor {
        let scaled = latents.copy()
        let inverse = 1 / configuration.scalingFactor, shift = configuration.shiftFactor
        for i in 0..<scaled.count { scaled.base[i] = scaled.base[i] * inverse + shift }
        let decoded = try decode(scaled, tiling: tiling)
        let c = decoded.shape[decoded.shape.count - 3], h = decoded.shape[decoded.shape.count - 2], w = decoded.shape[decoded.shape.count - 1]
        let image = FloatTensor(shape: [h, w, c])
        Kernels.transpose(decoded.base, rows: c, columns: h * w, into: image.base)
        for i in 0..<image.count { image.base[i] = min(max(image.base[i] / 2 + 0.5, 0), 1) }
        return image
    }

    // MARK: Networks

    private func decodeUntiled(_ z: FloatTensor, _ ws: Workspace) throws -> FloatTensor {
        var x = z
        if configuration.usePostQuantConv {
            let y = try ws.conv2d(x, "post_quant_conv", padding: .init(0))
            ws.pool.recycle(x)
            x = y
        }
        return try decoder(x, ws)
    }

    private func encoder(_ input: FloatTensor, _ ws: Workspace) throws -> FloatTensor {
        let c = configuration
        var x = try ws.conv2d(input, "encoder.conv_in", padding: .init(1))
        ws.pool.recycle(input)
        for (i, _) in c.blockOutChannels.enumerated() {
            for j in 0..<c.layersPerBlock {
                x = try resnet(x, "encoder.down_blocks.\(i).resnets.\(j)", ws)
            }
            if i < c.blockOutChannels.count - 1 {
                // diffusers pads right and bottom by one, then convolves with stride 2.
                let y = try ws.conv2d(
                    x, "encoder.down_blocks.\(i).downsamplers.0.conv", stride: 2,
                    padding: .init(top: 0, left: 0, bottom: 1, right: 1))
                ws.pool.recycle(x)
                x = y
            }
        }
        x = try midBlock(x, "encoder.mid_block", ws)
        let n = try ws.groupNorm(x, "encoder.conv_norm_out", groups: c.normGroups, epsilon: c.normEpsilon, silu: true)
        ws.pool.recycle(x)
        let y = try ws.conv2d(n, "encoder.conv_out", padding: .init(1))
        ws.pool.recycle(n)
        return y
    }

    private func decoder(_ input: FloatTensor, _ ws: Workspace) throws -> FloatTensor {
        let c = configuration
        var x = try ws.conv2d(input, "decoder.conv_in", padding: .init(1))
        ws.pool.recycle(input)
        x = try midBlock(x, "decoder.mid_block", ws)
        for i in 0..<c.blockOutChannels.count {
            for j in 0...c.layersPerBlock {
                x = try resnet(x, "decoder.up_blocks.\(i).resnets.\(j)", ws)
            }
            if i < c.blockOutChannels.count - 1 {
                let (ch, h, w) = (x.shape[0], x.shape[1], x.shape[2])
                let up = ws.pool.take([ch, 2 * h, 2 * w])
                Kernels.upsampleNearest2x(x.base, channels: ch, height: h, width: w, into: up.base)
                ws.pool.recycle(x)
                x = try ws.conv2d(up, "decoder.up_blocks.\(i).upsamplers.0.conv", padding: .init(1))
                ws.pool.recycle(up)
            }
        }
        let n = try ws.groupNorm(x, "decoder.conv_norm_out", groups: c.normGroups, epsilon: c.normEpsilon, silu: true)
        ws.pool.recycle(x)
        let y = try ws.conv2d(n, "decoder.conv_out", padding: .init(1))
        ws.pool.recycle(n)
        return y
    }

    /// diffusers' `UNetMidBlock2D` without time embedding: resnet, attention, resnet.
    private func midBlock(_ input: FloatTensor, _ name: String, _ ws: Workspace) throws -> FloatTensor {
        var x = try resnet(input, name + ".resnets.0", ws)
        if configuration.midBlockAttention { x = try attention(x, name + ".attentions.0", ws) }
        return try resnet(x, name + ".resnets.1", ws)
    }

    /// diffusers' `ResnetBlock2D` without time embedding; consumes `x`.
    private func resnet(_ x: FloatTensor, _ name: String, _ ws: Workspace) throws -> FloatTensor {
        let c = configuration
        let n1 = try ws.groupNorm(x, name + ".norm1", groups: c.normGroups, epsilon: c.normEpsilon, silu: true)
        let h1 = try ws.conv2d(n1, name + ".conv1", padding: .init(1))
        ws.pool.recycle(n1)
        return try ws.residualTail(input: x, hidden: h1, name, groups: c.normGroups, epsilon: c.normEpsilon)
    }

    /// diffusers' single-head spatial self-attention with a residual; consumes `x`.
    private func attention(_ x: FloatTensor, _ name: String, _ ws: Workspace) throws -> FloatTensor {
        let (ch, h, w) = (x.shape[0], x.shape[1], x.shape[2])
        let names =
            weights.contains(name + ".to_q.weight")
            ? (q: "to_q", k: "to_k", v: "to_v", out: "to_out.0")
            : (q: "query", k: "key", v: "value", out: "proj_attn")
        let n = try ws.groupNorm(x, name + ".group_norm", groups: configuration.normGroups, epsilon: configuration.normEpsilon)
        let tokens = ws.pool.take([h * w, ch])
        Kernels.transpose(n.base, rows: ch, columns: h * w, into: tokens.base)
        ws.pool.recycle(n)
        let q = try ws.linear(tokens, name + "." + names.q)
        let k = try ws.linear(tokens, name + "." + names.k)
        let v = try ws.linear(tokens, name + "." + names.v)
        ws.pool.recycle(tokens)
        let a = ws.attention(q: q, k: k, v: v, heads: 1, causal: false)
        ws.pool.recycle(q); ws.pool.recycle(k); ws.pool.recycle(v)
        let o = try ws.linear(a, name + "." + names.out)
        ws.pool.recycle(a)
        let back = ws.pool.take([ch, h, w])
        Kernels.transpose(o.base, rows: h * w, columns: ch, into: back.base)
        ws.pool.recycle(o)
        Kernels.add(back.base, into: x.base, count: x.count)
        ws.pool.recycle(back)
        return x
    }

    // MARK: Tiling

    /// diffusers' `tiled_decode`: tiles of `t` latent pixels every `t (1 - overlap)`, each
    /// blended linearly over `tileSize * overlap` pixels with the (already blended) tile above and
    /// to the left, then cropped to `tileSize - blend` pixels. Only one row of decoded tiles is
    /// kept.
    private func decodeTiled(_ latents: FloatTensor, channels c: Int, height h: Int, width w: Int, tiling: Tiling) throws -> FloatTensor {
        let factor = configuration.downsamplingFactor
        let tileLatent = max(1, tiling.tileSize / factor)
        let tileSample = tiling.tileSize
        let stride = max(1, Int(Float(tileLatent) * (1 - tiling.overlap)))
        let blend = Int(Float(tileSample) * tiling.overlap)
        let limit = tileSample - blend
        let outChannels = configuration.outChannels
        let rowStarts = Array(Swift.stride(from: 0, to: h, by: stride))
        let columnStarts = Array(Swift.stride(from: 0, to: w, by: stride))
        // The output size: every tile contributes at most `limit` pixels.
        let heights = rowStarts.map { min(limit, min(tileLatent, h - $0) * factor) }
        let widths = columnStarts.map { min(limit, min(tileLatent, w - $0) * factor) }
        let outH = heights.reduce(0, +), outW = widths.reduce(0, +)
        let output = FloatTensor(shape: [outChannels, outH, outW])
        let ws = Workspace(weights: weights, adapters: runtimeAdapters, recorder: activationRecorder)
        var above: [FloatTensor] = []
        var y0 = 0
        for (ri, i) in rowStarts.enumerated() {
            var row: [FloatTensor] = []
            var x0 = 0
            for (ci, j) in columnStarts.enumerated() {
                let th = min(tileLatent, h - i), tw = min(tileLatent, w - j)
                let z = ws.pool.take([c, th, tw])
                for ch in 0..<c {
                    for y in 0..<th {
                        (z.base + (ch * th + y) * tw).update(from: latents.base + (ch * h + i + y) * w + j, count: tw)
                    }
                }
                let decoded = try decodeUntiled(z, ws)
                let tile = decoded.copy()
                ws.pool.recycle(decoded)
                if ri > 0 { Self.blendVertical(above[ci], into: tile, extent: blend) }
                if ci > 0 { Self.blendHorizontal(row[ci - 1], into: tile, extent: blend) }
                let (sh, sw) = (tile.shape[1], tile.shape[2])
                for ch in 0..<outChannels {
                    for y in 0..<heights[ri] {
                        (output.base + (ch * outH + y0 + y) * outW + x0).update(from: tile.base + (ch * sh + y) * sw, count: widths[ci])
                    }
                }
                row.append(tile)
                x0 += widths[ci]
            }
            above = row
            y0 += heights[ri]
        }
        return output
    }

    /// diffusers' `blend_v`: over `e = min(a.height, b.height, extent)` rows,
    /// `b[:, y, :] = a[:, -e + y, :] * (1 - y / e) + b[:, y, :] * (y / e)`.
    private static func blendVertical(_ a: FloatTensor, into b: FloatTensor, extent: Int) {
        let (c, ah, aw) = (a.shape[0], a.shape[1], a.shape[2])
        let (bh, bw) = (b.shape[1], b.shape[2])
        let e = min(ah, bh, extent)
        for ch in 0..<c {
            for y in 0..<e {
                let t = Float(y) / Float(e)
                let ar = a.base + (ch * ah + ah - e + y) * aw, br = b.base + (ch * bh + y) * bw
                for x in 0..<min(aw, bw) { br[x] = ar[x] * (1 - t) + br[x] * t }
            }
        }
    }

    /// diffusers' `blend_h`: over `e = min(a.width, b.width, extent)` columns,
    /// `b[:, :, x] = a[:, :, -e + x] * (1 - x / e) + b[:, :, x] * (x / e)`.
    private static func blendHorizontal(_ a: FloatTensor, into b: FloatTensor, extent: Int) {
        let (c, ah, aw) = (a.shape[0], a.shape[1], a.shape[2])
        let (bh, bw) = (b.shape[1], b.shape[2])
        let e = min(aw, bw, extent)
        for ch in 0..<c {
            for y in 0..<min(ah, bh) {
                let ar = a.base + (ch * ah + y) * aw, br = b.base + (ch * bh + y) * bw
                for x in 0..<e {
                    let t = Float(x) / Float(e)
                    br[x] = ar[aw - e + x] * (1 - t) + br[x] * t
                }
            }
        }
    }

    // MARK: Helpers

    private static func imageShape(_ t: FloatTensor, channels: Int, what: String) throws(EngineError) -> (Bool, Int, Int, Int) {
        let s = t.shape
        if s.count == 3, s[0] == channels, s[1] > 0, s[2] > 0 { return (false, s[0], s[1], s[2]) }
        if s.count == 4, s[0] == 1, s[1] == channels, s[2] > 0, s[3] > 0 { return (true, s[1], s[2], s[3]) }
        throw EngineError(.invalidInput, "\(what) have shape \(s), expected [\(channels), h, w] or [1, \(channels), h, w]")
    }

    private func run<R>(_ body: () throws -> R) throws(EngineError) -> R {
        do { return try body() } catch let error as EngineError { throw error } catch {
            throw EngineError(.invalidInput, "VAE failed", underlying: error)
        }
    }
}
