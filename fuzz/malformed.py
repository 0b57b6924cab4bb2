#!/usr/bin/env python3
"""Builds one input per malformed-input class, runs `resid info` (or
`resid tokenize --tokenizer`) on it, and prints the markdown table of
docs/malformed-inputs.md with the exact message each gets.

    python3 fuzz/malformed.py BUILD_DIR/resid > table.md
"""
import json, os, struct, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_corpus as mc  # noqa: E402

RESID = sys.argv[1]
TMP = tempfile.mkdtemp(prefix="resid-malformed-")
rows = []


def run(args):
    p = subprocess.run([RESID] + args, capture_output=True, text=True,
                       errors="replace", env=dict(os.environ, OMP_NUM_THREADS="1"))
    msg = p.stderr.strip().splitlines()
    msg = msg[-1] if msg else "(no message)"
    return p.returncode, msg.replace(TMP + "/", "").replace("|", "\\|")


def case(fmt, what, name, data, tok=False):
    path = os.path.join(TMP, name)
    if isinstance(data, str):
        data = data.encode()
    if isinstance(data, dict):  # a folder: {file: bytes}
        os.makedirs(path, exist_ok=True)
        for f, b in data.items():
            with open(os.path.join(path, f), "wb") as fh:
                fh.write(b.encode() if isinstance(b, str) else b)
    else:
        with open(path, "wb") as fh:
            fh.write(data)
    if tok:
        rc, msg = run(["tokenize", "--tokenizer", path, "--ids", "0"] if False else
                      ["tokenize", os.path.join(mc.MODELS, "tinyllamas/stories260K.bin"),
                       "--tokenizer", path, "-p", "hi"])
    else:
        rc, msg = run(["info", path])
    rows.append((fmt, what, rc, "accepted" if rc == 0 else msg))


u32 = lambda v: struct.pack("<I", v)
u64 = lambda v: struct.pack("<Q", v)

# ------------------------------------------------------------------ GGUF
good_kv = [(b"general.architecture", mc.T_STR, b"llama")]
tiny = open(os.path.join(mc.HERE, "corpus/gguf/tiny-llama-model.gguf"), "rb").read()
ver, kvs, tis, end = mc.read_gguf(tiny)
case("GGUF", "empty file", "empty.gguf", b"")
case("GGUF", "bad magic (detected as llama2.c)", "magic.gguf", b"GGUX" + tiny[4:])
case("GGUF", "version 1", "v1.gguf", b"GGUF" + u32(1) + tiny[8:])
case("GGUF", "big-endian version field", "be.gguf", b"GGUF" + struct.pack(">I", 3) + tiny[8:])
case("GGUF", "unknown version 4", "v4.gguf", b"GGUF" + u32(4) + tiny[8:])
for cut, where in [(6, "inside the version"), (16, "inside the header counts"),
                   (24, "after the header"), (40, "inside the first key"),
                   (end - 100, "inside the tensor infos"), (end, "at the end of the tensor infos"),
                   (len(tiny) - 1, "one byte short of the last tensor's data")]:
    case("GGUF", "truncated %s (%d bytes)" % (where, cut), "trunc%d.gguf" % cut, tiny[:cut])
case("GGUF", "n_kv lying (2^40)", "nkv.gguf", tiny[:16] + u64(1 << 40) + tiny[24:])
case("GGUF", "n_tensors lying (2^40)", "nt.gguf", tiny[:8] + u64(1 << 40) + tiny[16:])
body = lambda kv, n_t=0: b"GGUF" + u32(3) + u64(n_t) + u64(len(kv)) + b"".join(
    mc.g_str(k) + u32(t) + v for k, t, v in kv)
case("GGUF", "string length lying (2^63)", "strlen.gguf",
     body([(b"a", mc.T_STR, u64(1 << 63) + b"x")]))
case("GGUF", "key length lying", "keylen.gguf",
     b"GGUF" + u32(3) + u64(0) + u64(1) + u64(1 << 40) + b"abcdefgh" * 2)
case("GGUF", "array count lying (2^62 uint32)", "arrn.gguf",
     body([(b"a", mc.T_ARR, u32(mc.T_U32) + u64(1 << 62) + b"\0" * 16)]))
case("GGUF", "string array count lying", "arrs.gguf",
     body([(b"a", mc.T_ARR, u32(mc.T_STR) + u64(1 << 40) + b"\0" * 16)]))
