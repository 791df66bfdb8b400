"""Checks of a composed configuration that name the key, before anything is built: a value the
constructor it goes to cannot take (by that constructor's own annotations), a missing or non-finite value,
and combinations that would train forever or on a device that is not there."""
import math
import os
import types
import typing

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

SECTIONS_WITH_TARGETS = ("model", "data", "trainer")
SIMPLE = {int: "an int", float: "a number", bool: "true or false", str: "a string"}


def check_unquoted_text(arguments: list[str]) -> None:
    """A command-line value Hydra's grammar cannot lex because it holds non-ASCII text (model.activation=relü)
    is one error line that says how to quote it, before Hydra's three-line lexer report."""
    for argument in arguments:
        if argument.startswith("-") or "=" not in argument or argument.isascii():
            continue
        try:
            OverridesParser.create().parse_overrides([argument])
        except OverrideParseException:
            key, value = argument.split("=", 1)
            raise ValueError(f"{argument}: Hydra cannot read non-ASCII text unquoted; quote the value: {key}='{value}'")


def check(cfg: DictConfig) -> None:
    """Raises ValueError with one line naming the key."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ValueError(f"{missing[0]}=??? has no value: set it on the command line ({missing[0]}=<value>)")
    values = OmegaConf.to_container(cfg, resolve=True)
    for key, value in leaves(values, ""):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{key}={value} is not a finite number")
    if not (isinstance(cfg.seed, int) and 0 <= cfg.seed < 2**32):
        raise ValueError(f"seed={cfg.seed} must be an int in [0, 2**32 - 1]")
    every = cfg.get("checkpoint", {}).get("every_n_steps")
    if every is not None and not (isinstance(every, int) and every > 0):
        raise ValueError(f"checkpoint.every_n_steps={every} must be an int > 0")
    check_constructor_types(cfg, values)
    check_limits(cfg.trainer)
    check_device(cfg.trainer)
    check_threads(cfg.get("torch_threads"))


def leaves(tree, prefix: str):
    if isinstance(tree, dict):
        for name, child in tree.items():
            yield from leaves(child, f"{prefix}.{name}" if prefix else str(name))
    elif isinstance(tree, list):
        for index, child in enumerate(tree):
            yield from leaves(child, f"{prefix}[{index}]")
    else:
        yield prefix, tree


def check_constructor_types(cfg: DictConfig, values: dict) -> None:
    sections = {name: values[name] for name in SECTIONS_WITH_TARGETS if isinstance(values.get(name), dict)}
    sections |= {f"callbacks.{name}": section for name, section in (values.get("callbacks") or {}).items()
                 if isinstance(section, dict)}
    for prefix, section in sections.items():
        target = section.get("_target_")
        if not target:
            continue
        parameters = constructor_parameters(target)
        for key, value in section.items():
            accepted = simple_types(parameters.get(key))
            if accepted and value is not None and not accepts(accepted, value):
                wanted = " or ".join(SIMPLE[kind] for kind in accepted)
                raise ValueError(f"{prefix}.{key}={value} is not {wanted}")


def constructor_parameters(target: str) -> dict:
    try:
        return typing.get_type_hints(get_class(target).__init__)
    except Exception:  # an annotation that does not evaluate, a target that is a function: nothing to check
        return {}


def simple_types(annotation) -> tuple[type, ...]:
    """The simple types an annotation admits (``int | None`` -> int), or () if it admits anything else."""
    if annotation in SIMPLE:
        return (annotation,)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [member for member in typing.get_args(annotation) if member is not type(None)]
        if all(member in SIMPLE for member in members):
            return tuple(members)
    return ()


def accepts(accepted: tuple[type, ...], value) -> bool:
    if isinstance(value, bool):
        return bool in accepted
    return (isinstance(value, int) and (int in accepted or float in accepted)
            or isinstance(value, float) and float in accepted
            or isinstance(value, str) and str in accepted)


def check_limits(trainer: DictConfig) -> None:
    for key in ("max_epochs", "max_steps", "limit_train_batches"):
        if trainer.get(key) == 0:
            raise ValueError(f"trainer.{key}=0 trains nothing")
    if trainer.get("max_epochs") == -1 and (trainer.get("max_steps") or -1) < 0:
        raise ValueError("trainer.max_epochs=-1 (no limit) trains forever without trainer.max_steps: set one")


def check_device(trainer: DictConfig) -> None:
    if trainer.get("accelerator") in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(f"trainer.accelerator={trainer.accelerator} but torch sees no CUDA GPU here: add "
                         f"trainer.accelerator=cpu (with trainer.devices=<processes> for DDP on CPU)")
    if trains_on_cpu(trainer) and str(trainer.get("precision")).startswith("16"):  # Lightning would warn and record it anyway
        raise ValueError(f"trainer.precision={trainer.precision} is float16, which needs a GPU: on CPU use "
                         f"bf16-mixed or 32")


def trains_on_cpu(trainer: DictConfig) -> bool:
    return trainer.get("accelerator") == "cpu" or not torch.cuda.is_available()


def check_threads(threads: int | None) -> None:
    """More intra-op threads than cores make every matmul wait on the others (30x slower, measured)."""
    cores = len(os.sched_getaffinity(0))
    if threads and threads > cores:
        raise ValueError(f"torch_threads={threads} is above this machine's {cores} cores: use at most {cores} "
                         f"(null: torch's default)")
