"""Text-to-image parity with the reference implementation (../shared/parity), through the public API.

Every stage the reference recorded is captured with forward hooks on the real modules and judged by the fixtures'
own `compare_golden.compare` with its default tolerances (ids exact; network outputs 5e-5 abs + 5e-5 rel).
"""

from __future__ import annotations

import pytest
import torch

PROMPT = "a red cube on the left of a blue sphere"


class StageRecorder:
    """Records what the language model, connector, DiT and sampler see and return during one pipeline call."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.tensors: dict[str, torch.Tensor] = {}
        self.steps: list[dict[str, torch.Tensor]] = []
        self._handles = []
        self._real_step = None

    def __enter__(self):
        model = self.pipe.model
        self._handles = [
            model.language_model.register_forward_hook(self._llm, with_kwargs=True),
            model.connector.connector.register_forward_hook(self._connector),
            model.connector.register_forward_hook(self._projector),
            model.transformer.register_forward_hook(self._dit, with_kwargs=True),
        ]
        self._real_step, self._real_tokenize = self.pipe.scheduler.step, self.pipe.tokenize
        self.pipe.scheduler.step, self.pipe.tokenize = self._sampler_step, self._tokenize
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self.pipe.scheduler.step, self.pipe.tokenize = self._real_step, self._real_tokenize

    def _tokenize(self, texts):
        input_ids, attention_mask = self._real_tokenize(texts)
        self.tensors.update(input_ids=input_ids, attention_mask=attention_mask.bool())
        return input_ids, attention_mask

    def _llm(self, module, args, kwargs, output):
        self.tensors.update(
            llm_inputs_embeds=kwargs["inputs_embeds"], llm_attention_mask=kwargs["attention_mask"].bool(),
            llm_position_ids=kwargs["position_ids"], llm_last_hidden_state=output.last_hidden_state,
        )

    def _connector(self, module, args, output):
        self.tensors.update(query_hidden_states=args[0], connector_out=output)

    def _projector(self, module, args, output):
        self.tensors["prompt_embeds"] = output

    def _dit(self, module, args, kwargs, output):
        self.steps.append(dict(
            latent_model_input=args[0], timestep=kwargs["timestep"], noise_pred_raw=output[0],
            dit_encoder_hidden_states=kwargs["encoder_hidden_states"],
        ))

    def _sampler_step(self, model_output, timestep, sample, **kwargs):
        result = self._real_step(model_output, timestep, sample, **kwargs)
        self.steps[-1].update(noise_pred_guided=model_output, latents_after=result[0])
        return result


def candidate_for_generation(pipe, prefix: str, expected, **call) -> dict[str, torch.Tensor]:
    with StageRecorder(pipe) as recorder:
        pixels = pipe(PROMPT, output_type="pt", **call).images
    candidate = {f"{prefix}.{name}": value for name, value in recorder.tensors.items()}
    for index, step in enumerate(recorder.steps):
        candidate.update({f"{prefix}.step{index}.{k}": v for k, v in step.items() if k != "dit_encoder_hidden_states"})
    candidate[f"{prefix}.dit_encoder_hidden_states"] = recorder.steps[0]["dit_encoder_hidden_states"]
    candidate[f"{prefix}.final_latents"] = recorder.steps[-1]["latents_after"]
    candidate[f"{prefix}.pixels"] = pixels
    candidate[f"{prefix}.image_uint8"] = torch.from_numpy(pipe.decode(candidate[f"{prefix}.final_latents"], "np")[0])
    pipe.scheduler.set_timesteps(call["num_inference_steps"])
    candidate[f"{prefix}.sched_timesteps"] = pipe.scheduler.timesteps
    candidate[f"{prefix}.sched_sigmas"] = pipe.scheduler.sigmas
    return candidate


def assert_matches(golden, candidate: dict[str, torch.Tensor], prefixes: list[str]) -> None:
    expected, _, compare = golden
    names = [n for n in expected if any(n.startswith(p) for p in prefixes)]
    missing = [n for n in names if n not in candidate]
    assert not missing, f"stages not produced: {missing}"
    ok, rows = compare(expected, candidate, only=prefixes, strict=True)
    for name, status, detail in rows:
        print(f"{name:45s} {status:5s} {detail}")
    assert ok, [row for row in rows if row[1] != "ok"]


def test_prompt_tokens_and_embeddings(parity_pipe, golden):
    _, cases, _ = golden
    assert cases["cases"]["t2i"]["prompt"] == PROMPT
    candidate = {}
    for prefix, negative in (("t2i", None), ("t2i_neg", "low quality, blurry")):
        with StageRecorder(parity_pipe) as recorder:
            cond, uncond = parity_pipe.encode_prompt([PROMPT], [negative] if negative else None)
        candidate[f"{prefix}.prompt_embeds"] = torch.cat([cond, uncond])
        candidate[f"{prefix}.input_ids"] = recorder.tensors["input_ids"]
        candidate[f"{prefix}.attention_mask"] = recorder.tensors["attention_mask"]
        if prefix == "t2i":
            candidate["t2i.query_hidden_states"] = recorder.tensors["query_hidden_states"]
    assert_matches(golden, candidate, ["t2i.input_ids", "t2i.attention_mask", "t2i.query_hidden_states",
                                       "t2i.prompt_embeds", "t2i_neg."])


def test_text_to_image_generation_stages(parity_pipe, golden):
    expected, cases, _ = golden
    case = cases["cases"]["t2i_gen"]
    call = dict(num_inference_steps=case["num_steps"], guidance_scale=case["cfg_scale"],
                height=case["height"], width=case["width"])
    # The pipeline's own noise for seed 42 is the reference's initial latents.
    noise = parity_pipe.prepare_latents(1, 1, case["height"], case["width"], seed=case["seed"], generator=None)
    assert torch.equal(noise, expected["t2i.gen.init_latents"])
    candidate = candidate_for_generation(parity_pipe, "t2i.gen", expected, seed=case["seed"], **call)
    candidate["t2i.gen.init_latents"] = noise
    # The pipeline passes SANA no caption mask: every query token is attended, as the reference's all-ones mask.
    captions = candidate["t2i.gen.dit_encoder_hidden_states"]
    candidate["t2i.gen.dit_encoder_attention_mask"] = torch.ones(captions.shape[:2], dtype=torch.bool)
    assert_matches(golden, candidate, ["t2i.gen."])


@pytest.mark.parametrize("threads", [1, 2])
def test_generation_is_deterministic_across_thread_counts(parity_pipe, golden, threads):
    expected, _, _ = golden
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        pixels = parity_pipe(PROMPT, num_inference_steps=4, seed=42, height=64, width=64, output_type="pt").images
    finally:
        torch.set_num_threads(previous)
    assert (pixels - expected["t2i.gen.pixels"]).abs().max() < 5e-5
