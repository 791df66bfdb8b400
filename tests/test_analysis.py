"""The analysis commands read only finished runs, each configuration and seed once, and say in one line
what they cannot use; figures say what they show."""
import json
import shutil

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.container import ErrorbarContainer

from analysis.ablation import figure_2, group_by_loss
from analysis.runs import load_runs
from analysis.theorem import figure as theorem_figure
from analysis.theorem import pearson_text
from conftest import QUICK, run_cli
from evaluation.plots import active_count_histogram, density_histogram, show_correlation


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


def two_sweeps(sweep, tmp_path):
    """A folder of two copies of the sweep, the second as seed 1: two seeds of each configuration."""
    parent = tmp_path / "multirun"
    copy_of(sweep, parent, "a")
    second = copy_of(sweep, parent, "b")
    for job in ("0", "1"):
        config = second / job / "config_resolved.yaml"
        config.write_text(config.read_text().replace("seed: 0", "seed: 1"))
    return parent


def test_a_run_that_did_not_finish_is_skipped_and_listed(sweep, tmp_path):
    folder = copy_of(sweep, tmp_path)
    shutil.copytree(folder / "0", folder / "0-killed")
    set_metrics(folder / "0-killed", status="running", epoch=3, seed=0)
    shutil.copytree(folder / "1", folder / "1-torn")
    (folder / "1-torn" / "metrics.json").write_text('{"status": "fini')
    shutil.copytree(folder / "0", folder / "0-no-metrics")
    (folder / "0-no-metrics" / "metrics.json").unlink()
    result = run_cli("-m", "analysis.ablation", f"dir={folder}")
    assert f"skipped {folder / '0-killed'}: status running (epoch 3)" in result.stderr
    assert f"skipped {folder / '1-torn'}: metrics.json is not JSON" in result.stderr
    assert f"skipped {folder / '0-no-metrics'}: no metrics.json" in result.stderr
    for command in ("analysis.time", "analysis.defaults"):  # every analysis names what it did not use
        assert f"skipped {folder / '0-no-metrics'}: no metrics.json" in run_cli("-m", command, f"dir={folder}",
                                                                                  check=False).stderr
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
    parent = two_sweeps(sweep, tmp_path)
    result = run_cli("-m", "analysis.ablation", f"dir={parent}")
    assert f"merging the runs of 2 folders: {parent / 'a'}, {parent / 'b'}" in result.stderr
    assert "| A: lse | 2 |" in (parent / "analysis" / "ablation.md").read_text()


@pytest.mark.parametrize("case", ["no_dir", "missing", "empty", "no_unit_stats", "other_kind"])
def test_a_folder_without_usable_runs_gives_one_line(sweep, tmp_path, case):
    folder, command = tmp_path / "nothing", "analysis.ablation"
    if case == "empty":
        folder.mkdir()
    if case == "no_unit_stats":
        folder = copy_of(sweep, tmp_path)
        for stats in folder.glob("*/unit_stats.npz"):
            stats.unlink()
    if case == "other_kind":  # outputs/<date>/<time> of single encoder runs, read by the LM analysis
        folder = tmp_path / "outputs"
        for job, time in (("0", "10-00-00"), ("1", "10-05-00")):
            shutil.copytree(sweep / job, folder / "2026-01-01" / time)
        command = "analysis.lm"
    result = run_cli("-m", command, *([] if case == "no_dir" else [f"dir={folder}"]), check=False)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0 and "Traceback" not in result.stderr
    expected = {"no_dir": "error: dir= is missing: ",
                "missing": f"error: dir={folder} is not a folder",
                "empty": f"error: no finished run under {folder} (",
                "no_unit_stats": f"error: no finished run under {folder} (",
                "other_kind": f"error: no finished run under {folder} ("}[case]
    assert last.startswith(expected)
    if case == "no_unit_stats":
        assert f"skipped {folder / '0'}: no unit_stats.npz" in result.stderr
    if case == "other_kind":
        assert last.endswith("; a run on LM activations); 2 skipped")
        assert (f"skipped {folder / '2026-01-01' / '10-00-00'}: not a run on LM activations "
                "(model=encoder, data=gaussian_mixture)") in result.stderr


def error_bars(ax) -> int:
    """How many error bars the bar chart on ``ax`` draws (a nan one draws nothing)."""
    return sum(segment.size > 0 and np.isfinite(segment).all() for bars in ax.containers
               if isinstance(bars, ErrorbarContainer)
               for lines in bars.lines[2] for segment in lines.get_segments())


