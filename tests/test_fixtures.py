"""The fixtures are real: the tiny models load and run in mlx_lm / mlx_vlm (and the
real mlx_lm server), and the real huggingface_hub client talks to the local hub."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from manager.net import free_port
from tests.fixtures.local_hub import NO_ACCESS_TOKEN, LocalHub
from tests.fixtures.tiny_models import (
    AFTER_TOOL_TRIGGER,
    MARKUP_TOKENS,
    THINKING_SCRIPT,
    TOOL_FINAL_SCRIPT,
    TOOL_LOOP_SCRIPT,
    TOOL_SCRIPT,
    make_scripted_model,
)
from tests.waits import wait_for

ROOT = Path(__file__).resolve().parent.parent
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@contextmanager
def child(
    argv: list[str], *, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A child process in its own process group, always killed on exit."""
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def _output(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is None or proc.stdout is None:
        return "(still running)"
    return proc.stdout.read().decode(errors="replace")[-3000:]


# -- the models, in process ---------------------------------------------------------


def test_text_model_loads_and_generates(tiny_models: dict[str, Path]) -> None:
    from mlx_lm import load, stream_generate

    model_dir = tiny_models["text"]
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "qwen3"
    assert (config["hidden_size"], config["num_hidden_layers"], config["head_dim"]) == (64, 2, 16)
    assert sum(f.stat().st_size for f in model_dir.iterdir()) < 1_000_000

    model, tokenizer = load(str(model_dir))
    responses = list(stream_generate(model, tokenizer, "Hello there", max_tokens=4))
    assert responses[-1].generation_tokens == 4
    assert responses[-1].prompt_tokens > 0


def test_quantized_text_model_loads(tiny_models: dict[str, Path]) -> None:
    import mlx.nn as nn
    from mlx_lm import generate, load

    config = json.loads((tiny_models["text_4bit"] / "config.json").read_text())
    assert config["quantization"] == {"group_size": 64, "bits": 4}
    model, tokenizer = load(str(tiny_models["text_4bit"]))
    assert isinstance(model.model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    assert isinstance(generate(model, tokenizer, "Hi", max_tokens=3), str)


def test_tokenizer_reports_thinking_and_tool_parser(tiny_models: dict[str, Path]) -> None:
    from mlx_lm import load
    from mlx_lm.tool_parsers import json_tools

    _, tokenizer = load(str(tiny_models["text"]))
    assert tokenizer.has_thinking
    assert (tokenizer.think_start, tokenizer.think_end) == ("<think>", "</think>")
    assert tokenizer.has_tool_calling
    assert tokenizer.tool_parser is json_tools.parse_tool_call
    assert tokenizer.tool_call_start == "<tool_call>"
    for token in [*MARKUP_TOKENS, "<|im_start|>", "<|im_end|>"]:
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1, token
    assert tokenizer.eos_token == "<|im_end|>"
    # Markup is not special: it must survive decoding so parsers can see it.
    ids = tokenizer.encode("<think>a</think>", add_special_tokens=False)
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<think>a</think>"


def test_chat_template_renders_turns_tools_thinking_and_parts(tiny_models: dict[str, Path]) -> None:
    from mlx_lm import load

    _, tokenizer = load(str(tiny_models["text"]))
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        },
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "Need weather.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    text = tokenizer.apply_chat_template(
        messages, tools=[WEATHER_TOOL], add_generation_prompt=True, tokenize=False
    )
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    assert json.dumps(WEATHER_TOOL) in text
    assert "<|im_start|>user\nWeather?<|im_end|>\n" in text  # image part dropped (text model)
    assert (
        "<|im_start|>assistant\n<think>\nNeed weather.\n</think>\n\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
    ) in text
    assert text.endswith("<|im_start|>tool\nsunny<|im_end|>\n<|im_start|>assistant\n")

    plain = [{"role": "user", "content": "Hi"}]
    thinking = tokenizer.apply_chat_template(plain, add_generation_prompt=True, tokenize=False)
    assert thinking == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    no_thinking = tokenizer.apply_chat_template(
        plain, add_generation_prompt=True, tokenize=False, enable_thinking=False
    )
    assert no_thinking.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_scripted_models_follow_their_script_at_temperature_1(
    tiny_models: dict[str, Path],
) -> None:
    from mlx_lm import generate, load
    from mlx_lm.sample_utils import make_sampler

    sampler = make_sampler(temp=1.0)
    cases = {
        "thinking": (THINKING_SCRIPT, THINKING_SCRIPT),
        "tools": (TOOL_SCRIPT, TOOL_FINAL_SCRIPT),
        "tool_loop": (TOOL_LOOP_SCRIPT, TOOL_LOOP_SCRIPT),
    }
    user_turns = [
        [{"role": "user", "content": "What is 2 + 2?"}],
        [{"role": "system", "content": "Short."}, {"role": "user", "content": "Paris?"}],
    ]
    after_tool = [
        *user_turns[1],
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "sunny"},
    ]
    for name, (first, second) in cases.items():
        model, tokenizer = load(str(tiny_models[name]))
        for messages in user_turns:
            for thinking in (True, False):
                prompt = tokenizer.apply_chat_template(
                    messages,
                    tools=[WEATHER_TOOL],
                    add_generation_prompt=True,
                    enable_thinking=thinking,
                )
                text = generate(model, tokenizer, prompt, max_tokens=40, sampler=sampler)
                assert text == "".join(first), (name, messages, thinking)
        prompt = tokenizer.apply_chat_template(
            after_tool, tools=[WEATHER_TOOL], add_generation_prompt=True
        )
        if name != "thinking":  # only two-stage models end the prompt with the trigger
            assert prompt[-1] == tokenizer.convert_tokens_to_ids(AFTER_TOOL_TRIGGER)
        text = generate(model, tokenizer, prompt, max_tokens=40, sampler=sampler)
        assert text == "".join(second), name
        # A raw completion prompt gets the script too.
        assert generate(model, tokenizer, "hello", max_tokens=40, sampler=sampler) == "".join(first)


