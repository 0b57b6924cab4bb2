#!/usr/bin/python3
"""peer_explain.py - the PyTorch peer of `resid explain` (METHOD.md §3).

A plain PyTorch attribution of the model's top-1 prediction at the last
position that scores EVERY FFN neuron, EVERY head x source position and
EVERY attention neuron exactly (the units resid explain ranks), by batched
vocabulary projection, in the paper lens (the final LayerNorm frozen at the
scale s of x_L, its bias dropped):

    bs(v)  = W_U (gamma * centre(v)) / s
    LPI(v) = bs_w(v) - log sum_t p_t(x) exp(bs_t(v)),  p(x) = softmax(bs(x))

FFN neuron (l, k): v = m_k fc2_k, x = x_mid[l][t*]; head x position
(l, h, j): v = alpha_{t*,j} v_j W_O^h, x = x_in[l][t*]; attention neuron
(l, h, n, j): v = alpha_{t*,j} v_j[n] W_O[h*dh + n], x = x_in[l][t*] (each
W_O row projected once for its T positions). The forward is
bench/peer_forward.py's. Times forward + scoring (after a warm-up, median of
--runs), and apart the attention neurons' share (peer_explain_attn_s: the
rest is what the peer scored before it scored them), prints the top-10 of
each kind, and with --compare checks them against resid's `explain --json`
output (same ids, scores within --tol).

    /usr/bin/python3 bench/peer_explain.py MODEL_DIR --ids 464,2068,... \
        [--threads 2] [--runs 1] [--chunk 1024] [--compare explain.json]

Prints `key=value` lines for scripts/bench.sh.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_forward import GPT2  # noqa: E402


def lens_rows(y, gamma, s):
    """gamma * centre(y) / s, row-wise."""
    return (y - y.mean(dim=1, keepdim=True)) * gamma / s


@torch.inference_mode()
def explain(model, ids, chunk):
    """Returns (target, ffn [L][N], head_pos [L][H][T], attn [L][H*dh][T] LPIs,
    seconds spent on the attention neurons)."""
    w, L, D, H, dh = model.w, model.L, model.D, model.H, model.dh
    T = ids.numel()
    cap = model.forward(ids)
    wu = w["wte.weight"]                                     # [V][D], tied
    gamma = w["ln_f.weight"]
    s = cap["final_scale"][-1]
    target = int(cap["logits"][-1].argmax())

    def logp_of(x):                                          # context log p, paper lens
        return torch.log_softmax(wu @ (lens_rows(x[None], gamma, s)[0]), dim=0)

    def lpi(rows, logp):                                     # rows [n][D], unit vectors
        out = torch.empty(rows.shape[0])
        for a in range(0, rows.shape[0], chunk):
            c = lens_rows(rows[a:a + chunk], gamma, s) @ wu.t()      # [n][V]
            cw = c[:, target].clone()
            out[a:a + chunk] = cw - torch.logsumexp(c.add_(logp), dim=1)
        return out

    def lpi_dirs(rows, coef, logp):                          # rows [n][D], coef [n][T]
        out = torch.empty(coef.shape)
        ch = min(chunk, 128)            # T passes over each projection: keep it cache-sized
        buf = torch.empty(ch, wu.shape[0])
        for a in range(0, rows.shape[0], ch):
            c = lens_rows(rows[a:a + ch], gamma, s) @ wu.t()         # [n][V]
            b = buf[:c.shape[0]]
            for j in range(T):                                       # unit = coef * row
                k = coef[a:a + ch, j:j + 1]
                torch.mul(c, k, out=b).add_(logp)
                out[a:a + ch, j] = k[:, 0] * c[:, target] - torch.logsumexp(b, dim=1)
        return out

    ffn = torch.empty(L, model.w["h.0.mlp.c_proj.weight"].shape[0])
    hp = torch.empty(L, H, T)
    attn = torch.empty(L, H * dh, T)
    t_attn = 0.0
    for l in range(L):
        p = f"h.{l}."
        # head x position: alpha_{t*,j} v_j W_O^h for every (h, j)
        alpha = cap["attn"][l][:, -1, :]                      # [H][T]
        v = cap["values"][l].transpose(0, 1)                  # [H][T][dh]
        wo = w[p + "attn.c_proj.weight"].view(H, dh, D)
        rows = torch.bmm(alpha[:, :, None] * v, wo).reshape(H * T, D)
        logp_in = logp_of(cap["x_in"][l][-1])
        hp[l] = lpi(rows, logp_in).view(H, T)
        # attention neurons: alpha_{t*,j} v_j[n] W_O[n] for every (n, j)
        t0 = time.perf_counter()
        coef = (alpha[:, :, None] * v).permute(0, 2, 1).reshape(H * dh, T)
        attn[l] = lpi_dirs(w[p + "attn.c_proj.weight"], coef, logp_in)
        t_attn += time.perf_counter() - t0
        # FFN neurons: m_k fc2_k
        m = cap["ffn_coef"][l][-1]                            # [N]
        rows = m[:, None] * w[p + "mlp.c_proj.weight"]        # [N][D]
        ffn[l] = lpi(rows, logp_of(cap["x_mid"][l][-1]))
    return target, ffn, hp, attn, t_attn


def top10(scores, fmt):
    flat = scores.flatten()
    # descending score, ties by enumeration order (as resid)
    order = sorted(range(flat.numel()), key=lambda i: (-float(flat[i]), i))[:10]
    return [(fmt(i), float(flat[i])) for i in order]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("--ids", required=True, help="comma-separated token ids")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=1024, help="rows per projection GEMM")
    ap.add_argument("--compare", help="resid explain --json output")
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    ids = torch.tensor([int(t) for t in args.ids.split(",")], dtype=torch.long)
    model = GPT2(args.model_dir)
    V = model.w["wte.weight"].shape[0]
    if ids.min() < 0 or ids.max() >= V:
        sys.exit(f"peer_explain: token id out of range [0, {V})")

    model.forward(ids)                                        # warm-up (small)
    times, t_attn = [], []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        target, ffn, hp, attn, ta = explain(model, ids, args.chunk)
        times.append(time.perf_counter() - t0)
        t_attn.append(ta)

    def median(x):
        x = sorted(x)
        return x[len(x) // 2] if len(x) % 2 else 0.5 * (x[len(x) // 2 - 1] + x[len(x) // 2])
    med = median(times)
    L, N = ffn.shape
    _, H, T = hp.shape
    dh = attn.shape[1] // H
    print(f"peer_torch_version={torch.__version__}")
    print(f"peer_threads={torch.get_num_threads()}")
    print(f"peer_explain_s_median={med:.3f}")
    print(f"peer_explain_s_min={min(times):.3f}")
    print(f"peer_explain_attn_s={median(t_attn):.3f}")
    print(f"peer_target={target}")
    print(f"peer_units_scored={ffn.numel() + hp.numel() + attn.numel()}")
    tf = top10(ffn, lambda i: f"{i // N}_{i % N}")
    th = top10(hp, lambda i: f"{i // (H * T)}_{i // T % H}_{i % T}")
    # resid's attention neuron ids: layer_head_dim_pos, enumerated (h*dh + n)*T + j
    ta = top10(attn, lambda i: f"{i // (H * dh * T)}_{i // (dh * T) % H}_{i // T % dh}_{i % T}")
    print("peer_top_ffn=" + ",".join(f"{u}:{x:.6g}" for u, x in tf))
    print("peer_top_head_pos=" + ",".join(f"{u}:{x:.6g}" for u, x in th))
    print("peer_top_attn=" + ",".join(f"{u}:{x:.6g}" for u, x in ta))
    if args.compare:
        with open(args.compare) as f:
            r = json.load(f)
        ok = r["target"]["id"] == target
        worst = 0.0
        for name, peer in (("ffn_neurons", tf), ("head_positions", th), ("attn_neurons", ta)):
            mine = [(u["id"], u["lpi"]) for u in r[name][:10]]
            if [u for u, _ in mine] != [u for u, _ in peer]:
                ok = False
                print(f"peer_mismatch_{name}=" + ",".join(u for u, _ in mine), file=sys.stderr)
            for (_, a), (_, b) in zip(mine, peer):
                worst = max(worst, abs(a - b))
        ok = ok and worst <= args.tol
        print(f"top10_max_abs_dlpi={worst:.3e}")
        print(f"top10_agree={'yes' if ok else 'NO'}")


if __name__ == "__main__":
    main()
