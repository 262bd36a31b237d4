"""The same kind of block in JAX: cudit inside jax.jit, on XLA's stream (needs a GPU and JAX).

    python examples/jax_block.py
"""
import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import cudit.jax as cj  # noqa: E402

HEADS, HEAD_DIM, EPS = 12, 128, 1e-6
DIM = HEADS * HEAD_DIM


def rms_norm(x, w):
    xf = x.astype(jnp.float32)
    return (xf * jax.lax.rsqrt(jnp.mean(xf * xf, -1, keepdims=True) + EPS) * w).astype(x.dtype)


def rope(x, cos, sin):
    b, s, _ = x.shape
    xf = x.astype(jnp.float32).reshape(b, s, HEADS, HEAD_DIM // 2, 2)
    a, c = xf[..., 0], xf[..., 1]
    rot = jnp.stack((-c, a), -1).reshape(b, s, HEADS, HEAD_DIM)
    out = xf.reshape(b, s, HEADS, HEAD_DIM) * cos[None, :, None] + rot * sin[None, :, None]
    return out.astype(x.dtype).reshape(b, s, DIM)


def attention(params, x, cos, sin, fused=True):
    b, s, _ = x.shape
    qkv = x @ params["w_qkv"]
    if fused:
        qkv = cj.qk_norm_rope(qkv, params["norm_q"], params["norm_k"], cos, sin, num_heads=HEADS, eps=EPS)
        q, k, v = jnp.split(qkv, 3, axis=-1)
    else:
        q, k, v = jnp.split(qkv, 3, axis=-1)
        q, k = rope(rms_norm(q, params["norm_q"]), cos, sin), rope(rms_norm(k, params["norm_k"]), cos, sin)
    q, k, v = (t.reshape(b, s, HEADS, HEAD_DIM) for t in (q, k, v))
    o = jax.nn.dot_product_attention(q, k, v)
    return o.reshape(b, s, DIM) @ params["w_o"]


def main():
    keys = jax.random.split(jax.random.PRNGKey(0), 5)
    bf = jnp.bfloat16
    params = {"w_qkv": (jax.random.normal(keys[0], (DIM, 3 * DIM)) / DIM**0.5).astype(bf),
              "w_o": (jax.random.normal(keys[1], (DIM, DIM)) / DIM**0.5).astype(bf),
              "norm_q": jax.random.uniform(keys[2], (DIM,)) + 0.5,
              "norm_k": jax.random.uniform(keys[3], (DIM,)) + 0.5}
    s = 1560
    x = jax.random.normal(keys[4], (2, s, DIM)).astype(bf)
    ang = jnp.repeat(jnp.arange(s)[:, None] * 10000.0 ** (-jnp.arange(0, HEAD_DIM, 2) / HEAD_DIM), 2, -1)
    cos, sin = jnp.cos(ang), jnp.sin(ang)
    fused = jax.jit(attention)(params, x, cos, sin)
    plain = jax.jit(lambda *a: attention(*a, fused=False))(params, x, cos, sin)
    err = float(jnp.max(jnp.abs(fused.astype(jnp.float32) - plain.astype(jnp.float32))))
    print(f"jit block with cudit vs plain JAX block: max |diff| {err:.4f}")
    assert err < 0.05
    print("ok")


if __name__ == "__main__":
    main()
