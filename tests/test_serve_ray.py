"""The API on Ray Serve with two local replicas of the tiny model: the same images as the pipeline alone.

Skipped (saying why) only where Ray is not installed or cannot start on this machine."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

openai = pytest.importorskip("openai", reason="the serving tests need the 'test' extra (openai)")
ray = pytest.importorskip("ray", reason="Ray Serve is part of the 'serve' extra")
serve = pytest.importorskip("ray.serve", reason="Ray Serve is part of the 'serve' extra")

from openuni.serving.ray_app import DEPLOYMENT_NAME, app_builder, deployment  # noqa: E402

from conftest import tiny_cli_args  # noqa: E402
from serving_helpers import decoded, free_port  # noqa: E402
from tolerances import assert_images_close  # noqa: E402

FAST = {"num_inference_steps": 2}


@pytest.fixture(scope="module")
def ray_url(tiny):
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except Exception as error:  # no shared memory, no permission to spawn raylets, ...
        pytest.skip(f"Ray cannot start on this machine: {error}")
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        replicas = deployment([*tiny_cli_args(tiny), "--model-name", "tiny", "--max-wait-ms", "100"]).options(
            num_replicas=2, ray_actor_options={"num_cpus": 0.5})
        serve.run(replicas.bind(), name="openuni", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def test_two_replicas_serve_the_images_of_the_pipeline(ray_url, tiny_pipe):
    status = serve.status().applications["openuni"].deployments[DEPLOYMENT_NAME]
    assert status.replica_states.get("RUNNING") == 2
    client = openai.OpenAI(base_url=f"{ray_url}/v1", api_key="unused", max_retries=0, timeout=120)
    requests = [("a red cube", 5), ("a blue sphere", 6), ("two green dogs", 7), ("a bowl of fruit", 8)]
    with ThreadPoolExecutor(len(requests)) as pool:
        responses = list(pool.map(lambda r: client.images.generate(model="tiny", prompt=r[0], n=2,
                                                                   extra_body={"seed": r[1], **FAST}), requests))
    for (prompt, seed), response in zip(requests, responses):
        assert [image.seed for image in response.data] == [seed, seed + 1]
        alone = tiny_pipe(prompt, num_images_per_prompt=2, seed=seed, **FAST).images
        for served, expected in zip(response.data, alone):
            assert_images_close(decoded(served.b64_json), expected)
    answer = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=4)
    assert answer.choices[0].message.role == "assistant"


def test_the_config_file_builder_takes_the_flags_of_openuni_serve(tiny):
    from openuni.errors import OpenUniError

    application = app_builder({"argv": " ".join(tiny_cli_args(tiny)) + " --max-batch-images 4"})
    assert application is not None
    with pytest.raises(OpenUniError, match="unknown Ray Serve application args"):
        app_builder({"argv": [], "replicas": 2})
    with pytest.raises(OpenUniError, match="--max-batch-images must be at least 1"):
        app_builder({"argv": ["--max-batch-images", "0"]})


def test_the_shipped_config_file_is_one_ray_serve_accepts():
    import importlib
    from pathlib import Path

    import yaml
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "ray" / "serve.yaml").read_text())
    ServeDeploySchema.model_validate(config)
    application = config["applications"][0]
    module, name = application["import_path"].split(":")
    assert getattr(importlib.import_module(module), name)(application["args"]) is not None  # flags parse
    deployment_config = application["deployments"][0]
    assert deployment_config["name"] == DEPLOYMENT_NAME
    argv = application["args"]["argv"]
    queue, batch = (int(argv[argv.index(flag) + 1]) for flag in ("--max-queue", "--max-batch-images"))
    assert deployment_config["max_ongoing_requests"] >= queue + batch
