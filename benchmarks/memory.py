"""Peak GPU memory of one image with model CPU offload + VAE tiling + quantized weights, estimated without a GPU.

An estimate, not a measurement: weights are counted from the real geometry instantiated on the meta device (bf16,
or int8 weight-only for the linear layers of the MLLM, connector and DiT as `--quantize int8` stores them: one byte
per weight plus a bf16 scale per output channel); activations are measured on the CPU in bf16 at a reduced size
(peak resident memory during the forward, Linux VmHWM) and scaled to the real one:
- DiT: the real width at the real 1024 px latents (batch 2: both guidance branches), two of its blocks (inference
  keeps one block's activations at a time, so depth does not add);
- DC-AE: a 256 px decode scaled by pixel count to the 512 px tiles of the tiled decode;
- MLLM: two LLM layers of the real width on a 128-token prompt + the queries, both branches.
With offload one stage's weights are on the GPU at a time, so the peak is the largest stage (weights + activations)
plus an allowance for the CUDA context and cuBLAS workspaces (--context-gib). benchmarks/gpu_run.sh measures it.

    python benchmarks/memory.py --variant openuni-l-1024 --quantize int8 --json l1024-memory.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

GIB = 2**30


def meta_components(variant_name: str):
    from diffusers import AutoencoderDC, SanaTransformer2DModel
    from transformers import InternVLForConditionalGeneration

    from openuni.connector import OpenUniConnector
    from openuni.internvl import config_from_geometry
    from openuni.variants import DC_AE_F32C32, get_variant

    variant = get_variant(variant_name)
    with torch.device("meta"):
        mllm = InternVLForConditionalGeneration(config_from_geometry(variant.mllm_geometry))
        transformer = SanaTransformer2DModel(**variant.transformer_geometry)
        vae = AutoencoderDC(**DC_AE_F32C32)
        connector = OpenUniConnector(**vars(variant.connector), num_queries=variant.num_queries,
                                     caption_channels=transformer.config.caption_channels)
    return variant, dict(mllm=mllm, connector=connector, transformer=transformer, vae=vae)


def weight_bytes(module: torch.nn.Module, int8: bool) -> int:
    """bf16 bytes, or with int8 weight-only linears (1 byte per weight + a bf16 scale per output channel)."""
    total = 0
    quantized = set()
    if int8:
        for layer in module.modules():
            if isinstance(layer, torch.nn.Linear):
                total += layer.weight.numel() + 2 * layer.out_features
                quantized.add(id(layer.weight))
    return total + sum(2 * p.numel() for p in module.parameters() if id(p) not in quantized) + \
        sum(2 * b.numel() for b in module.buffers())


def _kib(field: str) -> int:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status[field].split()[0]) * 1024


def activation_peak(fn) -> int:
    """Bytes of resident memory `fn()` adds at its peak (Linux: VmHWM after resetting it)."""
    Path("/proc/self/clear_refs").write_text("5")
    before = _kib("VmRSS")
    with torch.no_grad():
        fn()
    return max(0, _kib("VmHWM") - before)


def random_module(build) -> torch.nn.Module:
    """A module built on meta and given small random bf16 values, without a float32 copy at any time."""
    with torch.device("meta"):
        module = build()
    module = module.to_empty(device="cpu").to(torch.bfloat16).eval()
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0, 0.02)
    return module


def measured_activations(variant) -> dict:
    from diffusers import AutoencoderDC, SanaTransformer2DModel
    from transformers import Qwen2Config, Qwen2Model

    from openuni.variants import DC_AE_F32C32

    geometry = variant.transformer_geometry
    latent_side = geometry["sample_size"]
    dit = random_module(lambda: SanaTransformer2DModel(**dict(geometry, num_layers=2)))
    latents = torch.randn(2, 32, latent_side, latent_side, dtype=torch.bfloat16)
    captions = torch.randn(2, variant.num_queries, geometry["caption_channels"], dtype=torch.bfloat16)
    timestep = torch.full((2,), 500.0)
    dit_bytes = activation_peak(lambda: dit(latents, encoder_hidden_states=captions, timestep=timestep))
    del dit

    vae = random_module(lambda: AutoencoderDC(**DC_AE_F32C32))
    small = torch.randn(1, 32, 8, 8, dtype=torch.bfloat16)  # 256 px
    vae_256 = activation_peak(lambda: vae.decode(small))
    del vae

    llm = variant.mllm_geometry["llm"]
    config = Qwen2Config(**dict(llm, num_hidden_layers=2, vocab_size=1024))
    qwen = random_module(lambda: Qwen2Model(config))
    embeds = torch.randn(2, 128 + variant.num_queries, llm["hidden_size"], dtype=torch.bfloat16)
    mllm_bytes = activation_peak(lambda: qwen(inputs_embeds=embeds))
    return dict(dit_1024px_batch2=dit_bytes, vae_decode_256px=vae_256, vae_tile_512px=4 * vae_256,
                vae_untiled_1024px=16 * vae_256, mllm_prompt=mllm_bytes)


def estimate(variant_name: str, int8: bool, context_gib: float, budget_gib: float) -> dict:
    variant, components = meta_components(variant_name)
    weights = {name: weight_bytes(module, int8 and name != "vae") for name, module in components.items()}
    activations = measured_activations(variant)
    stages = {
        "mllm + connector": weights["mllm"] + weights["connector"] + activations["mllm_prompt"],
        "dit": weights["transformer"] + activations["dit_1024px_batch2"],
        "vae decode (tiled)": weights["vae"] + activations["vae_tile_512px"],
    }
    peak = max(stages.values()) + context_gib * GIB
    return dict(variant=variant_name, quantize="int8" if int8 else None, estimate=True,
                weights_gib={k: v / GIB for k, v in weights.items()},
                activations_gib={k: v / GIB for k, v in activations.items()},
                stages_gib={k: v / GIB for k, v in stages.items()}, context_allowance_gib=context_gib,
                peak_gib_estimate=peak / GIB, budget_gib=budget_gib, fits=peak / GIB <= budget_gib,
                without_offload_gib_estimate=(sum(weights.values()) + max(activations["dit_1024px_batch2"],
                                                                          activations["vae_tile_512px"])) / GIB
                + context_gib)


def measure_cuda(variant_name: str, int8: bool, steps: int) -> dict:
    """The real peak on a GPU: random weights of the real geometry, offload + tiling (+ int8), one image."""
    import tempfile

    from openuni.acceleration import enable_vae_memory_savers, quantize_pipeline
    from openuni.tiny import build_random_pipeline, build_tiny_openuni

    device = torch.device("cuda")
    with tempfile.TemporaryDirectory() as workdir:
        tiny = build_tiny_openuni(Path(workdir) / "tiny")
        pipe = build_random_pipeline(variant_name, tiny.tokenizer, "cpu", torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    if int8:
        quantize_pipeline(pipe, "int8", device)
    pipe.enable_model_cpu_offload(device=device)
    enable_vae_memory_savers(pipe)
    torch.cuda.reset_peak_memory_stats(device)
    images = pipe("a photo of a red cube on the left of a blue sphere", num_inference_steps=steps, seed=0,
                  output_type="np").images
    return dict(variant=variant_name, quantize="int8" if int8 else None, estimate=False, steps=steps,
                device=torch.cuda.get_device_name(device), image_shape=list(images.shape),
                peak_allocated_gib=torch.cuda.max_memory_allocated(device) / GIB,
                peak_reserved_gib=torch.cuda.max_memory_reserved(device) / GIB)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="openuni-l-1024")
    parser.add_argument("--quantize", choices=("none", "int8"), default="int8")
    parser.add_argument("--context-gib", type=float, default=0.6, help="CUDA context + workspaces allowance")
    parser.add_argument("--budget-gib", type=float, default=8.0)
    parser.add_argument("--measure-cuda", action="store_true", help="measure the peak on the GPU instead")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps of the measured image")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.measure_cuda:
        result = measure_cuda(args.variant, args.quantize == "int8", args.steps)
        print(f"measured peak on {result['device']}: {result['peak_allocated_gib']:.2f} GiB allocated, "
              f"{result['peak_reserved_gib']:.2f} GiB reserved")
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        return result
    torch.set_num_threads(min(2, torch.get_num_threads()))
    result = estimate(args.variant, args.quantize == "int8", args.context_gib, args.budget_gib)
    for group in ("weights_gib", "activations_gib", "stages_gib"):
        print(group + ": " + ", ".join(f"{k} {v:.2f}" for k, v in result[group].items()))
    print(f"estimated peak with offload + tiling + {result['quantize'] or 'bf16'}: {result['peak_gib_estimate']:.2f} GiB "
          f"({'within' if result['fits'] else 'over'} {args.budget_gib:g} GB); without offload "
          f"{result['without_offload_gib_estimate']:.2f} GiB")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
