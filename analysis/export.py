"""A trained SAE in SAELens's on-disk format (``cfg.json`` + ``sae_weights.safetensors``), which
``sae_lens.SAE.load_from_disk`` loads and SAEBench evaluates.

    python -m analysis.export run=<run dir>

SAELens computes z = (x - b_dec) W_enc + b_enc and x_hat = a W_dec + b_dec on raw activations. The
run's input scaling s (the model trains on s x) is folded in: W_enc = s W_e^T, b_dec = b_d / s,
W_dec = W_d^T / s. Decoder rows are then rescaled to unit norm, their norms moved into W_enc, b_enc
and the JumpReLU threshold (exact, since relu and the threshold commute with positive scales; for
TopK only when all norms are equal, which keeps the ranking). The decoder-free encoder has no
decoder to export: its implicit one is fitted on data at evaluation.
"""
import importlib.metadata
import json
import os
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from activations.language_model import PACKAGED, hub_id
from lightning_modules.sae import SparseAutoencoder
from analysis.trained import trained_model
from runtime.run_folder import LAST_CHECKPOINT
from runtime.files import write_whole, written_whole

SAELENS_FORMAT_VERSION = "6.0.0"  # the cfg.json layout of SAELens 6 (metadata nested), where SAELens is not installed


def sae_lens_version() -> str:
    """The installed SAELens's version, which wrote nothing here but whose layout this is; else the layout's."""
    try:
        return importlib.metadata.version("sae-lens")
    except importlib.metadata.PackageNotFoundError:
        return SAELENS_FORMAT_VERSION


def saelens_tensors(model: SparseAutoencoder) -> dict[str, torch.Tensor]:
    s = float(model.input_scale)
    W_enc = s * model.encoder.weight.detach().T.double()  # [d_in, d_sae]
    b_enc = model.encoder.bias.detach().double()
    W_dec = model.decoder_weight().detach().T.double() / s  # [d_sae, d_in]
    b_dec = model.b_dec.detach().double() / s
    threshold = model.inference_threshold()
    threshold = None if threshold is None else threshold.detach().double()
    norms = W_dec.norm(dim=1)
    if model.saelens_architecture != "topk" or torch.allclose(norms, norms.mean(), rtol=1e-5):
        W_dec, W_enc, b_enc = W_dec / norms[:, None], W_enc * norms, b_enc * norms
        threshold = None if threshold is None else threshold * norms
    tensors = {"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec}
    if threshold is not None:
        tensors["threshold"] = threshold
    return {name: t.float().contiguous() for name, t in tensors.items()}


def saelens_config(model: SparseAutoencoder, cfg: dict, hook_name: str | None, causal: bool = False) -> dict:
    architecture = model.saelens_architecture
    data = cfg["data"]
    config = {"architecture": architecture, "d_in": model.hparams.input_dim, "d_sae": model.hparams.hidden_dim,
              "dtype": "float32", "apply_b_dec_to_input": True, "normalize_activations": "none",
              "metadata": {"sae_lens_version": sae_lens_version(), "model_name": hub_id(data.get("model")),
                           "hook_name": hook_name, "hook_layer": data.get("layer"),
                           "context_size": data.get("context_length"), "dataset_path": data.get("corpus"),
                           "exclude_special_tokens": not data.get("keep_special_tokens", True),
                           "exported_from": "encoder-study"}}
    packaged = PACKAGED.get(data.get("model"))
    if packaged is not None and packaged.gguf_file:  # trained on other weights than the hub's release
        config["metadata"]["model_weights"] = (f"{packaged.gguf_file} from the {packaged.package} package, "
                                               f"dequantised to float32: not the hub release {packaged.hub_id} "
                                               f"that model_name names, whose activations differ slightly")
    if causal:  # SAELens loads it from the hub with transformers and hooks its modules by name
        config["metadata"] |= {"model_class_name": "AutoModelForCausalLM", "prepend_bos": False}
    if architecture == "topk":
        config["k"] = model.k
    return config


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def hooked_module(data: dict) -> tuple[str | None, bool]:
    """The module the run's activations came from, found on a weightless copy of the model, and whether
    the model is a causal LM."""
    if "layer" not in data or "site" not in data:
        return None, False
    from activations.language_model import is_causal, load_config, site_module_names, skeleton

    config = load_config(data["model"])
    return site_module_names(skeleton(config), [data["layer"]], data["site"])[data["layer"]], is_causal(config)


def export(run_dir: Path, out: Path, checkpoint: str = LAST_CHECKPOINT) -> Path:
    cfg, model = trained_model(run_dir, checkpoint, advice="export another of the run's checkpoints with "
                                                           "checkpoint=<name>, or train the run again")
    if getattr(model, "saelens_architecture", None) is None:
        raise ValueError(f"{type(model).__name__} has no export to the SAELens format"
                         + ("" if hasattr(model, "decoder_weight") else ": it has no decoder (only the SAE family exports)"))
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    with written_whole(out / "sae_weights.safetensors") as partial:
        save_file(saelens_tensors(model), partial)
        partial.chmod(0o666 & ~current_umask())  # as the config beside it, not safetensors' private 0600
    config = saelens_config(model, OmegaConf.to_container(cfg), *hooked_module(OmegaConf.to_container(cfg.data)))
    write_whole(out / "cfg.json", json.dumps(config, indent=2))
    return out


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "run"):
        sys.exit("error: which run? python -m analysis.export run=<run folder>")
    run_dir = Path(cfg.run)
    try:
        out = export(run_dir, Path(cfg.out) if cfg.out else run_dir / "saelens", cfg.checkpoint)
    except ValueError as error:
        sys.exit(f"error: {error}")
    print(f"wrote {out / 'cfg.json'} and {out / 'sae_weights.safetensors'}")


if __name__ == "__main__":
    main()
