"""CTGAN model contract: spans respected, seeded, flat weights, per-row losses, condition vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedtab.errors import ConfigError, ModelFileError, NotFittedError
from fedtab.models.conditions import RowIndex
from fedtab.models.ctgan import CTGAN, CTGANConfig
from fedtab.models.registry import available_models, create_model
from fedtab.transform.spans import ConditionSpan, SpanInfo, span_offsets

SMALL = CTGANConfig(embedding_dim=16, generator_dim=(32, 32), discriminator_dim=(32, 32))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small networks on a shared 2-core machine: intra-op threads only add contention (40x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_dataset(n: int = 2000, seed: int = 0):
    """A tiny encoded table: a two-mode numeric column (value + 2-mode span), a 2-category column
    (80/20) and a 3-category column (50/30/20). Returns (data, spans, condition_spans)."""
    rng = np.random.default_rng(seed)
    spans = [
        SpanInfo(1, "tanh", "x", "value"), SpanInfo(2, "softmax", "x", "mode"),
        SpanInfo(2, "softmax", "a", "category"), SpanInfo(3, "softmax", "b", "category"),
    ]
    data = np.zeros((n, 8), dtype=np.float32)
    mode = (rng.random(n) < 0.7).astype(int)
    data[np.arange(n), 1 + mode] = 1.0
    data[:, 0] = np.clip(rng.normal(0.0, 0.15, n) + np.where(mode == 1, 0.5, -0.5), -1, 1)
    a = (rng.random(n) < 0.2).astype(int)
    data[np.arange(n), 3 + a] = 1.0
    b = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    data[np.arange(n), 5 + b] = 1.0
    offs = span_offsets(spans)
    conds = [ConditionSpan("a", offs[2], 2, np.array([0.8, 0.2])), ConditionSpan("b", offs[3], 3, np.array([0.5, 0.3, 0.2]))]
    return data, spans, conds


def built(seed: int = 0, config: CTGANConfig = SMALL) -> CTGAN:
    _, spans, conds = make_dataset(10)
    return CTGAN(config).build(spans, conds, seed=seed)


def test_samples_respect_spans():
    model = built()
    rows = model.sample(300, generator=torch.Generator().manual_seed(1))
    assert rows.shape == (300, 8) and rows.dtype == np.float32
    assert np.all(np.abs(rows[:, 0]) <= 1.0)
    for off, dim in [(1, 2), (3, 2), (5, 3)]:
        block = rows[:, off : off + dim]
        assert set(np.unique(block)) <= {0.0, 1.0}
        assert np.all(block.sum(axis=1) == 1.0)


def test_same_seed_same_weights_and_samples_different_seed_differs():
    a, b, c = built(seed=3), built(seed=3), built(seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["generator.head.weight"], sc["generator.head.weight"])
    ra = a.sample(50, generator=torch.Generator().manual_seed(9))
    rb = b.sample(50, generator=torch.Generator().manual_seed(9))
    np.testing.assert_array_equal(ra, rb)


def test_state_dict_is_flat_float_tensors_and_round_trips():
    a, b = built(seed=1), built(seed=2)
    state = a.state_dict()
    assert all(isinstance(v, torch.Tensor) and v.dtype == torch.float32 for v in state.values())
    assert {k.split(".")[0] for k in state} == {"generator", "discriminator"}
    assert any("running_mean" in k for k in state)  # BatchNorm statistics travel with the weights
    b.load_state_dict(state)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    np.testing.assert_array_equal(a.sample(40, generator=g1), b.sample(40, generator=g2))
    state["generator.head.weight"] = torch.zeros(3, 3)
    with pytest.raises(ModelFileError, match="wrong shape"):
        b.load_state_dict(state)


def test_private_losses_are_per_row_separable():
    """Each row's loss depends on that row only (what makes per-sample clipping exact)."""
    model = built(config=CTGANConfig(embedding_dim=16, generator_dim=(32,), discriminator_dim=(32,), dropout=0.0))
    data, _, _ = make_dataset(6)
    g = torch.Generator().manual_seed(0)
    real = torch.from_numpy(data)
    real_cond = model.conditions.from_rows(real, generator=g)
    gen = model.generate(model.conditions.from_frequencies(4, generator=g), generator=g)
    losses = model.private_losses(real, real_cond, gen, generator=g)
    assert losses.shape == (10,) and torch.all(losses > 0)
    real2 = real.clone()
    real2[2, 0] = -real2[2, 0]
    losses2 = model.private_losses(real2, real_cond, gen, generator=g)
    changed = (losses2 - losses).abs() > 0
    assert changed.tolist() == [i == 2 for i in range(10)]


