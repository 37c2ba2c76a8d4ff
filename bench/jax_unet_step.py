#!/usr/bin/env python3
"""JAX reference benchmark: one DDPM training step of a small UNet on CPU.

Measures seconds per jitted train step (forward + backward + hand-written AdamW)
for an epsilon-prediction DDPM loss on a synthetic [B,1,S,S] batch. Compile time
and --warmup steps are excluded; each timed step ends with block_until_ready.

The Rust (burn) side of the side-by-side benchmark runs e.g.
    python3 bench/jax_unet_step.py --size 28 --batch 128 --steps 10 --warmup 3 --base 32
and parses the LAST stdout line, a single JSON object:
    {"framework","jax_version","size","batch","sec_per_step_median",
     "sec_per_step_min","steps","threads","params"}
If jax is not importable it is pip-installed (CPU) into bench/.pydeps first.
Architecture (must match the Rust implementation), C=--base, G=8 groups, time_dim=4C:
sinusoidal t-emb(C) -> Linear(C,4C) -> SiLU -> Linear(4C,4C); conv_in 1->C;
Res(C,C) [skip0]; down conv s2 (C->C); Res(C,2C) [skip1]; mid Res(2C,2C);
Res(4C,2C); nearest-up to skip0 size + conv (2C->2C); Res(3C,C); GN-SiLU-conv C->1.
"""
import argparse, json, math, os, statistics, subprocess, sys, time
from pathlib import Path

DEPS = Path(__file__).resolve().parent / ".pydeps"

def import_jax():
    try:
        import jax  # noqa: F401
    except ImportError:
        if not DEPS.is_dir() or not any(DEPS.iterdir()):
            t0 = time.time()
            subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet",
                                   "--target", str(DEPS), "jax[cpu]"], stdout=sys.stderr)
            print(f"installed jax into {DEPS} in {time.time() - t0:.1f}s", file=sys.stderr)
        sys.path.insert(0, str(DEPS))
    import jax
    return jax

jax = import_jax()
import jax.numpy as jnp
from jax import lax

G = 8

# ---------------------------------------------------------------- parameters
def linear_p(key, i, o):
    return {"w": jax.random.normal(key, (i, o)) / math.sqrt(i), "b": jnp.zeros(o)}

def conv_p(key, i, o, k=3):  # HWIO
    return {"w": jax.random.normal(key, (k, k, i, o)) / math.sqrt(k * k * i), "b": jnp.zeros(o)}

def gn_p(c):
    return {"g": jnp.ones(c), "b": jnp.zeros(c)}

def res_p(key, cin, cout, tdim):
    k = jax.random.split(key, 4)
    p = {"gn1": gn_p(cin), "conv1": conv_p(k[0], cin, cout), "temb": linear_p(k[1], tdim, 2 * cout),
         "gn2": gn_p(cout), "conv2": conv_p(k[2], cout, cout)}
    if cin != cout:
        p["skip"] = conv_p(k[3], cin, cout, k=1)
    return p

def init_params(key, C):
    k = jax.random.split(key, 11)
    T = 4 * C
    return {"t1": linear_p(k[0], C, T), "t2": linear_p(k[1], T, T),
            "conv_in": conv_p(k[2], 1, C),
            "down0": res_p(k[3], C, C, T), "downsample": conv_p(k[4], C, C),
            "down1": res_p(k[5], C, 2 * C, T), "mid": res_p(k[6], 2 * C, 2 * C, T),
            "up1": res_p(k[7], 4 * C, 2 * C, T), "upconv": conv_p(k[8], 2 * C, 2 * C),
            "up0": res_p(k[9], 3 * C, C, T), "gn_out": gn_p(C), "conv_out": conv_p(k[10], C, 1)}

# ---------------------------------------------------------------- layers (NHWC)
def linear(p, x):
    return x @ p["w"] + p["b"]

def conv(p, x, stride=1):
    pad = p["w"].shape[0] // 2
    y = lax.conv_general_dilated(x, p["w"], (stride, stride), [(pad, pad)] * 2,
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + p["b"]

def groupnorm(p, x, eps=1e-5):
    B, H, W, C = x.shape
    xg = x.reshape(B, H, W, G, C // G)
    mean = xg.mean(axis=(1, 2, 4), keepdims=True)
    var = xg.var(axis=(1, 2, 4), keepdims=True)
    x = ((xg - mean) / jnp.sqrt(var + eps)).reshape(B, H, W, C)
    return x * p["g"] + p["b"]

def resblock(p, x, temb):
    h = conv(p["conv1"], jax.nn.silu(groupnorm(p["gn1"], x)))
    scale, shift = jnp.split(linear(p["temb"], jax.nn.silu(temb)), 2, axis=-1)
    h = groupnorm(p["gn2"], h) * (1 + scale[:, None, None, :]) + shift[:, None, None, :]
    h = conv(p["conv2"], jax.nn.silu(h))
    return h + (conv(p["skip"], x) if "skip" in p else x)

def upsample_nearest(x, H, W):  # out index i <- floor(i * in / out), like torch 'nearest'
    hi = (jnp.arange(H) * x.shape[1]) // H
    wi = (jnp.arange(W) * x.shape[2]) // W
    return x[:, hi][:, :, wi]

def sinusoidal(t, dim):
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half) / half)
    a = t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.sin(a), jnp.cos(a)], axis=-1)

