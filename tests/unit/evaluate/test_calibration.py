"""Calibration inputs from a user function, and fidelity with its caveats."""

import pytest
import torch
from torch import nn

from hwprune.errors import ModelSpecError
from hwprune.evaluate.calibration import fidelity, load_calibration

X = torch.randn(1, 3, 8, 8)


def write(tmp_path, body: str) -> str:
    path = tmp_path / "calib.py"
    path.write_text("import torch\n" + body)
    return str(path)


def test_batches_and_labelled_pairs_are_accepted(tmp_path):
    source = write(tmp_path, "def data():\n    return [(torch.randn(4, 3, 8, 8), torch.zeros(4)) for _ in range(3)]\n")
    calibration = load_calibration(f"{source}:data", X)
    assert len(calibration.batches) == 3 and calibration.batches[0].shape == (4, 3, 8, 8) and not calibration.random


def test_random_stand_in_is_seeded_and_flagged():
    first, second = load_calibration(None, X), load_calibration(None, X)
    assert first.random and torch.equal(first.batches[0], second.batches[0])


@pytest.mark.parametrize("body, message", [
    ("def data():\n    return [torch.randn(2, 3, 9, 9)]\n", "must have the example input's shape"),
    ("def data():\n    return []\n", "yielded no batches"),
    ("def data():\n    return ['text']\n", "not a tensor"),
    ("def data():\n    raise RuntimeError('disk gone')\n", "disk gone"),
])
def test_bad_calibration_data_is_a_clear_error(tmp_path, body, message):
    with pytest.raises(ModelSpecError, match=message):
        load_calibration(f"{write(tmp_path, body)}:data", X)


def test_fidelity_of_a_model_with_itself_is_perfect_and_of_a_changed_one_is_not():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 10)).eval()
    batches = [torch.randn(8, 3, 8, 8)]
    same = fidelity(model, model, batches)
    assert same.cosine == pytest.approx(1.0) and same.top1_agreement == 1.0 and same.caveat is None
    other = nn.Sequential(nn.Flatten(), nn.Linear(192, 10)).eval()
    assert fidelity(model, other, batches).cosine < 0.9


def test_fidelity_warns_when_outputs_say_nothing():
    tiny = nn.Sequential(nn.Flatten(), nn.Linear(192, 10)).eval()
    with torch.no_grad():
        tiny[1].weight.mul_(1e-9)
        tiny[1].bias.zero_()
    assert "vanishingly small" in fidelity(tiny, tiny, [torch.randn(8, 3, 8, 8)]).caveat
    constant = nn.Sequential(nn.Flatten(), nn.Linear(192, 10)).eval()
    with torch.no_grad():
        constant[1].weight.zero_()
        constant[1].bias.fill_(1.0)
    assert "hardly depend on the input" in fidelity(constant, constant, [torch.randn(8, 3, 8, 8)]).caveat


def test_a_model_with_several_outputs_gets_each_outputs_cosine():
    """Detection heads (boxes, classes) are compared one by one; the first is the headline cosine."""
    from torch import nn

    from hwprune.evaluate.calibration import fidelity

    class TwoHeads(nn.Module):
        def __init__(self, flip: bool = False):
            super().__init__()
            self.flip = flip

        def forward(self, x):
            boxes, scores = x[:, :2], x[:, 2:]
            return boxes, (-scores if self.flip else scores)

    batches = [torch.randn(4, 5, generator=torch.Generator().manual_seed(s)) for s in range(2)]
    same = fidelity(TwoHeads(), TwoHeads(), batches)
    assert same.per_output == pytest.approx([1.0, 1.0]) and same.cosine == pytest.approx(1.0)
    flipped = fidelity(TwoHeads(), TwoHeads(flip=True), batches)
    assert flipped.per_output == pytest.approx([1.0, -1.0]) and flipped.cosine == pytest.approx(1.0)
    assert fidelity(nn.Identity(), nn.Identity(), batches).per_output is None


class _TokenLogits(nn.Module):
    """Logits per position, as an hf: language model returns them."""

    returns_logits = True

    def __init__(self, shift: float = 0.0):
        super().__init__()
        self.embed = nn.Embedding(10, 5)
        self.shift = shift

    def forward(self, ids):
        logits = self.embed(ids)
        return logits + self.shift * torch.arange(5.0)


def test_logit_models_get_kl_and_per_position_top1():
    torch.manual_seed(0)
    original = _TokenLogits()
    tokens = [torch.randint(0, 10, (2, 7))]
    same = fidelity(original, original, tokens)
    assert same.kl == pytest.approx(0.0, abs=1e-12) and same.top1_agreement == 1.0
    changed = _TokenLogits(shift=1.0)
    changed.embed = original.embed
    other = fidelity(original, changed, tokens)
    p = torch.log_softmax(original(tokens[0]).double(), -1)
    q = torch.log_softmax(changed(tokens[0]).double(), -1)
    assert other.kl == pytest.approx(float((p.exp() * (p - q)).sum(-1).mean()))
    assert other.kl > 0 and other.samples == 2
    expected = float((p.argmax(-1) == q.argmax(-1)).double().mean())
    assert other.top1_agreement == pytest.approx(expected)
