#!/usr/bin/env python3
"""JAX reference benchmark for `endd bench`: one ensemble-member training step and one EnD² student
step of the same network, on CPU, float32.

Networks (identical to the Rust crate's `endd::model::Arch`):
  mlp: 2 -> 100 -> 100 -> 3 with ReLU, inputs scaled by 0.05 (the spiral members and students);
  cnn: 28x28x1 -> conv3x3 s2 p1 (16) -> ReLU -> conv3x3 s2 p1 (32) -> ReLU -> flatten -> 100 -> ReLU
       -> 10 (the MNIST members and students).
Steps (forward + backward + AdamW with epsilon 1e-8, no weight decay; jit-compiled, compile excluded):
  member: softmax cross-entropy to one-hot labels;
  end2:   T^2 [sum lgamma(a) - lgamma(a0) - sum (a - 1) l], a = exp(z / T), l = mean log-probabilities of
          M = 10 teacher members (heated at T, centrally smoothed), T = 2.5, mean over the batch.
Median seconds per step over --steps after --warmup. The LAST stdout line is one JSON object:
  {"framework","jax_version","arch","batch","member_sec","end2_sec","threads"}
If jax is not importable it is imported from bench/.pydeps (installed there by bench/jax_unet_step.py).
"""
import argparse, json, os, statistics, sys, time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jax_unet_step as U  # noqa: E402  (installs JAX into bench/.pydeps when missing)

jax = U.jax
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402
from jax.scipy.special import gammaln  # noqa: E402


def init(arch, key):
    def dense(key, i, o):
        k1, k2 = jax.random.split(key)
        b = 1.0 / i ** 0.5
        return {"w": jax.random.uniform(k1, (i, o), minval=-b, maxval=b),
                "b": jax.random.uniform(k2, (o,), minval=-b, maxval=b)}
    keys = jax.random.split(key, 4)
    if arch == "mlp":
        return {"l": [dense(keys[0], 2, 100), dense(keys[1], 100, 100), dense(keys[2], 100, 3)]}
    def conv(key, ci, co):
        k1, k2 = jax.random.split(key)
        b = 1.0 / (ci * 9) ** 0.5
        return {"w": jax.random.uniform(k1, (3, 3, ci, co), minval=-b, maxval=b),
                "b": jax.random.uniform(k2, (co,), minval=-b, maxval=b)}
    return {"c": [conv(keys[0], 1, 16), conv(keys[1], 16, 32)],
            "l": [dense(keys[2], 7 * 7 * 32, 100), dense(keys[3], 100, 10)]}


def forward(p, x, arch):
    if arch == "mlp":
        h = x * 0.05
    else:
        h = x.reshape(x.shape[0], 28, 28, 1)
        for c in p["c"]:
            h = lax.conv_general_dilated(h, c["w"], (2, 2), ((1, 1), (1, 1)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC")) + c["b"]
            h = jax.nn.relu(h)
        h = h.reshape(h.shape[0], -1)
    for i, l in enumerate(p["l"]):
        h = h @ l["w"] + l["b"]
        if i < len(p["l"]) - 1:
            h = jax.nn.relu(h)
    return h


def member_loss(p, x, y, arch):
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(forward(p, x, arch)) * y, axis=1))


def end2_loss(p, x, mean_logp, t, arch):
    a = jnp.exp(forward(p, x, arch) / t)
    a0 = jnp.sum(a, axis=1)
    nll = jnp.sum(gammaln(a), axis=1) - gammaln(a0) - jnp.sum((a - 1.0) * mean_logp, axis=1)
    return t * t * jnp.mean(nll)


def adam_step(loss):
    @jax.jit
    def step(p, m, v, k, *batch):
        l, g = jax.value_and_grad(loss)(p, *batch)
        m = jax.tree_util.tree_map(lambda m, g: 0.9 * m + 0.1 * g, m, g)
        v = jax.tree_util.tree_map(lambda v, g: 0.999 * v + 0.001 * g * g, v, g)
        c1, c2 = 1 - 0.9 ** k, 1 - 0.999 ** k
        p = jax.tree_util.tree_map(lambda p, m, v: p - 1e-3 * (m / c1) / (jnp.sqrt(v / c2) + 1e-8), p, m, v)
        return p, m, v, l
    return step


def time_step(step, p, batch, steps, warmup):
    m = jax.tree_util.tree_map(jnp.zeros_like, p)
    v = jax.tree_util.tree_map(jnp.zeros_like, p)
    times = []
    for k in range(1, warmup + steps + 1):
        t0 = time.perf_counter()
        p, m, v, l = step(p, m, v, float(k), *batch)
        l.block_until_ready()
        if k > warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", choices=["mlp", "cnn"], default="cnn")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()
    key = jax.random.PRNGKey(0)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    dim, classes = (2, 3) if a.arch == "mlp" else (784, 10)
    x = jax.random.uniform(k1, (a.batch, dim), minval=-1.0, maxval=1.0) * (300.0 if a.arch == "mlp" else 1.0)
    y = jax.nn.one_hot(jax.random.randint(k2, (a.batch,), 0, classes), classes)
    t = 2.5
    teacher = jax.random.normal(k3, (a.batch, 10, classes)) * 3.0
    probs = jax.nn.softmax(teacher / t, axis=-1)
    probs = (1 - 1e-3) * (probs - 1.0 / classes) + 1.0 / classes
    mean_logp = jnp.mean(jnp.log(probs), axis=1)
    p = init(a.arch, k4)
    arch = a.arch
    member = adam_step(lambda p, x, y: member_loss(p, x, y, arch))
    end2 = adam_step(lambda p, x, l: end2_loss(p, x, l, t, arch))
    ms = time_step(member, p, (x, y), a.steps, a.warmup)
    es = time_step(end2, p, (x, mean_logp), a.steps, a.warmup)
    print(f"jax {arch} batch {a.batch}: member {ms * 1e3:.2f} ms/step, EnD² {es * 1e3:.2f} ms/step", file=sys.stderr)
    print(json.dumps({"framework": "jax", "jax_version": jax.__version__, "arch": arch, "batch": a.batch,
                      "member_sec": ms, "end2_sec": es, "threads": os.cpu_count()}))


if __name__ == "__main__":
    main()
