"""Start-up calibration is measured once per machine and model shape, then remembered: a second
start takes the remembered row limits (measuring nothing) and builds the same engine."""

from __future__ import annotations

import json

import pytest

from engine import InferenceEngine
from engine.model import calibration
from engine.model.int4_linear import Int4Linear


def _limits(engine: InferenceEngine) -> tuple:
    model = engine.core.runner.model
    int4 = {m.max_int4_rows for m in model.modules() if isinstance(m, Int4Linear) and m.weight is not None}
    return int4, model.c_head_max_rows, getattr(model, "int8_head_max_rows", None)


def test_a_second_start_takes_the_remembered_limits(gguf_path, tmp_path, monkeypatch):
    """The measuring itself runs at every other bfloat16 load of the suite; here it is a stand-in
    that counts its calls and answers limits no machine would measure."""
    monkeypatch.setattr(calibration, "_path", lambda: str(tmp_path / "calibration.json"))  # nothing remembered yet
    monkeypatch.delenv("FORGE_RECALIBRATE", raising=False)
    measured = []

    def measure(*args) -> calibration.Calibration:
        measured.append(args)
        return calibration.Calibration(int4_rows=3, c_head_rows=5, int8_head_rows=2)

    monkeypatch.setattr(calibration, "_measure", measure)
    first = InferenceEngine.from_pretrained(gguf_path, dtype="bfloat16", quantized_weights="mixed")
    (entry,) = json.loads((tmp_path / "calibration.json").read_text()).values()
    assert entry == {"int4_rows": 3, "c_head_rows": 5, "int8_head_rows": 2} and len(measured) == 1
    second = InferenceEngine.from_pretrained(gguf_path, dtype="bfloat16", quantized_weights="mixed")
    assert len(measured) == 1, "a remembered calibration was measured again"
    assert second.description == first.description and "4-bit up to 3 rows" in first.description
    assert _limits(second) == _limits(first) == ({3}, 5, 2)
    remembered = json.loads((tmp_path / "calibration.json").read_text())
    (tmp_path / "calibration.json").write_text(json.dumps({**remembered, "another model": entry}))
    monkeypatch.setenv("FORGE_RECALIBRATE", "1")
    calibration.calibrate(second.core.runner.model, "mixed", frozenset(), c_matmuls=True)
    assert len(measured) == 2
    assert json.loads((tmp_path / "calibration.json").read_text())["another model"] == entry, \
        "measuring again forgot another model's answer"


@pytest.mark.parametrize("damage", ["not json", "[1, 2]", '{"%s": {"int4_rows": -4}}', '{"%s": {"int4_rows": 1}}'])
def test_a_damaged_memory_is_measured_again(damage, tmp_path, monkeypatch):
    monkeypatch.setattr(calibration, "_path", lambda: str(tmp_path / "calibration.json"))
    (tmp_path / "calibration.json").write_text(damage.replace("%s", "k"))
    assert calibration._valid(calibration._load().get("k")) is None