def test_public_loss_includes_condition_cross_entropy():
    model = built()
    g = torch.Generator().manual_seed(0)
    gen = model.generate(model.conditions.from_frequencies(64, generator=g), generator=g)
    with_ce = model.public_loss(gen, generator=torch.Generator().manual_seed(1)).item()
    model_no_ce = CTGAN(CTGANConfig(embedding_dim=16, generator_dim=(32, 32), discriminator_dim=(32, 32),
                                    cond_loss_weight=0.0))
    model_no_ce.__dict__.update({k: v for k, v in model.__dict__.items() if k != "config"})
    without = model_no_ce.public_loss(gen, generator=torch.Generator().manual_seed(1)).item()
    assert with_ce - without > 0.3  # untrained: CE ~ log(2..3)


def test_conditions_from_rows_read_the_rows_own_category():
    model = built()
    data, _, _ = make_dataset(500)
    rows = torch.from_numpy(data)
    cond = model.conditions.from_rows(rows, generator=torch.Generator().manual_seed(0))
    offsets = torch.tensor([3, 5])
    own = rows[torch.arange(500), offsets[cond.column] + cond.category]
    assert torch.all(own == 1.0)
    assert torch.all(cond.vector.sum(dim=1) == 1.0)
    assert 0.4 < cond.column.float().mean() < 0.6  # column chosen uniformly


def test_conditions_from_frequencies_follow_the_frequencies():
    model = built()
    cond = model.conditions.from_frequencies(20000, generator=torch.Generator().manual_seed(0))
    b = cond.category[cond.column == 1]
    freq = torch.bincount(b, minlength=3).double() / len(b)
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), atol=0.02)


def test_row_index_samples_rows_of_the_conditioned_category_log_frequency():
    model = built()
    data, _, _ = make_dataset(2000)
    index = RowIndex(model.conditions, torch.from_numpy(data))
    idx, cond = index.sample(4000, generator=torch.Generator().manual_seed(0))
    offsets = torch.tensor([3, 5])
    assert torch.all(torch.from_numpy(data)[idx, offsets[cond.column] + cond.category] == 1.0)
    a = cond.category[cond.column == 0].double().mean().item()  # share of the 20% category
    expected = np.log1p(index.counts[1].item()) / (np.log1p(index.counts[0].item()) + np.log1p(index.counts[1].item()))
    assert abs(a - expected) < 0.03 and a > 0.4  # rare category oversampled (log-frequency)


def test_condition_span_must_be_a_softmax_span():
    _, spans, _ = make_dataset(10)
    with pytest.raises(ConfigError, match="must coincide with a softmax span"):
        CTGAN(SMALL).build(spans, [ConditionSpan("x", 0, 1, np.array([1.0]))], seed=0)


def test_unbuilt_model_and_registry():
    assert "ctgan" in available_models()
    model = create_model("ctgan")
    assert isinstance(model, CTGAN) and model.config == CTGANConfig()
    with pytest.raises(NotFittedError, match="build"):
        model.sample(3, generator=torch.Generator())
    with pytest.raises(ConfigError, match="must be one of"):
        create_model("gan9000")
    with pytest.raises(ConfigError, match="dropout"):
        CTGANConfig(dropout=1.5)


def _spans_of_mixed_widths():
    return [SpanInfo(1, "tanh", "x", "value"), SpanInfo(3, "softmax", "x", "mode"), SpanInfo(2, "softmax", "a", "category"),
            SpanInfo(1, "tanh", "y", "value"), SpanInfo(3, "softmax", "y", "mode"), SpanInfo(5, "softmax", "b", "category")]


