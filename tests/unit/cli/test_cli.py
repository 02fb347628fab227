"""The command line: contracts, and one clear line with exit code 2 for every bad input."""

import json
import subprocess
import sys

import pytest

from hwprune.cli import main
from tests import DATA as TESTS_DATA  # noqa: E402

DATA = TESTS_DATA / "small_models.py"


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_runs_as_console_script():
    result = subprocess.run([sys.executable, "-m", "hwprune.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "analyze" in result.stdout and "devices" in result.stdout


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("hwprune ")


def test_devices_lists_cpu(capsys):
    code, out, _ = run(capsys, "devices", "--json")
    assert code == 0
    names = [d["name"] for d in json.loads(out)]
    assert "cpu" in names


def test_analyze_json_contract(capsys, tmp_path):
    out_file = tmp_path / "analysis.json"
    code, out, _ = run(capsys, "analyze", f"{DATA}:tiny_cnn", "--json", "--out", str(out_file))
    assert code == 0
    data = json.loads(out)
    assert data == json.loads(out_file.read_text())
    assert data["input_shape"] == [1, 3, 16, 16]
    assert data["params"] == 3 * 8 * 9 + 8 + 16 + 8 * 16 * 9 + 16 + 16 * 4 + 4
    assert data["flops"] > 0
    by_id = {g["id"]: g for g in data["groups"]}
    assert by_id["0"]["channels"] == 8 and by_id["0"]["prunable"]
    assert by_id["0"]["layers"] == ["0", "1", "3"]
    assert by_id["7"]["prunable"] is False and "output" in by_id["7"]["reason"]
    for group in data["groups"]:
        assert set(group) >= {"id", "channels", "kind", "layers", "prunable"}
    assert {s["group"]: s["readers"] for s in data["segments"]} == {"0": ["3"], "3": ["7"]}


def test_analyze_table(capsys):
    code, out, _ = run(capsys, "analyze", f"{DATA}:tiny_cnn")
    assert code == 0
    assert "3 groups, 2 prunable; 2 segments" in out


def test_input_shape_override(capsys):
    code, out, _ = run(capsys, "analyze", f"{DATA}:module_only", "--input-shape", "2,3,5,5", "--json")
    assert code == 0
    assert json.loads(out)["input_shape"] == [2, 3, 5, 5]


@pytest.mark.parametrize("argv, message", [
    (["analyze", "torchvision:no_such_net"], "no such torchvision model"),
    (["analyze", "missing/file.py:make"], "file not found"),
    (["analyze", "missing.pt2"], "file not found"),
    (["analyze", "resnet18"], "not understood"),
    (["analyze", f"{DATA}:nope"], "has no callable"),
    (["analyze", f"{DATA}:broken"], "factory exploded"),
    (["analyze", f"{DATA}:not_a_model"], "must return an nn.Module"),
    (["analyze", f"{DATA}:tiny_cnn", "--input-shape", "1,5,16,16"], "failed in module '0' (Conv2d)"),
    (["analyze", f"{DATA}:tiny_cnn", "--input-shape", "1,a"], "expected comma-separated integers"),
    (["analyze", f"{DATA}:channel_flip"], "FlipBackward0"),
    (["analyze", f"{DATA}:untraceable"], "trace lost layers conv"),
])
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, argv, message):
    out_file = tmp_path / "analysis.json"
    code, out, err = run(capsys, *argv, "--out", str(out_file))
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out_file.exists() and not list(tmp_path.iterdir())


def test_unsupported_op_can_be_skipped(capsys):
    code, out, _ = run(capsys, "analyze", f"{DATA}:channel_flip", "--skip-unsupported", "--json")
    assert code == 0
    conv = next(g for g in json.loads(out)["groups"] if g["id"] == "conv")
    assert conv["prunable"] is False and "FlipBackward0" in conv["reason"]


def test_exclude_marks_group_not_prunable(capsys):
    code, out, _ = run(capsys, "analyze", f"{DATA}:tiny_cnn", "--exclude", "3", "--json")
    assert code == 0
    group = next(g for g in json.loads(out)["groups"] if g["id"] == "3")
    assert group["prunable"] is False and "excluded" in group["reason"]


def test_unwritable_out_is_exit_2(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(capsys, "analyze", f"{DATA}:tiny_cnn", "--out", str(blocker / "sub" / "a.json"))
    assert code == 2 and "cannot write" in err


def test_debug_shows_traceback():
    with pytest.raises(Exception, match="no such torchvision model"):
        main(["--debug", "analyze", "torchvision:no_such_net"])
