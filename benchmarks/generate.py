"""Generation speed of OpenUniPipeline and of each speed option, measured so that a shared machine cannot fool it.

Every comparison is a pair measured in the same process: the plain path A and an arm X run A X X A, --rounds times
(per batch size); the ratio of a round is (A + A) / (X + X) and the figure is the median over rounds, next to the
wall time and the process CPU time (all threads) per image. The MLLM+connector / DiT / decode split is timed inside
each plain run, so its shares always add up to one run. Drift is measured against the plain path's images of the
same seeds: max and mean absolute difference in uint8 levels, and the max in float pixels ([-1, 1]).

Arms (--arms): `sana` (diffusers' SanaPipeline on the same components and caption embeddings: the baseline the
reference's code path amounts to), `bf16`, `int8` (torchao weight-only), `compile`, `guidance-interval`,
`step-cache` (cache-dit), `fast` / `faster` (fewer-step presets), `conv-matmul` (an experiment, not a shipped
option: SANA's 1x1 convolutions computed as matmuls).

    python benchmarks/generate.py --geometry small --device cpu --batch-sizes 1 --rounds 3 --arms sana bf16 int8
    python benchmarks/generate.py --geometry openuni-b-512 --device cuda --dtype bfloat16 --batch-sizes 1 16 \\
        --arms sana compile guidance-interval step-cache --json $OUT/b512.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

GEOMETRIES = ("tiny", "small", "openuni-b-512", "openuni-l-512", "openuni-l-1024")
ARMS = ("sana", "bf16", "int8", "fp8", "compile", "guidance-interval", "step-cache", "fast", "faster", "conv-matmul")
EXACT_ARMS = ("compile", "conv-matmul")  # must give the plain images within float noise (5e-5)
PROMPTS = [
    "a photo of a red cube on the left of a blue sphere",
    "two green dogs sitting next to a yellow cat under a tree",
    "an astronaut riding a horse on the moon, digital art",
    "a bowl of fruit on a wooden table, morning light",
]
# The small geometry: Qwen2 384 x 6 layers, 128 queries, SANA 256 wide x 6 layers, 128 px; tiny ViT and VAE.
SMALL_LLM = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=2,
                 intermediate_size=1024)
SMALL_CONNECTOR = dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6,
                       num_queries=128)
SMALL_TRANSFORMER = dict(in_channels=32, out_channels=32, num_attention_heads=8, attention_head_dim=32, num_layers=6,
                         num_cross_attention_heads=8, cross_attention_head_dim=32, cross_attention_dim=256,
                         caption_channels=256, sample_size=4)


def build_pipeline(geometry: str, device: torch.device, dtype: torch.dtype, workdir: Path):
    from openuni.pipeline import load_pipeline
    from openuni.tiny import build_random_pipeline, build_tiny_openuni

    tiny = build_tiny_openuni(workdir / "tiny")
    if geometry == "tiny":
        pipe = load_pipeline("openuni-b-512", mllm=tiny.mllm, transformer=tiny.transformer, vae=tiny.vae,
                             scheduler=tiny.scheduler, checkpoint=tiny.checkpoint,
                             connector_heads=tiny.connector_heads, device=device, dtype=dtype)
    elif geometry == "small":
        pipe = build_small_pipeline(tiny.tokenizer, device, dtype)
    else:
        pipe = build_random_pipeline(geometry, tiny.tokenizer, device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_small_pipeline(tokenizer_dir: Path, device, dtype):
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaTransformer2DModel
    from transformers import InternVLForConditionalGeneration

    from openuni import tiny
    from openuni.connector import OpenUniConnector
    from openuni.internvl import config_from_original
    from openuni.loading import load_tokenizer
    from openuni.pipeline import OpenUniPipeline
    from openuni.prompting import IMG_CONTEXT
    from openuni.variants import SANA_SCHEDULER_CONFIG

    tokenizer = load_tokenizer(tokenizer_dir)
    raw = tiny.original_mllm_config(len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
    raw["llm_config"].update(SMALL_LLM)
    torch.manual_seed(0)
    with torch.device(device):
        mllm = InternVLForConditionalGeneration(config_from_original(raw, tokenizer.convert_tokens_to_ids(IMG_CONTEXT)))
        transformer = SanaTransformer2DModel(**dict(tiny.TINY_TRANSFORMER, **SMALL_TRANSFORMER))
        vae = AutoencoderDC(**dict(tiny.TINY_VAE, latent_channels=32, encoder_block_out_channels=[8, 8, 16, 16, 32, 32],
                                   decoder_block_out_channels=[8, 8, 16, 16, 32, 32]))
        queries = SMALL_CONNECTOR["num_queries"]
        connector = OpenUniConnector(**{k: v for k, v in SMALL_CONNECTOR.items() if k != "num_queries"},
                                     num_queries=queries, caption_channels=transformer.config.caption_channels)
    for module in (mllm, transformer, vae, connector):
        tiny._perturb(module, torch.Generator().manual_seed(1))  # SANA zero-initialises layers: make all of it work
        module.type(dtype)
    scheduler = DPMSolverMultistepScheduler(**SANA_SCHEDULER_CONFIG)
    return OpenUniPipeline(tokenizer, mllm, connector, transformer, vae, scheduler).for_inference()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, float, object]:
    """(wall s, process CPU s, result) of one call."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def prompts_for(batch: int) -> list[str]:
    return [PROMPTS[i % len(PROMPTS)] for i in range(batch)]