def test_batched_activations_match_span_by_span_and_their_gradient():
    """The grouped gumbel-softmax (one autograd node, hand-written backward) equals tanh / softmax((raw +
    noise) / tau) span by span, in value and in gradient."""
    from fedtab.models.ctgan import SpanLayout, _Activate

    spans = _spans_of_mixed_widths()
    layout = SpanLayout(spans)
    assert [w for _, _, w in layout.groups] == [3, 2, 5]  # widths grouped: the two 3-wide spans side by side
    raw = torch.randn(7, layout.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    noise = torch.randn(7, layout.dim - layout.n_tanh, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    rows = _Activate.apply(raw, noise, layout, 0.2)
    noise_by_column = torch.zeros(7, layout.dim, dtype=torch.float64)
    noise_by_column[:, layout.order[layout.n_tanh:]] = noise
    parts = []
    for off, s in zip(span_offsets(spans), spans):
        block = raw[:, off : off + s.dim]
        parts.append(torch.tanh(block) if s.activation == "tanh"
                     else torch.softmax((block + noise_by_column[:, off : off + s.dim]) / 0.2, dim=1))
    expected = torch.cat(parts, dim=1)
    torch.testing.assert_close(rows, expected, rtol=0, atol=1e-12)
    weights = torch.randn(7, layout.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    (got,) = torch.autograd.grad((rows * weights).sum(), raw)
    (want,) = torch.autograd.grad((expected * weights).sum(), raw)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda r: _Activate.apply(r, noise, layout, 0.2), (raw,))


def test_generator_without_concatenation_is_the_residual_network():
    """Generator.forward(z, hot) (weight slices, condition read as weight columns) is CTGAN's residual
    network on cat([z, one_hot(hot)]): same outputs, same parameter gradients."""
    import torch.nn.functional as F

    from fedtab.models.ctgan import Generator

    torch.manual_seed(0)
    net = Generator(16 + 7, (32, 32), 11).double()
    z = torch.randn(9, 16, dtype=torch.float64)
    hot = torch.tensor([0, 6, 3, 3, 1, 2, 5, 4, 0])
    x = torch.cat([z, F.one_hot(hot, 7).double()], dim=1)

    def reference(x):
        for block in net.blocks:
            x = torch.cat([torch.relu(block.bn(block.fc(x))), x], dim=1)
        return net.head(x)

    out, expected = net(z, hot), reference(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(net(x), expected, rtol=0, atol=1e-12)  # dense input: same network
    w = torch.randn_like(out)
    got = torch.autograd.grad((out * w).sum(), list(net.parameters()))
    want = torch.autograd.grad((expected * w).sum(), list(net.parameters()))
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-10)


@pytest.mark.parametrize("keep", [0.5, 0.8])
def test_dropout_scales_are_zero_or_inverse_keep_with_the_keep_rate(keep):
    from fedtab.models.ctgan import dropout_scale

    scale = dropout_scale((400, 50), keep, generator=torch.Generator().manual_seed(0))
    assert scale.shape == (400, 50) and scale.dtype == torch.float32
    kept = scale > 0
    assert torch.all(scale[kept] == 1.0 / keep) and torch.all(scale[~kept] == 0.0)
    assert abs(kept.float().mean().item() - keep) < 0.01
    again = dropout_scale((400, 50), keep, generator=torch.Generator().manual_seed(0))
    assert torch.equal(scale, again)


def test_models_built_in_parallel_threads_get_their_seed_s_weights():
    """The in-process transport builds the sites' models in parallel threads; each build seeds torch's
    global RNG for its initial weights. Builds run one at a time (a lock), so every thread gets its own
    seed's weights, and no two threads meet inside torch's RNG calls (a CI run hung there)."""
    import threading

    want = {s: {k: v.clone() for k, v in built(seed=s).generator_.state_dict().items()} for s in range(4)}
    mismatches, done = [], []

    def build_many(s):
        for _ in range(15):
            got = built(seed=s).generator_.state_dict()
            if any(not torch.equal(got[k], want[s][k]) for k in want[s]):
                mismatches.append(s)
        done.append(s)

    threads = [threading.Thread(target=build_many, args=(s,), daemon=True) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)  # a hang, not a speed check: 60 tiny builds take well under a second
    assert sorted(done) == [0, 1, 2, 3] and mismatches == []
