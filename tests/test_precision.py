"""Mixed precision on CPU: ``+trainer.precision=bf16-mixed`` trains every model through train.py, with finite
losses, to final metrics within a stated tolerance of the same run in float32."""
import math

from conftest import QUICK, read_metrics, run_cli

MODELS = ["encoder", "sae", "sae_tied", "jumprelu", "jumprelu_sigmoid", "topk", "batchtopk", "matryoshka", "gated"]
# FVU and the validation loss, bf16-mixed against float32, after 64 steps on the Gaussian mixture. Rounding flips
# some of a top-k's choices and the runs part from there: most end within 0.3%, one seed of Matryoshka 4% apart
RELATIVE = 0.05


def test_every_model_trains_in_bf16_mixed_close_to_float32(tmp_path):
    run_cli("train.py", "-m", f"model={','.join(MODELS)}", "+trainer.precision=32-true,bf16-mixed", *QUICK,
            "trainer.max_epochs=2", "logger=none", "callbacks.final_evaluation.probe=false", f"hydra.sweep.dir={tmp_path}")
    runs = sorted((path for path in tmp_path.iterdir() if path.name.isdigit()), key=lambda path: int(path.name))
    assert len(runs) == 2 * len(MODELS)
    for model, (fp32, bf16) in zip(MODELS, zip(runs[0::2], runs[1::2])):
        overrides = [(run / ".hydra" / "overrides.yaml").read_text() for run in (fp32, bf16)]
        assert all(f"model={model}" in text for text in overrides) and "32-true" in overrides[0], overrides
        a, b = read_metrics(fp32), read_metrics(bf16)
        assert a["status"] == b["status"] == "finished", model
        assert all(math.isfinite(b[key]) for key in ("val/total", "train/total", "fvu", "l0")), model
        assert abs(b["fvu"] - a["fvu"]) <= RELATIVE * abs(a["fvu"]), (model, a["fvu"], b["fvu"])
        assert abs(b["val/total"] - a["val/total"]) <= RELATIVE * abs(a["val/total"]), model
        assert abs(b["l0"] - a["l0"]) <= max(0.2, RELATIVE * a["l0"]), (model, a["l0"], b["l0"])


def test_sparse_steps_train_through_train_py_as_the_dense_ones_in_both_precisions(tmp_path):
    """``model.sparse_below=1`` makes every training step sparse (tests/test_sparse.py holds one step to the
    dense one in float64); through train.py, float32 runs end where the dense ones do, bf16-mixed close."""
    run_cli("train.py", "-m", "model=sae,topk", "model.sparse_below=0,1", "+trainer.precision=32-true,bf16-mixed",
            *QUICK, "trainer.max_epochs=2", "logger=none", "callbacks.final_evaluation.probe=false",
            f"hydra.sweep.dir={tmp_path}")
    runs = sorted((path for path in tmp_path.iterdir() if path.name.isdigit()), key=lambda path: int(path.name))
    assert len(runs) == 8
    for model, group in (("sae", runs[:4]), ("topk", runs[4:])):  # sparse_below 0, 0, 1, 1 x precision 32, bf16
        dense32, dense16, sparse32, sparse16 = (read_metrics(run) for run in group)
        assert all(m["status"] == "finished" and math.isfinite(m["fvu"]) for m in (dense16, sparse16)), model
        assert abs(sparse32["fvu"] - dense32["fvu"]) <= 1e-4 * dense32["fvu"], (model, sparse32["fvu"], dense32["fvu"])
        assert abs(sparse32["l0"] - dense32["l0"]) <= 1e-3 * max(1.0, dense32["l0"]), model
        assert abs(sparse16["fvu"] - sparse32["fvu"]) <= RELATIVE * sparse32["fvu"], (model, sparse16["fvu"])