class StageClock:
    """Seconds spent in encode_prompt / denoise / decode of the runs of one pipeline, timed inside each run."""

    def __init__(self, pipe, device):
        self.seconds = {"mllm_connector": 0.0, "dit": 0.0, "decode": 0.0}
        for stage, method in (("mllm_connector", "encode_prompt"), ("dit", "denoise"), ("decode", "decode")):
            setattr(pipe, method, self._timing(stage, getattr(pipe, method), device))

    def _timing(self, stage, method, device):
        def run(*args, **kwargs):
            seconds, _, result = timed(lambda: method(*args, **kwargs), device)
            self.seconds[stage] += seconds
            return result
        return run

    def shares(self) -> dict:
        total = sum(self.seconds.values())
        return {stage: value / total for stage, value in self.seconds.items()}


def generate(pipe, batch: int, args, output_type: str = "np", **kwargs):
    return pipe(prompts_for(batch), height=args.resolution, width=args.resolution,
                num_inference_steps=kwargs.pop("steps", args.steps), guidance_scale=args.cfg_scale, seed=0,
                output_type=output_type, **kwargs).images


def sana_baseline(pipe):
    """diffusers' SanaPipeline on our components, fed our caption embeddings (its own loop and decode)."""
    from diffusers import SanaPipeline

    from openuni.model import to_uint8

    sana = SanaPipeline(tokenizer=None, text_encoder=None, vae=pipe.vae, transformer=pipe.transformer,
                        scheduler=copy.deepcopy(pipe.scheduler))
    sana.set_progress_bar_config(disable=True)

    def run(batch, args, output_type="np"):
        cond, uncond = pipe.encode_prompt(prompts_for(batch))
        uncond = uncond.expand_as(cond)
        mask = torch.ones(cond.shape[:2], dtype=torch.long, device=cond.device)
        images = sana(prompt_embeds=cond, prompt_attention_mask=mask, negative_prompt_embeds=uncond,
                      negative_prompt_attention_mask=mask, negative_prompt=None, height=args.resolution,
                      width=args.resolution, num_inference_steps=args.steps, guidance_scale=args.cfg_scale,
                      generator=[torch.Generator("cpu").manual_seed(0) for _ in range(batch)],
                      use_resolution_binning=False, output_type="pt").images * 2 - 1  # ([0, 1] -> ours, [-1, 1])
        return images if output_type == "pt" else to_uint8(images).cpu().numpy()
    return run


class Conv1x1AsMatmul(torch.nn.Module):
    """A 1x1 convolution computed as a matmul over channels (the experiment `conv-matmul`)."""

    def __init__(self, conv: torch.nn.Conv2d):
        super().__init__()
        self.weight = torch.nn.Parameter(conv.weight.detach()[:, :, 0, 0].clone(), requires_grad=False)
        self.bias = None if conv.bias is None else torch.nn.Parameter(conv.bias.detach().clone(), requires_grad=False)

    def forward(self, x):
        y = torch.nn.functional.linear(x.permute(0, 2, 3, 1), self.weight, self.bias)
        return y.permute(0, 3, 1, 2)


def convs_as_matmuls(module: torch.nn.Module) -> int:
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.Conv2d) and child.kernel_size == (1, 1) and child.groups == 1:
            setattr(module, name, Conv1x1AsMatmul(child))
            count += 1
        else:
            count += convs_as_matmuls(child)
    return count


