#!/usr/bin/env python3
"""Writes the seed corpora fuzz/corpus/<target>/ from the fixture models
($RESID_MODELS, default ../shared/models) and small hand-made cases.

The seeds are kept small (no model weights): GGUF files are rebuilt with
the fixtures' metadata and tiny tensors, safetensors with the fixtures'
headers and tiny data, llama2.c checkpoints with tiny dimensions, and
tokenizer.json files cut down to a few hundred pieces. Re-run it to
regenerate; the output is deterministic.

    python3 fuzz/make_corpus.py [OUT_DIR]
"""
import json, os, struct, sys

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.environ.get("RESID_MODELS") or os.path.join(HERE, "..", "..", "shared", "models")
OUT = sys.argv[1] if len(sys.argv) > 1 and __name__ == "__main__" else os.path.join(HERE, "corpus")


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def model(rel):
    with open(os.path.join(MODELS, rel), "rb") as f:
        return f.read()

# --------------------------------------------------------------------- GGUF
T_U8, T_I8, T_U16, T_I16, T_U32, T_I32, T_F32, T_BOOL, T_STR, T_ARR, T_U64, T_I64, T_F64 = range(13)
SCALAR = {T_U8: "<B", T_I8: "<b", T_U16: "<H", T_I16: "<h", T_U32: "<I", T_I32: "<i",
          T_F32: "<f", T_BOOL: "<B", T_U64: "<Q", T_I64: "<q", T_F64: "<d"}


def g_str(s):
    if isinstance(s, str):
        s = s.encode()
    return struct.pack("<Q", len(s)) + s


def g_val(t, v):
    if t == T_STR:
        return g_str(v)
    if t == T_ARR:
        et, items = v
        return struct.pack("<IQ", et, len(items)) + b"".join(g_val(et, x) for x in items)
    return struct.pack(SCALAR[t], v)


