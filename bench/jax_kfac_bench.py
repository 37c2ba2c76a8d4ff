#!/usr/bin/env python3
"""JAX reference benchmark: EK-FAC factor fitting and influence scoring for a small DDPM U-Net on CPU.

Python side of the side-by-side benchmark for the Rust influence-function (EK-FAC) library.
The model is the U-Net of bench/jax_unet_step.py (imported from there, as is its
install-JAX-into-bench/.pydeps-when-missing logic). "Covered layers" are every conv (3x3,
strided 3x3, 1x1 skip) and every Linear (time MLP, FiLM Linear of each ResBlock), weight and
bias; GroupNorm is not covered. Data are synthetic: x0 ~ U[-1,1]^{S x S x 1}, t ~ U{0..999},
x_t = sqrt(ab_t) x0 + sqrt(1-ab_t) eps with the linear 1e-4..0.02 beta schedule (T=1000).

Two jitted float32 computations are timed (median over --steps after --warmup, each call ends
with block_until_ready, compile excluded):
  FIT   per batch of B=--batch data: forward with a zero probe added to every covered layer's
        output while capturing its input, r ~ N(0, 2/D I) per datum (D = S*S), one backward of
        sum(y * r) to the probes; per layer A += patches^T patches (im2col of the input, rows
        [B*S_out, k*k*C_in]; linears have S_out = 1) and Bf += g^T g (rows [B*S_out, C_out]).
  SCORE per batch of E=--images-per-batch images x R=--draws draws: loss per datum =
        mean_pixels (eps - y)^2, grads of sum(loss)/R to the probes; per layer per-example
        weight grads G_e = sum_{draws, positions} g a^T and bias grads sum g, rotated into a
        fixed random orthogonal Kronecker eigenbasis (Q_B^T G_e Q_A, Q_B^T b_e), flattened to
        [E, P] and multiplied by fixed random preconditioned queries: scores = Pq @ G^T, [Q, E].

The Rust side runs
    python3 bench/jax_kfac_bench.py --size 14 --base 16 --batch 128 --images-per-batch 8 \
        --draws 16 --queries 8 --steps 5 --warmup 2
and parses the LAST stdout line, a single JSON object:
    {"framework","jax_version","size","base","params","covered_params",
     "fit_sec_per_batch_median","fit_data_per_sec","score_sec_per_batch_median",
     "score_examples_per_sec","threads"}
Everything else goes to stderr.
"""
import argparse, json, os, statistics, sys, time
from dataclasses import dataclass

# Single-threaded numpy BLAS (set before numpy loads): with JAX's thread pool alive, a
# multi-threaded OpenBLAS made the setup QRs ~100x slower on this 2-core machine.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jax_unet_step as U  # noqa: E402  (installs JAX into bench/.pydeps when missing)

jax = U.jax
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

DN = ("NHWC", "HWIO", "NHWC")
CONV, LINEAR = U.conv, U.linear  # the originals, restored after every tapped trace


# ---------------------------------------------------------------- instrumented forward
@dataclass(frozen=True)
class Layer:
    name: str
    k: int        # kernel size (1 for linear / 1x1 conv)
    stride: int
    pad: int
    d_in: int     # k*k*C_in (im2col width) or Linear fan-in
    d_out: int
    conv: bool


