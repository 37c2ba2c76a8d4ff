#!/usr/bin/env python3
"""JAX reference benchmark for `meta-ocl bench`: tokens per second of one training step of the
meta-ocl decoder-only transformer on CPU, float32.

Model (identical to `meta_ocl::model::Transformer`): token embedding (a gather; the Rust model
multiplies one-hot rows, the same numbers) + learned positions, pre-LayerNorm blocks (LN eps 1e-5)
with causal multi-head attention (fused qkv Linear d->3d, scores / sqrt(dh), masked with -1e9,
softmax, output Linear d->d) and an exact-erf GELU MLP d->4d->d, a final LayerNorm and an untied
output Linear d->V. Loss: causal-LM cross-entropy summed over the non-padding targets / their
count. Step (jit-compiled, compile excluded): value_and_grad, global-norm clip to 1.0, AdamW
(beta 0.9/0.999, eps 1e-8, decoupled weight decay 0.01 on every parameter as burn's AdamW, lr with
20 linear warmup steps then cosine to 10 %), the stage-1 settings of the Rust crate.

cpu_sec_per_step_median: CPU seconds of a step, all threads of the process (time.process_time),
the steadier measure of a single-threaded step on a shared machine.

Shapes: --batch rows of --block tokens feed B x (block - 1) positions (the same count as the Rust
bench). Tokens are uniform over the vocabulary (511, the default world's); the compute does not
depend on the values. Median seconds per step over --steps after --warmup, each step ended by
block_until_ready. The LAST stdout line is one JSON object:
  {"framework","jax_version","layers","d_model","heads","block","batch","vocab","params",
   "tokens_per_step","sec_per_step_median","sec_per_step_min","cpu_sec_per_step_median","tokens_per_sec",
   "threads",
   "step_seconds"}
Run with PYTHONPATH=bench/.pydeps (where bench/jax_unet_step.py installs JAX).
"""
import argparse, json, math, os, statistics, sys, time

import jax
import jax.numpy as jnp

LN_EPS, B1, B2, EPS, WD, LR, WARMUP, MIN_LR = 1e-5, 0.9, 0.999, 1e-8, 0.01, 1e-3, 20, 0.1


def init(key, vocab, d, layers, block):
    keys = iter(jax.random.split(key, 3 + 4 * layers))

    def linear(i, o):
        k1, k2 = jax.random.split(next(keys))
        b = 1.0 / math.sqrt(i)
        return {"w": jax.random.uniform(k1, (i, o), minval=-b, maxval=b),
                "b": jax.random.uniform(k2, (o,), minval=-b, maxval=b)}

    def ln():
        return {"g": jnp.ones(d), "b": jnp.zeros(d)}

    p = {"tok": 0.02 * jax.random.normal(next(keys), (vocab, d)),
         "pos": 0.02 * jax.random.normal(next(keys), (block, d)),
         "blocks": [], "ln_f": ln()}
    for _ in range(layers):
        p["blocks"].append({"ln1": ln(), "qkv": linear(d, 3 * d), "proj": linear(d, d),
                            "ln2": ln(), "fc1": linear(d, 4 * d), "fc2": linear(4 * d, d)})
    p["head"] = linear(d, vocab)
    return p


def layer_norm(p, x):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + LN_EPS) * p["g"] + p["b"]


def dense(p, x):
    return x @ p["w"] + p["b"]


def forward(p, tokens, heads):
    b, t = tokens.shape
    d = p["tok"].shape[1]
    dh = d // heads
    x = p["tok"][tokens] + p["pos"][:t][None]
    mask = jnp.triu(jnp.ones((t, t), bool), 1)  # True above the diagonal: the future
    for blk in p["blocks"]:
        qkv = dense(blk["qkv"], layer_norm(blk["ln1"], x))
        q, k, v = (qkv[..., i * d:(i + 1) * d].reshape(b, t, heads, dh).transpose(0, 2, 1, 3)
                   for i in range(3))
        s = jnp.where(mask, -1e9, q @ k.transpose(0, 1, 3, 2) / math.sqrt(dh))
        att = (jax.nn.softmax(s, -1) @ v).transpose(0, 2, 1, 3).reshape(b, t, d)
        x = x + dense(blk["proj"], att)
        x = x + dense(blk["fc2"], jax.nn.gelu(dense(blk["fc1"], layer_norm(blk["ln2"], x)), approximate=False))
    return dense(p["head"], layer_norm(p["ln_f"], x))


