"""The analysis commands read only finished runs, each configuration and seed once, and say in one line
what they cannot use; figures say what they show."""
import json
import shutil

import matplotlib.pyplot as plt
import numpy as np
import pytest

from conftest import QUICK, run_cli
from evaluation.plots import show_correlation


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweeps") / "first"
    run_cli("train.py", "-m", "loss=lse,lse_var_tc", *QUICK, "model.hidden_dim=8", f"hydra.sweep.dir={folder}")
    return folder


def copy_of(sweep, tmp_path, name="copy"):
    copy = tmp_path / name
    shutil.copytree(sweep, copy)
    return copy


def set_metrics(run, **values):
    metrics = json.loads((run / "metrics.json").read_text()) | values
    (run / "metrics.json").write_text(json.dumps(metrics))


def test_a_run_that_did_not_finish_is_skipped_and_listed(sweep, tmp_path):
    folder = copy_of(sweep, tmp_path)
    shutil.copytree(folder / "0", folder / "0-killed")
    set_metrics(folder / "0-killed", status="running", epoch=3, seed=0)
    result = run_cli("-m", "analysis.ablation", f"dir={folder}")
    assert f"skipped {folder / '0-killed'}: status running (epoch 3)" in result.stderr
    table = (folder / "analysis" / "ablation.md").read_text()
    assert "| A: lse | 1 |" in table and "| C: lse+var+tc | 1 |" in table  # n = 1: not averaged with it


def test_two_finished_runs_of_one_configuration_and_seed_are_refused(sweep, tmp_path):
    folder = copy_of(sweep, tmp_path)
    shutil.copytree(folder / "0", folder / "0-again")
    result = run_cli("-m", "analysis.ablation", f"dir={folder}", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: two runs of ") and ",loss=lse," in last
    assert last.endswith(f" with seed 0, {folder / '0'} and {folder / '0-again'}, would be averaged as seeds; "
                         "they differ in nothing: the same run twice")


def test_a_folder_of_several_sweeps_is_merged_and_says_so(sweep, tmp_path):
    parent = tmp_path / "multirun"
    copy_of(sweep, parent, "a")
    second = copy_of(sweep, parent, "b")
    for job in ("0", "1"):
        (second / job / "config_resolved.yaml").write_text(
            (second / job / "config_resolved.yaml").read_text().replace("seed: 0", "seed: 1"))
    result = run_cli("-m", "analysis.ablation", f"dir={parent}")
    assert f"merging the runs of 2 folders: {parent / 'a'}, {parent / 'b'}" in result.stderr
    assert "| A: lse | 2 |" in (parent / "analysis" / "ablation.md").read_text()


@pytest.mark.parametrize("case", ["missing", "empty", "no_unit_stats"])
def test_a_folder_without_usable_runs_gives_one_line(sweep, tmp_path, case):
    folder = tmp_path / "nothing"
    if case == "empty":
        folder.mkdir()
    if case == "no_unit_stats":
        folder = copy_of(sweep, tmp_path)
        for stats in folder.glob("*/unit_stats.npz"):
            stats.unlink()
    result = run_cli("-m", "analysis.ablation", f"dir={folder}", check=False)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0 and "Traceback" not in result.stderr
    expected = {"missing": f"error: dir={folder} is not a folder",
                "empty": f"error: no finished run under {folder} (",
                "no_unit_stats": f"error: no finished run under {folder} ("}[case]
    assert last.startswith(expected)
    if case == "no_unit_stats":
        assert f"skipped {folder / '0'}: no unit_stats.npz" in result.stderr


def test_an_all_dead_code_is_marked_not_drawn_as_decorrelated():
    figure, (dead, alive) = plt.subplots(1, 2)
    show_correlation(dead, np.zeros((4, 4)), np.zeros(4), "run")
    show_correlation(alive, np.eye(4), np.array([0.5, 0.5, 0.0, 0.5]), "run")
    assert [text.get_text() for text in dead.texts] == ["all units dead\n(no correlation defined)"]
    assert not alive.texts and "1 dead units" in alive.get_title()
    assert alive.get_xlabel() == "unit j" and alive.get_ylabel() == "unit i"
    plt.close(figure)
