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


def test_blocks_lists_blocks_ffns_norms_and_schedule_presets(capsys):
    code, out, _ = run(capsys, "blocks", "--json")
    rows = {(r["kind"], r["name"]): r for r in json.loads(out)}
    assert code == 0
    assert {("block", "pre_norm"), ("block", "deepnorm"), ("ffn", "swiglu"), ("ffn", "moe"), ("norm", "scalenorm"),
            ("schedule", "masformer")} <= set(rows)
    assert rows[("ffn", "moe")]["options"]["num_experts"] == 8
    assert rows[("schedule", "masformer")]["options"] == {"num_layers=8": "sliding_window; softmax@0,1"}
    code, out, _ = run(capsys, "blocks", "*glu")
    assert "swiglu" in out and "deepnorm" not in out


def test_train_with_a_schedule_and_block_from_dotted_overrides(capsys):
    code, out, err = run(capsys, "train", "--preset", "tiny", "--max-steps", "3", "--json", "--no-progress",
                         "--model.schedule=linear; softmax@0", "--model.block=sandwich", "--model.ffn=swiglu")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["steps"] == 3


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


def test_train_and_eval_any_task(capsys, tmp_path):
    task = ["--task", "mqar", "--task.options.seq_len=32", "--task.options.num_kv_pairs=4",
            "--task.options.vocab_size=32"]
    code, out, err = run(capsys, "train", "--preset", "tiny", *task, "--max-steps", "4", "--out", str(tmp_path),
                         "--json", "--no-progress")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["task"] == "mqar" and 0.0 <= result["val_accuracy"] <= 1.0
    assert result["tokens"] == 4 * 8 * 32 and result["scored"] == 4 * 8 * 4  # K=4 scored positions per sequence
    code, out, _ = run(capsys, "eval", "--checkpoint", str(tmp_path), "--json")
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["val_accuracy"] == pytest.approx(
        result["val_accuracy"])
    code, _, err = run(capsys, "sample", "--checkpoint", str(tmp_path))
    assert code == 2 and "needs a language model" in err


def test_tasks_lists_and_shows_decoded_examples(capsys):
    code, out, _ = run(capsys, "tasks", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and {"mqar", "listops", "lm", "retrieval"} <= set(rows)
    assert rows["mqar"]["kind"] == "sequence" and rows["mqar"]["options"]["num_kv_pairs"] == 4
    code, out, _ = run(capsys, "tasks", "show", "mqar", "--n", "2", "--option", "seq_len=16",
                       "--option", "num_kv_pairs=2", "--option", "vocab_size=16")
    assert code == 0 and out.count("--- example") == 2 and "targets:" in out
    code, _, err = run(capsys, "tasks", "show", "mqar", "--option", "no_such=1")
    assert code == 2 and "no_such" in err