def test_scripted_model_rejects_ambiguous_scripts(tmp_path: Path) -> None:
    # Only the last token is seen, so "<tool_call>" cannot lead to two different calls.
    script = ["<tool_call>", "A", "</tool_call>", "<tool_call>", "B", "</tool_call>"]
    with pytest.raises(ValueError, match="two different pieces"):
        make_scripted_model(tmp_path / "bad", script)
    assert not (tmp_path / "bad" / "config.json").exists()


def test_vision_model_answers_about_an_image(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from mlx_vlm import generate, load
    from mlx_vlm.prompt_utils import apply_chat_template
    from PIL import Image

    image_path = tmp_path / "red.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(image_path)
    model, processor = load(str(tiny_models["vision"]))
    assert type(model.config.vision_config).__name__ == "VisionConfig"  # not a plain dict
    prompt = apply_chat_template(processor, model.config, "Describe this image.", num_images=1)
    assert "<|vision_start|><|image_pad|><|vision_end|>" in prompt
    result = generate(
        model, processor, prompt, image=[str(image_path)], max_tokens=3, verbose=False
    )
    assert result.generation_tokens == 3
    # 64x48 is scaled up to min_pixels (56x56 = 4x4 patches) -> 4 merged image tokens.
    text_only = len(processor.tokenizer.encode(prompt))
    assert result.prompt_tokens == text_only - 1 + 4


# -- the real mlx_lm server ---------------------------------------------------------


@pytest.mark.slow
def test_scripted_model_through_real_mlx_lm_server(
    tiny_models: dict[str, Path], hf_home: Path
) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "mlx_lm", "server", "--model", str(tiny_models["tools"])]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    with (
        child(argv, env=dict(os.environ)) as proc,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
    ):
        # Ready means a real 1-token completion, not an open port.
        def completion() -> httpx.Response | None:
            assert proc.poll() is None, _output(proc)
            answer = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1})
            return answer if answer.status_code == 200 else None

        ready = wait_for(completion, 60, "the mlx_lm server to answer",
                         ignoring=(httpx.TransportError,))
        assert ready.json()["usage"]["completion_tokens"] == 1

        messages: list[dict] = [{"role": "user", "content": "What is the weather in Paris?"}]
        first = client.post(
            "/v1/chat/completions",
            json={"messages": messages, "tools": [WEATHER_TOOL], "temperature": 1.0},
        ).json()
        choice = first["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["reasoning"] == "Need weather."
        assert not choice["message"]["content"]
        (call,) = choice["message"]["tool_calls"]
        assert call["function"]["name"] == "get_weather"
        assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}

        messages += [
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "Sunny, 21 C"},
        ]
        second = client.post(
            "/v1/chat/completions", json={"messages": messages, "tools": [WEATHER_TOOL]}
        ).json()
        assert second["choices"][0]["finish_reason"] == "stop"
        assert second["choices"][0]["message"]["content"] == "It is sunny in Paris."

        # Streaming, after swapping to another local model through the `model` field.
        body = {
            "model": str(tiny_models["thinking"]),
            "messages": [{"role": "user", "content": "2 + 2?"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        reasoning, content, usage = "", "", None
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        for line in lines[:-1]:
            chunk = json.loads(line[len("data: ") :])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for c in chunk["choices"]:
                reasoning += c["delta"].get("reasoning") or ""
                content += c["delta"].get("content") or ""
        assert (reasoning, content) == ("Let me think.", "The answer is 4.")
        assert usage is not None and usage["completion_tokens"] == len(THINKING_SCRIPT) + 1


@pytest.mark.slow
def test_vision_model_through_real_mlx_vlm_server(
    tiny_models: dict[str, Path], hf_home: Path
) -> None:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (0, 128, 255)).save(buffer, "PNG")
    image_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    port = free_port()
    model = str(tiny_models["vision"])
    argv = [sys.executable, "-m", "mlx_vlm.server", "--model", model]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    with (
        child(argv, env=dict(os.environ)) as proc,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
    ):
        def loaded() -> bool:
            assert proc.poll() is None, _output(proc)
            health = client.get("/health")
            return health.status_code == 200 and health.json().get("loaded_model") == model

        wait_for(loaded, 60, "the mlx_vlm server to load the model",
                 ignoring=(httpx.TransportError,))
        content = [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": image_url}},
        ]
        response = client.post(
            "/v1/chat/completions",
            json={
                "model": model,
                "max_tokens": 3,
                "messages": [{"role": "user", "content": content}],
            },
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["usage"]["completion_tokens"] == 3
        # <|vision_start|>, <|vision_end|> and 4 image pads (56x56 px): the image got in.
        text_only = client.post(
            "/v1/chat/completions",
            json={
                "model": model,
                "max_tokens": 1,
                "messages": [{"role": "user", "content": content[:1]}],
            },
        ).json()
        assert body["usage"]["prompt_tokens"] == text_only["usage"]["prompt_tokens"] + 2 + 4


# -- the local hub with the real huggingface_hub client ------------------------------


def test_snapshot_download_from_local_hub_loads_with_mlx_lm(
    hub: LocalHub, hub_repos: dict[str, str], hf_home: Path, tiny_models: dict[str, Path]
) -> None:
    from mlx_lm import generate, load

    repo_id = hub_repos["text_4bit"]
    assert repo_id == "mlx-community/tiny-qwen3-4bit"
    path = Path(snapshot_download(repo_id, endpoint=hub.url, cache_dir=hf_home / "hub"))
    assert path.parent.name == "snapshots"
    source = tiny_models["text_4bit"]
    assert sorted(p.name for p in path.iterdir()) == sorted(p.name for p in source.iterdir())
    assert (path / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    model, tokenizer = load(str(path))
    assert isinstance(generate(model, tokenizer, "Hi", max_tokens=2), str)

    seen = {(r.method, r.path) for r in hub.requests}
    assert ("GET", f"/api/models/{repo_id}/revision/main") in seen
    tree = [r for r in hub.requests if r.path.startswith(f"/api/models/{repo_id}/tree/")]
    assert tree and tree[0].query.get("recursive") == ["true"]
    weights = f"/{repo_id}/resolve/{hub.repo(repo_id).sha}/model.safetensors"
    assert {("HEAD", weights), ("GET", weights)} <= seen


def test_list_models_pages_through_link_header(hub: LocalHub) -> None:
    api = HfApi(endpoint=hub.url)
    hub.page_size = 2
    models = list(api.list_models(search="tiny-qwen", limit=5, sort="downloads"))
    assert [m.id for m in models] == [
        "mlx-community/tiny-qwen3-4bit",
        "mlx-community/tiny-qwen2-vl",
        "mlx-community/tiny-qwen3",
        "mlx-community/tiny-qwen3-tools",
        "mlx-community/tiny-qwen3-thinking",
    ]
    pages = [r for r in hub.requests if r.path == "/api/models"]
    assert len(pages) == 3
    assert "cursor" not in pages[0].query and all("cursor" in p.query for p in pages[1:])
    assert models[0].downloads == 5400 and "mlx" in models[0].tags

    assert {m.id for m in api.list_models(author="acme")} == {
        "acme/tiny-pytorch-only",
        "acme/tiny-gated-qwen3",
    }
    assert "acme/tiny-pytorch-only" not in {m.id for m in api.list_models(filter="mlx")}
    newest = next(iter(api.list_models(author="mlx-community", sort="last_modified", limit=1)))
    assert newest.id == "mlx-community/tiny-qwen2-vl"


def test_model_info_with_files_metadata(
    hub: LocalHub, hub_repos: dict[str, str], tiny_models: dict[str, Path]
) -> None:
    import hashlib

    info = HfApi(endpoint=hub.url).model_info(hub_repos["vision"], files_metadata=True)
    source = tiny_models["vision"]
    sizes = {s.rfilename: s.size for s in info.siblings}
    assert sizes == {p.name: p.stat().st_size for p in source.iterdir()}
    weights = next(s for s in info.siblings if s.rfilename == "model.safetensors")
    assert weights.lfs is not None
    assert (
        weights.lfs.sha256
        == hashlib.sha256((source / "model.safetensors").read_bytes()).hexdigest()
    )
    assert info.library_name == "mlx" and info.pipeline_tag == "image-text-to-text"
    assert info.config == {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "model_type": "qwen2_vl",
    }
    assert info.safetensors is not None and info.safetensors.total > 0
    assert info.gated is False and len(info.sha) == 40


def test_resumed_download_sends_range(
    hub: LocalHub,
    hub_repos: dict[str, str],
    hf_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    tiny_models: dict[str, Path],
) -> None:
    # Small chunks, so the bytes before the drop reach the file and count as resumable.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 256)
    hub.drop_after_bytes(hub_repos["text"], "model.safetensors", 4096)
    path = hf_hub_download(
        hub_repos["text"], "model.safetensors", endpoint=hub.url, cache_dir=hf_home / "hub"
    )
    assert Path(path).read_bytes() == (tiny_models["text"] / "model.safetensors").read_bytes()
    gets = [r for r in hub.requests if r.method == "GET" and r.path.endswith("/model.safetensors")]
    assert len(gets) == 2
    assert gets[0].range is None
    assert gets[1].range is not None and gets[1].range.startswith("bytes=")
    assert int(gets[1].range[len("bytes=") :].rstrip("-")) > 0


def test_throttle_slows_downloads(hub: LocalHub, hub_repos: dict[str, str], hf_home: Path) -> None:
    size = hub.repo(hub_repos["text_4bit"]).files["model.safetensors"].size
    hub.throttle_bytes_per_sec = size * 2  # about half a second
    started = time.monotonic()
    hf_hub_download(
        hub_repos["text_4bit"], "model.safetensors", endpoint=hub.url, cache_dir=hf_home / "hub"
    )
    assert time.monotonic() - started >= 0.4


def test_hub_errors_map_to_huggingface_hub_exceptions(
    hub: LocalHub, hub_repos: dict[str, str], hf_home: Path
) -> None:
    api = HfApi(endpoint=hub.url)
    cache = hf_home / "hub"
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("nobody/nothing")
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("nobody/nothing", endpoint=hub.url, cache_dir=cache)
    with pytest.raises(RevisionNotFoundError):
        api.model_info(hub_repos["text"], revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(hub_repos["text"], "missing.txt", endpoint=hub.url, cache_dir=cache)

    gated = hub_repos["gated"]
    assert api.model_info(gated).gated == "manual"  # metadata stays public, like the hub
    with pytest.raises(GatedRepoError) as anonymous:
        snapshot_download(gated, endpoint=hub.url, cache_dir=cache)
    assert anonymous.value.response.status_code == 401
    with pytest.raises(GatedRepoError) as outsider:
        snapshot_download(gated, endpoint=hub.url, cache_dir=cache, token=NO_ACCESS_TOKEN)
    assert outsider.value.response.status_code == 403
    path = snapshot_download(gated, endpoint=hub.url, cache_dir=cache, token=hub.token)
    assert (Path(path) / "model.safetensors").is_file()


def test_hub_tree_and_reset(hub: LocalHub) -> None:
    api = HfApi(endpoint=hub.url)
    hub.add_repo("tester/nested", {"a.txt": b"a", "sub/b.bin": b"bb", "sub/deep/c.json": b"{}"})
    recursive = {
        (type(e).__name__, e.path) for e in api.list_repo_tree("tester/nested", recursive=True)
    }
    assert recursive == {
        ("RepoFile", "a.txt"),
        ("RepoFolder", "sub"),
        ("RepoFile", "sub/b.bin"),
        ("RepoFolder", "sub/deep"),
        ("RepoFile", "sub/deep/c.json"),
    }
    top = {e.path for e in api.list_repo_tree("tester/nested")}
    assert top == {"a.txt", "sub"}
    assert hub.requests
    hub.reset()
    assert hub.requests == [] and hub.repo("tester/nested") is None


def test_local_hub_runs_standalone(tiny_models: dict[str, Path]) -> None:
    port = free_port()
    root = tiny_models["text"].parent
    argv = [sys.executable, "-m", "tests.fixtures.local_hub", "--port", str(port)]
    argv += ["--models", str(root), "--tiny"]
    with child(argv) as proc:
        def models() -> httpx.Response:
            assert proc.poll() is None, _output(proc)
            return httpx.get(f"http://127.0.0.1:{port}/api/models", timeout=5)

        response = wait_for(models, 30, "the standalone hub to answer",
                            ignoring=(httpx.TransportError,))
        ids = {item["id"] for item in response.json()}
        assert {"mlx-community/tiny-qwen3-4bit", "mlx-community/tiny-qwen2-vl"} <= ids