def loss_fn(p, x, y, mask, heads):
    logp = jax.nn.log_softmax(forward(p, x, heads), -1)
    picked = jnp.take_along_axis(logp, y[..., None], -1)[..., 0]
    return -(picked * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def lr_at(step, total):
    warm = LR * (step + 1) / WARMUP
    progress = jnp.minimum((step - WARMUP) / max(total - WARMUP, 1), 1.0)
    cosine = LR * (MIN_LR + (1 - MIN_LR) * 0.5 * (1 + jnp.cos(math.pi * progress)))
    return jnp.where(step < WARMUP, warm, cosine)


def make_step(heads, total):
    @jax.jit
    def step(p, m, v, k, x, y, mask):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y, mask, heads)
        norm = jnp.sqrt(sum(jnp.sum(l * l) for l in jax.tree_util.tree_leaves(g)))
        scale = jnp.where(norm > 1.0, 1.0 / norm, 1.0)
        g = jax.tree_util.tree_map(lambda g: g * scale, g)
        m = jax.tree_util.tree_map(lambda m, g: B1 * m + (1 - B1) * g, m, g)
        v = jax.tree_util.tree_map(lambda v, g: B2 * v + (1 - B2) * g * g, v, g)
        t = k + 1.0
        c1, c2 = 1 - B1 ** t, 1 - B2 ** t
        lr = lr_at(k, total)
        p = jax.tree_util.tree_map(
            lambda p, m, v: p * (1 - lr * WD) - lr * (m / c1) / (jnp.sqrt(v / c2) + EPS), p, m, v)
        return p, m, v, loss
    return step


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--block", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=511)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--json", help="also write the result here")
    a = ap.parse_args()
    t = a.block - 1
    kp, kx = jax.random.split(jax.random.PRNGKey(0))
    p = init(kp, a.vocab, a.d_model, a.layers, a.block)
    params = sum(l.size for l in jax.tree_util.tree_leaves(p))
    rows = jax.random.randint(kx, (a.batch, a.block), 0, a.vocab)
    x, y = rows[:, :-1], rows[:, 1:]
    mask = jnp.ones((a.batch, t), jnp.float32)
    m = jax.tree_util.tree_map(jnp.zeros_like, p)
    v = jax.tree_util.tree_map(jnp.zeros_like, p)
    step = make_step(a.heads, a.warmup + a.steps)
    times, cpu = [], []
    for k in range(a.warmup + a.steps):
        c0, t0 = time.process_time(), time.perf_counter()
        p, m, v, loss = step(p, m, v, float(k), x, y, mask)
        loss.block_until_ready()
        if k >= a.warmup:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    if not math.isfinite(float(loss)):
        sys.exit("the loss is not finite")
    med = statistics.median(times)
    tokens = a.batch * t
    out = {"framework": "jax", "jax_version": jax.__version__, "layers": a.layers, "d_model": a.d_model,
           "heads": a.heads, "block": a.block, "batch": a.batch, "vocab": a.vocab, "params": params,
           "tokens_per_step": tokens, "sec_per_step_median": med, "sec_per_step_min": min(times),
           "cpu_sec_per_step_median": statistics.median(cpu),
           "tokens_per_sec": tokens / med, "threads": os.cpu_count(), "step_seconds": times}
    print(f"jax: {a.layers} layers, d {a.d_model}, block {a.block}, batch {a.batch} ({tokens} tokens/step, "
          f"{params} params): {med * 1e3:.2f} ms/step (median of {a.steps}; CPU {statistics.median(cpu) * 1e3:.2f} ms), {tokens / med:.0f} tokens/s",
          file=sys.stderr)
    line = json.dumps(out)
    if a.json:
        tmp = a.json + ".tmp"
        with open(tmp, "w") as f:
            f.write(line + "\n")
        os.replace(tmp, a.json)
    print(line)


if __name__ == "__main__":
    main()
