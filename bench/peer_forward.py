#!/usr/bin/python3
"""peer_forward.py - the PyTorch peer of bench_forward.c.

A plain, hand-written GPT-2 forward pass on the CPU that keeps the same
captures as resid_forward with RESID_CAP_ALL / RESID_POS_ALL: every layer's
x_in, attention output a, x_mid, per-head outputs (no b_O), attention weights,
value vectors, FFN coefficients m, FFN output f, the final residual, and the
logits of every position. It times the forward (after a warm-up, median of
--runs) and, given --compare, checks its last-position logits against resid's.

    /usr/bin/python3 bench/peer_forward.py MODEL_DIR --ids 464,2068,... \
        [--threads 2] [--runs 5] [--compare resid_logits_last.f32]

Runs on Debian bookworm's python3-torch (1.13), which has no safetensors
package: the file is parsed here (8-byte header length, JSON, raw data).
Prints `key=value` lines for scripts/bench.sh.
"""
import argparse
import json
import math
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F


def load_safetensors(path):
    """Returns {name: torch.Tensor} for an all-F32 safetensors file."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            sys.exit(f"{path}: truncated header")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            sys.exit(f"{path}: header length {n} exceeds the file size {size}")
        header = json.loads(f.read(n))
        data = np.fromfile(f, dtype=np.uint8)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            sys.exit(f"{path}: {name}: dtype {info['dtype']} (only F32 here)")
        a, b = info["data_offsets"]
        if not (0 <= a <= b <= data.size):
            sys.exit(f"{path}: {name}: data_offsets [{a}, {b}] outside the data")
        arr = np.frombuffer(data, dtype=np.float32, count=(b - a) // 4, offset=a)
        out[name] = torch.from_numpy(arr.reshape(info["shape"]))
    return out


class GPT2:
    def __init__(self, model_dir):
        with open(os.path.join(model_dir, "config.json")) as f:
            cfg = json.load(f)
        self.L = cfg["n_layer"]
        self.D = cfg["n_embd"]
        self.H = cfg["n_head"]
        self.dh = self.D // self.H
        self.eps = cfg.get("layer_norm_epsilon", 1e-5)
        w = load_safetensors(os.path.join(model_dir, "model.safetensors"))
        self.w = {k[len("transformer."):] if k.startswith("transformer.") else k: v
                  for k, v in w.items()}

    @torch.inference_mode()
    def forward(self, ids):
        """Returns the captures, as a dict of tensors shaped like resid_trace."""
        w, L, D, H, dh = self.w, self.L, self.D, self.H, self.dh
        T = ids.numel()
        x = w["wte.weight"][ids] + w["wpe.weight"][:T]
        mask = torch.full((T, T), float("-inf")).triu(1)
        scale = 1.0 / math.sqrt(dh)
        cap = {k: [] for k in ("x_in", "attn_out", "x_mid", "ffn_out", "head_out",
                               "attn", "values", "ffn_coef")}
        for l in range(L):
            p = f"h.{l}."
            cap["x_in"].append(x)
            h = F.layer_norm(x, (D,), w[p + "ln_1.weight"], w[p + "ln_1.bias"], self.eps)
            qkv = torch.addmm(w[p + "attn.c_attn.bias"], h, w[p + "attn.c_attn.weight"])
            q, k, v = qkv.split(D, dim=1)
            q = q.view(T, H, dh).transpose(0, 1)            # [H][T][dh]
            k = k.view(T, H, dh).transpose(0, 1)
            v = v.view(T, H, dh)                            # [T][H][dh]
            cap["values"].append(v)
            s = torch.baddbmm(mask, q, k.transpose(1, 2), alpha=scale)  # [H][T][T]
            alpha = torch.softmax(s, dim=-1)
            cap["attn"].append(alpha)
            z = torch.bmm(alpha, v.transpose(0, 1))         # [H][T][dh]
            wo = w[p + "attn.c_proj.weight"].view(H, dh, D)
            head_out = torch.bmm(z, wo).transpose(0, 1)     # [T][H][D], no b_O
            cap["head_out"].append(head_out)
            a = head_out.sum(dim=1) + w[p + "attn.c_proj.bias"]
            cap["attn_out"].append(a)
            x = x + a
            cap["x_mid"].append(x)
            h = F.layer_norm(x, (D,), w[p + "ln_2.weight"], w[p + "ln_2.bias"], self.eps)
            m = F.gelu(torch.addmm(w[p + "mlp.c_fc.bias"], h, w[p + "mlp.c_fc.weight"]),
                       approximate="tanh")
            cap["ffn_coef"].append(m)
            f = torch.addmm(w[p + "mlp.c_proj.bias"], m, w[p + "mlp.c_proj.weight"])
            cap["ffn_out"].append(f)
            x = x + f
        cap["x_in"].append(x)                               # x_L, the final residual
        mean = x.mean(dim=1)
        var = x.var(dim=1, unbiased=False)
        cap["final_mean"] = mean
        cap["final_scale"] = torch.sqrt(var + self.eps)
        h = F.layer_norm(x, (D,), w["ln_f.weight"], w["ln_f.bias"], self.eps)
        cap["logits"] = h @ w["wte.weight"].t()             # [T][V], tied lm_head
        return cap


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("--ids", required=True, help="comma-separated token ids")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--compare", help="resid's last-position logits, raw float32")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    ids = torch.tensor([int(t) for t in args.ids.split(",")], dtype=torch.long)
    model = GPT2(args.model_dir)
    V = model.w["wte.weight"].shape[0]
    if ids.min() < 0 or ids.max() >= V:
        sys.exit(f"peer_forward: token id out of range [0, {V})")

    cap = model.forward(ids)                                # warm-up
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        cap = model.forward(ids)
        times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2] if len(times) % 2 else 0.5 * (
        times[len(times) // 2 - 1] + times[len(times) // 2])
    print(f"peer_torch_version={torch.__version__}")
    print(f"peer_threads={torch.get_num_threads()}")
    print(f"peer_forward_ms_median={med * 1e3:.3f}")
    print(f"peer_forward_ms_min={times[0] * 1e3:.3f}")
    n_cap = sum(t.numel() for k, v in cap.items()
                for t in (v if isinstance(v, list) else [v]))
    print(f"peer_capture_floats={n_cap}")
    last = cap["logits"][-1].numpy()
    print(f"peer_last_argmax={int(last.argmax())}")
    if args.compare:
        other = np.fromfile(args.compare, dtype=np.float32)
        if other.size != last.size:
            sys.exit(f"peer_forward: {args.compare}: {other.size} logits, expected {last.size}")
        print(f"max_abs_dlogit_last={float(np.abs(other - last).max()):.3e}")
        print(f"max_abs_logit_last={float(np.abs(last).max()):.3e}")


if __name__ == "__main__":
    main()
