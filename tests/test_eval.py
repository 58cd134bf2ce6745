"""Zero-shot evaluation: metrics against hand-worked examples, and a model trained for a few
seconds on the toy colours scoring far above chance where a random one sits at chance."""
from __future__ import annotations

import pytest

from toy_data import COLOURS, toy_rows, write_parquet

CHANCE = 1 / len(COLOURS)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny CLIP trained in-process (one rank) for 20 steps, and a held-out labelled set."""
    from capmix.config import from_dict
    from training.train import run

    root = tmp_path_factory.mktemp("eval")
    write_parquet(root / "train", toy_rows(16, seed=7), files=2)
    write_parquet(root / "heldout", toy_rows(10, seed=8), files=1)
    cfg = from_dict({"train": {"model": "tiny-clip", "batch_size": 32, "samples": 32 * 20,
                               "warmup": 3, "workers": 2, "log_every": 5}})
    assert run(cfg, str(root / "train"), str(root / "run"))["samples_seen"] == 640
    return root


def test_retrieval_recall_by_hand():
    import torch

    from training.evaluate import retrieval_recall

    e = torch.eye(3)
    images = e
    texts = torch.stack([e[0], 0.6 * e[0] + 0.8 * e[1], e[1], 0.8 * e[0] + 0.6 * e[2]])
    # t0, t1 describe image 0 (t1 is closer to image 1); t2 image 1; t3 image 2 (closer to 0).
    got = retrieval_recall(images, texts, torch.tensor([0, 0, 1, 2]), ks=(1, 2, 5))
    assert got["text_to_image_R@1"] == 0.5  # t0 and t2 find their image first
    assert got["text_to_image_R@2"] == 1.0
    assert got["image_to_text_R@1"] == 1.0  # each image's best text is one of its own
    assert got["mean_R@1"] == 0.75
    assert got["image_to_text_R@5"] == got["text_to_image_R@5"] == 1.0  # k capped


def test_topk_accuracy_by_hand():
    import torch

    from training.evaluate import topk_accuracy

    logits = torch.tensor([[9.0, 1, 2, 3, 4, 5], [1, 9, 8, 7, 6, 5], [6, 5, 4, 3, 2, 1]])
    got = topk_accuracy(logits, torch.tensor([0, 3, 5]))  # ranks 1, 3 and 6
    assert got == {"top1": pytest.approx(1 / 3), "top5": pytest.approx(2 / 3)}


def test_classnames_and_templates(tmp_path):
    from capmix.errors import InputError
    from training.evaluate import classnames_for, templates_for

    assert len(templates_for("openai")) == 80 and templates_for("simple") == ["a photo of a {c}."]
    assert templates_for("a {} here.") == ["a {c} here."]
    (tmp_path / "t.txt").write_text("a {c}.\n\nthe {}!\n")
    assert templates_for(str(tmp_path / "t.txt")) == ["a {c}.", "the {c}!"]
    with pytest.raises(InputError, match="needs"):
        templates_for("no placeholder")
    assert classnames_for(None, ["b", "a", "b"]) == ["a", "b"]
    assert classnames_for("x, y", []) == ["x", "y"]
    assert len(classnames_for("imagenet", [])) == 1000
    assert classnames_for("fashion-mnist", [])[9] == "ankle boot"


def test_trained_model_beats_chance_and_results_reach_the_lake(trained, spark, cfg):
    from capmix.lake import open_lake
    from training.eval_job import run

    heldout = str(trained / "heldout")
    good = run(spark, cfg, str(trained / "run"), "classification", heldout)
    rand = run(spark, cfg, "random:tiny-clip", "classification", heldout)
    assert good["n"] == 60 and good["classes"] == len(COLOURS)
    assert good["top1"] >= 0.9, good
    assert rand["top1"] <= 2 * CHANCE, rand
    run(spark, cfg, str(trained / "run"), "classification", heldout)  # again: an upsert
    rows = open_lake(spark, cfg.lake).read("eval_results").toPandas()
    mine = rows[rows["run"] == "run"].set_index("metric")
    assert len(mine) == 4 and mine.loc["top1", "value"] == pytest.approx(good["top1"])
    assert mine.loc["top1", "step"] == 20 and mine.loc["top1", "samples_seen"] == 640
    assert set(mine["task"]) == {"classification"} and set(mine["dataset"]) == {"heldout"}
    assert (rows["run"] == "random:tiny-clip").sum() == 4


def test_retrieval_on_an_image_caption_set(trained, spark, cfg):
    from training.eval_job import run

    heldout = str(trained / "heldout")
    good = run(spark, cfg, str(trained / "run"), "retrieval", heldout, write=False)
    rand = run(spark, cfg, "random:tiny-clip", "retrieval", heldout, write=False)
    assert good["images"] == good["texts"] == 60
    # Ten images per colour share near-identical captions, so R@1 is capped near 1/10; R@10
    # shows whether a caption finds its colour.
    for way in ("image_to_text", "text_to_image"):
        assert good[f"{way}_R@10"] >= 0.5 and good[f"{way}_R@10"] > rand[f"{way}_R@10"] + 0.2
    assert good["mean_R@1"] == pytest.approx(
        (good["image_to_text_R@1"] + good["text_to_image_R@1"]) / 2)


def test_image_folder_and_lake_table_inputs(trained, spark, cfg, lake):
    from training.eval_job import run

    rows = toy_rows(4, seed=9)
    folder = trained / "folder"
    for r in rows:
        (folder / r["label"]).mkdir(parents=True, exist_ok=True)
        (folder / r["label"] / f"{r['uid']}.img.png").write_bytes(r["image"])
    got = run(spark, cfg, str(trained / "run"), "classification", str(folder), write=False)
    assert got["n"] == 24 and got["top1"] >= 0.9

    df = spark.createDataFrame([(r["image"], r["label"]) for r in rows],
                               "image BINARY, label STRING")
    lake.append("toy_labelled", df)
    got = run(spark, cfg, str(trained / "run"), "classification", "table:toy_labelled",
              write=False)
    assert got["n"] == 24 and got["top1"] >= 0.9


def test_eval_command_line_and_errors(trained, spark, cfg, capsys):
    from capmix.cli import main

    base = ["eval", "--lake", cfg.lake.path, "--checkpoint", str(trained / "run"),
            "--set", "spark.master=local[2]"]
    assert main([*base, "--task", "classification", "--data", str(trained / "heldout"),
                 "--templates", "a photo of a {}.", "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "run | classification | heldout" in out and "top1" in out
    assert main([*base, "--task", "retrieval", "--data", str(trained / "nowhere")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main([*base, "--task", "datacomp", "--no-write"]) == 2
    assert "needs clip_benchmark" in capsys.readouterr().err


def test_evaluating_a_trained_checkpoint_does_not_warn_of_random_weights(trained, spark, cfg,
                                                                          caplog):
    """open_clip logs "No pretrained weights loaded ... initialized randomly" (a root-logger
    WARNING) for every model it builds without weights; evaluation builds one only to load the
    checkpoint into it, so the warning would be false there."""
    import logging

    from training.eval_job import run

    heldout = str(trained / "heldout")

    def warned() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if "No pretrained weights loaded" in r.getMessage()]

    # The capture sees the warning where it is true: a random model.
    with caplog.at_level(logging.WARNING):
        run(spark, cfg, "random:tiny-clip", "classification", heldout, write=False)
    assert warned(), "caplog must see open_clip's warning for a random model"
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        got = run(spark, cfg, str(trained / "run"), "classification", heldout, write=False)
    assert got["top1"] >= 0.9 and warned() == []
