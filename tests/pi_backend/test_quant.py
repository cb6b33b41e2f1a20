"""pi_backend.quant: spec parsing (the JAX side's canonical strings), the NumPy
quantizers, and the blockwise proposed weight gradient."""
import numpy as np
import pytest

from pi_backend import quant


@pytest.mark.parametrize("spec,name,args", [
    ("identity()", "identity", ()),
    ("float16", "float16", ()),
    ("sign_scaled()", "sign_scaled", ()),
    ("po2(bits=4, bias=8, rounding='nearest', zeros='flush')", "po2",
     (("bits", 4), ("bias", 8), ("rounding", "nearest"), ("zeros", "flush"))),
    ("po2(bias=6)", "po2", (("bits", 4), ("bias", 6), ("rounding", "nearest"),
                            ("zeros", "flush"))),
])
def test_parse(spec, name, args):
  q = quant.parse(spec)
  assert (q.name, q.args) == (name, args)
  assert quant.parse(q.spec()) == q


@pytest.mark.parametrize("spec,message", [
    ("nope()", "unknown name 'nope'"),
    ("po2(bits=0)", r"bits=0; expected an int in \[1, 8\]"),
    ("po2(bits=True)", "bits=True"),
    ("po2(bias=300)", "bias=300"),
    ("po2(rounding='up')", "rounding='up'"),
    ("po2(zeros=1)", "zeros=1"),
    ("po2(scale=2)", r"unknown po2 arguments \['scale'\]"),
    ("po2(bits=4, bits=5)", "repeats"),
    ("float16(x=1)", "takes no arguments"),
    ("po2(bits=__import__('os'))", "not a literal"),
    ("po2(4)", "name\\(key=value"),
    ("1 + 2", "name\\(key=value"),
    ("(" * 150, "name\\(key=value"),
    (42, "expected a string"),
])
def test_parse_errors(spec, message):
  with pytest.raises(ValueError, match=message):
    quant.parse(spec)


def test_activation():
  assert quant.parse_activation("ste_sign(clip=1.0)") == 1.0
  assert quant.parse_activation("ste_sign") == 1.0
  for bad in ("approx_sign()", "ste_sign(clip=-1)", "ste_sign(clip=float('inf'))",
              "ste_sign(c=1)"):
    with pytest.raises(ValueError):
      quant.parse_activation(bad)


def test_apply():
  g = np.array([0.1, -2.0, 0.0, -0.0, 1e-9, 65536.0, 1 + 2 ** -9], np.float32)
  assert quant.apply(quant.parse("identity()"), g) is g
  with np.errstate(over="ignore"):
    np.testing.assert_array_equal(quant.apply(quant.parse("float16()"), g),
                                  g.astype(np.float16).astype(np.float32))
  s = quant.apply(quant.parse("sign_scaled()"), g)
  np.testing.assert_array_equal(s, np.float32(1 / np.sqrt(7)) * np.array(
      [1, -1, 1, 1, 1, 1, 1], np.float32))  # sign(0) = sign(-0.0) = +1
  b = quant.apply(quant.parse("bfloat16()"), g)
  assert b[1] == -2.0 and b[5] == 65536.0 and b[6] == 1.0  # ties to even
  assert b[0] == np.float32(0.10009765625)  # 0.1 rounded to 8 significant bits
  assert np.all(b.view(np.uint32) & 0xFFFF == 0)
  assert np.isnan(quant.apply(quant.parse("bfloat16()"), np.array([np.nan], np.float32)))[0]
  p = quant.apply(quant.parse("po2(bits=4, bias=8)"), g)
  nz = p[p != 0]
  assert np.all(np.log2(np.abs(nz)) == np.round(np.log2(np.abs(nz))))  # powers of two
  with pytest.raises(ValueError, match="needs a numpy Generator"):
    quant.apply(quant.parse("po2(rounding='stochastic')"), g)
  r = quant.apply(quant.parse("po2(rounding='stochastic')"), g, np.random.default_rng(0))
  assert r.shape == g.shape


def test_weight_gradient_blockwise_equals_whole():
  rng = np.random.default_rng(0)
  dw = rng.standard_normal((100, 30)).astype(np.float32)
  dw[3, 4] = 0.0
  w = rng.uniform(-1.5, 1.5, (100, 30)).astype(np.float16)
  for spec in ("sign_scaled()", "identity()", "float16()"):
    q = quant.parse(spec)
    whole = quant.weight_gradient(q, dw, w)
    assert whole.dtype == np.float16
    assert np.all(whole[np.abs(w) > 1] == 0)  # the clip STE
    blocks = np.concatenate([quant.weight_gradient(q, dw[r:r + 32], w[r:r + 32],
                                                   n_weights=dw.size)
                             for r in range(0, 100, 32)])
    np.testing.assert_array_equal(blocks, whole)
  s = quant.weight_gradient(quant.parse("sign_scaled()"), dw, w)
  assert s[3, 4] == np.float16(1 / np.sqrt(3000)) or abs(w[3, 4]) > 1
  with pytest.raises(ValueError, match="whole tensor"):
    quant.weight_gradient(quant.parse("po2()"), dw[:10], w[:10], n_weights=dw.size)


def test_float16_bit_tricks_agree_with_comparisons():
  from pi_backend import signs  # pylint: disable=import-outside-toplevel
  every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
  with np.errstate(invalid="ignore"):
    np.testing.assert_array_equal(signs.nonnegative(every), every >= 0)
    np.testing.assert_array_equal(quant.within_clip(every), np.abs(every) <= 1)


def test_sign_scaled_weight_gradient_is_the_plain_formula():
  """bnn/ops/common.py: where(|w| <= 1, where(dW >= 0, c, -c), 0) in float16, c = 1/sqrt(N)."""
  rng = np.random.default_rng(1)
  dw = rng.standard_normal((40, 50)).astype(np.float32)
  dw.reshape(-1)[:4] = [0.0, -0.0, np.nan, -np.inf]
  w = rng.uniform(-1.2, 1.2, (40, 50)).astype(np.float16)
  w.reshape(-1)[4:7] = [1.0, -1.0, np.float16(1.0009765625)]
  c = np.float16(np.float32(1 / np.sqrt(2000)))
  want = np.where(np.abs(w) <= 1, np.where(dw >= 0, c, -c), np.float16(0))
  got = quant.weight_gradient(quant.parse("sign_scaled()"), dw, w)
  np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))
