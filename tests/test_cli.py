"""The command line: list, train --json, eval --json, sample, and errors that name the argument (exit code 2)."""

from __future__ import annotations

import json

import pytest

from lightformer.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_shows_every_mixer_with_capabilities(capsys):
    code, out, _ = run(capsys, "list", "--json")
    rows = json.loads(out)
    assert code == 0
    names = {r["name"] for r in rows}
    assert {"softmax", "tiled_softmax", "sliding_window"} <= names
    softmax = next(r for r in rows if r["name"] == "softmax")
    assert softmax["exact"] and softmax["decode"] and softmax["complexity"] == "T²·d"
    code, out, _ = run(capsys, "list", "sliding*")
    assert "sliding_window" in out and "tiled_softmax" not in out


def test_train_eval_sample_round_trip(capsys, tmp_path):
    code, out, err = run(capsys, "train", "--preset", "tiny", "--max-steps", "12", "--out", str(tmp_path),
                         "--model.mixer=sliding_window", "--model.mixer_options.window=8", "--json", "--no-progress")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert {"val_loss", "val_bpc", "steps", "tokens", "seconds"} <= set(result)
    assert result["steps"] == 12 and result["tokens"] == 12 * 8 * 32
    code, out, _ = run(capsys, "eval", "--checkpoint", str(tmp_path), "--json")
    evaluated = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and evaluated["val_loss"] == pytest.approx(result["val_loss"], rel=1e-6)
    code, out, _ = run(capsys, "sample", "--checkpoint", str(tmp_path), "--prompt", "def ",
                       "--max-new-tokens", "10", "--temperature", "0")
    assert code == 0 and out.startswith("def ")


@pytest.mark.parametrize("argv,message", [
    (["train", "--preset", "tiny", "--model.mixer=nope"], "unknown mixer 'nope'"),
    (["train", "--preset", "tiny", "--model.mixer_options.windw=3"], "'windw'"),
    (["train", "--preset", "tiny", "--train.max_time=soon"], "max_time"),
    (["train", "--preset", "tiny", "--data", "/nonexistent.txt"], "/nonexistent.txt"),
])
def test_bad_input_exits_2_naming_it(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err


def test_unknown_flag_is_an_error(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--preset", "tiny", "--dpth=3"])