def make_arm(name: str, pipe, device, args):
    """(callable(batch, output_type) -> images, notes, its pipeline) for one arm; the plain pipeline is never
    changed (arms that change modules or hold hooks work on a copy)."""
    from openuni.acceleration import compile_pipeline, quantize_pipeline, warm_up
    from openuni.sampling import SAMPLING_PRESETS

    if name == "sana":
        run = sana_baseline(pipe)
        return (lambda batch, output_type="np": run(batch, args, output_type)), {}, pipe
    kwargs, notes, other = {}, {}, pipe
    if name in ("bf16", "int8", "fp8", "compile", "conv-matmul", "step-cache"):
        other = copy.deepcopy(pipe)
        if name == "bf16":
            for module in (other.mllm, other.connector, other.transformer, other.vae):
                module.type(torch.bfloat16)
        elif name in ("int8", "fp8"):
            quantize_pipeline(other, name, device)
        elif name == "compile":
            compile_pipeline(other, mode=args.compile_mode)
            for batch in args.batch_sizes:
                warm_up(other, batch, args.resolution, args.resolution)
        elif name == "conv-matmul":
            notes["convs_replaced"] = convs_as_matmuls(other.transformer)
    if name == "guidance-interval":
        kwargs["guidance_interval"] = tuple(args.interval)
        notes["interval"] = list(args.interval)
    elif name == "step-cache":
        kwargs["step_cache"] = args.cache_threshold
        notes["threshold"] = args.cache_threshold
    elif name in ("fast", "faster"):
        kwargs["steps"] = SAMPLING_PRESETS[name]
        notes["steps"] = SAMPLING_PRESETS[name]
    return (lambda batch, output_type="np": generate(other, batch, args, output_type, **kwargs)), notes, other


def dit_steps_run(pipe, fn) -> int:
    """How many times the DiT's last block ran in `fn()` (step caching skips it)."""
    count = []
    handle = pipe.transformer.transformer_blocks[-1].register_forward_pre_hook(lambda m, a: count.append(1))
    try:
        fn()
    finally:
        handle.remove()
    return len(count)


def drift(plain: dict, other: dict) -> dict:
    levels = (plain["np"].astype("int16") - other["np"].astype("int16"))
    return dict(max_levels=int(abs(levels).max()), mean_levels=float(abs(levels).mean()),
                max_float=float((plain["pt"].float().clamp(-1, 1) - other["pt"].float().clamp(-1, 1)).abs().max()))


def compare(pipe, name: str, device, args, plain_fn) -> list[dict]:
    arm, notes, arm_pipe = make_arm(name, pipe, device, args)
    rows = []
    for batch in args.batch_sizes:
        plain_fn(batch)  # warm-up of both at this shape
        arm(batch)
        plain_runs, arm_runs, ratios, cpu_ratios = [], [], [], []
        for _ in range(args.rounds):
            first = timed(lambda: plain_fn(batch), device)
            x1, x2 = timed(lambda: arm(batch), device), timed(lambda: arm(batch), device)
            last = timed(lambda: plain_fn(batch), device)
            plain_runs += [first, last]
            arm_runs += [x1, x2]
            ratios.append((first[0] + last[0]) / (x1[0] + x2[0]))
            cpu_ratios.append((first[1] + last[1]) / (x1[1] + x2[1]))
        outputs = {kind: (plain_fn(batch, kind), arm(batch, kind)) for kind in ("np", "pt")}
        row = dict(arm=name, batch=batch, ratio=statistics.median(ratios), ratios=ratios,
                   cpu_ratio=statistics.median(cpu_ratios), cpu_ratios=cpu_ratios,
                   plain_s_per_image=statistics.median(r[0] for r in plain_runs) / batch,
                   plain_cpu_s_per_image=statistics.median(r[1] for r in plain_runs) / batch,
                   s_per_image=statistics.median(r[0] for r in arm_runs) / batch,
                   cpu_s_per_image=statistics.median(r[1] for r in arm_runs) / batch,
                   drift=drift({k: v[0] for k, v in outputs.items()}, {k: v[1] for k, v in outputs.items()}),
                   **notes)
        if name == "step-cache":
            row["dit_steps_run"] = dit_steps_run(arm_pipe, lambda: arm(batch))
        if name in EXACT_ARMS:
            row["exact_within_5e-5"] = row["drift"]["max_float"] <= 5e-5
        rows.append(row)
        print(f"{name:18s} batch {batch:3d}: speed-up {row['ratio']:.2f}x wall (rounds "
              f"{', '.join(f'{r:.2f}' for r in ratios)}), {row['cpu_ratio']:.2f}x CPU;"
              f" {row['s_per_image']:.3f} s/image wall, {row['cpu_s_per_image']:.3f} s CPU; drift max "
              f"{row['drift']['max_levels']} / mean {row['drift']['mean_levels']:.2f} levels, float "
              f"{row['drift']['max_float']:.2g}", flush=True)
    return rows