case("GGUF", "unknown value type 13", "vtype.gguf", body([(b"a", 13, b"\0" * 16)]))
nest = u32(mc.T_ARR) + u64(1)
case("GGUF", "arrays nested 6 deep", "nest.gguf",
     body([(b"a", mc.T_ARR, nest * 5 + u32(mc.T_U8) + u64(1) + b"\0" * 8)]))
case("GGUF", "duplicate key", "dupkey.gguf",
     body([(b"a", mc.T_U8, b"\1"), (b"a", mc.T_U8, b"\2")]))
case("GGUF", "key with a NUL byte", "nulkey.gguf", body([(b"a\0b", mc.T_U8, b"\1")]))
case("GGUF", "general.alignment 48 (not a power of two)", "align.gguf",
     body([(b"general.alignment", mc.T_U32, u32(48))]))
case("GGUF", "general.alignment a string", "aligns.gguf",
     body([(b"general.alignment", mc.T_STR, mc.g_str("32"))]))


def ti(name, dims, gt, off):
    return mc.g_str(name) + u32(len(dims)) + b"".join(u64(d) for d in dims) + u32(gt) + u64(off)


def tfile(tinfos, data=b"\0" * 64):
    out = b"GGUF" + u32(3) + u64(len(tinfos)) + u64(0) + b"".join(tinfos)
    return out + b"\0" * ((-len(out)) % 32) + data


case("GGUF", "tensor with 5 dimensions", "ndims.gguf", tfile([ti(b"t", [1, 1, 1, 1, 1], 0, 0)]))
case("GGUF", "overflowing shape [2^32, 2^32, 2^32]", "ovf.gguf",
     tfile([ti(b"t", [1 << 32, 1 << 32, 1 << 32], 0, 0)]))
case("GGUF", "negative dimension (2^63 as int64)", "negdim.gguf", tfile([ti(b"t", [1 << 63], 0, 0)]))
case("GGUF", "Q8_0 row of 33 (not a multiple of 32)", "blk.gguf", tfile([ti(b"t", [33], 8, 0)]))
case("GGUF", "unsupported ggml type Q5_K (13)", "q5k.gguf", tfile([ti(b"t", [256], 13, 0)]))
case("GGUF", "unknown ggml type 99", "t99.gguf", tfile([ti(b"t", [4], 99, 0)]))
case("GGUF", "offset not a multiple of the alignment", "offal.gguf", tfile([ti(b"t", [4], 0, 4)]))
case("GGUF", "offset past the end of the file", "offend.gguf", tfile([ti(b"t", [4], 0, 1 << 20)]))
case("GGUF", "offset near 2^64", "offmax.gguf", tfile([ti(b"t", [4], 0, (1 << 64) - 32)]))
case("GGUF", "duplicate tensor names", "dupt.gguf",
     tfile([ti(b"t", [4], 0, 0), ti(b"t", [4], 0, 32)]))
# model-level: valid GGUF, wrong model
kvs_noarch = [k for k in kvs if k[0] != b"general.architecture"]
ts = [(n, d, g) for n, d, g, o in tis]
case("GGUF", "no general.architecture", "noarch.gguf", mc.write_gguf(kvs_noarch, ts))
case("GGUF", "architecture 'mamba'", "mamba.gguf",
     mc.write_gguf([(b"general.architecture", mc.T_STR, b"mamba")] + kvs_noarch, ts))
case("GGUF", "missing tensor blk.0.attn_q.weight", "missq.gguf",
     mc.write_gguf(kvs, [t for t in ts if t[0] != b"blk.0.attn_q.weight"]))
case("GGUF", "wrong shape for blk.0.ffn_up.weight", "shape.gguf",
     mc.write_gguf(kvs, [(n, [32, 64] if n == b"blk.0.ffn_up.weight" else d, g) for n, d, g in ts]))
case("GGUF", "block_count missing", "nobc.gguf",
     mc.write_gguf([k for k in kvs if k[0] != b"llama.block_count"], ts))
case("GGUF", "head_count 3 (does not divide 32)", "heads.gguf",
     mc.write_gguf([(k, t, 3 if k == b"llama.attention.head_count" else v) for k, t, v in kvs], ts))
