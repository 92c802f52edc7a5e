"""Export to ONNX / OpenVINO IR / TFLite: dynamic batch, checked against eager PyTorch, clean failures."""

import numpy as np
import pytest
import torch

from detector import cli
from detector.backends.onnx import RAW_TOLERANCE, check_batch
from detector.errors import ExportError
from detector.export import export


@pytest.fixture(scope="module")
def model(person_detector):
    return person_detector.model


def test_onnx_export_has_a_dynamic_batch_and_matches_eager(tmp_path, model, capsys):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "person.onnx"
    assert cli.main(["export", "--format", "onnx", str(out), "--weights", "person"]) == 0
    assert "max abs diff" in capsys.readouterr().out
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch_size in (1, 3):
        batch = check_batch(model.image_size, batch_size)
        codes, logits = session.run(["box_codes", "class_logits"], {"images": batch})
        with torch.inference_mode():
            want_codes, want_logits = model(torch.from_numpy(batch))
        assert codes.shape == (batch_size, 1917, 4) and logits.shape == (batch_size, 1917, 2)
        assert np.abs(codes - want_codes.numpy()).max() <= RAW_TOLERANCE
        assert np.abs(logits - want_logits.numpy()).max() <= RAW_TOLERANCE


def test_openvino_export_writes_ir_and_matches_eager(tmp_path, model):
    pytest.importorskip("openvino")
    report = export(model, tmp_path / "ir" / "person", format="openvino")
    assert report.path == tmp_path / "ir" / "person.xml"
    assert report.path.is_file() and report.path.with_suffix(".bin").is_file()
    assert report.max_abs_diff <= RAW_TOLERANCE


def test_tflite_export_is_nhwc_with_a_dynamic_batch_and_matches_eager(tmp_path, model, capsys):
    pytest.importorskip("ai_edge_litert")
    from detector.backends.tflite_export import run_tflite

    out = tmp_path / "person.tflite"
    assert cli.main(["export", "--format", "tflite", str(out), "--weights", "person"]) == 0
    assert "(tflite); max abs diff" in capsys.readouterr().out
    for batch_size in (1, 3):
        batch = check_batch(model.image_size, batch_size)
        codes, logits = run_tflite(out, batch)
        with torch.inference_mode():
            want_codes, want_logits = model(torch.from_numpy(batch))
        assert codes.shape == (batch_size, 1917, 4) and logits.shape == (batch_size, 1917, 2)
        assert np.abs(codes - want_codes.numpy()).max() <= RAW_TOLERANCE
        assert np.abs(logits - want_logits.numpy()).max() <= RAW_TOLERANCE


def test_export_refuses_a_file_that_disagrees_with_eager(tmp_path, model, monkeypatch):
    from detector import export as export_module

    def off_by_one(path, format):
        def run(batch):
            with torch.inference_mode():
                codes, logits = model(torch.from_numpy(batch))
            return codes.numpy() + 1, logits.numpy()

        return run

    monkeypatch.setattr(export_module, "_engine_for", off_by_one)
    out = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match="differs from eager PyTorch"):
        export(model, out, format="onnx")
    assert not out.exists()


def test_export_user_errors_are_one_line(tmp_path, model, capsys):
    with pytest.raises(ExportError, match="unknown export format"):
        export(model, tmp_path / "x", format="coreml")  # type: ignore[arg-type]
    assert cli.main(["export", "--format", "onnx", "/proc/no/such/dir/x.onnx"]) == cli.EXIT_FAILED
    assert capsys.readouterr().err.startswith("detector: error: cannot write")
