"""Builds the CLIP ViT-L/14 BPE tokenizer files (vocab.json, merges.txt) from the
bpe_simple_vocab_16e6.txt.gz shipped inside the open-clip-torch package (no hub access).

Vocabulary layout (49408 entries):
  0..255       the 256 byte-level unicode symbols (GPT-2 byte<->unicode table order)
  256..511     the same symbols with '</w>' appended
  512..49405   the first 48894 merges, each pair joined
  49406        <|startoftext|>
  49407        <|endoftext|>
"""

import gzip
import json
import os

NUM_MERGES = 49152 - 256 - 2  # 48894
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"


def byte_symbols():
    """The byte -> printable unicode character table used by byte-level BPE: printable
    Latin-1 bytes map to themselves, the other 68 bytes to U+0100 upwards, in byte order.
    Returned as a list ordered the way CLIP's vocabulary lists them."""
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    order = list(keep)
    chars = [chr(b) for b in keep]
    extra = 0
    for b in range(256):
        if b not in keep:
            order.append(b)
            chars.append(chr(256 + extra))
            extra += 1
    return order, chars


def open_clip_bpe_path():
    import open_clip
    path = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    return path


def build_vocab_and_merges(bpe_gz=None):
    bpe_gz = bpe_gz or open_clip_bpe_path()
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    # line 0 is the '#version' header; the next NUM_MERGES lines are the merges used.
    merges = [tuple(line.split()) for line in lines[1:1 + NUM_MERGES]]
    assert len(merges) == NUM_MERGES and all(len(m) == 2 for m in merges)
    _, chars = byte_symbols()
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + [BOS, EOS]
    assert len(tokens) == 49408, len(tokens)
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == 49408, "duplicate tokens in vocabulary"
    return vocab, merges


def write_tokenizer_files(out_dir, vocab, merges):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")


def verify_against_open_clip(vocab):
    """Checks the vocabulary against open_clip's own SimpleTokenizer encoder (which names the
    two special tokens <start_of_text> / <end_of_text>)."""
    from open_clip.tokenizer import SimpleTokenizer
    st = SimpleTokenizer()
    enc = dict(st.encoder)
    enc[BOS] = enc.pop("<start_of_text>")
    enc[EOS] = enc.pop("<end_of_text>")
    if enc != vocab:
        diff = [k for k in set(enc) | set(vocab) if enc.get(k) != vocab.get(k)][:10]
        raise AssertionError(f"vocabulary differs from open_clip's encoder, e.g. {diff}")
    return st


def make_clip_tokenizer(tok_dir, pad_token=EOS):
    """transformers' CLIPTokenizer from vocab.json + merges.txt, as Stable Diffusion uses it."""
    from transformers import CLIPTokenizer
    return CLIPTokenizer(
        vocab=os.path.join(tok_dir, "vocab.json"),
        merges=os.path.join(tok_dir, "merges.txt"),
        bos_token=BOS, eos_token=EOS, unk_token=EOS, pad_token=pad_token,
        model_max_length=77,
    )
