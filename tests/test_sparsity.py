"""N:M masks, target selection, the checker, weight scaling and its fold."""
import pytest
import torch

from cast.sparsity import (
    SparsityError,
    check_model,
    count_violations,
    find_targets,
    hard_prune_,
    nm_mask,
    nm_mask_reference,
    param_mask,
    weight_of,
)
from cast.weight_scaling import BlockScale, attach_scales, fold_

DEFAULT_TARGETS = [r"\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|c_attn|c_proj|c_fc|fc1|fc2|out_proj)$"]


def test_mask_keeps_largest_per_group_by_hand():
    w = torch.tensor([[0.1, -0.9, 0.5, 0.2, 3.0, 0.0, -3.0, 1.0]])
    assert nm_mask(w, 2, 4).tolist() == [[False, True, True, False, True, False, True, False]]
    assert nm_mask(w, 1, 4).tolist() == [[False, True, False, False, True, False, False, False]]


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (2, 8), (4, 8), (1, 2)])
def test_mask_equals_reference_with_ties(n, m):
    torch.manual_seed(0)
    w = torch.randint(-3, 4, (64, 8 * m)).float()  # many ties
    got = nm_mask(w, n, m)
    assert torch.equal(got, nm_mask_reference(w, n, m))
    assert (got.reshape(-1, m).sum(1) == n).all()  # exactly N kept, ties included


def test_mask_ties_break_towards_lower_index():
    assert nm_mask(torch.ones(1, 4), 2, 4).tolist() == [[True, True, False, False]]


def test_input_size_not_divisible_is_an_error():
    with pytest.raises(SparsityError, match="not divisible by M=4"):
        nm_mask(torch.randn(3, 6), 2, 4)


def test_conv1d_layout_masks_along_inputs():
    w = torch.randn(8, 3)  # (in, out) as in GPT-2's Conv1D
    assert torch.equal(param_mask(w, 2, 4, input_dim=0), nm_mask(w.t(), 2, 4).t())


def test_targets_checker_and_prune(llama_factory):
    model = llama_factory()
    targets = find_targets(model, DEFAULT_TARGETS, ["lm_head", "embed"], 4)
    assert len(targets) == 7  # q k v o gate up down of the single layer
    assert all("lm_head" not in n and "embed" not in n for n in targets)
    assert sum(check_model(model, targets, 2, 4).values()) > 0  # dense: violations
    hard_prune_(targets, 2, 4)
    assert sum(check_model(model, targets, 2, 4).values()) == 0
    w = torch.ones(2, 8)
    assert count_violations(w, 2, 4) == 4


def test_no_matching_target_and_bad_m(llama_factory):
    model = llama_factory(hidden=20, heads=2, inter=38)  # down_proj input 38 is not a multiple of 4
    with pytest.raises(SparsityError, match="not divisible by M=4"):
        find_targets(model, DEFAULT_TARGETS, [], 4)
    with pytest.raises(SparsityError, match="no layer matches"):
        find_targets(model, [r"nothing_here$"], [], 4)


def test_block_scale_expand_contiguous():
    sc = BlockScale(2, 8, 2)
    with torch.no_grad():
        sc.scale.copy_(torch.tensor([[2.0, 3.0], [5.0, 7.0]]))
    assert sc.expanded().tolist() == [[2.0] * 4 + [3.0] * 4, [5.0] * 4 + [7.0] * 4]


@pytest.mark.parametrize("input_dim", [1, 0])
def test_block_scale_forward_broadcast_equals_expanded_product(input_dim):
    """forward broadcasts over (rows, blocks, block); values and both gradients equal W * expand(A)."""
    torch.manual_seed(0)
    sc = BlockScale(6, 12, 3, input_dim)
    with torch.no_grad():
        sc.scale.uniform_(0.5, 1.5)
    w = torch.randn(6, 12) if input_dim == 1 else torch.randn(12, 6)  # Conv1D keeps (in, out)
    w.requires_grad_(True)
    grad_out = torch.randn_like(w)
    (sc(w) * grad_out).sum().backward()
    g_w, g_a = w.grad.clone(), sc.scale.grad.clone()
    w.grad, sc.scale.grad = None, None
    ref = w * sc.expanded()
    (ref * grad_out).sum().backward()
    torch.testing.assert_close(sc(w), ref, rtol=0, atol=0)
    torch.testing.assert_close(g_w, w.grad)
    torch.testing.assert_close(g_a, sc.scale.grad)


def test_scaling_fold_preserves_logits_and_sparsity(llama_factory):
    torch.manual_seed(0)
    model = llama_factory()
    targets = find_targets(model, DEFAULT_TARGETS, ["lm_head", "embed"], 4)
    scales = attach_scales(targets, 2)
    assert all(torch.equal(s, torch.ones_like(s)) for s in scales.values())  # init 1
    with torch.no_grad():
        for s in scales.values():
            s.uniform_(0.5, 1.5)
    hard_prune_(targets, 2, 4)  # on the raw weights (parametrization original)
    x = torch.randint(0, 64, (2, 16))
    before = model(x).logits
    fold_(targets)
    assert not any(hasattr(m, "parametrizations") and "weight" in m.parametrizations for m in targets.values())
    after = model(x).logits
    assert (before - after).abs().max() <= 1e-5
    assert sum(check_model(model, targets, 2, 4).values()) == 0
    assert all(weight_of(m) is m.weight for m in targets.values())


def test_ste_forward_is_masked_and_gradient_is_straight_through():
    from cast.sparsity import attach_ste_masks

    lin = torch.nn.Linear(8, 2, bias=False)
    mask = nm_mask(lin.weight, 2, 4)
    w0 = lin.weight.detach().clone()
    attach_ste_masks({"lin": lin}, lambda name: mask)
    x = torch.randn(3, 8)
    y = lin(x)
    torch.testing.assert_close(y, x @ (w0 * mask).t())
    y.sum().backward()
    g = weight_of(lin).grad
    torch.testing.assert_close(g, x.sum(0).expand(2, 8))  # dense gradient, masked entries included