case("GGUF", "vocab-only GGUF opened as a model", "vocabonly.gguf",
     open(os.path.join(mc.HERE, "corpus/gguf/vocab-llama-spm-300.gguf"), "rb").read())
case("GGUF", "tokenizer.ggml.tokens with a non-UTF-8 piece", "badutf.gguf",
     mc.write_gguf([(k, t, (v[0], [b"\xff\xfe"] + v[1][1:]) if k == b"tokenizer.ggml.tokens" else v)
                    for k, t, v in kvs], ts))
case("GGUF", "token_type array shorter than tokens", "ttype.gguf",
     mc.write_gguf([(k, t, (v[0], v[1][:3]) if k == b"tokenizer.ggml.token_type" else v)
                    for k, t, v in kvs], ts))
case("GGUF", "bos_token_id out of range", "bos.gguf",
     mc.write_gguf([(k, t, 999 if k == b"tokenizer.ggml.bos_token_id" else v) for k, t, v in kvs], ts))

# ----------------------------------------------------------- safetensors
cfg_llama = open(os.path.join(mc.MODELS, "tiny-random-llama-2/config.json")).read()
st_good = open(os.path.join(mc.MODELS, "tiny-random-llama-2/model.safetensors"), "rb").read()
(hn,) = struct.unpack_from("<Q", st_good, 0)
hdr = json.loads(st_good[8:8 + hn])


def st_raw(h, data=b"", n=None):
    h = h if isinstance(h, bytes) else json.dumps(h).encode()
    h += b" " * ((-len(h)) % 8)  # keep the data 8-byte aligned, as writers do
    return u64(len(h) if n is None else n) + h + data


def hf(name, what, st, cfg=cfg_llama, extra=None):
    files = {"config.json": cfg, "model.safetensors": st}
    files.update(extra or {})
    case("safetensors", what, name, files)


