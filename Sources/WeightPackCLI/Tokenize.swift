import ArgumentParser
import DiffusionEngine
import ModelLoading
import StrictJSON
import TensorCore

struct Tokenize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Turn a prompt into the 77 CLIP token ids Stable Diffusion feeds its text encoder.",
        discussion: """
            The ids equal those of transformers' CLIPTokenizer as diffusers uses it: start token, \
            the prompt's BPE tokens (truncated), end token, then padding to 77. Without \
            --tokenizer the CLIP vocabulary bundled with WeightPack is used (it is the vocabulary \
            of every SD 1.x and 2.x model). Exit codes: 0 done, 64 usage error, 65 malformed \
            tokenizer files, 66 missing tokenizer folder or files.
            """)

    @Argument(help: "The prompt.")
    var prompt: String

    @Option(help: "A tokenizer folder (vocab.json + merges.txt, or tokenizer.json), e.g. a diffusers model's tokenizer/.")
    var tokenizer: String?

    @Option(
        help:
            "Padding: 'end' pads with the end token (SD 1.x), 'zero' with id 0 (the '!' token, as SD 2.x does). Default: the folder's configuration, else end."
    )
    var padding: Padding?

    @Flag(help: "Print a JSON array of integers.")
    var json = false

    @Flag(help: "Also print each token's text.")
    var tokens = false

    enum Padding: String, ExpressibleByArgument, CaseIterable {
        case end, zero
    }

    func run() throws {
        try runReporting {
            let model = try CLIPTokenizer.open(folder: tokenizer)
            let ids = model.encode(prompt, padTokenID: padding == .zero ? 0 : nil)
            if json {
                print(JSONValue.array(ids.map { JSONValue($0) }).serialized())
            } else if tokens {
                for (id, text) in zip(ids, model.tokens(ids)) { print("\(id)\t\(PrintableText.escaped(text))") }
            } else {
                print(ids.map(String.init).joined(separator: " "))
            }
        }
    }
}
