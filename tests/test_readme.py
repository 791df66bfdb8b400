"""What the README and docs/ tell a user to type: every train.py override they name composes, the options of plain
training run, --help says what the script does, and the results it points to name no machine path."""
import re

import pytest
from hydra import compose, initialize_config_dir

from conftest import QUICK, ROOT, read_metrics, run_cli

ANALYSIS_KEYS = {"dir", "run", "out"}  # the analysis and export commands' own keys
ANALYSIS_CONFIGS = ("features", "steer", "steering_effect")  # the other commands' configs, where an option of theirs composes


def documented_overrides() -> list[str]:
    """``key=value`` and ``group=option`` in the code spans of the README and docs/, alternatives (``a|b``) and
    sweeps (``a,b``) expanded; placeholders (``<dir>``, ``…``, ``[...]``) and commands' flags left out."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    text, found = "\n".join(page.read_text() for page in pages), []
    blocks = [code for language, code in re.findall(r"```([a-z]*)\n(.*?)```", text, flags=re.S)
              if language != "python"]  # Python code is not overrides
    spans = blocks + re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    for line in (line for span in spans for line in span.splitlines()):
        if line.split()[:1] in (["scontrol"], ["sacct"], ["sbatch"]):  # SLURM's own key=value options
            continue
        for token in line.split():
            key, _, values = token.strip("[]").partition("=")
            if not values or not re.fullmatch(r"[+~]?[a-z_./0-9]+", key) or key in ANALYSIS_KEYS:
                continue
            if re.search(r"[<>…\[\]]|\.\.\.|^[A-Z]+$", values):
                continue
            found += [f"{key}={value}" for value in re.split(r"[|,]", values.replace(r"\|", "|")) if value]
    return sorted(set(found) - {"torch==2.13.0"})


OVERRIDES = documented_overrides()


def test_the_readme_names_the_overrides_users_reach_for():
    assert {"logger=none", "logger=csv", "trainer=ddp", "model=jumprelu_sigmoid", "calibrate.target_l0=1"} <= set(
        OVERRIDES)


@pytest.mark.parametrize("override", OVERRIDES)
def test_every_documented_override_composes(override):
    """With the default config, or with one option of the group it belongs to (``model.threshold_param`` is a
    JumpReLU's, ``hydra.launcher.gpus_per_node`` SLURM's), or as an option of analysis.features or analysis.steer."""
    key = override.split("=")[0]
    group = "hydra/launcher" if key.startswith("hydra.launcher.") else key.split(".")[0]
    options = sorted(path.stem for path in (ROOT / "conf" / group).glob("*.yaml")) if "." in key else []
    errors = []
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        attempts = [("train", [*context, override]) for context in [[]] + [[f"{group}={option}"] for option in options]]
        for config, overrides in attempts + [(name, [override]) for name in ANALYSIS_CONFIGS]:
            try:
                compose(config, overrides=overrides, return_hydra_config=config == "train")
                return
            except Exception as error:  # noqa: BLE001 (Hydra raises several types; all mean "does not compose")
                errors.append(f"{config} {overrides}: {error}")
    pytest.fail("\n".join(errors))


def test_the_documented_training_options_run_together(tmp_path):
    options = ["data.normalize=none", "loss.bounded_variance=true", "model.unit_norm_rows=true", "torch_threads=1",
               "reuse_freed_memory=false"]
    assert set(options) <= set(OVERRIDES)
    run_cli("train.py", *QUICK, *options, f"hydra.run.dir={tmp_path}")
    assert read_metrics(tmp_path)["status"] == "finished"


def test_help_says_what_the_script_does_and_where_runs_land():
    help_text = run_cli("train.py", "--help").stdout
    assert help_text.startswith("train.py: trains one model")
    for text in ("model: batchtopk, classifier, encoder", "model.hidden_dim=64", "outputs/<date>/<time>/",
                 "multirun/<date>/<time>/<job>/"):
        assert text in help_text


def test_committed_results_name_no_path_of_the_machine_that_measured_them():
    machine_paths = re.compile(r"(?<![\w.])/(?:work|tmp|root|home|check)/")
    found = [f"{path.relative_to(ROOT)}: {match.group(0)}" for path in sorted((ROOT / "results").rglob("*"))
             if path.is_file() and path.suffix in (".md", ".json", ".html")
             for match in [machine_paths.search(path.read_text(errors="replace"))] if match]
    assert not found, found