hf("st-empty", "empty model.safetensors", b"")
hf("st-short", "file of 5 bytes", b"\1\0\0\0\0")
hf("st-hlen", "header length 2^40", u64(1 << 40) + b"{}")
hf("st-hlen2", "header length past the end", u64(100) + b"{}")
hf("st-trunc-hdr", "truncated inside the header", st_good[:hn // 2])
hf("st-trunc-data", "truncated inside the data", st_good[:-10])
hf("st-json", "header not JSON", st_raw(b"{\"a\": [1, 2"))
hf("st-arr", "header a JSON array", st_raw(b"[]"))
hf("st-trail", "trailing garbage after the JSON", st_raw(b"{}  x"))
hf("st-deep", "JSON nested 100 deep", st_raw(b'{"a":' + b"[" * 100 + b"]" * 100 + b"}"))
hf("st-nodtype", "entry without dtype", st_raw({"t": {"shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4))
hf("st-dtype", "unknown dtype (skipped) -> missing tensor", st_raw(dict(
    {k: (dict(v, dtype="Q7") if k == "model.norm.weight" else v) for k, v in hdr.items()}), st_good[8 + hn:]))
hf("st-neg", "negative data offset", st_raw({"t": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}}))
hf("st-rev", "data_offsets begin > end", st_raw({"t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4))
hf("st-past", "data_offsets past the data", st_raw({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}))
hf("st-big", "data offset 2^60 (not exact in a double)", st_raw({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 2 ** 60 + 1]}}))
hf("st-ovf", "overflowing shape [2^32, 2^32, 2^32]", st_raw({"t": {"dtype": "F32", "shape": [2 ** 32] * 3, "data_offsets": [0, 4]}}, b"\0" * 4))
hf("st-size", "shape and offsets disagree", st_raw({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4))
hf("st-rank", "rank 9", st_raw({"t": {"dtype": "F32", "shape": [1] * 9, "data_offsets": [0, 4]}}, b"\0" * 4))
hf("st-frac", "fractional dimension", st_raw({"t": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}}, b"\0" * 4))
hf("st-align", "F32 data at an odd offset", st_raw({"t": {"dtype": "F32", "shape": [1], "data_offsets": [1, 5]}}, b"\0" * 5))
hf("st-dup", "duplicate tensor names", st_raw(b'{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                                             b'"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4))
hf("st-missing", "missing tensor model.norm.weight", st_raw(
    {k: v for k, v in hdr.items() if k != "model.norm.weight"}, st_good[8 + hn:]))
hf("st-shape", "wrong shape for lm_head.weight", st_raw(
    {k: (dict(v, shape=[v["shape"][1], v["shape"][0]]) if k == "lm_head.weight" else v)
     for k, v in hdr.items()}, st_good[8 + hn:]))
hf("st-wdtype", "I64 where a weight should be", st_raw(
    {k: (dict(v, dtype="I64", shape=[v["shape"][0] // 2]) if k == "model.norm.weight" else v)
     for k, v in hdr.items()}, st_good[8 + hn:]))

# ------------------------------------------------------------- config.json
c = json.loads(cfg_llama)
cj = lambda **kw: json.dumps(dict(c, **kw))
for name, what, cfg in [
    ("cfg-empty", "config.json empty", ""),
    ("cfg-invalid", "config.json not JSON", "{\"model_type\": "),
    ("cfg-array", "config.json a JSON array", "[1]"),
    ("cfg-deep", "config.json nested 65 deep", "{\"a\":" + "[" * 64 + "]" * 64 + "}"),
    ("cfg-giant", "config.json of 17 MB", "{\"a\": \"" + "x" * (17 << 20) + "\"}"),
    ("cfg-notype", "no model_type", json.dumps({k: v for k, v in c.items() if k != "model_type"})),
    ("cfg-type", "model_type 'mamba'", cj(model_type="mamba")),
    ("cfg-typenum", "model_type a number", cj(model_type=3)),
    ("cfg-missing", "hidden_size missing", json.dumps({k: v for k, v in c.items() if k != "hidden_size"})),
    ("cfg-neg", "num_hidden_layers -1", cj(num_hidden_layers=-1)),
    ("cfg-frac", "hidden_size 16.5", cj(hidden_size=16.5)),
    ("cfg-huge", "vocab_size 2^31", cj(vocab_size=2 ** 31)),
    ("cfg-big", "num_hidden_layers 100000", cj(num_hidden_layers=100000)),
    ("cfg-zero", "num_attention_heads 0", cj(num_attention_heads=0)),
    ("cfg-heads", "num_attention_heads 3 (does not divide 16)", cj(num_attention_heads=3)),
    ("cfg-kv", "num_key_value_heads 3", cj(num_key_value_heads=3)),
    ("cfg-eps", "rms_norm_eps 0", cj(rms_norm_eps=0)),
    ("cfg-rope", "rope_scaling set", cj(rope_scaling={"type": "linear", "factor": 2})),
    ("cfg-act", "hidden_act gelu", cj(hidden_act="gelu")),
    ("cfg-layers", "more layers than the weights have", cj(num_hidden_layers=3)),
    ("cfg-vocab", "vocab_size disagrees with the weights", cj(vocab_size=3001)),
]:
    case("config.json", what, name, {"config.json": cfg, "model.safetensors": st_good})
case("config.json", "no config.json", "cfg-none", {"model.safetensors": st_good})
case("index.json", "index not JSON", "idx-bad", {"config.json": cfg_llama, "model.safetensors.index.json": "{"})
case("index.json", "weight_map missing", "idx-nomap", {"config.json": cfg_llama, "model.safetensors.index.json": "{}"})
case("index.json", "shard name escaping the folder", "idx-escape", {
    "config.json": cfg_llama, "model.safetensors.index.json": json.dumps({"weight_map": {"a": "../x.safetensors"}})})
case("index.json", "shard missing", "idx-missing", {
    "config.json": cfg_llama, "model.safetensors.index.json": json.dumps({"weight_map": {"a": "s1.safetensors"}})})
case("index.json", "tensor not in its shard", "idx-notin", {
    "config.json": cfg_llama, "s1.safetensors": st_good,
    "model.safetensors.index.json": json.dumps({"weight_map": {"nope": "s1.safetensors"}})})

# ------------------------------------------------------------------ llama2.c
good = mc.l2c(8, 16, 1, 2, 2, 8, 4)
case("llama2.c", "file of 10 bytes", "short.bin", good[:10])
case("llama2.c", "truncated weights (one float short)", "trunc.bin", good[:-4])
case("llama2.c", "extra bytes after the weights", "extra.bin", good + b"\0" * 4)
case("llama2.c", "dim 0", "dim0.bin", struct.pack("<i", 0) + good[4:])
case("llama2.c", "dim 2^31-1", "dimbig.bin", struct.pack("<i", 2 ** 31 - 1) + good[4:])
case("llama2.c", "n_layers -5", "neg.bin", good[:8] + struct.pack("<i", -5) + good[12:])
case("llama2.c", "vocab_size INT32_MIN", "vmin.bin", good[:20] + struct.pack("<i", -2 ** 31) + good[24:])
case("llama2.c", "n_heads 3 (does not divide dim 8)", "heads.bin", good[:12] + struct.pack("<i", 3) + good[16:])
case("llama2.c", "n_kv_heads > n_heads", "kv.bin", good[:16] + struct.pack("<i", 4) + good[20:])
case("llama2.c", "odd head size", "odd.bin", struct.pack("<iiiii", 6, 16, 1, 2, 2) + good[20:])
case("llama2.c", "sizes that overflow", "ovf.bin", struct.pack("<7i", 65536, 1 << 20, 4096, 2, 2, 1 << 24, 1 << 24) + good[28:])
v1 = mc.l2c(8, 16, 1, 2, 1, 8, 4, version=1)
case("llama2.c", "v1 header truncated (100 bytes)", "v1short.bin", v1[:100])
case("llama2.c", "export version 2 (Q8_0)", "v2.bin", v1[:4] + struct.pack("<i", 2) + v1[8:])
case("llama2.c", "v1 shared_classifier byte 7", "v1flag.bin", v1[:36] + b"\7" + v1[37:])
case("llama2.c", "v1 negative vocab_size", "v1neg.bin", v1[:28] + struct.pack("<i", -8) + v1[32:])

# ------------------------------------------------------------- tokenizers
tj = json.loads(open(os.path.join(mc.HERE, "corpus/tokenizer_file/spm-bytefallback.json"), encoding="utf-8").read())
tjs = lambda j: json.dumps(j, ensure_ascii=False)
for name, what, data in [
    ("tok-trunc.json", "tokenizer.json truncated", tjs(tj)[:200]),
    ("tok-deep.json", "tokenizer.json nested 100 deep", "{\"model\":{\"a\":" + "[" * 100 + "]" * 100 + "}}"),
    ("tok-novocab.json", "model without vocab", tjs(dict(tj, model={"type": "BPE"}))),
    ("tok-wp.json", "model type WordPiece", tjs(dict(tj, model=dict(tj["model"], type="WordPiece")))),
    ("tok-id.json", "vocab id -1", tjs(dict(tj, model=dict(tj["model"], vocab={"a": -1})))),
    ("tok-bigid.json", "vocab id 2^24", tjs(dict(tj, model=dict(tj["model"], vocab={"a": 2 ** 24})))),
    ("tok-hole.json", "vocab with a hole (ids 0 and 10)", tjs(dict(tj, model=dict(tj["model"], vocab={"a": 0, "b": 10})))),
    ("tok-dupid.json", "two pieces with the same id", tjs(dict(tj, model=dict(tj["model"], vocab={"a": 0, "b": 0})))),
    ("tok-merge.json", "merge that is not a pair", tjs(dict(tj, model=dict(tj["model"], merges=["a"])))),
    ("tok-regex.json", "Split regex that does not compile", tjs(dict(tj, pre_tokenizer={"type": "Split", "pattern": {"Regex": "(["}}))),
    ("tok-l2c-short.bin", "tokenizer.bin of 3 bytes", b"\1\0\0"),
    ("tok-l2c-max.bin", "tokenizer.bin max_token_length 0", struct.pack("<i", 0) + b"\0" * 8),
    ("tok-l2c-len.bin", "tokenizer.bin entry length past the end", struct.pack("<ifi", 8, 0.0, 8) + b"ab"),
    ("tok-l2c-nan.bin", "tokenizer.bin score NaN", struct.pack("<i", 8) + struct.pack("<fi", float("nan"), 1) + b"a"),
    ("tok-l2c-trunc.bin", "tokenizer.bin truncated entry", struct.pack("<ifi", 8, 0.0, 1) + b"a" + b"\0\0\0"),
]:
    case("tokenizer", what, name, data, tok=True)

print("| input | malformation | exit | message |")
print("|---|---|---|---|")
for fmt, what, rc, msg in rows:
    print("| %s | %s | %d | `%s` |" % (fmt, what, rc, msg.replace("`", "'")))
subprocess.run(["rm", "-rf", TMP])
