"""Per-sample over-fitting: every copy follows its own loss, with no leakage between samples."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from promptdiff.diffusion import overfit_per_sample

B, M, D, N_CLS = 6, 2, 5, 4


def make_problem(seed=0):
    """Per-sample CE of a frozen-style linear classifier whose logits depend on the prompt and
    on each sample's own feature (as CLIP logits depend on the prompt and the image)."""
    g = torch.Generator().manual_seed(seed)
    classifier = torch.nn.Linear(M * D, N_CLS)  # parameters require grad, like an unfrozen model
    with torch.no_grad():
        for p in classifier.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / (M * D) ** 0.5)
    feats = torch.randn(B, M * D, generator=g)
    labels = torch.randint(0, N_CLS, (B,), generator=g)
    base = torch.randn(M, D, generator=g, requires_grad=True)

    def loss_fn(prompts, labels=labels):
        logits = classifier(prompts.reshape(len(prompts), -1) * feats[: len(prompts)])
        return F.cross_entropy(logits, labels[: len(prompts)], reduction="none")

    return classifier, base, labels, loss_fn


@pytest.mark.parametrize(("optimizer", "lr"), [("sgd", 2.0), ("adam", 0.2)])
def test_each_sample_loss_falls(optimizer, lr):
    classifier, base, _, loss_fn = make_problem()
    weights = [p.detach().clone() for p in classifier.parameters()]
    base_before = base.detach().clone()
    result = overfit_per_sample(loss_fn, base, B, steps=20, lr=lr, optimizer=optimizer)
    assert result.targets.shape == (B, M, D) and not result.targets.requires_grad
    assert (result.loss_after < 0.5 * result.loss_before).all()
    assert result.mean_after < result.mean_before
    torch.testing.assert_close(result.loss_before, loss_fn(base.detach().expand(B, M, D)))
    # neither the base prompt nor the model was touched
    assert torch.equal(base.detach(), base_before) and base.grad is None
    for p, w in zip(classifier.parameters(), weights):
        assert p.grad is None and torch.equal(p.detach(), w)


def test_quadratic_copies_reach_their_own_optimum():
    centres = torch.randn(B, M, D)

    def loss_fn(p):
        return (p - centres).pow(2).sum(dim=(1, 2))

    result = overfit_per_sample(loss_fn, torch.zeros(M, D), B, steps=30, lr=0.2, optimizer="sgd")
    # gradient descent on |p - c|^2 contracts the distance by (1 - 2 lr) each step
    torch.testing.assert_close(result.targets, centres * (1 - 0.6**30))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_changing_one_label_changes_only_that_sample(optimizer):
    _, base, labels, loss_fn = make_problem()
    a = overfit_per_sample(loss_fn, base, B, steps=5, lr=0.1, optimizer=optimizer)
    new = labels.clone()
    new[2] = (new[2] + 1) % N_CLS
    b = overfit_per_sample(lambda p: loss_fn(p, new), base, B, steps=5, lr=0.1, optimizer=optimizer)
    changed = (a.targets != b.targets).flatten(1).any(1)
    assert changed.tolist() == [i == 2 for i in range(B)]


def test_batched_gradient_equals_per_sample_gradients():
    _, base, _, loss_fn = make_problem()
    result = overfit_per_sample(loss_fn, base, B, steps=1, lr=1.0, optimizer="sgd")
    for i in range(B):
        p = base.detach().clone().requires_grad_(True)
        one = lambda q, i=i: loss_fn(torch.cat([q[None]] * (i + 1)))[i]  # noqa: E731
        (grad,) = torch.autograd.grad(one(p), p)
        torch.testing.assert_close(base.detach() - result.targets[i], grad)


def test_zero_steps_and_no_grad_context():
    _, base, _, loss_fn = make_problem()
    result = overfit_per_sample(loss_fn, base, B, steps=0, lr=1.0)
    assert torch.equal(result.targets, base.detach().expand(B, M, D))
    assert torch.equal(result.loss_before, result.loss_after)
    with torch.no_grad():
        result = overfit_per_sample(loss_fn, base, B, steps=3, lr=1.0)
    assert (result.loss_after < result.loss_before).all()


def test_bad_arguments_raise():
    _, base, _, loss_fn = make_problem()
    with pytest.raises(ValueError, match="optimizer"):
        overfit_per_sample(loss_fn, base, B, steps=1, lr=1.0, optimizer="lbfgs")
    with pytest.raises(ValueError, match="steps"):
        overfit_per_sample(loss_fn, base, B, steps=-1, lr=1.0)
    with pytest.raises(ValueError, match="loss_fn"):
        overfit_per_sample(lambda p: loss_fn(p).mean(), base, B, steps=1, lr=1.0)


def test_aux_is_what_loss_fn_returns_at_the_overfitted_prompts():
    _, base, _, loss_fn = make_problem()

    def with_aux(p):
        return loss_fn(p), p.detach().flatten(1).sum(1)

    plain = overfit_per_sample(loss_fn, base, B, steps=3, lr=0.1, optimizer="adam")
    result = overfit_per_sample(with_aux, base, B, steps=3, lr=0.1, optimizer="adam", has_aux=True)
    assert torch.equal(result.targets, plain.targets) and plain.aux_after is None
    assert torch.equal(result.aux_after, result.targets.flatten(1).sum(1))
    assert torch.equal(result.loss_after, loss_fn(result.targets).detach())


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("layout", ["plain", "transposed"])
def test_steps_equal_textbook_sgd_and_adam_on_each_copy(optimizer, layout):
    """torch.optim on the [B, ...] copies = SGD / Adam (Kingma & Ba, bias-corrected) run by hand
    on each copy's own loss: the loss is summed over copies, not averaged. `transposed` reads the
    prompt through a permute, so autograd returns a gradient with other strides than the copies'."""
    _, base, _, plain_loss = make_problem()

    def loss_fn(p):
        if layout == "plain":
            return plain_loss(p)
        return plain_loss(p.transpose(1, 2).reshape(len(p), -1).view(len(p), D, M).transpose(1, 2))

    q = base.detach().expand(B, M, D).clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(q).sum(), q)
    assert g.is_contiguous() == (layout == "plain")
    lr, steps, (b1, b2), eps = 0.05, 6, (0.9, 0.999), 1e-8
    result = overfit_per_sample(loss_fn, base, B, steps=steps, lr=lr, optimizer=optimizer)
    p = base.detach().expand(B, M, D).clone()
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    for k in range(1, steps + 1):
        q = p.clone().requires_grad_(True)
        g = torch.stack([torch.autograd.grad(loss_fn(q)[i], q)[0][i] for i in range(B)])
        if optimizer == "sgd":
            p = p - lr * g
        else:
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
            p = p - lr * (m / (1 - b1**k)) / ((v / (1 - b2**k)).sqrt() + eps)
    assert (p - base.detach()).abs().max() > 0.05  # the copies moved well beyond the tolerance
    torch.testing.assert_close(result.targets, p, rtol=0, atol=1e-6)