def test_figure_2_names_configurations_split_and_seeds_and_draws_no_error_bar_for_one_seed(sweep, tmp_path):
    for folder, n in ((sweep, 1), (two_sweeps(sweep, tmp_path), 2)):
        figure = figure_2(group_by_loss(load_runs(str(folder), needs=("unit_stats.npz",))))
        assert "validation split" in figure.get_suptitle()
        assert f"n = {n} seed{'s' * (n > 1)} per configuration" in figure.get_suptitle()
        matrices, bars = figure.axes[:2], figure.axes[4:8]  # 2 x 4 panels, then the colour bars
        assert [ax.get_title() for ax in matrices] == ["|Corr(a)|: A: lse, seed 0", "|Corr(a)|: C: lse+var+tc, seed 0"]
        assert all((ax.get_xlabel(), ax.get_ylabel()) == ("unit j", "unit i") for ax in matrices)
        for ax in bars:
            assert [tick.get_text() for tick in ax.get_xticklabels()] == ["A: lse", "C: lse+var+tc"]
            assert error_bars(ax) == (0 if n == 1 else 2)
        entropy = next(ax for ax in bars if ax.get_title() == "resp_entropy")
        assert entropy.get_ylabel().endswith("(nats)") and bars[0].get_ylabel().endswith("(fraction)")
        dashed = [line.get_ydata()[0] for line in entropy.lines if line.get_linestyle() == "--"]
        assert dashed == [pytest.approx(np.log(8))]  # k = 8 units
        assert [text.get_text() for text in entropy.get_legend().get_texts()] == [f"log k = {np.log(8):.3g}: uniform r (k = 8)"]
        plt.close(figure)


def test_an_all_dead_code_is_marked_not_drawn_as_decorrelated():
    figure, (dead, alive) = plt.subplots(1, 2)
    show_correlation(dead, np.zeros((4, 4)), np.zeros(4), "run")
    show_correlation(alive, np.eye(4), np.array([0.5, 0.5, 0.0, 0.5]), "run")
    assert [text.get_text() for text in dead.texts] == ["all units dead\n(no correlation defined)"]
    assert not alive.texts and "(1 dead: zero rows)" in alive.get_title()
    show_correlation(alive, np.eye(2), np.array([0.5, 0.0, 0.5, 0.5]), "run")  # the first 2 units' correlations only
    assert "(the first 2 of 4 units; 1 dead: zero rows)" in alive.get_title()
    assert alive.get_xlabel() == "unit j" and alive.get_ylabel() == "unit i"
    plt.close(figure)


def test_histograms_of_an_all_dead_code_keep_their_count_axes():
    figure, (density, counts) = plt.subplots(1, 2)
    density_histogram(density, np.zeros(16))
    active_count_histogram(counts, np.array([1024]))
    figure.canvas.draw()
    assert density.get_ylim()[0] <= 0 and density.get_ylim()[1] >= 1  # not a line at 0 of a ±0.05 axis
    assert density.get_xlim()[0] <= -6 and density.get_xlim()[1] >= 0
    assert density.get_legend().get_texts()[0].get_text() == "16 dead of 16"
    assert all(tick == int(tick) for tick in counts.get_xticks())  # whole numbers of active latents
    plt.close(figure)


def test_the_active_count_histogram_of_a_dense_lm_code_reads_plainly():
    figure, ax = plt.subplots(figsize=(4.2, 3.2))  # the per-run figure's size
    counts = np.zeros(1501)
    counts[1400:1500] = 1  # L0 about 1450 per token, as a wide LM SAE's
    active_count_histogram(ax, counts)
    figure.canvas.draw()
    assert "mean L0 1450;" in ax.get_title()  # not 1.45e+03
    labels = [label for label in ax.get_xticklabels() if label.get_text()]
    boxes = [label.get_window_extent() for label in labels]
    assert len(labels) <= 7 and not any(a.overlaps(b) for a, b in zip(boxes, boxes[1:]))  # no "9001050"
    plt.close(figure)