def run(args) -> dict:
    device = torch.device(args.device)
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32, "float32": torch.float32,
             "bfloat16": torch.bfloat16}[args.dtype]
    with tempfile.TemporaryDirectory() as workdir:
        pipe = build_pipeline(args.geometry, device, dtype, Path(workdir))
    args.resolution = args.resolution or pipe.default_resolution
    timed_pipe = copy.copy(pipe)  # the plain path with its stage clock (same modules)
    clock = StageClock(timed_pipe, device)
    plain_fn = lambda batch, output_type="np": generate(timed_pipe, batch, args, output_type)  # noqa: E731
    rows, failures = [], {}
    for name in args.arms:
        try:
            rows += compare(pipe, name, device, args, plain_fn)
        except Exception as error:  # one arm's missing library or kernel must not lose the others' figures
            if not args.keep_going:
                raise
            failures[name] = f"{type(error).__name__}: {error}"
            print(f"{name}: failed ({failures[name]})", flush=True)
    result = dict(geometry=args.geometry, device=describe_device(device), dtype=str(dtype).removeprefix("torch."),
                  resolution=args.resolution, steps=args.steps, cfg_scale=args.cfg_scale, rounds=args.rounds,
                  versions=versions(), split_of_plain_runs=clock.shares(), rows=rows, failures=failures)
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if args.startup:
        result["startup"] = startup_times(args.rounds)
    split = result["split_of_plain_runs"]
    print("split of the plain runs: " + ", ".join(f"{k} {v:.1%}" for k, v in split.items()))
    return result


def startup_times(rounds: int) -> dict:
    import importlib.util

    spec = importlib.util.spec_from_file_location("startup", Path(__file__).with_name("startup.py"))
    startup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(startup)
    out = {}
    for case, command in startup.CASES.items():
        runs = [startup.timed(command, startup.HERE) for _ in range(rounds)]
        out[case] = {"wall_s": statistics.median(w for w, _ in runs), "cpu_s": statistics.median(c for _, c in runs)}
        print(f"start-up {case}: {out[case]['wall_s']:.2f} s wall, {out[case]['cpu_s']:.2f} s CPU", flush=True)
    return out


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def versions() -> dict:
    import diffusers
    import transformers

    return dict(torch=torch.__version__, diffusers=diffusers.__version__, transformers=transformers.__version__)


def markdown(result: dict) -> str:
    split = ", ".join(f"{k.replace('_', ' + ')} {v:.1%}" for k, v in result["split_of_plain_runs"].items())
    lines = [
        f"### {result['geometry']} on {result['device']}",
        "",
        f"{result['dtype']}, {result['resolution']} px, {result['steps']} steps, cfg {result['cfg_scale']}; speed-up = "
        f"plain time / arm time (>1: the arm is faster), the median of {result['rounds']} A X X A rounds; "
        + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        f"Split of the plain runs (timed inside them): {split}.",
        "",
        "| arm | batch | speed-up wall (CPU) | plain s/image wall (CPU) | arm s/image wall (CPU) | drift max / mean "
        "uint8 levels | max float |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        d = row["drift"]
        notes = "".join(f", {k} {row[k]}" for k in ("steps", "interval", "threshold", "dit_steps_run",
                                                      "convs_replaced") if k in row)
        lines.append(f"| {row['arm']}{notes} | {row['batch']} | {row['ratio']:.2f}x ({row['cpu_ratio']:.2f}x) | "
                     f"{row['plain_s_per_image']:.3f} ({row['plain_cpu_s_per_image']:.3f}) | {row['s_per_image']:.3f} "
                     f"({row['cpu_s_per_image']:.3f}) | {d['max_levels']} / {d['mean_levels']:.2f} | {d['max_float']:.2g} |")
    return "\n".join(lines) + "\n"


def write_section(path: Path, key: str, text: str) -> None:
    """Replace (or append) the section between this run's markers, keeping every other run's table."""
    start, end = f"<!-- benchmark:{key} -->", f"<!-- /benchmark:{key} -->"
    document = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{start}\n{text}{end}\n"
    if start in document:
        head, rest = document.split(start, 1)
        document = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        document = document.rstrip("\n") + "\n\n" + block
    path.write_text(document)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--geometry", choices=GEOMETRIES, default="small")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1])
    parser.add_argument("--rounds", type=int, default=3, help="A X X A rounds per arm and batch size")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=["sana"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg-scale", type=float, default=4.5)
    parser.add_argument("--resolution", type=int, help="default: the geometry's")
    parser.add_argument("--interval", type=float, nargs=2, default=[0.2, 0.8], help="the guidance-interval arm's")
    parser.add_argument("--cache-threshold", type=float, default=0.08, help="the step-cache arm's")
    parser.add_argument("--compile-mode", default="default")
    parser.add_argument("--startup", action="store_true", help="also time start-up (benchmarks/startup.py's cases)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--keep-going", action="store_true", help="record an arm that fails and go on to the next")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--markdown", type=Path, help="write the table into this file (e.g. docs/benchmarks.md)")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    text = markdown(result)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    if args.markdown:
        write_section(args.markdown, f"{result['geometry']}-{args.device}-{result['dtype']}-{'-'.join(args.arms)}",
                      text)
    return result


if __name__ == "__main__":
    main()
