"""TorchScript (script and trace) and ONNX (through onnxruntime) outputs equal the module's."""

from __future__ import annotations

import pytest
import torch
from boring import BoringModel

torch.set_num_threads(1)


@pytest.mark.parametrize("method", ["script", "trace"])
def test_torchscript_matches_module(tmp_path, method) -> None:
    torch.manual_seed(0)
    model = BoringModel(dropout=0.5)
    x = torch.randn(5, 8)
    ts = model.to_torchscript(tmp_path / "m.pt", method=method, example_inputs=x)
    model.eval()
    assert torch.equal(ts(x), model(x))
    assert torch.equal(torch.jit.load(tmp_path / "m.pt")(x), model(x))
    assert model.training is False  # we put it in eval above; export restores the mode it found


def test_onnx_matches_module_through_onnxruntime(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = BoringModel()
    x = torch.randn(5, 8)
    model.to_onnx(tmp_path / "m.onnx", x)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = model(x)
    assert torch.allclose(torch.from_numpy(out), expected, atol=1e-5, rtol=0)