def unet(p, x, t):
    C = p["conv_in"]["w"].shape[-1]
    temb = linear(p["t2"], jax.nn.silu(linear(p["t1"], sinusoidal(t, C))))
    h = conv(p["conv_in"], x)
    h = resblock(p["down0"], h, temb); skip0 = h
    h = conv(p["downsample"], h, stride=2)
    h = resblock(p["down1"], h, temb); skip1 = h
    h = resblock(p["mid"], h, temb)
    h = resblock(p["up1"], jnp.concatenate([h, skip1], -1), temb)
    h = conv(p["upconv"], upsample_nearest(h, skip0.shape[1], skip0.shape[2]))
    h = resblock(p["up0"], jnp.concatenate([h, skip0], -1), temb)
    return conv(p["conv_out"], jax.nn.silu(groupnorm(p["gn_out"], h)))

# ---------------------------------------------------------------- DDPM loss + AdamW step
T_STEPS = 1000
ALPHA_BAR = jnp.cumprod(1.0 - jnp.linspace(1e-4, 0.02, T_STEPS, dtype=jnp.float32))
LR, B1, B2, EPS, WD = 2e-4, 0.9, 0.999, 1e-8, 0.0

def loss_fn(p, x0, t, eps):
    ab = ALPHA_BAR[t][:, None, None, None]
    xt = jnp.sqrt(ab) * x0 + jnp.sqrt(1.0 - ab) * eps
    return jnp.mean((eps - unet(p, xt, t)) ** 2)

def train_step(p, m, v, step, x0, t, eps):
    loss, g = jax.value_and_grad(loss_fn)(p, x0, t, eps)
    step = step + 1
    m = jax.tree_util.tree_map(lambda m, g: B1 * m + (1 - B1) * g, m, g)
    v = jax.tree_util.tree_map(lambda v, g: B2 * v + (1 - B2) * g * g, v, g)
    c1, c2 = 1 - B1 ** step, 1 - B2 ** step
    p = jax.tree_util.tree_map(
        lambda p, m, v: p - LR * ((m / c1) / (jnp.sqrt(v / c2) + EPS) + WD * p), p, m, v)
    return p, m, v, step, loss

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--base", type=int, default=32)
    a = ap.parse_args()

    kp, kx, kt, ke = jax.random.split(jax.random.PRNGKey(0), 4)
    params = init_params(kp, a.base)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    print(f"params: {n_params}", file=sys.stderr)
    # synthetic batch, generated once (NHWC == [B,S,S,1], same data as [B,1,S,S])
    x0 = jax.random.uniform(kx, (a.batch, a.size, a.size, 1), minval=-1.0, maxval=1.0)
    t = jax.random.randint(kt, (a.batch,), 0, T_STEPS)
    eps = jax.random.normal(ke, x0.shape)
    m = jax.tree_util.tree_map(jnp.zeros_like, params)
    v = jax.tree_util.tree_map(jnp.zeros_like, params)
    step = jnp.array(0.0, jnp.float32)

    fn = jax.jit(train_step, donate_argnums=(0, 1, 2))
    t0 = time.perf_counter()
    state = jax.block_until_ready(fn(params, m, v, step, x0, t, eps))  # compile + 1st step
    print(f"compile+first step: {time.perf_counter() - t0:.2f}s", file=sys.stderr)
    for _ in range(a.warmup):
        state = jax.block_until_ready(fn(*state[:4], x0, t, eps))
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        state = jax.block_until_ready(fn(*state[:4], x0, t, eps))
        times.append(time.perf_counter() - t0)
    print(f"final loss: {float(state[4]):.5f}", file=sys.stderr)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(json.dumps({"framework": "jax", "jax_version": jax.__version__, "size": a.size,
                      "batch": a.batch, "sec_per_step_median": statistics.median(times),
                      "sec_per_step_min": min(times), "steps": a.steps,
                      "threads": threads, "params": int(n_params)}))

if __name__ == "__main__":
    main()