class Tape:
    """Stands in for jax_unet_step.conv / .linear while tracing U.unet: records every covered
    layer (in call order, which is deterministic) and its input/output, and adds probes[i] to
    its output."""

    def __init__(self, probes=None, names=None):
        self.probes, self.names, self.inputs, self.outputs, self.layers = probes, names or {}, [], [], []

    def _name(self, p, kind):
        return self.names.get(id(p["w"]), f"{kind}{len(self.layers)}")

    def _tap(self, layer, x, y):
        i = len(self.inputs)
        self.inputs.append(x)
        self.outputs.append(y)
        self.layers.append(layer)
        return y if self.probes is None else y + self.probes[i]

    def conv(self, p, x, stride=1):
        k, _, cin, cout = p["w"].shape
        layer = Layer(self._name(p, "conv"), k, stride, k // 2, k * k * cin, cout, True)
        return self._tap(layer, x, CONV(p, x, stride))

    def linear(self, p, x):
        din, dout = p["w"].shape
        return self._tap(Layer(self._name(p, "linear"), 1, 1, 0, din, dout, False), x, LINEAR(p, x))



def tapped_unet(params, x, t, probes=None, names=None):
    """U.unet with the covered layers routed through a Tape; returns (y, tape)."""
    tape = Tape(probes, names)
    U.conv, U.linear = tape.conv, tape.linear
    try:
        y = U.unet(params, x, t)
    finally:
        U.conv, U.linear = CONV, LINEAR
    return y, tape


def noisy(x0, t, eps):
    ab = U.ALPHA_BAR[t][:, None, None, None]
    return jnp.sqrt(ab) * x0 + jnp.sqrt(1.0 - ab) * eps


def rows(layer, a, g):
    """K-FAC expand: (input patches [N*S_out, d_in], output grads [N*S_out, d_out]).
    Patch features are ordered (C_in, kh, kw): they match w.transpose(2, 0, 1, 3) of HWIO."""
    if layer.conv:
        k, s, p = layer.k, layer.stride, layer.pad
        a = lax.conv_general_dilated_patches(a, (k, k), (s, s), [(p, p)] * 2, dimension_numbers=DN)
    return a.reshape(-1, layer.d_in), g.reshape(-1, layer.d_out)


def probe_grads(params, probe_shapes, x, t, out_fn):
    """Forward with zero probes; grads of out_fn(y) w.r.t. the probes plus the captured inputs."""
    def f(probes):
        y, tape = tapped_unet(params, x, t, probes)
        return out_fn(y), tape.inputs
    probes = [jnp.zeros(s, jnp.float32) for s in probe_shapes]
    grads, inputs = jax.grad(f, has_aux=True)(probes)
    return inputs, grads


# ---------------------------------------------------------------- the two timed computations
def make_fit(layers, probe_shapes):
    def fit(params, x0, key):
        kt, ke, kr = jax.random.split(key, 3)
        n, d = x0.shape[0], x0.shape[1] * x0.shape[2]
        t = jax.random.randint(kt, (n,), 0, U.T_STEPS)
        xt = noisy(x0, t, jax.random.normal(ke, x0.shape))
        r = jax.random.normal(kr, x0.shape) * jnp.sqrt(2.0 / d)
        inputs, grads = probe_grads(params, probe_shapes(n), xt, t, lambda y: jnp.sum(y * r))
        factors = []
        for layer, a, g in zip(layers, inputs, grads):
            a, g = rows(layer, a, g)
            factors.append((a.T @ a, g.T @ g))
        return factors
    return jax.jit(fit)


def make_score(layers, probe_shapes, draws):
    def score(params, x0, key, qa, qb, pq):
        e = x0.shape[0]
        n = e * draws
        kt, ke = jax.random.split(key)
        t = jax.random.randint(kt, (n,), 0, U.T_STEPS)
        eps = jax.random.normal(ke, (n,) + x0.shape[1:])
        xt = noisy(jnp.repeat(x0, draws, axis=0), t, eps)  # example i -> data i*R .. i*R+R-1
        loss = lambda y: jnp.sum(jnp.mean((eps - y) ** 2, axis=(1, 2, 3))) / draws
        inputs, grads = probe_grads(params, probe_shapes(n), xt, t, loss)
        flat = []
        for layer, a, g, q_a, q_b in zip(layers, inputs, grads, qa, qb):
            a, g = rows(layer, a, g)
            a, g = a.reshape(e, -1, layer.d_in), g.reshape(e, -1, layer.d_out)
            gw = jnp.einsum("exo,exi->eoi", g, a)                  # [E, d_out, d_in]
            gw = jnp.einsum("po,eoi,iq->epq", q_b, gw, q_a)       # Q_B^T G_e Q_A (q_b = Q_B^T)
            gb = g.sum(axis=1) @ q_b.T                              # (Q_B^T b_e)^T
            flat += [gw.reshape(e, -1), gb]
        return pq @ jnp.concatenate(flat, axis=1).T               # [Q, E]
    return jax.jit(score)


def time_it(name, fn, make_args, warmup, steps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*make_args(0)))  # compile + first call
    print(f"{name}: compile+first call {time.perf_counter() - t0:.2f}s", file=sys.stderr)
    for i in range(warmup):
        jax.block_until_ready(fn(*make_args(1 + i)))
    times = []
    for i in range(steps):
        args = make_args(1 + warmup + i)
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    print(f"{name}: s/batch " + " ".join(f"{x:.3f}" for x in times), file=sys.stderr)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, default in [("size", 14), ("base", 16), ("batch", 128), ("images-per-batch", 8),
                          ("draws", 16), ("queries", 8), ("steps", 5), ("warmup", 2)]:
        ap.add_argument(f"--{flag}", type=int, default=default)
    a = ap.parse_args()

    # Same shapes and distribution as U.init_params (w ~ N(0, 1/fan_in), b = 0, GN g = 1), drawn
    # with numpy: eager threefry compiles per shape and took ~7 s here.
    rng = np.random.default_rng(0)
    def init(path, s):
        kind = path[-1].key
        if kind == "w":
            return jnp.asarray(rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1])), jnp.float32)
        return (jnp.ones if kind == "g" else jnp.zeros)(s.shape, jnp.float32)
    shapes = jax.eval_shape(lambda k: U.init_params(k, a.base), jax.random.PRNGKey(0))
    params = jax.tree_util.tree_map_with_path(init, shapes)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))

    # Discover the covered layers (named by parameter path) and their output shapes by tracing.
    names = {id(v): ".".join(k.key for k in path[:-1])
             for path, v in jax.tree_util.tree_leaves_with_path(params) if path[-1].key == "w"}
    found = []
    def discover(x, t):
        _, tape = tapped_unet(params, x, t, names=names)
        found.append(tape.layers)
        return tape.outputs
    outs = jax.eval_shape(discover, jax.ShapeDtypeStruct((1, a.size, a.size, 1), jnp.float32),
                          jax.ShapeDtypeStruct((1,), jnp.int32))
    layers, out_shapes = found[0], [y.shape[1:] for y in outs]
    probe_shapes = lambda n: [(n,) + s for s in out_shapes]
    covered = sum(l.d_out * (l.d_in + 1) for l in layers)
    print(f"params: {n_params}  covered params P: {covered}  covered layers: {len(layers)}", file=sys.stderr)
    for l, s in zip(layers, out_shapes):
        print(f"  {l.name:15s} k={l.k} s={l.stride} d_in={l.d_in:4d} d_out={l.d_out:3d} "
              f"S_out={s[0] * s[1] if l.conv else 1}", file=sys.stderr)

    unif = lambda n: jnp.asarray(rng.uniform(-1.0, 1.0, (n, a.size, a.size, 1)), jnp.float32)
    x_fit, x_score = unif(a.batch), unif(a.images_per_batch)
    key = lambda i: jax.random.fold_in(jax.random.PRNGKey(1), i)

    fit = make_fit(layers, probe_shapes)
    fit_s = time_it("fit", fit, lambda i: (params, x_fit, key(i)), a.warmup, a.steps)

    # Fixed random orthogonal eigenbases (precomputed, outside the timed function) and queries.
    # (numpy QR: same math as jnp.linalg.qr, without ~1 s of XLA compile per distinct shape)
    orth = lambda d: jnp.asarray(np.linalg.qr(rng.standard_normal((d, d)))[0], jnp.float32)
    qa = [orth(l.d_in) for l in layers]
    qb = [orth(l.d_out).T for l in layers]  # stored as Q_B^T
    pq = jnp.asarray(rng.standard_normal((a.queries, covered)), jnp.float32)
    score = make_score(layers, probe_shapes, a.draws)
    score_s = time_it("score", score, lambda i: (params, x_score, key(10_000 + i), qa, qb, pq),
                      a.warmup, a.steps)

    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(json.dumps({"framework": "jax", "jax_version": jax.__version__, "size": a.size,
                      "base": a.base, "params": int(n_params), "covered_params": int(covered),
                      "fit_sec_per_batch_median": fit_s, "fit_data_per_sec": a.batch / fit_s,
                      "score_sec_per_batch_median": score_s,
                      "score_examples_per_sec": a.images_per_batch / score_s,
                      "threads": threads}))


if __name__ == "__main__":
    main()