def test_theorem_figure_fits_its_axes_and_shows_the_residual_on_its_own_scale():
    resp = torch.softmax(-torch.randn(64, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), -1)
    grad = resp + 1e-17 * torch.linspace(-1, 1, resp.numel(), dtype=torch.float64).view_as(resp)
    figure = theorem_figure(grad, resp, "Theorem 1 on weights W", "caption")
    agreement, residual = figure.axes
    span = (resp.max() - resp.min()).item()
    assert resp.min() - 0.1 * span < agreement.get_xlim()[0] < resp.min()  # fitted to the data, not [0, 1]
    assert resp.max() < agreement.get_xlim()[1] < resp.max() + 0.1 * span
    low, high = residual.get_ylim()
    assert low == -high and 1e-17 < high < 2e-17  # symmetric, on the residual's scale
    assert figure.get_suptitle() == "Theorem 1 on weights W"
    plt.close(figure)
    assert pearson_text(1.0) == "1 (exactly, in float64)"
    assert pearson_text(1 - 3.3e-16) == "1 - 3.3e-16" and pearson_text(1 + 2.2e-16) == "1 + 2.2e-16"


def test_theorem_on_a_checkpoint_names_it_and_refuses_one_of_another_shape(sweep, tmp_path):
    ckpt = sweep / "0" / "checkpoints" / "last.ckpt"
    result = run_cli("-m", "analysis.theorem", f"ckpt_path={ckpt}", "data=gaussian_mixture", "model.hidden_dim=8",
                     f"hydra.run.dir={tmp_path}")
    assert result.stdout.startswith(f"the encoder of {ckpt}: 512 validation examples x 8 units, float64: ")
    assert (tmp_path / "theorem.png").is_file()
    other = run_cli("-m", "analysis.theorem", f"ckpt_path={ckpt}", "data=gaussian_mixture",
                    f"hydra.run.dir={tmp_path / 'other'}", check=False)
    assert other.returncode != 0 and "Traceback" not in other.stderr
    assert other.stderr.strip().splitlines()[-1].startswith(
        f"error: ckpt_path={ckpt} holds a model with input_dim=32, hidden_dim=8, ")


def test_time_shares_of_a_sweep_add_its_runs_phases(sweep, tmp_path):
    folder = copy_of(sweep, tmp_path)
    times = [json.loads((folder / job / "metrics.json").read_text())["time"] for job in ("0", "1")]
    assert times[0]["start_up"] > times[1]["start_up"]  # the process's first job pays the imports
    older = {name: value for name, value in times[1].items() if name != "checkpoints"}
    set_metrics(folder / "1", time=older)  # timed before checkpoints had a phase of their own
    result = run_cli("-m", "analysis.time", f"dir={folder}")
    assert (folder / "analysis" / "time.png").stat().st_size > 0 and (folder / "analysis" / "time.pdf").is_file()
    table = (folder / "analysis" / "time.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith(("| 0: ", "| 1: "))]
    assert [row.split(" |")[0] for row in rows] == ["| 0: loss=lse", "| 1: loss=lse_var_tc"]  # what differs
    assert rows[0].split(" | ")[5] == f"{times[0]['checkpoints']:.1f}" and rows[1].split(" | ")[5] == "0.0"
    total = sum(seconds["total"] for seconds in times)
    training = sum(seconds["training_steps"] for seconds in times)
    assert f"summed over 2 runs, {total:.0f} s: start up " in result.stdout
    assert f"training steps {100 * training / total:.0f}%" in result.stdout


def test_the_paper_scale_check_reads_a_run_s_step_time_and_peak_memory(sweep, tmp_path):
    run = tmp_path / "sae"
    run_cli("train.py", *QUICK, "model=sae", "loss=mse_l1", "model.hidden_dim=64", f"hydra.run.dir={run}")
    run_cli("-m", "analysis.paper_scale", f"run={run}", f"out={tmp_path / 'check.md'}")
    text, metrics = (tmp_path / "check.md").read_text(), json.loads((run / "metrics.json").read_text())
    seconds = metrics["time"]["training_steps"] / metrics["global_step"]
    state_gib = 16 * metrics["params"] / 2**30  # weights, gradients and Adam's two moments in float32
    assert f"**{seconds:.2f} s a step**" in text and "a dense step" in text  # sparse_below is 0 by default
    assert f"**{metrics['peak_rss_gb'] / state_gib:.2f}x**" in text and "Measured " in text
    for folder, reason in [(tmp_path, "is not a finished run folder"), (sweep / "0", "the arithmetic is an SAE")]:
        refused = run_cli("-m", "analysis.paper_scale", f"run={folder}", check=False)
        assert refused.returncode == 1 and refused.stderr.startswith("error:") and reason in refused.stderr
        assert len(refused.stderr.splitlines()) == 1