def read_gguf(data):
    """Returns (version, [(key, type, value)], [(name, dims, ggml_type, offset)], data_offset)."""
    pos = 4
    ver, nt, nkv = struct.unpack_from("<IQQ", data, pos)
    pos += 20

    def rstr():
        nonlocal pos
        (n,) = struct.unpack_from("<Q", data, pos)
        s = data[pos + 8:pos + 8 + n]
        pos += 8 + n
        return s

    def rval(t):
        nonlocal pos
        if t == T_STR:
            return rstr()
        if t == T_ARR:
            et, n = struct.unpack_from("<IQ", data, pos)
            pos += 12
            return (et, [rval(et) for _ in range(n)])
        fmt = SCALAR[t]
        (v,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return v

    kvs = []
    for _ in range(nkv):
        k = rstr()
        (t,) = struct.unpack_from("<I", data, pos)
        pos += 4
        kvs.append((k, t, rval(t)))
    tis = []
    for _ in range(nt):
        name = rstr()
        (nd,) = struct.unpack_from("<I", data, pos)
        dims = struct.unpack_from("<%dQ" % nd, data, pos + 4)
        pos += 4 + 8 * nd
        gt, off = struct.unpack_from("<IQ", data, pos)
        pos += 12
        tis.append((name, list(dims), gt, off))
    return ver, kvs, tis, pos


# ggml type: (block elems, block bytes)
GGML = {0: (1, 4), 1: (1, 2), 2: (32, 18), 8: (32, 34), 12: (256, 144), 14: (256, 210), 30: (1, 2)}


def write_gguf(kvs, tensors, version=3, align=32, fill=0x3C):
    """tensors: [(name, dims, ggml_type)]; data filled with a pattern."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    for k, t, v in kvs:
        out += g_str(k) + struct.pack("<I", t) + g_val(t, v)
    off = 0
    blobs = []
    for name, dims, gt in tensors:
        be, bb = GGML[gt]
        n = 1
        for d in dims:
            n *= d
        nb = n // be * bb
        out += g_str(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", gt, off)
        blob = bytes((fill + i * 7) & 0x3F for i in range(nb))  # small f16/f32 patterns
        blobs.append(blob + b"\0" * ((-nb) % align))
        off += nb + (-nb) % align
    out += b"\0" * ((-len(out)) % align)
    return out + b"".join(blobs)


def gguf_seeds():
    # metadata of the real fixtures, with tiny tensors of the same names
    for rel, tag in [("derived/stories260K.gguf", "stories260K"),
                     ("quant/tiny-llama-256.q4_k_m.gguf", "tiny-llama-q4k")]:
        data = model(rel)
        ver, kvs, tis, end = read_gguf(data)
        put("gguf", tag + "-header-truncated.gguf", data[:end + 64])
        # shrink the vocab arrays to 64 entries, tensors to tiny shapes
        small = []
        for k, t, v in kvs:
            if t == T_ARR and len(v[1]) > 64:
                v = (v[0], v[1][:64])
            small.append((k, t, v))
        put("gguf", tag + "-meta-only.gguf", write_gguf(small, [], ver))
    # a complete tiny llama model: every role, F32 / F16 / Q8_0 mix
    D, F, V, L = 32, 32, 16, 1
    toks = [b"<unk>", b"<s>", b"</s>"] + [b"<0x%02X>" % i for i in range(10)] + [b"\xe2\x96\x81a", b"a", b"b"]
    kv = [(b"general.architecture", T_STR, b"llama"), (b"general.name", T_STR, b"fuzz"),
          (b"llama.block_count", T_U32, L), (b"llama.embedding_length", T_U32, D),
          (b"llama.feed_forward_length", T_U32, F), (b"llama.attention.head_count", T_U32, 2),
          (b"llama.attention.head_count_kv", T_U32, 1), (b"llama.context_length", T_U32, 8),
          (b"llama.attention.layer_norm_rms_epsilon", T_F32, 1e-5),
          (b"llama.rope.freq_base", T_F32, 10000.0),
          (b"tokenizer.ggml.model", T_STR, b"llama"),
          (b"tokenizer.ggml.tokens", T_ARR, (T_STR, toks)),
          (b"tokenizer.ggml.scores", T_ARR, (T_F32, [float(-i) for i in range(V)])),
          (b"tokenizer.ggml.token_type", T_ARR, (T_I32, [2, 3, 3] + [6] * 10 + [1, 1, 1])),
          (b"tokenizer.ggml.bos_token_id", T_U32, 1), (b"tokenizer.ggml.eos_token_id", T_U32, 2),
          (b"tokenizer.ggml.add_bos_token", T_BOOL, 1)]
    kvd = D // 2
    ts = [(b"token_embd.weight", [D, V], 0), (b"output_norm.weight", [D], 0),
          (b"output.weight", [D, V], 8), (b"blk.0.attn_norm.weight", [D], 0),
          (b"blk.0.attn_q.weight", [D, D], 1), (b"blk.0.attn_k.weight", [D, kvd], 8),
          (b"blk.0.attn_v.weight", [D, kvd], 30), (b"blk.0.attn_output.weight", [D, D], 2),
          (b"blk.0.ffn_norm.weight", [D], 0), (b"blk.0.ffn_gate.weight", [D, F], 8),
          (b"blk.0.ffn_up.weight", [D, F], 1), (b"blk.0.ffn_down.weight", [F, D], 0)]
    put("gguf", "tiny-llama-model.gguf", write_gguf(kv, ts))
    # tiny gpt2 model with a byte-level tokenizer (the 256 byte pieces + merges)
    b2u = gpt2_bytes_to_unicode()
    pieces = [b2u[b].encode() for b in range(256)] + ["Ġt".encode(), "he".encode(), "Ġthe".encode()]
    Vg = len(pieces)
    Dg, Fg = 32, 64
    kv2 = [(b"general.architecture", T_STR, b"gpt2"), (b"gpt2.block_count", T_U32, 1),
           (b"gpt2.embedding_length", T_U32, Dg), (b"gpt2.feed_forward_length", T_U32, Fg),
           (b"gpt2.attention.head_count", T_U32, 2), (b"gpt2.context_length", T_U32, 4),
           (b"gpt2.attention.layer_norm_epsilon", T_F32, 1e-5),
           (b"tokenizer.ggml.model", T_STR, b"gpt2"), (b"tokenizer.ggml.pre", T_STR, b"gpt-2"),
           (b"tokenizer.ggml.tokens", T_ARR, (T_STR, pieces)),
           (b"tokenizer.ggml.merges", T_ARR, (T_STR, ["Ġ t".encode(), "h e".encode(), "Ġt he".encode()])),
           (b"tokenizer.ggml.bos_token_id", T_U32, 0), (b"tokenizer.ggml.eos_token_id", T_U32, 0),
           (b"general.alignment", T_U32, 64)]
    ts2 = [(b"token_embd.weight", [Dg, Vg], 1), (b"position_embd.weight", [Dg, 4], 0),
           (b"output_norm.weight", [Dg], 0), (b"output_norm.bias", [Dg], 0),
           (b"blk.0.attn_norm.weight", [Dg], 0), (b"blk.0.attn_norm.bias", [Dg], 0),
           (b"blk.0.attn_qkv.weight", [Dg, 3 * Dg], 0), (b"blk.0.attn_qkv.bias", [3 * Dg], 0),
           (b"blk.0.attn_output.weight", [Dg, Dg], 0), (b"blk.0.attn_output.bias", [Dg], 0),
           (b"blk.0.ffn_norm.weight", [Dg], 0), (b"blk.0.ffn_norm.bias", [Dg], 0),
           (b"blk.0.ffn_up.weight", [Dg, Fg], 0), (b"blk.0.ffn_up.bias", [Fg], 0),
           (b"blk.0.ffn_down.weight", [Fg, Dg], 0), (b"blk.0.ffn_down.bias", [Dg], 0)]
    put("gguf", "tiny-gpt2-model.gguf", write_gguf(kv2, ts2, align=64))
    # every value type, arrays of each, nested array, every tensor dtype
    allkv = [(b"t.u8", T_U8, 200), (b"t.i8", T_I8, -5), (b"t.u16", T_U16, 60000),
             (b"t.i16", T_I16, -3), (b"t.u32", T_U32, 7), (b"t.i32", T_I32, -7),
             (b"t.f32", T_F32, 0.5), (b"t.bool", T_BOOL, 1), (b"t.str", T_STR, b"x"),
             (b"t.u64", T_U64, 1 << 40), (b"t.i64", T_I64, -(1 << 40)), (b"t.f64", T_F64, 0.25),
             (b"t.arr.str", T_ARR, (T_STR, [b"a", b"", b"\xff\xfe"])),
             (b"t.arr.u64", T_ARR, (T_U64, [1, 2 ** 63])), (b"t.arr.f64", T_ARR, (T_F64, [1.5])),
             (b"t.arr.bool", T_ARR, (T_BOOL, [0, 1])),
             (b"t.arr.arr", T_ARR, (T_ARR, [(T_I16, [1, -1]), (T_STR, [b"q"])]))]
    allts = [(b"f32", [4, 2], 0), (b"f16", [4], 1), (b"bf16", [2, 2, 1, 1], 30),
             (b"q4_0", [32], 2), (b"q8_0", [32, 2], 8), (b"q4_k", [256], 12), (b"q6_k", [256], 14)]
    put("gguf", "all-types-v3.gguf", write_gguf(allkv, allts))
    put("gguf", "all-types-v2.gguf", write_gguf(allkv[:5], allts[:2], version=2))
    put("gguf", "empty-v3.gguf", write_gguf([], []))
    # a vocab-only SPM tokenizer: the first 300 pieces of the llama vocab
    ver, kvs, tis, end = read_gguf(model("llama.cpp-vocab/ggml-vocab-llama-spm.gguf"))
    cut = [(k, t, (v[0], v[1][:300]) if t == T_ARR else v) for k, t, v in kvs]
    put("gguf", "vocab-llama-spm-300.gguf", write_gguf(cut, []))
    ver, kvs, tis, end = read_gguf(model("llama.cpp-vocab/ggml-vocab-gpt-2.gguf"))
    cut = [(k, t, (v[0], v[1][:400]) if t == T_ARR else v) for k, t, v in kvs]
    put("gguf", "vocab-gpt2-400.gguf", write_gguf(cut, []))


def gpt2_bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}

# -------------------------------------------------------------- safetensors
ST_SIZE = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "U8": 1, "BOOL": 1}


def write_st(entries, meta=None, pad_to=8):
    """entries: [(name, dtype, shape)]; data is a byte pattern."""
    hdr = {}
    off = 0
    # widest dtypes first, so every tensor's data stays aligned
    for name, dt, shape in sorted(entries, key=lambda e: -ST_SIZE[e[1]]):
        n = 1
        for d in shape:
            n *= d
        nb = n * ST_SIZE[dt]
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + nb]}
        off += nb
    if meta is not None:
        hdr["__metadata__"] = meta
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * ((-len(h)) % pad_to)
    return struct.pack("<Q", len(h)) + h + bytes((i * 13) & 0x3F for i in range(off))


def st_seeds():
    for rel, tag in [("tiny-random-llama-2/model.safetensors", "tiny-random-llama-2"),
                     ("tiny-gpt2/model.safetensors", "tiny-gpt2")]:
        data = model(rel)
        (n,) = struct.unpack_from("<Q", data, 0)
        hdr = json.loads(data[8:8 + n])
        put("safetensors", tag + "-header-only.safetensors", data[:8 + n])
        # the same names and dtypes, every dimension cut to 2
        ents = []
        for name, e in hdr.items():
            if name == "__metadata__":
                continue
            ents.append((name, e["dtype"], [min(d, 2) for d in e["shape"]]))
        put("safetensors", tag + "-tiny.safetensors", write_st(ents, hdr.get("__metadata__")))
    put("safetensors", "dtypes.safetensors",
        write_st([("a", "F32", [2, 3]), ("b", "F16", [4]), ("c", "BF16", [1, 1, 2]),
                  ("d", "I64", [2]), ("e", "BOOL", [3]), ("s", "F32", []), ("z", "F16", [0, 4])],
                 {"format": "pt"}))
    put("safetensors", "empty.safetensors", struct.pack("<Q", 2) + b"{}")

# ---------------------------------------------------------------- llama2.c


def l2c(dim, hidden, layers, heads, kv, vocab, seq, shared=True, version=0):
    head = dim // heads
    kvd = dim * kv // heads
    sizes = [vocab * dim] + [layers * dim, layers * dim * dim, layers * kvd * dim, layers * kvd * dim,
                             layers * dim * dim, layers * dim, layers * hidden * dim,
                             layers * dim * hidden, layers * hidden * dim, dim]
    if version == 0:
        sizes += [seq * head // 2, seq * head // 2]
    if not shared:
        sizes.append(vocab * dim)
    n = sum(sizes)
    w = b"".join(struct.pack("<f", ((i % 17) - 8) / 64.0) for i in range(n))
    if version == 0:
        return struct.pack("<7i", dim, hidden, layers, heads, kv, vocab if shared else -vocab, seq) + w
    hdr = struct.pack("<Ii7iB", 0x616B3432, 1, dim, hidden, layers, heads, kv, vocab, seq, 1 if shared else 0)
    return hdr + b"\0" * (256 - len(hdr)) + w


def l2c_seeds():
    put("llama2c", "v0-shared.bin", l2c(8, 16, 1, 2, 2, 8, 4))
    put("llama2c", "v0-unshared-gqa.bin", l2c(8, 12, 2, 4, 2, 6, 3, shared=False))
    put("llama2c", "v1-shared.bin", l2c(8, 16, 1, 2, 1, 8, 4, version=1))
    put("llama2c", "v1-unshared.bin", l2c(4, 8, 1, 2, 2, 5, 2, shared=False, version=1))
    put("llama2c", "stories260K-header.bin", model("tinyllamas/stories260K.bin")[:64])

# ------------------------------------------------------------ config.json


def config_seeds():
    for rel in ["tiny-random-llama-2/config.json", "tiny-gpt2/config.json"]:
        put("hf_config", rel.split("/")[0] + ".json", model(rel))
    c = json.loads(model("tiny-random-llama-2/config.json"))
    c2 = dict(c, num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=2)
    put("hf_config", "llama-gqa-tied.json", json.dumps(c2))
    put("hf_config", "llama-minimal.json", json.dumps({k: c[k] for k in (
        "model_type", "num_hidden_layers", "hidden_size", "intermediate_size",
        "num_attention_heads", "vocab_size")}))
    put("hf_config", "deep.json", "[" * 70 + "]" * 70)

# ---------------------------------------------------------- tokenizer files


def tok_seeds():
    put("tokenizer_file", "tok512.bin", model("tinyllamas/tok512.bin"))
    j = json.loads(model("tiny-gpt2/tokenizer.json"))
    vocab = {k: v for k, v in j["model"]["vocab"].items() if v < 400}
    j["model"]["vocab"] = vocab
    merges = j["model"]["merges"]
    keep = []
    for m in merges:
        a, b = m.split(" ") if isinstance(m, str) else m
        if a in vocab and b in vocab and a + b in vocab:
            keep.append(m)
    j["model"]["merges"] = keep[:100]
    j["added_tokens"] = [dict(j["added_tokens"][0], id=400)]
    put("tokenizer_file", "gpt2-bytelevel-400.json", json.dumps(j, ensure_ascii=False))
    # SentencePiece-style BPE with byte fallback (Llama 2 tokenizer.json layout)
    pieces = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % i for i in range(256)] + ["▁", "a", "b", "▁a", "ab", "▁ab"]
    sp = {"version": "1.0", "added_tokens": [
        {"id": 0, "content": "<unk>", "special": True}, {"id": 1, "content": "<s>", "special": True},
        {"id": 2, "content": "</s>", "special": True}],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": None,
        "decoder": {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": {"type": "BPE", "unk_token": "<unk>", "byte_fallback": True, "fuse_unk": True,
                  "vocab": {p: i for i, p in enumerate(pieces)},
                  "merges": ["▁ a", "a b", "▁ ab"]}}
    put("tokenizer_file", "spm-bytefallback.json", json.dumps(sp, ensure_ascii=False))
    sp2 = dict(sp, pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "(?i:'s|'t)|\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+|\\s+"},
         "behavior": "Isolated"}, {"type": "ByteLevel", "add_prefix_space": False}]})
    sp2["model"] = dict(sp["model"], byte_fallback=False, merges=[["a", "b"]])
    put("tokenizer_file", "split-regex.json", json.dumps(sp2, ensure_ascii=False))

# ----------------------------------------------------------------- texts


def text_seeds():
    for rel, tag in [("llama.cpp-vocab/ggml-vocab-gpt-2.gguf.inp", "gpt2"),
                     ("llama.cpp-vocab/ggml-vocab-llama-spm.gguf.inp", "spm")]:
        txt = model(rel)
        parts = [p for p in txt.split(b"\n__ggml_vocab_test__\n") if p.strip()]
        for i, p in enumerate(parts[:24]):
            for sel in (0, 1, 3, 5):
                put("tokenize", "%s-%02d-%d.txt" % (tag, i, sel), bytes([sel]) + p)
    put("tokenize", "invalid-utf8.txt", b"\x00abc\xff\xc3")
    put("tokenize", "special.txt", b"\x05<s> hi </s><|endoftext|>")


if __name__ == "__main__":
    gguf_seeds()
    st_seeds()
    l2c_seeds()
    config_seeds()
    tok_seeds()
    text_seeds()
