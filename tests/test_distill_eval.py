"""Distillation loss and perplexity against hand computations."""
import math

import numpy as np
import torch
import torch.nn.functional as F

from cast.distill import causal_ce, distill_loss, kl_teacher_student
from cast.perplexity import perplexity


def test_kl_equals_hand_computation_and_zero_for_identical():
    s = torch.tensor([[[1.0, 2.0, 0.5], [0.0, 0.0, 0.0]]])
    t = torch.tensor([[[2.0, 0.0, 1.0], [0.0, 0.0, 0.0]]])
    pt = torch.softmax(t[0, 0], -1)
    ps = torch.softmax(s[0, 0], -1)
    want = float((pt * (pt.log() - ps.log())).sum())  # only position 0 predicts a next token
    assert math.isclose(float(kl_teacher_student(s, t)), want, rel_tol=1e-6)
    assert float(kl_teacher_student(s, s)) == 0.0


def test_distill_loss_mixes_eta():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    ids = torch.randint(0, 7, (2, 5))
    loss, ce, kl = distill_loss(s, t, ids, eta=0.25)
    assert torch.isclose(loss, 0.25 * kl + 0.75 * ce)
    assert torch.isclose(ce, F.cross_entropy(s[:, :-1].reshape(-1, 7), ids[:, 1:].reshape(-1)))
    loss0, ce0, kl0 = distill_loss(s, None, ids, eta=0.0)
    assert kl0 is None and torch.equal(loss0, ce0)
    _, _, kl2 = distill_loss(s, t, ids, eta=0.5, temperature=2.0)
    assert torch.isclose(kl2, 4.0 * kl_teacher_student(s / 2, t / 2))


class _Fixed(torch.nn.Module):
    """A 'model' whose logits are given: uniform, or one-hot-ish with known probabilities."""

    def __init__(self, vocab, fn):
        super().__init__()
        self.vocab, self.fn = vocab, fn

    def forward(self, ids):
        return type("Out", (), {"logits": self.fn(ids, self.vocab)})


def test_uniform_logits_give_vocab_size_perplexity():
    model = _Fixed(50, lambda ids, v: torch.zeros(*ids.shape, v))
    r = perplexity(model, np.arange(1000) % 50, seqlen=32, batch_size=4, desc="")
    assert math.isclose(r["ppl"], 50.0, rel_tol=1e-6)
    assert r["windows"] == 31 and r["tokens"] == 31 * 31  # remainder dropped, seqlen-1 targets per window


def test_known_probability_perplexity():
    # next token always gets logit log(3) above the rest of a 4-token vocab: p = 3/6 = 0.5 -> ppl 2
    def fn(ids, v):
        logits = torch.zeros(*ids.shape, v)
        nxt = torch.roll(ids, -1, dims=1)
        return logits.scatter(2, nxt.unsqueeze(-1), math.log(3.0))

    r = perplexity(_Fixed(4, fn), np.arange(64) % 4, seqlen=8, desc="")
    assert math.isclose(r["ppl"], 2.0, rel_tol=1e-6)
    assert math.isclose(float(causal_ce(fn(torch.arange(8)[None] % 4, 4), torch.arange(8)[None] % 4)), math.log(2), rel_tol=1e-6)
