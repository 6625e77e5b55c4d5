import pytest
import torch
from torch import nn

from reflow.evaluate import evaluate, variance_probe, variance_ratios


def test_probe_variance_is_variance_over_all_elements(tiny_model: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(8, 3, 32, 32, generator=g) * 3 + 5 for _ in range(3)]
    outputs = []
    handle = tiny_model.layer3[2].bn2.register_forward_hook(lambda m, i, o: outputs.append(o))
    with torch.no_grad(), variance_probe(tiny_model) as acc:
        for x in xs:
            tiny_model(x)
    handle.remove()
    expected = torch.cat(outputs).double().var(unbiased=False).item()
    assert abs(acc["layer3.2.bn2"].variance - expected) < 1e-6 * expected


def test_probe_is_accurate_when_variance_is_tiny_next_to_mean() -> None:
    bn = nn.BatchNorm1d(1).eval()
    with torch.no_grad():
        bn.bias.fill_(1000.0)
        bn.weight.fill_(1e-3)
    model = nn.Sequential(bn)
    x = torch.randn(4096, 1, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), variance_probe(model) as acc:
        for chunk in x.split(512):
            model(chunk)
    with torch.no_grad():
        expected = model(x).double().var(unbiased=False).item()
    naive = model(x).square().mean() - model(x).mean().square()  # float32 E[x²]-E[x]²
    assert abs(naive.item() - expected) > expected  # the naive formula is useless here
    assert abs(acc["0"].variance - expected) < 1e-3 * expected


def test_evaluate_counts_and_ratios(tiny_model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(16, 3, 32, 32, generator=g), torch.randint(10, (16,), generator=g))
        for _ in range(3)
    ]
    with torch.no_grad():
        logits = torch.cat([tiny_model(x) for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    ev = evaluate(tiny_model, batches, 10)
    assert ev.samples == 48
    assert ev.top1 == pytest.approx(100.0 * (logits.argmax(1) == labels).double().mean().item())
    assert sum(ev.predictions) == 48
    assert ev.top_class_share == max(ev.predictions) / 48
    assert set(variance_ratios(ev, ev).values()) == {1.0}


def test_probe_samples_limits_probe_not_accuracy(tiny_model: nn.Module) -> None:
    batches = [(torch.randn(8, 3, 32, 32), torch.zeros(8, dtype=torch.long)) for _ in range(4)]
    full = evaluate(tiny_model, batches, 10)
    part = evaluate(tiny_model, batches, 10, probe_samples=8)
    off = evaluate(tiny_model, batches, 10, probe_samples=0)
    assert full.samples == part.samples == off.samples == 32
    assert off.norm_variance == {}
    assert part.norm_variance.keys() == full.norm_variance.keys()
    assert part.norm_variance != full.norm_variance
