"""An onnxruntime runner lets its session go between uses and opens it again on the next run."""

import numpy as np
import torch
from torch import nn

from hwprune.export.onnx_export import export_onnx
from hwprune.runtime.ort import SessionRunner, make_session


def test_a_suspended_runner_runs_again_on_a_new_session(tmp_path):
    path = export_onnx(nn.Linear(4, 3).eval(), torch.randn(2, 4), tmp_path / "m.onnx")
    opened = []

    def open_session():
        opened.append(make_session(path, 1, "ORT_ENABLE_ALL"))
        return opened[-1]

    runner = SessionRunner(open_session)
    runner.run()
    first = runner.session.run(None, runner.feeds)[0]
    runner.suspend()
    assert runner.session is None
    runner.run()
    assert len(opened) == 2 and runner.session is opened[1]
    assert np.array_equal(runner.session.run(None, runner.feeds)[0], first)
