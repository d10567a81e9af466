"""The shipped FSDP config's wrap policy, applied by torch's `fully_shard` to the real geometries on the meta device.

The policy is the one `accelerate launch --config_file configs/accelerate/fsdp.yaml` gives each process (its FSDP_*
variables, read by accelerate's plugin and turned into a module predicate by accelerate's FSDP2 code), so a wrong
class name or a size threshold that picks containers fails here, without a GPU or a download.
"""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

from openuni.variants import VARIANTS

FSDP_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "fsdp.yaml"


def launch_environment(config_file: Path) -> dict[str, str]:
    """The variables `accelerate launch` exports to every process for this config (its own code path)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config_file), "--num_processes", "2", "train.py"])
    args, _, _ = _validate_launch_command(args)
    return prepare_multi_gpu_env(args)


@pytest.fixture(scope="module")
def one_process_group():
    """`fully_shard` needs a process group; one gloo process is enough to shard onto."""
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this test process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def shipped_policy():
    import os

    from accelerate import FullyShardedDataParallelPlugin

    env = {k: v for k, v in launch_environment(FSDP_CONFIG).items() if k.startswith(("FSDP_", "ACCELERATE_USE_FSDP"))}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield FullyShardedDataParallelPlugin()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def meta_openuni(variant_name: str, mode: str):
    """The trained part of OpenUni (connector + SANA) at a variant's real size, on the meta device."""
    from diffusers import SanaTransformer2DModel

    from openuni.connector import OpenUniConnector
    from openuni.model import OpenUni

    variant = VARIANTS[variant_name]
    with torch.device("meta"):
        transformer = SanaTransformer2DModel(**variant.transformer_geometry)
        connector = OpenUniConnector.fresh(variant.connector, variant.num_queries,
                                           variant.transformer_geometry["caption_channels"])
    transformer.requires_grad_(mode == "full")
    if mode == "lora":
        from peft import LoraConfig

        from openuni.training.model import LORA_TARGETS

        transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
    model = OpenUni(None, connector, transformer, None)
    if mode == "frozen-sana":  # as the trainer holds it: beside the trained model, not in it
        model.hold_transformer_frozen()
    return model


def test_the_shipped_config_asks_for_layer_class_wrapping_with_sharded_checkpoints(shipped_policy):
    assert shipped_policy.fsdp_version == 2
    assert shipped_policy.transformer_cls_names_to_wrap == ["SanaTransformerBlock", "ConnectorLayer"]
    assert str(shipped_policy.state_dict_type).endswith("SHARDED_STATE_DICT")


@pytest.mark.parametrize("mode", ["full", "frozen-sana", "lora"])
@pytest.mark.parametrize("variant_name", ["openuni-b-512", "openuni-l-512", "openuni-l-1024"])
def test_every_fsdp_unit_is_a_layer_with_a_forward(variant_name, mode, shipped_policy, one_process_group):
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy, get_module_children_bottom_up
    from diffusers.models.transformers.sana_transformer import SanaTransformerBlock
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from openuni.connector import ConnectorLayer

    from openuni.training.engines import fit_fsdp_wrap_policy

    model = meta_openuni(variant_name, mode)
    plugin = copy.copy(shipped_policy)  # (the module's fixture stays as launched)
    fit_fsdp_wrap_policy(plugin, model)  # the trainer's step before accelerate's prepare
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    # accelerate's own order: bottom-up, the root last and always its own unit.
    units = [module for module in get_module_children_bottom_up(model)[:-1] if policy(module)]
    for module in units:
        fully_shard(module)  # torch refuses containers without a forward (ModuleList) here
    fully_shard(model)

    variant = VARIANTS[variant_name]
    assert all(type(m).forward is not nn.Module.forward for m in units)
    assert not any(isinstance(m, (nn.ModuleList, nn.ModuleDict)) for m in units)
    counts = Counter(cls for m in units for cls in (SanaTransformerBlock, ConnectorLayer) if isinstance(m, cls))
    expected = {ConnectorLayer: variant.connector.num_hidden_layers}
    if mode != "frozen-sana":  # a frozen SANA is not in the trained model at all
        expected[SanaTransformerBlock] = variant.transformer_geometry["num_layers"]
    assert counts == expected
    assert len(units) == sum(counts.values())
    assert all(isinstance(p, DTensor) for p in model.parameters())  # nothing left unsharded
