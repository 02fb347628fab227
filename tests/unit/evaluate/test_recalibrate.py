"""BatchNorm recalibration: statistics re-estimated from calibration inputs, nothing else touched."""

import pytest
import torch
from torch import nn

from hwprune.errors import HwpruneError
from hwprune.evaluate.batchnorm import recalibrate_batchnorm


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(),
                         nn.LazyLinear(4), nn.BatchNorm1d(4)).eval()


def test_statistics_become_those_of_the_calibration_inputs():
    net = model()
    x = torch.randn(16, 3, 6, 6) * 3 + 1
    net(x)  # materialise the lazy layer
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    assert recalibrate_batchnorm(net, [x[:8], x[8:]]) == 2
    with torch.no_grad():
        conv_out = net[0](x)
    # cumulative averages over the two batches: of their means, and of their (unbiased) variances
    assert torch.allclose(net[1].running_mean, conv_out.mean(dim=(0, 2, 3)), atol=1e-5)
    per_batch_var = [conv_out[part].var(dim=(0, 2, 3), unbiased=True) for part in (slice(0, 8), slice(8, 16))]
    assert torch.allclose(net[1].running_var, sum(per_batch_var) / 2, rtol=1e-4)
    assert not net.training and not any(m.training for m in net.modules())
    assert net[1].momentum == 0.1  # restored
    after = {k: v for k, v in net.state_dict().items() if k in weights}
    assert all(torch.equal(weights[k], after[k]) for k in weights)  # no parameter changed


def test_dropout_stays_off_during_recalibration():
    net = model()
    x = torch.randn(8, 3, 6, 6)
    net(x)
    recalibrate_batchnorm(net, [x])
    first, second = net(x), net(x)
    assert torch.equal(first, second)


def test_single_sample_batches_are_a_clear_error():
    net = model()
    net(torch.randn(2, 3, 6, 6))
    with pytest.raises(HwpruneError, match="more than one sample"):
        recalibrate_batchnorm(net, [torch.randn(1, 3, 6, 6)])
